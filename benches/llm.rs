//! `cargo bench --bench llm --features gguf,torch`: the GGUF and TorchScript
//! runners against their own runtimes, in one run. Prints figures; asserts
//! nothing. Needs python3 with `gguf` and `numpy`, and a python with torch
//! matching the LibTorch the build links (Debian: /usr/bin/python3 with
//! python3-torch); `BENCH_TORCH_PYTHON` names another.
//!
//! GGUF: a llama-architecture model of about 110 M parameters with random
//! weights (`tests/fixtures/gguf/make_gguf.py --size bench`), as F16 and as
//! Q8_0. Prompt processing (a 128-token prompt) and generation (64 tokens,
//! greedy, `ignore_eos`, from a nearly empty context) tokens per second of
//! `run-model`, against `benches/llama_ref.c`, which measures them the way
//! llama-bench does, linked against the same llama.cpp static libraries;
//! same threads, same context size, medians of alternating rounds.
//! Target: ≥ 0.95× on both.
//!
//! TorchScript: an MLP (`make_torchscript.py --bench`) on a 32×256 input,
//! the runner's `forward` time (`run-model --runs`) against
//! `torch.jit.load(...)(x)` in Python, same threads. Target: within 5 %.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::node::run_ok;
use serde_json::{json, Value};

const THREADS: usize = 2;
const N_PROMPT: usize = 128;
const N_GEN: usize = 64;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!("cyberwave-cloud-node LLM and TorchScript benchmark ({THREADS} threads)");
    let reference = build_llama_ref(dir.path());
    for kind in ["f16", "q8_0"] {
        let model = dir.path().join(format!("bench-{kind}.gguf"));
        let script = root().join("tests/fixtures/gguf/make_gguf.py");
        run_ok(
            Command::new("python3")
                .arg(script)
                .arg(&model)
                .args(["--size", "bench", "--type", kind]),
        );
        bench_gguf(&reference, &model, kind);
    }
    bench_torch(dir.path());
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compiles `llama_ref.c` against the llama.cpp this bench binary links:
/// the newest llama-cpp-sys-2 build output of the bench profile.
fn build_llama_ref(dir: &Path) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
    let out = std::fs::read_dir(profile_dir.join("build"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("out"))
        .filter(|p| p.join("lib/libllama.a").exists())
        .max_by_key(|p| {
            std::fs::metadata(p.join("lib/libllama.a"))
                .and_then(|m| m.modified())
                .ok()
        })
        .expect("a llama-cpp-sys-2 build output (build with --features gguf)");
    let binary = dir.join("llama_ref");
    run_ok(
        Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&binary)
            .arg(root().join("benches/llama_ref.c"))
            .arg(format!("-I{}", out.join("include").display()))
            .arg(format!("-L{}", out.join("lib").display()))
            .args([
                "-lllama",
                "-lggml",
                "-lggml-cpu",
                "-lggml-base",
                "-lstdc++",
                "-lgomp",
                "-lm",
                "-lpthread",
            ]),
    );
    binary
}

