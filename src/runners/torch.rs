//! The TorchScript runner: `.pt` modules through LibTorch (`tch`, built
//! with the `torch` feature against the LibTorch `.cargo/config.toml` names).
//!
//! `forward` takes the request's tensors in the order of `"input_order"`
//! (or the single input) and may return a tensor, or a tuple or list of
//! tensors; outputs are named `output` for a single tensor and `output_<i>`
//! for the items of a tuple or list. A loaded `CModule` may be called from
//! several threads at once, so concurrent requests share one module.

use std::path::Path;

use serde_json::{json, Map, Value};
use tch::{CModule, Device, IValue, Kind, Tensor as TchTensor};

use super::gpu;
use super::tensor::{inputs_from_json, wants_base64, DType, Tensor, TensorSpec};
use super::{
    check_option_keys, expect_format, usize_option, EventSink, Format, ModelRunner, RunnerError,
};

const OPTIONS: &[&str] = &["device", "n_threads"];

pub struct TorchRunner {
    module: CModule,
    device: Device,
}

impl TorchRunner {
    pub fn load(
        path: &Path,
        options: &Map<String, Value>,
        ignored: &[&str],
        warnings: &mut Vec<String>,
    ) -> Result<TorchRunner, RunnerError> {
        check_option_keys(options, OPTIONS, ignored)?;
        let load_error = |reason: String| RunnerError::Load {
            path: path.to_owned(),
            reason,
        };
        expect_format(path, Format::TorchScript)?;
        if let Some(n) = usize_option(options, "n_threads")? {
            tch::set_num_threads(n.max(1) as i32);
        }
        let device = match options.get("device").and_then(Value::as_str) {
            None | Some("cpu") => Device::Cpu,
            Some("cuda") if tch::Cuda::is_available() => Device::Cuda(0),
            Some("cuda") => {
                let why = "device cuda asked for, but this LibTorch sees no CUDA device (a CPU-only LibTorch, or no GPU visible to the model server)";
                gpu::without_gpu(options, why.into(), warnings)?;
                Device::Cpu
            }
            Some(other) => {
                return Err(RunnerError::Options(format!(
                    "\"device\" must be cpu or cuda, got {}",
                    crate::protocol::quote(other)
                )))
            }
        };
        let mut module = CModule::load_on_device(path, device).map_err(|e| {
            load_error(format!(
                "LibTorch cannot load it (truncated, or not saved with torch.jit.save?): {}",
                first_line(&e.to_string())
            ))
        })?;
        module.set_eval();
        Ok(TorchRunner { module, device })
    }
}

impl ModelRunner for TorchRunner {
    fn input_specs(&self) -> &[TensorSpec] {
        &[]
    }

    fn output_specs(&self) -> &[TensorSpec] {
        &[]
    }

    fn infer(&self, request: &Map<String, Value>, _: EventSink<'_>) -> Result<Value, RunnerError> {
        let base64 = wants_base64(request)?;
        let inputs = ordered_inputs(request)?;
        let values = inputs
            .iter()
            .map(|(name, tensor)| to_torch(name, tensor, self.device).map(IValue::Tensor))
            .collect::<Result<Vec<_>, _>>()?;
        let started = std::time::Instant::now();
        let _no_grad = tch::no_grad_guard();
        let output = self.module.forward_is(&values).map_err(|e| {
            RunnerError::BadRequest(format!("forward failed: {}", first_line(&e.to_string())))
        })?;
        let run_ms = crate::protocol::round::millis(started.elapsed().as_secs_f64() * 1000.0);
        let mut outputs = Map::new();
        match output {
            IValue::Tensor(t) => {
                outputs.insert("output".into(), from_torch("output", &t)?.to_json(base64));
            }
            IValue::Tuple(items) | IValue::GenericList(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    let name = format!("output_{i}");
                    let IValue::Tensor(t) = item else {
                        return Err(RunnerError::Inference(format!(
                            "{name} is not a tensor; the node returns tensors only"
                        )));
                    };
                    outputs.insert(name.clone(), from_torch(&name, &t)?.to_json(base64));
                }
            }
            IValue::TensorList(items) => {
                for (i, t) in items.iter().enumerate() {
                    let name = format!("output_{i}");
                    outputs.insert(name.clone(), from_torch(&name, t)?.to_json(base64));
                }
            }
            _ => {
                return Err(RunnerError::Inference(
                    "forward returned something other than a tensor or a tuple or list of tensors"
                        .into(),
                ))
            }
        }
        Ok(json!({"outputs": outputs, "run_ms": run_ms}))
    }

    fn details(&self) -> Value {
        json!({"device": format!("{:?}", self.device).to_lowercase(), "threads": tch::get_num_threads()})
    }
}

