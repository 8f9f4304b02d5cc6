//! Tensors as JSON, the form every tensor runner takes and returns:
//!
//! ```json
//! {"dtype": "float32", "shape": [1, 4], "data": [1, 2, 3, 4]}
//! {"dtype": "float32", "shape": [1, 4], "data_b64": "AACAPwAAAEAAAEBAAACAQA=="}
//! ```
//!
//! `data` is row-major, flat or nested; `data_b64` is the little-endian raw
//! bytes, for tensors too large to spell out. JSON has no NaN or infinity,
//! so floats also accept (and outputs use) the strings `"NaN"`,
//! `"Infinity"` and `"-Infinity"`. In memory a tensor is always raw bytes,
//! so a runner copies it once into its runtime and back.

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::protocol::json_kind as kind;
use crate::protocol::{quote, quote_json};

/// The element types the tensor JSON carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    Float32,
    Float16,
    Float64,
    Int8,
    Int32,
    Int64,
    Uint8,
    Bool,
}

impl DType {
    pub const ALL: [DType; 8] = [
        DType::Float32,
        DType::Float16,
        DType::Float64,
        DType::Int8,
        DType::Int32,
        DType::Int64,
        DType::Uint8,
        DType::Bool,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Float16 => "float16",
            DType::Float64 => "float64",
            DType::Int8 => "int8",
            DType::Int32 => "int32",
            DType::Int64 => "int64",
            DType::Uint8 => "uint8",
            DType::Bool => "bool",
        }
    }

    pub fn parse(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Int8 | DType::Uint8 | DType::Bool => 1,
            DType::Float16 => 2,
            DType::Float32 | DType::Int32 => 4,
            DType::Float64 | DType::Int64 => 8,
        }
    }

    fn names() -> String {
        DType::ALL.map(DType::name).join(", ")
    }
}

/// A dense tensor: row-major little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// A model's declared input or output. A dim is `None` when the model leaves
/// it dynamic; `dim_names` holds the model's symbolic names for such dims.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    /// A [`DType`] name, or the runtime's name of a type the JSON cannot carry.
    pub dtype: String,
    pub shape: Vec<Option<u64>>,
    pub dim_names: Vec<Option<String>>,
}

/// A tensor in a request that cannot be used, with the name of the input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("input '{input}': {problem}")]
pub struct TensorError {
    pub input: String,
    #[source]
    pub problem: TensorProblem,
}