fn bench_gguf(reference: &Path, model: &Path, kind: &str) {
    let size = std::fs::metadata(model).unwrap().len() / (1 << 20);
    // One byte token per character after <s>: N_PROMPT tokens for prompt
    // processing. Generation starts from a nearly empty context, as
    // llama-bench's `tg` test does (attention over a long context costs
    // more per token, and that is not what it measures).
    let long: String = "0123456789".chars().cycle().take(N_PROMPT - 1).collect();
    let (mut ours_pp, mut ours_tg, mut ref_pp, mut ref_tg) = (vec![], vec![], vec![], vec![]);
    let mut prompt_tokens = 0;
    // Alternating rounds, medians: the two sides see the same machine.
    for _ in 0..3 {
        let pp = run_model(
            model,
            &json!({"prompt": long, "max_tokens": 1, "temperature": 0, "ignore_eos": true}),
        );
        prompt_tokens = pp["prompt_tokens"].as_u64().unwrap() as usize;
        ours_pp.push(pp["prompt_tokens_per_second"].as_f64().unwrap());
        let tg = run_model(
            model,
            &json!({"prompt": "0", "max_tokens": N_GEN, "temperature": 0, "ignore_eos": true}),
        );
        assert_eq!(tg["completion_tokens"], N_GEN);
        ours_tg.push(tg["tokens_per_second"].as_f64().unwrap());
        let theirs: Value =
            serde_json::from_str(&run_ok(Command::new(reference).arg(model).args([
                prompt_tokens.to_string(),
                N_GEN.to_string(),
                THREADS.to_string(),
                "3".into(),
            ])))
            .unwrap();
        ref_pp.push(theirs["pp_tokens_per_second"].as_f64().unwrap());
        ref_tg.push(theirs["tg_tokens_per_second"].as_f64().unwrap());
    }
    let (our_pp, our_tg, ref_pp, ref_tg) = (
        median(ours_pp),
        median(ours_tg),
        median(ref_pp),
        median(ref_tg),
    );
    println!("\nGGUF {kind} ({size} MiB; prompt {prompt_tokens} tokens, {N_GEN} generated; medians of 3 alternating rounds)");
    println!("  prompt processing  runner {our_pp:8.1} tok/s   llama.cpp {ref_pp:8.1} tok/s   ratio {:.3} (target >= 0.95)", our_pp / ref_pp);
    println!("  generation         runner {our_tg:8.1} tok/s   llama.cpp {ref_tg:8.1} tok/s   ratio {:.3} (target >= 0.95)", our_tg / ref_tg);
}

/// `run-model` on `model`, 3 runs after a warm-up; the last run's output.
fn run_model(model: &Path, request: &Value) -> Value {
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_cyberwave-cloud-node"))
            .args(["run-model", "--model"])
            .arg(model)
            .args([
                "--input",
                &request.to_string(),
                "--runs",
                "3",
                "--warmup",
                "1",
            ])
            .args([
                "--option",
                &format!("n_threads={THREADS}"),
                "--option",
                "n_ctx=256",
            ]),
    );
    serde_json::from_str(&out).unwrap()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn bench_torch(dir: &Path) {
    let python = std::env::var("BENCH_TORCH_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    run_ok(
        Command::new(&python)
            .arg(root().join("tests/fixtures/torch/make_torchscript.py"))
            .arg(dir)
            .arg("--bench"),
    );
    let model = dir.join("mlp.pt");
    let input = dir.join("mlp.input.json");
    let script = format!(
        r#"
import base64, json, time, torch
torch.manual_seed(0)
torch.set_num_threads({THREADS})
x = torch.randn(32, 256)
json.dump({{"inputs": {{"x": {{"dtype": "float32", "shape": [32, 256], "data_b64": base64.b64encode(x.numpy().tobytes()).decode()}}}}}}, open({input:?}, "w"))
m = torch.jit.load({model:?})
m.eval()
times = []
with torch.no_grad():
    for i in range(520):
        t = time.perf_counter_ns(); m(x); times.append((time.perf_counter_ns() - t) / 1e6)
times = sorted(times[20:])
print(json.dumps({{"p50_ms": times[len(times) // 2], "p95_ms": times[int(len(times) * 0.95)]}}))
"#
    );
    let python_side: Value =
        serde_json::from_str(run_ok(Command::new(&python).args(["-c", &script])).trim()).unwrap();
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_cyberwave-cloud-node"))
            .args(["run-model", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(format!("@{}", input.display()))
            .args([
                "--runs",
                "500",
                "--warmup",
                "20",
                "--option",
                &format!("n_threads={THREADS}"),
            ]),
    );
    let ours: Value = serde_json::from_str(&out).unwrap();
    let (py50, py95) = (
        python_side["p50_ms"].as_f64().unwrap(),
        python_side["p95_ms"].as_f64().unwrap(),
    );
    let run = &ours["runs"]["run"];
    let (rs50, rs95) = (
        run["p50_ms"].as_f64().unwrap(),
        run["p95_ms"].as_f64().unwrap(),
    );
    println!("\nTorchScript MLP 256-512-512-10, input 32x256");
    println!("  python torch.jit.load(...)(x)  p50 {py50:7.3} ms  p95 {py95:7.3} ms");
    println!("  runner forward (run-model)     p50 {rs50:7.3} ms  p95 {rs95:7.3} ms  ({:+.1} % vs python p50; target within 5 %)", (rs50 / py50 - 1.0) * 100.0);
}
