//! The TorchScript runner (feature `torch`): the tiny modules committed in
//! `tests/fixtures/torch/` (made by `make_torchscript.py` there with
//! Debian's torch 1.13, the LibTorch the runner links), through `run-model`
//! and a deployment over MQTT, with numeric checks.
#![cfg(feature = "torch")]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::restart::{answer as ask, Reaper};
use common::scenario::Scenario;
use common::Node;
use serde_json::{json, Value};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn tensor(shape: &[usize], data: Value) -> Value {
    json!({"dtype": "float32", "shape": shape, "data": data})
}

fn run(model: &str, request: Value) -> Result<Value, String> {
    let (status, stdout, stderr) = Node::new()
        .args([
            "run-model",
            "--model",
            &fixture(model),
            "--input",
            &request.to_string(),
        ])
        .run_to_exit(Duration::from_secs(30));
    if status.success() {
        Ok(serde_json::from_str(&stdout).unwrap())
    } else {
        Err(stderr)
    }
}

#[test]
fn single_input_module() {
    let out = run(
        "single.pt",
        json!({"inputs": {"x": tensor(&[1, 4], json!([1.5, -2, 0, 3]))}}),
    )
    .unwrap();
    assert_eq!(
        out["outputs"]["output"],
        tensor(&[1, 4], json!([4.0, -3.0, 1.0, 7.0])),
        "{out}"
    );
    assert_eq!(out["format"], "torchscript");
}

#[test]
fn two_inputs_in_the_order_given() {
    let a = tensor(&[2, 3], json!([[1, 2, 3], [4, 5, 6]]));
    let b = tensor(&[3, 2], json!([[1, 0], [0, 1], [1, 1]]));
    let out = run(
        "two_inputs.pt",
        json!({"inputs": {"b": b, "a": a}, "input_order": ["a", "b"]}),
    )
    .unwrap();
    assert_eq!(
        out["outputs"]["output"],
        tensor(&[2, 2], json!([5.0, 6.0, 11.0, 12.0])),
        "{out}"
    );
}

#[test]
fn tuple_outputs_come_back_numbered() {
    let out = run("tuple_out.pt", json!({"inputs": {"x": tensor(&[2, 3], json!([1, 2, 3, 4, 5, 6]))}, "output_encoding": "json"})).unwrap();
    assert_eq!(
        out["outputs"]["output_0"],
        tensor(&[2, 3], json!([2.0, 3.0, 4.0, 5.0, 6.0, 7.0])),
        "{out}"
    );
    assert_eq!(
        out["outputs"]["output_1"],
        tensor(&[2], json!([6.0, 15.0])),
        "{out}"
    );
}

#[test]
fn bad_inputs_and_files_are_refused_clearly() {
    let a = tensor(&[2, 3], json!([1, 2, 3, 4, 5, 6]));
    let cases = [
        (
            "two_inputs.pt",
            json!({"inputs": {"a": a.clone(), "b": tensor(&[2, 2], json!([1, 0, 0, 1]))}, "input_order": ["a", "b"]}),
            "forward failed: RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x3 and 2x2)",
        ),
        (
            "two_inputs.pt",
            json!({"inputs": {"a": a.clone(), "b": a.clone()}}),
            "2 inputs: give \"input_order\"",
        ),
        (
            "two_inputs.pt",
            json!({"inputs": {"a": a.clone(), "b": a.clone()}, "input_order": ["a", "c"]}),
            "\"input_order\" names 'c', which is not in \"inputs\"",
        ),
        (
            "single.pt",
            json!({"inputs": {"x": tensor(&[1, 4], json!([1, 2, 3]))}}),
            "input 'x': \"data\" holds 3 elements; the shape needs 4",
        ),
    ];
    for (model, request, expected) in cases {
        let error = run(model, request.clone()).unwrap_err();
        assert!(
            error.contains(expected),
            "{request}: wanted {expected:?} in:\n{error}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let whole = std::fs::read(fixture("single.pt")).unwrap();
    let truncated = dir.path().join("truncated.pt");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let not_torch = dir.path().join("weights.pt");
    std::fs::write(&not_torch, "plain text").unwrap();
    for (path, expected) in [
        (&truncated, "LibTorch cannot load it"),
        (&not_torch, "not a TorchScript archive"),
    ] {
        let (status, _, stderr) = Node::new()
            .args(["run-model", "--model", path.to_str().unwrap(), "--info"])
            .run_to_exit(Duration::from_secs(30));
        assert!(!status.success());
        assert!(stderr.contains(expected), "{}: {stderr}", path.display());
    }
}

#[test]
fn deployed_module_answers_over_mqtt_and_survives_a_bad_request() {
    let s = Scenario::start(|n| {
        n.env_var(
            "CYBERWAVE_MODEL_ROOTS",
            PathBuf::from(fixture("")).to_str().unwrap(),
        )
    });
    let reaper = Reaper::new(&s);
    let started = ask(
        &s,
        &s.node,
        "deploy-pt",
        json!({"command": "deploy", "params": {"model": "two_inputs.pt", "deployment_id": "mm"}}),
    );
    assert_eq!(started["event"], "started", "{started}");
    reaper.add(started["output"]["pid"].as_i64().unwrap() as i32);
    let ready = s
        .client
        .recv_json_where(Duration::from_secs(30), |_, v| {
            v["request_id"] == "deploy-pt"
        })
        .unwrap();
    assert_eq!(ready["event"], "ready", "{ready}");
    assert_eq!(ready["output"]["format"], "torchscript");
    let a = tensor(&[2, 3], json!([1, 2, 3, 4, 5, 6]));
    let bad = ask(
        &s,
        &s.node,
        "mm-bad",
        json!({"command": "infer", "params": {"deployment_id": "mm", "inputs": {"a": a.clone(), "b": a.clone()}, "input_order": ["a", "b"]}}),
    );
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("mat1 and mat2 shapes cannot be multiplied"),
        "{bad}"
    );
    let good = ask(
        &s,
        &s.node,
        "mm-good",
        json!({"command": "infer", "params": {"deployment_id": "mm", "inputs": {"a": a, "b": tensor(&[3, 2], json!([1, 0, 0, 1, 1, 1]))}, "input_order": ["a", "b"]}}),
    );
    assert_eq!(
        good["output"]["outputs"]["output"]["data"],
        json!([5.0, 6.0, 11.0, 12.0]),
        "{good}"
    );
}

/// `device: cuda` where LibTorch sees no CUDA device (Debian's LibTorch is
/// CPU-only): refused, saying why; with `allow_cpu_fallback` it runs on the
/// CPU and warns (issue 13: never a silent CPU fallback).
#[test]
fn cuda_without_a_cuda_device_fails_unless_the_cpu_is_allowed() {
    let request = json!({"inputs": {"x": tensor(&[1, 4], json!([1.5, -2, 0, 3]))}}).to_string();
    let model = fixture("single.pt");
    let run_with = |extra: &[&str]| {
        let mut args = vec![
            "run-model",
            "--model",
            model.as_str(),
            "--option",
            "device=cuda",
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
        stderr.contains("sees no CUDA device") && stderr.contains("allow_cpu_fallback"),
        "{stderr}"
    );
    let (status, _, stderr) = run_with(&["allow_cpu_fallback=true"]);
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: device cuda asked for"),
        "{stderr}"
    );
}
