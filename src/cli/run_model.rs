//! `cyberwave-cloud-node run-model`: load a model and run it once, in this
//! process, without a node or a broker. What an operator uses to check a
//! model before deploying it, and what the benchmarks time.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Map, Value};

use super::output::outln;
use crate::config::{Environment, Overrides, Settings};
use crate::protocol::round::millis;
use crate::runners::{format_support, load, RuntimePaths};

pub const RUN_MODEL_HELP: &str = "\
INPUT
  The request, as `infer` takes it. ONNX and TorchScript: the tensors by input name,
    {\"inputs\": {\"x\": {\"dtype\": \"float32\", \"shape\": [1, 4], \"data\": [1, 2, 3, 4]}}}
  \"data_b64\" (little-endian raw bytes) may replace \"data\"; add
  \"output_encoding\": \"base64\" to get outputs that way too. Dtypes: float32,
  float16, float64, int8, int32, int64, uint8, bool. TorchScript takes
  \"input_order\": [...] for several inputs. GGUF: a prompt or chat messages,
    {\"prompt\": \"Once upon\", \"max_tokens\": 32, \"temperature\": 0, \"stop\": [\"\\n\"]}
    {\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"stream\": true}
  (streamed pieces are printed as {\"event\": \"token\", \"text\"} lines first).

ONNX RUNTIME
  The ONNX runner loads libonnxruntime.so at run time, from ORT_DYLIB_PATH,
  the onnxruntime_path setting, or Python's onnxruntime package:
    pip install onnxruntime==1.31.1      (onnxruntime-gpu for CUDA)

EXAMPLES
  cyberwave-cloud-node run-model --model model.onnx --info
  cyberwave-cloud-node run-model --model model.onnx --input @request.json
  cyberwave-cloud-node run-model --model model.onnx --input @request.json --runs 100 --option intra_op_threads=2
  cyberwave-cloud-node run-model --list-formats";

/// `run-model`'s flags.
#[derive(Debug, Args)]
pub struct RunModelArgs {
    /// The model file (.onnx, .gguf, .pt)
    #[arg(long, value_name = "PATH", required_unless_present = "list_formats")]
    model: Option<PathBuf>,
    /// The format: onnx, gguf, torchscript [default: from the extension or the file's first bytes]
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
    /// The request: JSON, @FILE to read it from a file, or - (or @-) to read it from stdin
    #[arg(long, value_name = "JSON|@FILE|-")]
    input: Option<String>,
    /// Print the model's inputs, outputs and memory use instead of running it
    #[arg(long)]
    info: bool,
    /// A runner option, KEY=VALUE (repeatable): intra_op_threads=2,
    /// graph_optimization_level=all, execution_provider=cuda, ...
    #[arg(long = "option", value_name = "KEY=VALUE")]
    options: Vec<String>,
    /// Run this many times and report run-time percentiles (the outputs are the last run's)
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Untimed runs before the timed ones
    #[arg(long, value_name = "N", default_value_t = 0)]
    warmup: u32,
    /// List the model formats this build supports and whether each runtime loads here
    #[arg(long)]
    list_formats: bool,
    /// Path to cyberwave.yml, for the onnxruntime_path setting
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub fn run(args: &RunModelArgs) -> anyhow::Result<()> {
    let runtimes = runtime_paths(args.config.clone());
    if args.list_formats {
        let formats = format_support(&runtimes);
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({ "formats": formats }))?
        );
        return Ok(());
    }
    let path = args.model.as_ref().expect("clap requires --model");
    let options = parse_options(&args.options)?;
    let model = load(path, args.format.as_deref(), &options, &[], &runtimes)?;
    for warning in &model.warnings {
        eprintln!("warning: {warning}");
    }
    if args.info {
        outln!("{}", serde_json::to_string_pretty(&model.describe())?);
        return Ok(());
    }
    let Some(input) = &args.input else {
        bail!(
            "give --input with the request JSON (or @FILE), or --info to see what the model takes"
        );
    };
    let request = read_request(input)?;
    // Streamed pieces (GGUF with "stream": true) go out as JSON lines
    // before the output, as `token` events do over MQTT.
    let mut print_event = |event: Value| {
        let mut line = json!({"event": "token"});
        if let (Value::Object(line), Value::Object(event)) = (&mut line, event) {
            line.extend(event);
        }
        outln!("{line}");
    };
    for _ in 0..args.warmup {
        model.runner.infer(&request, &mut |_| {})?;
    }
    let mut times = Vec::with_capacity(args.runs as usize);
    let mut run_times = Vec::with_capacity(args.runs as usize);
    let mut output = Value::Null;
    for _ in 0..args.runs {
        let started = Instant::now();
        output = model.runner.infer(&request, &mut print_event)?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        run_times.extend(output["run_ms"].as_f64());
    }
    output["model"] = json!(model.path);
    output["format"] = json!(model.format.name());
    output["load_ms"] = json!(model.load_ms);
    if args.runs > 1 {
        // `infer` is the whole request (JSON in and out); `run` is the
        // runtime's own call inside it.
        output["runs"] = json!({"infer": summary(&mut times), "run": summary(&mut run_times)});
    }
    outln!("{}", serde_json::to_string(&output)?);
    Ok(())
}

/// The settings' onnxruntime_path when settings load; none otherwise (a
/// broken cyberwave.yml should not stop a local model check).
fn runtime_paths(config: Option<PathBuf>) -> RuntimePaths {
    let overrides = Overrides {
        config,
        ..Overrides::default()
    };
    match Settings::load(&overrides, &Environment::from_process()) {
        Ok(settings) => RuntimePaths {
            onnxruntime: settings.onnxruntime_path.map(|p| p.value),
        },
        Err(e) => {
            tracing::debug!("settings not loaded ({e}); looking for runtimes without them");
            RuntimePaths::default()
        }
    }
}

fn parse_options(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut options = Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--option {pair:?} is not KEY=VALUE (for example intra_op_threads=2)");
        };
        // Numbers and booleans as JSON, anything else as a string.
        let value = serde_json::from_str(value).unwrap_or_else(|_| json!(value));
        options.insert(key.trim().to_owned(), value);
    }
    Ok(options)
}

/// The largest request `--input` reads (stdin or a file): more than any
/// tensor request a model server takes, and a bound on `--input - < /dev/zero`.
const MAX_REQUEST_BYTES: u64 = 256 * 1024 * 1024;

/// Reads all of `source`, up to [`MAX_REQUEST_BYTES`].
fn read_bounded(source: impl std::io::Read, what: &str) -> anyhow::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    source
        .take(MAX_REQUEST_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read the request from {what}"))?;
    if text.len() as u64 > MAX_REQUEST_BYTES {
        bail!(
            "the request from {what} is larger than {} MiB",
            MAX_REQUEST_BYTES / (1024 * 1024)
        );
    }
    Ok(text)
}

fn read_request(input: &str) -> anyhow::Result<Map<String, Value>> {
    let text = if input == "-" || input == "@-" {
        read_bounded(std::io::stdin(), "stdin")?
    } else if let Some(file) = input.strip_prefix('@') {
        let opened = std::fs::File::open(file)
            .with_context(|| format!("cannot read the request file {file}"))?;
        read_bounded(opened, &format!("the request file {file}"))?
    } else {
        input.to_owned()
    };
    match serde_json::from_str(&text) {
        Ok(Value::Object(request)) => Ok(request),
        Ok(_) => bail!("the request must be a JSON object like {{\"inputs\": {{...}}}}"),
        Err(e) => bail!("the request is not valid JSON: {e}"),
    }
}

/// `{"count", "p50_ms", "p95_ms", "mean_ms", "min_ms"}` of the timed runs.
fn summary(times: &mut [f64]) -> Value {
    if times.is_empty() {
        return Value::Null;
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    json!({
        "count": times.len(),
        "p50_ms": millis(at(0.5)),
        "p95_ms": millis(at(0.95)),
        "mean_ms": millis(times.iter().sum::<f64>() / times.len() as f64),
        "min_ms": millis(times[0]),
    })
}
