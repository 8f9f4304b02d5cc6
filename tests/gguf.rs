//! The GGUF runner (feature `gguf`): the tiny random-weight llama model
//! committed as `tests/fixtures/gguf/tiny-llama.gguf` (made by
//! `make_gguf.py` there), through `run-model` and over MQTT. Its output is
//! gibberish, so the tests check what must hold whatever the text is:
//! greedy determinism, token counts, stop sequences cutting the text where
//! they appear, streamed pieces adding up to the final text.
#![cfg(feature = "gguf")]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::restart::{again, answer as ask, Reaper, ANSWER_TIMEOUT};
use common::scenario::{Scenario, READY};
use common::Node;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf")
}

fn model() -> String {
    fixtures()
        .join("tiny-llama.gguf")
        .to_string_lossy()
        .into_owned()
}

/// `run-model` on the tiny model; the last stdout line is the output.
fn run(request: Value) -> Result<(Vec<Value>, Value), String> {
    let (status, stdout, stderr) = Node::new()
        .args([
            "run-model",
            "--model",
            &model(),
            "--input",
            &request.to_string(),
        ])
        .run_to_exit(Duration::from_secs(30));
    if !status.success() {
        return Err(stderr);
    }
    let mut lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let output = lines.pop().expect("an output line");
    Ok((lines, output))
}

fn greedy(prompt: &str, max_tokens: usize) -> Value {
    run(json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}))
        .unwrap()
        .1
}

#[test]
fn greedy_generation_is_deterministic_and_exactly_max_tokens_long() {
    let first = greedy("hello world", 16);
    let second = greedy("hello world", 16);
    assert_eq!(first["text"], second["text"], "temperature 0 is greedy");
    assert_eq!(first["finish_reason"], "length", "{first}");
    assert_eq!(first["completion_tokens"], 16, "{first}");
    assert_eq!(first["prompt_tokens"], 3, "<s> ▁hello ▁world: {first}");
    assert!(
        first["tokens_per_second"].as_f64().unwrap() > 0.0,
        "{first}"
    );
    let info = Node::new()
        .args(["run-model", "--model", &model(), "--info"])
        .run_to_exit(Duration::from_secs(30));
    let info: Value = serde_json::from_str(&info.1).unwrap();
    assert_eq!(info["format"], "gguf");
    assert_eq!(info["details"]["n_ctx"], 256, "{info}");
    assert_eq!(info["details"]["chat_template"], true, "{info}");
}

#[test]
fn a_stop_sequence_ends_the_text_where_it_appears() {
    let full = greedy("hello world", 24)["text"]
        .as_str()
        .unwrap()
        .to_owned();
    // A stop taken from the middle of what the model says anyway.
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = &full[..full.find(&stop).unwrap()];
    let (_, out) = run(json!({"prompt": "hello world", "max_tokens": 24, "temperature": 0, "stop": ["never-appears", stop]})).unwrap();
    assert_eq!(out["text"], cut, "stop {stop:?} in {full:?}");
    assert_eq!(out["finish_reason"], "stop", "{out}");
    assert!(out["completion_tokens"].as_u64().unwrap() < 24, "{out}");
}

#[test]
fn streamed_pieces_add_up_to_the_text() {
    let (events, out) =
        run(json!({"prompt": "the world", "max_tokens": 40, "temperature": 0, "stream": true}))
            .unwrap();
    assert!(!events.is_empty(), "stream: true sends token events");
    let joined: String = events.iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(joined, out["text"].as_str().unwrap());
    assert!(events.iter().all(|e| e["event"] == "token"));
}

#[test]
fn chat_messages_are_rendered_with_the_model_template() {
    let (_, out) = run(json!({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0})).unwrap();
    // ChatML around both messages plus the assistant header is far longer
    // than the two words.
    assert!(out["prompt_tokens"].as_u64().unwrap() > 10, "{out}");
    assert_eq!(out["completion_tokens"], 4, "{out}");
}

