//! `run-model`: the ONNX runner in-process, on the committed fixture models
//! of `tests/fixtures/models/` (see `make_models.py` there for what each one
//! computes). ONNX Runtime comes from the machine's Python `onnxruntime`
//! package, found the way a user's node finds it.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use common::Node;
use serde_json::{json, Value};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Runs `run-model` with `args`; returns (exit ok, stdout, stderr).
fn run_model(args: &[&str]) -> (bool, String, String) {
    run_model_with(Node::new(), args)
}

fn run_model_with(node: Node, args: &[&str]) -> (bool, String, String) {
    let (status, stdout, stderr) = node
        .arg("run-model")
        .args(args.iter().copied())
        .run_to_exit(Duration::from_secs(30));
    (status.success(), stdout, stderr)
}

fn run_json(args: &[&str]) -> Value {
    let (ok, stdout, stderr) = run_model(args);
    assert!(ok, "run-model {args:?} failed:\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn tensor(dtype: &str, shape: &[usize], data: Value) -> Value {
    json!({"dtype": dtype, "shape": shape, "data": data})
}

#[test]
fn add_matmul_computes_the_right_numbers() {
    let request = json!({"inputs": {"x": tensor("float32", &[1, 4], json!([1, 2, 3, 4]))}});
    let out = run_json(&[
        "--model",
        &fixture("add_matmul.onnx"),
        "--input",
        &request.to_string(),
    ]);
    assert_eq!(
        out["outputs"]["y"],
        tensor("float32", &[1, 3], json!([70.5, 79.0, 92.0])),
        "{out}"
    );
    assert_eq!(out["format"], "onnx");
    assert!(out["run_ms"].as_f64().unwrap() > 0.0, "{out}");
}

#[test]
fn info_shows_dynamic_dims_by_name() {
    let info = run_json(&["--model", &fixture("dynamic_batch.onnx"), "--info"]);
    assert_eq!(
        info["input_specs"],
        json!([{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]),
        "{info}"
    );
    assert_eq!(
        info["output_specs"][0]["shape"],
        json!(["batch", 2]),
        "{info}"
    );
    assert!(info["memory_bytes"].as_u64().unwrap() > 0, "{info}");
}

#[test]
fn a_dynamic_batch_takes_any_number_of_rows() {
    for (rows, expected) in [
        (json!([[1, 2, 3, 4]]), json!([10.0, 0.0])),
        (
            json!([[1, 2, 3, 4], [-1, -2, -3, -4], [0.5, 0.5, 0, 0]]),
            json!([10.0, 0.0, 0.0, 10.0, 1.0, 0.0]),
        ),
    ] {
        let n = rows.as_array().unwrap().len();
        let request = json!({"inputs": {"x": tensor("float32", &[n, 4], rows)}});
        let out = run_json(&[
            "--model",
            &fixture("dynamic_batch.onnx"),
            "--input",
            &request.to_string(),
        ]);
        assert_eq!(
            out["outputs"]["y"],
            tensor("float32", &[n, 2], expected),
            "{out}"
        );
    }
}

#[test]
fn several_inputs_and_outputs_from_a_request_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("request.json");
    let request = json!({"inputs": {
        "a": tensor("float32", &[2, 3], json!([[1, 2, 3], [4, 5, 6]])),
        "b": tensor("float32", &[2, 3], json!([[0.5, 2, 4], [-1, 5.5, 1]])),
        "k": tensor("int64", &[2], json!([3, -7])),
    }});
    std::fs::write(&file, request.to_string()).unwrap();
    let out = run_json(&[
        "--model",
        &fixture("multi_io.onnx"),
        "--input",
        &format!("@{}", file.display()),
    ]);
    let outputs = &out["outputs"];
    assert_eq!(
        outputs["sum"],
        tensor("float32", &[2, 3], json!([1.5, 4.0, 7.0, 3.0, 10.5, 7.0])),
        "{out}"
    );
    assert_eq!(
        outputs["prod"],
        tensor("float32", &[2, 3], json!([0.5, 4.0, 12.0, -4.0, 27.5, 6.0]))
    );
    assert_eq!(outputs["k2"], tensor("int64", &[2], json!([6, -14])));
    assert_eq!(
        outputs["pos"],
        tensor(
            "bool",
            &[2, 3],
            json!([true, false, false, true, false, true])
        )
    );
}

#[test]
fn every_dtype_goes_through_unchanged_in_json_and_base64() {
    let samples = [
        ("float32", json!([-1.5, 0.0, 3.25])),
        ("float16", json!([-1.5, 0.0, 3.25])),
        ("float64", json!([-1.5, 0.0, 3.25])),
        ("int8", json!([-128, 0, 127])),
        ("int32", json!([-2147483648i64, -1, 2147483647])),
        ("int64", json!([i64::MIN, -1, i64::MAX])),
        ("uint8", json!([0, 127, 255])),
        ("bool", json!([true, false, true])),
    ];
    let inputs: serde_json::Map<String, Value> = samples
        .iter()
        .map(|(dtype, data)| (format!("in_{dtype}"), tensor(dtype, &[3], data.clone())))
        .collect();
    let out = run_json(&[
        "--model",
        &fixture("dtypes.onnx"),
        "--input",
        &json!({"inputs": inputs}).to_string(),
    ]);
    for (dtype, data) in &samples {
        assert_eq!(
            out["outputs"][format!("out_{dtype}")],
            tensor(dtype, &[3], data.clone()),
            "{dtype}: {out}"
        );
    }
    // The same tensors as data_b64, with base64 outputs.
    let b64 = base64::engine::general_purpose::STANDARD;
    let raw = json!({"dtype": "int32", "shape": [3], "data_b64": b64.encode([1i32, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())});
    let mut inputs = inputs;
    inputs.insert("in_int32".into(), raw.clone());
    let request = json!({"inputs": inputs, "output_encoding": "base64"});
    let out = run_json(&[
        "--model",
        &fixture("dtypes.onnx"),
        "--input",
        &request.to_string(),
    ]);
    assert_eq!(out["outputs"]["out_int32"], raw, "{out}");
    let f32s = b64
        .decode(out["outputs"]["out_float32"]["data_b64"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        f32s,
        [-1.5f32, 0.0, 3.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
    );
}

#[test]
fn bad_requests_name_the_input_and_what_was_expected() {
    let x = |t: Value| json!({"inputs": {"x": t}}).to_string();
    let cases = [
        (
            json!({"inputs": {"z": tensor("float32", &[1, 4], json!([1, 2, 3, 4]))}}).to_string(),
            "unknown input 'z'; the model's inputs are x (float32 [1, 4])",
        ),
        (
            json!({"inputs": {}}).to_string(),
            "missing input 'x' (float32 [1, 4])",
        ),
        (
            x(tensor("int32", &[1, 4], json!([1, 2, 3, 4]))),
            "input 'x': expected float32 [1, 4], got int32 [1, 4]",
        ),
        (
            x(tensor("float32", &[1, 3], json!([1, 2, 3]))),
            "input 'x': expected float32 [1, 4], got float32 [1, 3]",
        ),
        (
            x(tensor("float32", &[1, 4], json!([1, "two", 3, 4]))),
            "input 'x': element 1 of \"data\": expected a number, got \"two\"",
        ),
        (
            x(tensor("float32", &[1, 4], json!([1, 2, 3]))),
            "\"data\" holds 3 elements; the shape needs 4",
        ),
        ("[1, 2]".to_owned(), "the request must be a JSON object"),
        ("{not json".to_owned(), "the request is not valid JSON"),
    ];
    for (request, expected) in cases {
        let (ok, _, stderr) =
            run_model(&["--model", &fixture("add_matmul.onnx"), "--input", &request]);
        assert!(!ok, "{request} should fail");
        assert!(
            stderr.contains(expected),
            "{request}: wanted {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn bad_model_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"this is not a model").unwrap();
    let truncated = dir.path().join("truncated.onnx");
    let whole = std::fs::read(fixture("multi_io.onnx")).unwrap();
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let gguf = dir.path().join("llm.onnx");
    std::fs::write(&gguf, b"GGUF\x03\x00\x00\x00").unwrap();
    let unknown = dir.path().join("model.bin");
    std::fs::write(&unknown, b"\x00\x01").unwrap();
    let cases = [
        (
            garbage.display().to_string(),
            "not an ONNX model, or it is truncated",
        ),
        (truncated.display().to_string(), "cannot load model"),
        (gguf.display().to_string(), "it is a gguf file, not ONNX"),
        (unknown.display().to_string(), "cannot tell the format"),
        (
            dir.path().join("absent.onnx").display().to_string(),
            "cannot open it",
        ),
    ];
    for (path, expected) in cases {
        let (ok, _, stderr) = run_model(&["--model", &path, "--info"]);
        assert!(!ok, "{path} should fail");
        assert!(
            stderr.contains(expected),
            "{path}: wanted {expected:?} in:\n{stderr}"
        );
    }
    let (ok, _, stderr) = run_model(&[
        "--model",
        &fixture("add_matmul.onnx"),
        "--format",
        "gguf",
        "--info",
    ]);
    assert!(!ok);
    let expected = if cfg!(feature = "gguf") {
        "not a GGUF file"
    } else {
        "this build has no gguf runner"
    };
    assert!(stderr.contains(expected), "{stderr}");
}

#[test]
fn without_onnx_runtime_the_error_says_how_to_install_it() {
    let empty = tempfile::tempdir().unwrap();
    let node = Node::new().env_var("PATH", empty.path().to_str().unwrap());
    let (ok, _, stderr) = run_model_with(node, &["--model", &fixture("add_matmul.onnx"), "--info"]);
    assert!(!ok);
    assert!(stderr.contains("ONNX Runtime not found"), "{stderr}");
    assert!(
        stderr.contains("pip install onnxruntime==1.31.1"),
        "{stderr}"
    );

    let not_a_library = empty.path().join("libonnxruntime.so");
    std::fs::write(&not_a_library, b"nope").unwrap();
    let node = Node::new().env_var("ORT_DYLIB_PATH", not_a_library.to_str().unwrap());
    let (ok, _, stderr) = run_model_with(node, &["--model", &fixture("add_matmul.onnx"), "--info"]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "ONNX Runtime at {} does not load",
            not_a_library.display()
        )),
        "{stderr}"
    );
}

#[test]
fn list_formats_tells_what_this_build_runs() {
    let listed = run_json(&["--list-formats"]);
    let formats = listed["formats"].as_array().unwrap();
    let onnx = formats.iter().find(|f| f["format"] == "onnx").unwrap();
    assert_eq!(onnx["built"], true, "{listed}");
    assert_eq!(onnx["runtime_loads"], true, "{listed}");
    assert!(
        onnx["runtime"]
            .as_str()
            .unwrap()
            .starts_with("ONNX Runtime 1."),
        "{listed}"
    );
    for (name, built) in [
        ("gguf", cfg!(feature = "gguf")),
        ("torchscript", cfg!(feature = "torch")),
    ] {
        let format = formats.iter().find(|f| f["format"] == name).unwrap();
        assert_eq!(format["built"], built, "{listed}");
        assert_eq!(format["runtime_loads"], built, "{listed}");
    }
}

#[test]
fn repeated_runs_report_percentiles() {
    let request = json!({"inputs": {"x": tensor("float32", &[1, 4], json!([1, 2, 3, 4]))}});
    let out = run_json(&[
        "--model",
        &fixture("add_matmul.onnx"),
        "--input",
        &request.to_string(),
        "--runs",
        "20",
        "--warmup",
        "2",
        "--option",
        "intra_op_threads=1",
    ]);
    for part in ["infer", "run"] {
        let runs = &out["runs"][part];
        assert_eq!(runs["count"], 20, "{out}");
        assert!(
            runs["p50_ms"].as_f64().unwrap() <= runs["p95_ms"].as_f64().unwrap(),
            "{out}"
        );
    }
    let (infer, run) = (
        &out["runs"]["infer"]["min_ms"],
        &out["runs"]["run"]["min_ms"],
    );
    assert!(
        run.as_f64().unwrap() <= infer.as_f64().unwrap(),
        "the run is part of the request: {out}"
    );
    let (ok, _, stderr) = run_model(&[
        "--model",
        &fixture("add_matmul.onnx"),
        "--info",
        "--option",
        "threads=2",
    ]);
    assert!(!ok);
    assert!(stderr.contains("unknown option \"threads\""), "{stderr}");
}

#[test]
fn the_request_comes_from_stdin_with_a_dash_and_times_are_rounded() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let home = tempfile::tempdir().unwrap();
    let request = json!({"inputs": {"x": tensor("float32", &[1, 4], json!([1, 2, 3, 4]))}});
    for dash in ["-", "@-"] {
        let mut child = Command::new(common::node::NODE_BIN)
            .args([
                "run-model",
                "--model",
                &fixture("add_matmul.onnx"),
                "--input",
                dash,
            ])
            .env_clear()
            .env("HOME", home.path())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(request.to_string().as_bytes()).unwrap();
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "--input {dash}: {stderr}");
        let out: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            out["outputs"]["y"]["data"],
            json!([70.5, 79.0, 92.0]),
            "{out}"
        );
        // 0.1 ms, or 3 significant digits below 10 ms: never 455.68897499999997.
        for key in ["load_ms", "run_ms"] {
            let text = out[key].to_string();
            let decimals = text.split('.').nth(1).map_or(0, str::len);
            assert!(decimals <= 4, "{key}: {text}");
        }
    }
}

/// `--input -` reads at most its limit: an endless stdin is refused with
/// the size, not read until memory runs out.
#[test]
fn an_endless_stdin_request_is_refused_at_the_limit() {
    use std::process::{Command, Stdio};
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(common::node::NODE_BIN)
        .args([
            "run-model",
            "--model",
            &fixture("add_matmul.onnx"),
            "--input",
            "-",
        ])
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::from(std::fs::File::open("/dev/zero").unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("the request from stdin is larger than 256 MiB"),
        "{stderr}"
    );
}
