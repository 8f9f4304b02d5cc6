use serde_json::json;

use super::*;

fn parse(value: Value) -> Result<Tensor, TensorError> {
    Tensor::from_json("x", &value)
}

#[test]
fn every_dtype_round_trips_through_data_and_base64() {
    let samples = [
        (DType::Float32, json!([-1.5, 0.0, 3.25])),
        (DType::Float16, json!([-1.5, 0.0, 3.25])),
        (DType::Float64, json!([-1.5, 0.0, 3.25])),
        (DType::Int8, json!([-128, 0, 127])),
        (DType::Int32, json!([-2147483648i64, -1, 2147483647])),
        (DType::Int64, json!([i64::MIN, -1, i64::MAX])),
        (DType::Uint8, json!([0, 127, 255])),
        (DType::Bool, json!([true, false, true])),
    ];
    for (dtype, data) in samples {
        let tensor = parse(json!({"dtype": dtype.name(), "shape": [3], "data": data})).unwrap();
        assert_eq!(tensor.bytes.len(), 3 * dtype.size(), "{}", dtype.name());
        assert_eq!(tensor.to_json(false)["data"], data, "{}", dtype.name());
        let again = parse(tensor.to_json(true)).unwrap();
        assert_eq!(again, tensor, "{}", dtype.name());
    }
}

#[test]
fn nested_data_is_row_major() {
    let tensor =
        parse(json!({"dtype": "int32", "shape": [2, 2], "data": [[1, 2], [3, 4]]})).unwrap();
    assert_eq!(
        tensor.values(),
        vec![json!(1), json!(2), json!(3), json!(4)]
    );
}

#[test]
fn nan_and_infinities_travel_as_strings() {
    let tensor =
        parse(json!({"dtype": "float32", "shape": [3], "data": ["NaN", "Infinity", "-Infinity"]}))
            .unwrap();
    assert_eq!(
        tensor.to_json(false)["data"],
        json!(["NaN", "Infinity", "-Infinity"])
    );
}

#[test]
fn bad_tensors_name_the_problem() {
    let cases = [
        (json!([1, 2]), "expected an object"),
        (json!({"shape": [1], "data": [1]}), "missing \"dtype\""),
        (
            json!({"dtype": "complex64", "shape": [1], "data": [1]}),
            "unsupported dtype \"complex64\"",
        ),
        (
            json!({"dtype": "float32", "data": [1]}),
            "missing \"shape\"",
        ),
        (
            json!({"dtype": "float32", "shape": [-1], "data": [1]}),
            "non-negative integers",
        ),
        (
            json!({"dtype": "float32", "shape": [2]}),
            "missing \"data\"",
        ),
        (
            json!({"dtype": "float32", "shape": [2], "data": [1]}),
            "holds 1 elements; the shape needs 2",
        ),
        (
            json!({"dtype": "float32", "shape": [2], "data": [1, "a"]}),
            "element 1 of \"data\": expected a number",
        ),
        (
            json!({"dtype": "int8", "shape": [1], "data": [300]}),
            "300 is out of range for int8",
        ),
        (
            json!({"dtype": "int32", "shape": [1], "data": [1.5]}),
            "expected an integer, got 1.5",
        ),
        (
            json!({"dtype": "bool", "shape": [1], "data": [2]}),
            "expected true, false, 0 or 1",
        ),
        (
            json!({"dtype": "float32", "shape": [1], "data": "1"}),
            "must be an array",
        ),
        (
            json!({"dtype": "float32", "shape": [2], "data_b64": "AAAA"}),
            "holds 3 bytes; the shape needs 2 float32 elements = 8 bytes",
        ),
        (
            json!({"dtype": "float32", "shape": [1], "data_b64": "%%"}),
            "not valid base64",
        ),
        (
            json!({"dtype": "float32", "shape": [1], "data": [1], "data_b64": "AAAAAA=="}),
            "not both",
        ),
        (
            json!({"dtype": "float32", "shape": [usize::MAX, usize::MAX], "data": []}),
            "too large",
        ),
    ];
    for (value, expected) in cases {
        let error = parse(value.clone()).unwrap_err().to_string();
        assert!(error.starts_with("input 'x': "), "{error}");
        assert!(
            error.contains(expected),
            "{value} gave {error:?}, wanted {expected:?}"
        );
    }
}

#[test]
fn specs_check_dtype_rank_and_fixed_dims() {
    let spec = TensorSpec {
        name: "x".into(),
        dtype: "float32".into(),
        shape: vec![None, Some(4)],
        dim_names: vec![Some("batch".into()), None],
    };
    assert_eq!(spec.describe(), "float32 [batch, 4]");
    assert_eq!(spec.to_json()["shape"], json!(["batch", 4]));
    let tensor = |dtype: &str, shape: Vec<usize>| {
        let count: usize = shape.iter().product();
        parse(json!({"dtype": dtype, "shape": shape, "data": vec![0; count]})).unwrap()
    };
    assert!(spec.check(&tensor("float32", vec![3, 4])).is_ok());
    let error = spec
        .check(&tensor("float32", vec![1, 3]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "input 'x': expected float32 [batch, 4], got float32 [1, 3]"
    );
    assert!(spec.check(&tensor("float64", vec![1, 4])).is_err());
    assert!(spec.check(&tensor("float32", vec![4])).is_err());
}

#[test]
fn requests_need_an_inputs_object_and_a_known_encoding() {
    let request = |v: Value| v.as_object().unwrap().clone();
    assert!(inputs_from_json(&request(json!({})))
        .unwrap_err()
        .to_string()
        .contains("missing \"inputs\""));
    assert!(inputs_from_json(&request(json!({"inputs": [1]})))
        .unwrap_err()
        .to_string()
        .contains("must be an object"));
    assert!(wants_base64(&request(json!({"output_encoding": "base64"}))).unwrap());
    assert!(!wants_base64(&request(json!({}))).unwrap());
    assert!(wants_base64(&request(json!({"output_encoding": "hex"}))).is_err());
}
