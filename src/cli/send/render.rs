//! How `send` shows what comes back: raw JSON lines with `--json`; for a
//! person, results on stdout, the story (started, progress, how it ended) on
//! stderr, live output on the stream it came from, and progress as a bar
//! when stderr is a terminal.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::cli::output::outln;

pub struct Renderer {
    json: bool,
    terminal: bool,
    bar: Option<ProgressBar>,
}

impl Renderer {
    pub fn new(json: bool, _request_id: &str) -> Renderer {
        Renderer {
            json,
            terminal: std::io::stderr().is_terminal(),
            bar: None,
        }
    }

    /// A remark for a person (nothing in `--json` mode).
    pub fn note(&self, text: &str) {
        if !self.json {
            self.above_bar(|| eprintln!("{text}"));
        }
    }

    /// A logs-topic message.
    pub fn log(&self, message: &Value) {
        if self.json {
            outln!("{message}");
            return;
        }
        let data = message["data"].as_str().unwrap_or("");
        self.above_bar(|| {
            if message["stream"] == "stderr" {
                let _ = std::io::stderr().write_all(data.as_bytes());
            } else {
                crate::cli::output::write_stdout(data.as_bytes());
            }
        });
    }

    /// A response or event on the response topic.
    pub fn response(&mut self, message: &Value) {
        if self.json {
            outln!("{message}");
            return;
        }
        let output = &message["output"];
        match message["event"].as_str() {
            Some("progress") => self.progress(output),
            Some("started") => self.note(&format!(
                "started {} (pid {}); logs: {}",
                output["workload_type"].as_str().unwrap_or(
                    if output["deployment_id"].is_string() {
                        "model server"
                    } else {
                        "workload"
                    }
                ),
                output["pid"],
                output["stdout_log"].as_str().unwrap_or("?")
            )),
            Some("queued") => self.note(&format!(
                "queued at position {} of {}; it starts as soon as the node can",
                output["position"], output["queued"]
            )),
            Some(event @ ("completed" | "failed" | "cancelled")) => self.terminal(event, message),
            _ if message["status"] == "error" => self.note(&format!(
                "error: {}",
                message["error"].as_str().unwrap_or("(no message)")
            )),
            _ => outln!("{}", pretty(output)),
        }
    }

    fn progress(&mut self, output: &Value) {
        let fraction = match (
            output["step"].as_f64(),
            output["total"].as_f64(),
            output["progress"].as_f64(),
        ) {
            (Some(step), Some(total), _) if total > 0.0 => Some((step, total)),
            (_, _, Some(p)) if (0.0..=1.0).contains(&p) => Some((p * 100.0, 100.0)),
            _ => None,
        };
        match fraction.filter(|_| self.terminal) {
            Some((position, length)) => {
                let bar = self.bar.get_or_insert_with(|| {
                    let bar = ProgressBar::new(length as u64);
                    bar.set_style(
                        ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar
                });
                bar.set_length(length as u64);
                bar.set_position(position as u64);
                if let Some(text) = output["message"].as_str() {
                    bar.set_message(text.to_owned());
                }
            }
            None => self.note(&format!("progress: {output}")),
        }
    }

    fn terminal(&mut self, event: &str, message: &Value) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let output = &message["output"];
        let seconds = output["duration_seconds"].as_f64().unwrap_or(0.0);
        let how = match (output["exit_code"].as_i64(), output["signal"].as_str()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by {signal}"),
            _ => "no exit status".to_owned(),
        };
        let mut line = format!("{event} after {seconds:.2} s ({how})");
        if let Some(error) = message["error"].as_str() {
            line.push_str(&format!(": {error}"));
        }
        self.note(&line);
        if !output["result"].is_null() {
            outln!("{}", pretty(&output["result"]));
        }
    }

    fn above_bar(&self, print: impl FnOnce()) {
        match &self.bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}