/// The inputs in `forward`'s order: `input_order`, or the single input.
fn ordered_inputs(request: &Map<String, Value>) -> Result<Vec<(String, Tensor)>, RunnerError> {
    let inputs = inputs_from_json(request)?;
    let order: Vec<String> = match request.get("input_order") {
        None | Some(Value::Null) if inputs.len() == 1 => return Ok(inputs),
        None | Some(Value::Null) => {
            return Err(RunnerError::BadRequest(format!(
                "{} inputs: give \"input_order\" with their names in forward's order",
                inputs.len()
            )))
        }
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| n.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                RunnerError::BadRequest("\"input_order\" must be an array of input names".into())
            })?,
        Some(other) => {
            return Err(RunnerError::BadRequest(format!(
                "\"input_order\" must be an array of input names, got {}",
                crate::protocol::quote_json(other)
            )))
        }
    };
    let mut inputs = inputs;
    let mut ordered = Vec::with_capacity(order.len());
    for name in &order {
        let at = inputs.iter().position(|(n, _)| n == name).ok_or_else(|| {
            RunnerError::BadRequest(format!(
                "\"input_order\" names '{name}', which is not in \"inputs\""
            ))
        })?;
        ordered.push(inputs.swap_remove(at));
    }
    if let Some((extra, _)) = inputs.first() {
        return Err(RunnerError::BadRequest(format!(
            "input '{extra}' is not in \"input_order\""
        )));
    }
    Ok(ordered)
}

fn kind_of(dtype: DType) -> Kind {
    match dtype {
        DType::Float32 => Kind::Float,
        DType::Float16 => Kind::Half,
        DType::Float64 => Kind::Double,
        DType::Int8 => Kind::Int8,
        DType::Int32 => Kind::Int,
        DType::Int64 => Kind::Int64,
        DType::Uint8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
    }
}

fn dtype_of(kind: Kind) -> Option<DType> {
    DType::ALL.into_iter().find(|d| kind_of(*d) == kind)
}

fn to_torch(name: &str, tensor: &Tensor, device: Device) -> Result<TchTensor, RunnerError> {
    let shape: Vec<i64> = tensor.shape.iter().map(|d| *d as i64).collect();
    TchTensor::f_of_data_size(&tensor.bytes, &shape, kind_of(tensor.dtype))
        .and_then(|t| t.f_to_device(device))
        .map_err(|e| {
            RunnerError::BadRequest(format!("input '{name}': {}", first_line(&e.to_string())))
        })
}

fn from_torch(name: &str, tensor: &TchTensor) -> Result<Tensor, RunnerError> {
    let fail = |why: String| RunnerError::Inference(format!("output '{name}': {why}"));
    let dtype = dtype_of(tensor.kind()).ok_or_else(|| {
        fail(format!(
            "element type {:?} cannot be carried by the tensor JSON",
            tensor.kind()
        ))
    })?;
    let cpu = tensor
        .f_to_device(Device::Cpu)
        .and_then(|t| t.f_contiguous())
        .map_err(|e| fail(first_line(&e.to_string())))?;
    let numel = cpu.numel();
    let mut bytes = vec![0u8; numel * dtype.size()];
    cpu.f_copy_data_u8(&mut bytes, numel)
        .map_err(|e| fail(first_line(&e.to_string())))?;
    Ok(Tensor {
        dtype,
        shape: cpu.size().iter().map(|d| *d as usize).collect(),
        bytes,
    })
}

/// LibTorch's errors carry the TorchScript traceback and a C++ backtrace;
/// the line that says what went wrong is the last `...Error: ` one.
fn first_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.contains("Error: "))
        .or_else(|| lines.first())
        .map_or_else(|| message.trim().to_owned(), |l| l.to_string())
}
