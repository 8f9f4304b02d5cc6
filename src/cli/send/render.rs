//! How `send` shows what comes back: raw JSON lines with `--json`; for a
//! person, results on stdout, the story (started, progress, how it ended) on
//! stderr, live output on the stream it came from, progress as a bar when
//! stderr is a terminal, floats rounded, and `status` as a short summary.
//!
//! Live output is placed by its byte offset: a chunk that comes twice, or
//! that overlaps what an attach printed from the node's tail, is printed
//! once.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::summary::{human_seconds, rounded, status_summary};
use super::SendRequest;
use crate::cli::output::{out, outln};

/// The last lines of a failed workload's stderr that `--wait done` shows.
const STDERR_LINES: usize = 20;

pub struct Renderer {
    json: bool,
    terminal: bool,
    bar: Option<ProgressBar>,
    command: String,
    request_id: String,
    follow_logs: bool,
    /// `--wait done`: the started line need not say how to wait.
    waits_for_end: bool,
    reattach_flags: String,
    /// Per stream, the byte offset up to which output was printed.
    printed: HashMap<String, u64>,
}

impl Renderer {
    pub fn new(request: &SendRequest, request_id: &str) -> Renderer {
        Renderer {
            json: request.json,
            terminal: std::io::stderr().is_terminal(),
            bar: None,
            command: request.command.clone(),
            request_id: request_id.to_owned(),
            follow_logs: request.follow_logs,
            waits_for_end: request.wait == super::Wait::Done || request.command == "wait",
            reattach_flags: request.reattach_flags.clone(),
            printed: HashMap::new(),
        }
    }

    /// A remark for a person (nothing in `--json` mode).
    pub fn note(&self, text: &str) {
        if !self.json {
            self.above_bar(|| eprintln!("{text}"));
        }
    }

    /// Ctrl-C's message: on stderr in every mode.
    pub fn interrupted(&mut self, text: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!("{text}");
    }

    /// A logs-topic message, printed from where the output printed so far
    /// ends.
    pub fn log(&mut self, message: &Value) {
        if self.json {
            outln!("{message}");
            return;
        }
        let stream = message["stream"].as_str().unwrap_or("stdout").to_owned();
        let data = message["data"].as_str().unwrap_or("");
        let text = match message["offset"].as_u64() {
            Some(offset) => {
                let printed = self.printed.entry(stream.clone()).or_insert(offset);
                let end = offset + data.len() as u64;
                let skip = printed.saturating_sub(offset) as usize;
                *printed = (*printed).max(end);
                match data.get(skip.min(data.len())..) {
                    Some(rest) => rest,
                    None => data, // not on a character boundary: print it whole
                }
            }
            None => data,
        };
        self.write(&stream, text);
    }

    fn write(&self, stream: &str, text: &str) {
        if text.is_empty() {
            return;
        }
        self.above_bar(|| {
            if stream == "stderr" {
                let _ = std::io::stderr().write_all(text.as_bytes());
            } else {
                crate::cli::output::write_stdout(text.as_bytes());
            }
        });
    }

    /// `send wait`: where the workload stands, and with `--follow-logs` its
    /// output so far.
    pub fn attached(&mut self, view: &Value, follow_logs: bool) {
        if self.json {
            outln!("{view}");
            return;
        }
        let (kind, state) = (
            view["type"].as_str().unwrap_or("workload"),
            view["state"].as_str().unwrap_or("?"),
        );
        let mut line = format!("attached to {kind} {}: {state}", self.request_id);
        if let Some(pid) = view["pid"].as_i64() {
            line.push_str(&format!(" (pid {pid})"));
        }
        if let (Some(seconds), true) = (
            view["running_for_seconds"].as_f64(),
            view["event"].is_null(),
        ) {
            line.push_str(&format!(", started {} ago", human_seconds(seconds)));
        }
        if let Some(position) = view["position"].as_u64() {
            line.push_str(&format!(", position {position} in the queue"));
        }
        self.note(&line);
        if follow_logs {
            self.missed_output(view);
        }
    }

    /// Prints what the node's tail of each log (in a `status` workload
    /// view) holds past what was printed: the output so far on attach, or
    /// what went by while the link was down.
    pub fn missed_output(&mut self, view: &Value) {
        if self.json {
            return;
        }
        for stream in ["stdout", "stderr"] {
            let tail = view[format!("{stream}_tail")].as_str().unwrap_or("");
            let Some(end) = view[format!("{stream}_bytes")].as_u64() else {
                continue;
            };
            let start = end.saturating_sub(tail.len() as u64);
            let from = self
                .printed
                .get(stream)
                .copied()
                .unwrap_or(start)
                .max(start);
            let skip = (from - start) as usize;
            if let Some(rest) = tail.get(skip.min(tail.len())..) {
                self.write(stream, rest);
            }
            self.printed.insert(stream.to_owned(), end.max(from));
        }
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
            Some("started") => self.started(output),
            Some("queued") => self.note(&format!(
                "queued {} at position {} of {}; it starts as soon as the node can",
                self.request_id, output["position"], output["queued"]
            )),
            Some(event @ ("completed" | "failed" | "cancelled")) => self.terminal(event, message),
            _ if message["status"] == "error" => self.note(&format!(
                "error: {}",
                message["error"].as_str().unwrap_or("(no message)")
            )),
            _ => match self.command.as_str() {
                "status" => out!("{}", status_summary(output)),
                "cancel" => self.note(&format!(
                    "{} ({} {}); its end follows on its own request_id",
                    output["message"].as_str().unwrap_or("cancelled"),
                    output["workload_type"].as_str().unwrap_or("workload"),
                    output["workload_request_id"].as_str().unwrap_or("?")
                )),
                _ => outln!("{}", pretty(output)),
            },
        }
    }

    fn started(&self, output: &Value) {
        let exe = "cyberwave-cloud-node";
        // A deploy's started event has no workload_type: its process is a
        // model server.
        let kind = match output["workload_type"].as_str() {
            Some(kind) => kind,
            None if output["deployment_id"].is_string() => "model server",
            None => "workload",
        };
        let mut line = format!(
            "started {kind} {} (pid {}); logs: {}",
            self.request_id,
            output["pid"],
            output["stdout_log"].as_str().unwrap_or("?")
        );
        if !self.waits_for_end {
            line.push_str(&format!(
                "\nfollow it: {exe} send wait {} --follow-logs{}",
                self.request_id, self.reattach_flags
            ));
        }
        self.note(&line);
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
            None => self.note(&format!("progress: {}", rounded(output))),
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
        let stderr_tail = output["stderr_tail"].as_str().unwrap_or("");
        if event == "failed" && !self.follow_logs && !stderr_tail.trim().is_empty() {
            let lines: Vec<&str> = stderr_tail.lines().collect();
            let last = &lines[lines.len().saturating_sub(STDERR_LINES)..];
            self.note(&format!(
                "stderr (last {} lines):\n{}",
                last.len(),
                last.join("\n")
            ));
        }
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
    let value = rounded(value);
    serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
}