/// What is wrong with one tensor. Fields named `found` hold the offending
/// JSON already quoted (and shortened) for the message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorProblem {
    #[error("expected an object {{\"dtype\", \"shape\", \"data\"}}, got {0}")]
    NotAnObject(&'static str),
    #[error("unsupported dtype {}; use one of {}", quote(.0), DType::names())]
    UnknownDType(String),
    #[error("\"dtype\" must be a string, got {0}")]
    DTypeNotText(&'static str),
    #[error("missing \"dtype\" (one of {})", DType::names())]
    MissingDType,
    #[error("missing \"shape\": give the dims as an array, e.g. [1, 4]")]
    MissingShape,
    #[error("\"shape\" must hold non-negative integers, got {found}")]
    BadDim { found: String },
    #[error("shape {0:?} is too large")]
    TooLarge(Vec<usize>),
    #[error("give either \"data\" or \"data_b64\", not both")]
    DataTwice,
    #[error("missing \"data\" (or \"data_b64\")")]
    MissingData,
    #[error("\"data_b64\" must be a base64 string, got {0}")]
    Base64NotText(&'static str),
    #[error("\"data_b64\" is not valid base64: {0}")]
    BadBase64(#[source] base64::DecodeError),
    #[error("\"data_b64\" holds {got} bytes; the shape needs {count} {} elements = {want} bytes", .dtype.name())]
    Base64Length {
        got: usize,
        count: usize,
        dtype: DType,
        want: usize,
    },
    #[error("\"data\" holds {got} elements; the shape needs {count}")]
    DataLength { got: usize, count: usize },
    #[error("\"data\" is nested too deeply")]
    TooDeep,
    #[error("\"data\" must be an array of numbers, got {0}")]
    DataNotArray(&'static str),
    #[error("element {index} of \"data\": {problem}")]
    Element {
        index: usize,
        #[source]
        problem: ElementProblem,
    },
    /// [`TensorSpec::check`]: the tensor does not fit the model's input.
    #[error("expected {expected}, got {got}")]
    Mismatch { expected: String, got: String },
}

/// Why one element of `data` cannot be the tensor's dtype.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ElementProblem {
    #[error("expected true, false, 0 or 1, got {found}")]
    NotBool { found: String },
    #[error("{0} is not a number")]
    NotFinite(serde_json::Number),
    #[error("expected a number, got {found}")]
    NotNumber { found: String },
    #[error("expected an integer, got {found}")]
    NotInteger { found: String },
    #[error("{number} is out of range for {}", .dtype.name())]
    OutOfRange {
        number: serde_json::Number,
        dtype: DType,
    },
}

/// A request whose tensors cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("missing \"inputs\": give {{\"inputs\": {{\"<name>\": {{\"dtype\", \"shape\", \"data\"}}}}}}")]
    MissingInputs,
    #[error("\"inputs\" must be an object of named tensors, got {0}")]
    InputsNotObject(&'static str),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error("\"output_encoding\" must be \"json\" or \"base64\", got {found}")]
    OutputEncoding { found: String },
}

impl TensorSpec {
    /// `float32 [batch, 4]`: how errors and `--info` show a spec.
    pub fn describe(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .zip(self.dim_names.iter().chain(std::iter::repeat(&None)))
            .map(|(dim, name)| match (dim, name) {
                (Some(n), _) => n.to_string(),
                (None, Some(name)) if !name.is_empty() => name.clone(),
                (None, _) => "?".to_owned(),
            })
            .collect();
        format!("{} [{}]", self.dtype, dims.join(", "))
    }

    /// `{"name", "dtype", "shape"}`; a dynamic dim is its symbolic name, or
    /// null when the model gives it none.
    pub fn to_json(&self) -> Value {
        let shape: Vec<Value> = self
            .shape
            .iter()
            .enumerate()
            .map(|(i, dim)| match dim {
                Some(n) => json!(n),
                None => match self.dim_names.get(i) {
                    Some(Some(name)) if !name.is_empty() => json!(name),
                    _ => Value::Null,
                },
            })
            .collect();
        json!({"name": self.name, "dtype": self.dtype, "shape": shape})
    }

    /// Checks `tensor` against this spec: dtype, rank, every fixed dim.
    pub fn check(&self, tensor: &Tensor) -> Result<(), TensorError> {
        let fits = tensor.dtype.name() == self.dtype
            && tensor.shape.len() == self.shape.len()
            && self
                .shape
                .iter()
                .zip(&tensor.shape)
                .all(|(want, got)| want.is_none_or(|w| w == *got as u64));
        if fits {
            return Ok(());
        }
        Err(TensorError {
            input: self.name.clone(),
            problem: TensorProblem::Mismatch {
                expected: self.describe(),
                got: tensor.describe(),
            },
        })
    }
}

impl Tensor {
    /// `float32 [1, 3]`.
    pub fn describe(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(usize::to_string).collect();
        format!("{} [{}]", self.dtype.name(), dims.join(", "))
    }

    /// Reads one tensor of a request; `name` is for the error messages.
    pub fn from_json(name: &str, value: &Value) -> Result<Tensor, TensorError> {
        Tensor::read(value).map_err(|problem| TensorError {
            input: name.to_owned(),
            problem,
        })
    }

    fn read(value: &Value) -> Result<Tensor, TensorProblem> {
        let Value::Object(fields) = value else {
            return Err(TensorProblem::NotAnObject(kind(value)));
        };
        let dtype = read_dtype(fields)?;
        let shape = read_shape(fields)?;
        let count = shape
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(*d))
            .ok_or_else(|| TensorProblem::TooLarge(shape.clone()))?;
        let bytes = match (fields.get("data"), fields.get("data_b64")) {
            (Some(_), Some(_)) => Err(TensorProblem::DataTwice),
            (None, None) => Err(TensorProblem::MissingData),
            (Some(data), None) => encode_data(dtype, data, count),
            (None, Some(b64)) => decode_b64(dtype, b64, count),
        }?;
        Ok(Tensor {
            dtype,
            shape,
            bytes,
        })
    }

    /// `{"dtype", "shape", "data"}`, or `data_b64` when `base64` is set.
    pub fn to_json(&self, base64: bool) -> Value {
        let data = if base64 {
            ("data_b64", json!(b64().encode(&self.bytes)))
        } else {
            ("data", Value::Array(self.values()))
        };
        let mut object = Map::new();
        object.insert("dtype".into(), json!(self.dtype.name()));
        object.insert("shape".into(), json!(self.shape));
        object.insert(data.0.into(), data.1);
        Value::Object(object)
    }

    /// The elements as JSON values, flat.
    pub fn values(&self) -> Vec<Value> {
        let chunks = self.bytes.chunks_exact(self.dtype.size());
        match self.dtype {
            DType::Float32 => chunks
                .map(|c| float_json(f32::from_le_bytes(c.try_into().unwrap()) as f64))
                .collect(),
            DType::Float16 => chunks
                .map(|c| float_json(half::f16::from_le_bytes(c.try_into().unwrap()).to_f64()))
                .collect(),
            DType::Float64 => chunks
                .map(|c| float_json(f64::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            DType::Int8 => chunks.map(|c| json!(c[0] as i8)).collect(),
            DType::Uint8 => chunks.map(|c| json!(c[0])).collect(),
            DType::Bool => chunks.map(|c| json!(c[0] != 0)).collect(),
            DType::Int32 => chunks
                .map(|c| json!(i32::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            DType::Int64 => chunks
                .map(|c| json!(i64::from_le_bytes(c.try_into().unwrap())))
                .collect(),
        }
    }
}

/// The `inputs` object of a request, in the order given.
pub fn inputs_from_json(
    request: &Map<String, Value>,
) -> Result<Vec<(String, Tensor)>, RequestError> {
    let Some(inputs) = request.get("inputs") else {
        return Err(RequestError::MissingInputs);
    };
    let Value::Object(inputs) = inputs else {
        return Err(RequestError::InputsNotObject(kind(inputs)));
    };
    inputs
        .iter()
        .map(|(name, value)| Ok((name.clone(), Tensor::from_json(name, value)?)))
        .collect()
}

/// Whether the request asks for `data_b64` outputs.
pub fn wants_base64(request: &Map<String, Value>) -> Result<bool, RequestError> {
    match request.get("output_encoding") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::String(s)) if s == "base64" => Ok(true),
        Some(Value::String(s)) if s == "json" => Ok(false),
        Some(other) => Err(RequestError::OutputEncoding {
            found: quote_json(other),
        }),
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn read_dtype(fields: &Map<String, Value>) -> Result<DType, TensorProblem> {
    match fields.get("dtype") {
        Some(Value::String(name)) => {
            DType::parse(name).ok_or_else(|| TensorProblem::UnknownDType(name.clone()))
        }
        Some(other) => Err(TensorProblem::DTypeNotText(kind(other))),
        None => Err(TensorProblem::MissingDType),
    }
}

fn read_shape(fields: &Map<String, Value>) -> Result<Vec<usize>, TensorProblem> {
    let Some(Value::Array(dims)) = fields.get("shape") else {
        return Err(TensorProblem::MissingShape);
    };
    dims.iter()
        .map(|d| {
            d.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| TensorProblem::BadDim {
                    found: quote_json(d),
                })
        })
        .collect()
}

fn decode_b64(dtype: DType, value: &Value, count: usize) -> Result<Vec<u8>, TensorProblem> {
    let Value::String(text) = value else {
        return Err(TensorProblem::Base64NotText(kind(value)));
    };
    let bytes = b64().decode(text).map_err(TensorProblem::BadBase64)?;
    let want = count.saturating_mul(dtype.size());
    if bytes.len() != want {
        return Err(TensorProblem::Base64Length {
            got: bytes.len(),
            count,
            dtype,
            want,
        });
    }
    Ok(bytes)
}

/// Flattens `data` and writes each element as `dtype` bytes.
fn encode_data(dtype: DType, data: &Value, count: usize) -> Result<Vec<u8>, TensorProblem> {
    let mut flat = Vec::new();
    flatten(data, &mut flat, 0)?;
    if flat.len() != count {
        return Err(TensorProblem::DataLength {
            got: flat.len(),
            count,
        });
    }
    let mut bytes = Vec::with_capacity(count * dtype.size());
    for (index, value) in flat.iter().enumerate() {
        encode_element(dtype, value, &mut bytes)
            .map_err(|problem| TensorProblem::Element { index, problem })?;
    }
    Ok(bytes)
}

fn flatten<'a>(
    value: &'a Value,
    out: &mut Vec<&'a Value>,
    depth: usize,
) -> Result<(), TensorProblem> {
    match value {
        Value::Array(items) if depth < 64 => {
            items.iter().try_for_each(|v| flatten(v, out, depth + 1))
        }
        Value::Array(_) => Err(TensorProblem::TooDeep),
        other if depth == 0 => Err(TensorProblem::DataNotArray(kind(other))),
        other => {
            out.push(other);
            Ok(())
        }
    }
}

fn encode_element(dtype: DType, value: &Value, out: &mut Vec<u8>) -> Result<(), ElementProblem> {
    match dtype {
        DType::Float32 => out.extend((float(value)? as f32).to_le_bytes()),
        DType::Float16 => out.extend(half::f16::from_f64(float(value)?).to_le_bytes()),
        DType::Float64 => out.extend(float(value)?.to_le_bytes()),
        DType::Int8 => out.extend(int::<i8>(value, dtype)?.to_le_bytes()),
        DType::Uint8 => out.extend(int::<u8>(value, dtype)?.to_le_bytes()),
        DType::Int32 => out.extend(int::<i32>(value, dtype)?.to_le_bytes()),
        DType::Int64 => out.extend(int::<i64>(value, dtype)?.to_le_bytes()),
        DType::Bool => out.push(match value {
            Value::Bool(b) => u8::from(*b),
            Value::Number(n) if n.as_u64() == Some(0) => 0,
            Value::Number(n) if n.as_u64() == Some(1) => 1,
            other => {
                return Err(ElementProblem::NotBool {
                    found: quote_json(other),
                })
            }
        }),
    }
    Ok(())
}

fn float(value: &Value) -> Result<f64, ElementProblem> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| ElementProblem::NotFinite(n.clone())),
        Value::String(s) if s == "NaN" => Ok(f64::NAN),
        Value::String(s) if s == "Infinity" => Ok(f64::INFINITY),
        Value::String(s) if s == "-Infinity" => Ok(f64::NEG_INFINITY),
        other => Err(ElementProblem::NotNumber {
            found: quote_json(other),
        }),
    }
}

fn int<T: TryFrom<i64>>(value: &Value, dtype: DType) -> Result<T, ElementProblem> {
    let Value::Number(n) = value else {
        return Err(ElementProblem::NotInteger {
            found: quote_json(value),
        });
    };
    let whole = n
        .as_i64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        })
        .ok_or_else(|| ElementProblem::NotInteger {
            found: n.to_string(),
        })?;
    T::try_from(whole).map_err(|_| ElementProblem::OutOfRange {
        number: n.clone(),
        dtype,
    })
}

/// JSON for a float: a number, or the string form of NaN and the infinities.
fn float_json(f: f64) -> Value {
    if f.is_nan() {
        json!("NaN")
    } else if f.is_infinite() {
        json!(if f > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(f)
    }
}

#[cfg(test)]
#[path = "tensor_tests.rs"]
mod tests;