#[test]
fn bad_requests_and_files_are_refused_with_the_numbers() {
    let long = "hello world ".repeat(200);
    let cases = [
        (json!({"prompt": ""}), "\"prompt\" is empty"),
        (
            json!({"prompt": "hi", "max_tokens": 0}),
            "\"max_tokens\" must be at least 1",
        ),
        (
            json!({"prompt": "hi", "max_tokens": 257}),
            "\"max_tokens\" 257 is more than the context of 256 tokens",
        ),
        (
            json!({"prompt": long, "max_tokens": 8}),
            "tokens and max_tokens 8: together more than the context of 256 tokens (n_ctx)",
        ),
        (json!({"messages": [{"role": "user"}]}), "message 0 must be"),
        (
            json!({"prompt": "hi", "temperature": -0.5}),
            "\"temperature\" must be 0 (greedy) or more",
        ),
    ];
    for (request, expected) in cases {
        let error = run(request.clone()).unwrap_err();
        assert!(
            error.contains(expected),
            "{request}: wanted {expected:?} in:\n{error}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let whole = std::fs::read(model()).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let not_gguf = dir.path().join("text.gguf");
    std::fs::write(&not_gguf, "just text").unwrap();
    for (path, expected) in [
        (&truncated, "model is corrupted or incomplete"),
        (&not_gguf, "not a GGUF file"),
    ] {
        let (status, _, stderr) = Node::new()
            .args(["run-model", "--model", path.to_str().unwrap(), "--info"])
            .run_to_exit(Duration::from_secs(30));
        assert!(!status.success());
        assert!(stderr.contains(expected), "{}: {stderr}", path.display());
    }
}

// ---------------------------------------------------------------------------
// Over MQTT

fn deploy_llm(s: &Scenario, reaper: &Reaper) {
    let started = ask(
        s,
        &s.node,
        "deploy-llm",
        json!({"command": "deploy", "params": {"model": "tiny-llama.gguf", "deployment_id": "llm", "options": {"n_threads": 1}}}),
    );
    assert_eq!(started["event"], "started", "{started}");
    reaper.add(started["output"]["pid"].as_i64().unwrap() as i32);
    let ready = s
        .client
        .recv_json_where(Duration::from_secs(30), |_, v| {
            v["request_id"] == "deploy-llm" && v["event"] != "started"
        })
        .unwrap_or_else(|| panic!("no ready: {}", s.node.stderr()));
    assert_eq!(ready["event"], "ready", "{ready}");
    assert_eq!(ready["output"]["format"], "gguf");
}

#[test]
fn deployed_model_streams_tokens_and_survives_a_node_restart() {
    let s = Scenario::start(|n| n.env_var("CYBERWAVE_MODEL_ROOTS", fixtures().to_str().unwrap()));
    let reaper = Reaper::new(&s);
    deploy_llm(&s, &reaper);
    let request = json!({"command": "infer", "params": {"deployment_id": "llm", "prompt": "hello world", "max_tokens": 16, "temperature": 0, "stream": true}});
    s.client.publish_json(&s.topic(&s.uuid, "command"), &{
        let mut r = request.clone();
        r["request_id"] = json!("gen-1");
        r
    });
    let mut pieces = String::new();
    let answer = loop {
        let v = s
            .client
            .recv_json_where(ANSWER_TIMEOUT, |_, v| v["request_id"] == "gen-1")
            .unwrap_or_else(|| panic!("no answer: {}", s.node.stderr()));
        match v["event"].as_str() {
            Some("token") => pieces.push_str(v["output"]["text"].as_str().unwrap()),
            _ => break v,
        }
    };
    assert_eq!(answer["status"], "ok", "{answer}");
    let text = answer["output"]["text"].as_str().unwrap().to_owned();
    assert_eq!(pieces, text, "the token events add up to the text");
    assert_eq!(answer["output"]["completion_tokens"], 16);
    assert_eq!(
        text,
        greedy("hello world", 16)["text"],
        "the deployment generates what run-model does"
    );

    s.node.signal(Signal::SIGTERM);
    assert!(
        s.node.wait_exit(Duration::from_secs(5)).is_some(),
        "{}",
        s.node.stderr()
    );
    let node = again(&s, "true")
        .env_var("CYBERWAVE_MODEL_ROOTS", fixtures().to_str().unwrap())
        .spawn();
    assert!(
        node.wait_for_log(READY, Duration::from_secs(10)),
        "{}",
        node.stderr()
    );
    let mut request = request;
    request["params"]["stream"] = json!(false);
    let after = ask(&s, &node, "gen-2", request);
    assert_eq!(
        after["output"]["text"],
        text.as_str(),
        "greedy output is the same after the restart: {after}"
    );
    let bad = ask(
        &s,
        &node,
        "gen-3",
        json!({"command": "infer", "params": {"deployment_id": "llm", "prompt": "", "max_tokens": 4}}),
    );
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("\"prompt\" is empty"),
        "{bad}"
    );
    let still = ask(
        &s,
        &node,
        "gen-4",
        json!({"command": "infer", "params": {"deployment_id": "llm", "prompt": "hi", "max_tokens": 2}}),
    );
    assert_eq!(still["status"], "ok", "{still}");
}

/// `gpu_layers` on a build without a GPU backend (CI's): refused, saying
/// why and how to allow the CPU; with `allow_cpu_fallback` it runs and warns
/// on stderr (issue 13: never a silent CPU fallback).
#[test]
fn gpu_layers_without_a_gpu_backend_fail_unless_the_cpu_is_allowed() {
    let request = json!({"prompt": "a", "max_tokens": 2, "temperature": 0}).to_string();
    let model = model();
    let run_with = |extra: &[&str]| {
        let mut args = vec![
            "run-model",
            "--model",
            model.as_str(),
            "--option",
            "gpu_layers=4",
        ];
        args.extend(["--input", request.as_str()]);
        for option in extra {
            args.extend(["--option", *option]);
        }
        Node::new().args(args).run_to_exit(Duration::from_secs(30))
    };
    let (status, _, stderr) = run_with(&[]);
    assert!(!status.success(), "a CPU run was not asked for:\n{stderr}");
    assert!(
        stderr.contains("no GPU backend") && stderr.contains("allow_cpu_fallback"),
        "{stderr}"
    );
    let (status, stdout, stderr) = run_with(&["allow_cpu_fallback=true"]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("\"text\""), "{stdout}");
    assert!(
        stderr.contains("warning: gpu_layers 4 asked for") && stderr.contains("running on the CPU"),
        "{stderr}"
    );
}
