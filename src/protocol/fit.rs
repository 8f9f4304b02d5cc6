//! Every message the node publishes fits under the broker's packet limit.
//!
//! A message over its budget is rewritten smaller rather than retried: its
//! biggest fields (those of `output`, and top-level ones such as `error` or
//! a live-output chunk's `data`) are cut, biggest first, until it fits. A
//! string keeps its first KiB (a `*_tail` field its last), anything else
//! becomes null, and the top-level `truncated` object names each cut field
//! (`"output.result"`, `"error"`) with its size in bytes as JSON. What
//! identifies the message (`status`, `request_id`, `event`, `slug`,
//! `instance_uuid`) is never cut, so a terminal event still says how the
//! workload ended, and the outbox always drains.

use serde_json::{Map, Value};

use super::quote::echoed_request_id;

/// What a cut string keeps, in bytes.
const KEPT_BYTES: usize = 1024;
/// Fields that identify a message: never cut.
const IDENTITY: [&str; 5] = ["status", "request_id", "event", "slug", "instance_uuid"];

/// A payload that fits its budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    pub value: Value,
    pub bytes: Vec<u8>,
    /// The cut fields and their sizes before; empty when nothing was cut.
    pub cut: Vec<(String, usize)>,
}

impl Fitted {
    /// "output.result (20000045 bytes), error (3000 bytes)" for the log.
    pub fn describe_cut(&self) -> String {
        let parts: Vec<String> = self
            .cut
            .iter()
            .map(|(field, bytes)| format!("{field} ({bytes} bytes)"))
            .collect();
        parts.join(", ")
    }
}

/// Serializes `payload` in at most `budget` bytes, cutting it as the module
/// says when it is bigger.
pub fn fit(payload: Value, budget: usize) -> Fitted {
    let bytes = to_bytes(&payload);
    if bytes.len() <= budget {
        return Fitted {
            value: payload,
            bytes,
            cut: Vec::new(),
        };
    }
    let original = bytes.len();
    drop(bytes);
    let Value::Object(mut message) = payload else {
        // The node publishes objects only; anything else is replaced whole.
        let cut = vec![(String::new(), original)];
        let mut replaced = Map::new();
        note_cut(&mut replaced, &cut);
        return done(replaced, cut);
    };
    let mut cut = Vec::new();
    for (field, size) in by_size(&message) {
        if size <= KEPT_BYTES + 2 {
            break;
        }
        cut_field(&mut message, &field);
        cut.push((field, size));
        note_cut(&mut message, &cut);
        if json_len(&message) <= budget {
            return done(message, cut);
        }
    }
    // Still too big (a tiny budget): keep only what identifies the message.
    let mut minimal: Map<String, Value> = IDENTITY
        .iter()
        .filter_map(|key| Some((key.to_string(), message.remove(*key)?)))
        .collect();
    if let Some(Value::String(id)) = minimal.get_mut("request_id") {
        *id = echoed_request_id(id);
    }
    for (key, value) in &message {
        if key != "truncated" && !cut.iter().any(|(field, _)| field == key) {
            cut.push((key.clone(), json_len(value)));
        }
    }
    note_cut(&mut minimal, &cut);
    done(minimal, cut)
}

fn done(message: Map<String, Value>, cut: Vec<(String, usize)>) -> Fitted {
    let value = Value::Object(message);
    Fitted {
        bytes: to_bytes(&value),
        value,
        cut,
    }
}

fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON values serialize")
}

/// The fields that may be cut, biggest first: each of `output`'s (or
/// `output` whole when it is not an object), then every top-level field
/// but the identifying ones.
fn by_size(message: &Map<String, Value>) -> Vec<(String, usize)> {
    let mut fields: Vec<(String, usize)> = Vec::new();
    for (key, value) in message {
        match (key.as_str(), value) {
            ("output", Value::Object(output)) => fields.extend(
                output
                    .iter()
                    .map(|(k, v)| (format!("output.{k}"), json_len(v))),
            ),
            ("truncated", _) => {}
            (key, _) if IDENTITY.contains(&key) => {}
            (key, value) => fields.push((key.to_owned(), json_len(value))),
        }
    }
    fields.sort_by_key(|field| std::cmp::Reverse(field.1));
    fields
}

fn cut_field(message: &mut Map<String, Value>, field: &str) {
    let slot = match field.strip_prefix("output.") {
        Some(key) => message
            .get_mut("output")
            .and_then(Value::as_object_mut)
            .and_then(|output| output.get_mut(key)),
        None => message.get_mut(field),
    };
    if let Some(slot) = slot {
        *slot = match slot {
            Value::String(text) => Value::String(shorten(text, field.ends_with("_tail"))),
            _ => Value::Null,
        };
    }
}

/// The first (or, for a tail, the last) [`KEPT_BYTES`] of `text`, on a
/// character boundary, marked with `…` where it was cut.
fn shorten(text: &str, keep_end: bool) -> String {
    if keep_end {
        let mut start = text.len().saturating_sub(KEPT_BYTES);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        format!("…{}", &text[start..])
    } else {
        let mut end = KEPT_BYTES.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    }
}

fn note_cut(message: &mut Map<String, Value>, cut: &[(String, usize)]) {
    let mut truncated = match message.remove("truncated") {
        Some(Value::Object(earlier)) => earlier,
        _ => Map::new(),
    };
    for (field, size) in cut {
        truncated.insert(field.clone(), Value::from(*size));
    }
    message.insert("truncated".into(), Value::Object(truncated));
}

/// The serialized length of `value`, counted without building it.
pub fn json_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn terminal(result: Value, tail: &str) -> Value {
        json!({"status": "error", "request_id": "r-1", "slug": "s", "instance_uuid": "u",
               "event": "failed", "error": "Workload exited with code 3",
               "output": {"exit_code": 3, "pid": 42, "result": result, "stdout_tail": tail,
                          "stderr_tail": "", "workload_type": "training"}})
    }

    #[test]
    fn small_messages_are_untouched() {
        let message = terminal(json!({"loss": 0.1}), "done\n");
        let fitted = fit(message.clone(), 64 * 1024);
        assert_eq!(fitted.value, message);
        assert!(fitted.cut.is_empty());
        assert_eq!(fitted.bytes, serde_json::to_vec(&message).unwrap());
    }

    #[test]
    fn the_biggest_field_goes_first_and_is_named() {
        let result = json!({"blob": "x".repeat(1_000_000)});
        let result_len = json_len(&result);
        let tail = format!("{}END", "t".repeat(5000));
        let fitted = fit(terminal(result, &tail), 16 * 1024);
        assert!(fitted.bytes.len() <= 16 * 1024);
        let out = &fitted.value["output"];
        assert_eq!(out["result"], Value::Null);
        assert_eq!(out["exit_code"], 3);
        assert_eq!(
            out["stdout_tail"].as_str().unwrap().len(),
            5003,
            "fits: kept"
        );
        assert_eq!(fitted.value["event"], "failed");
        assert_eq!(fitted.value["error"], "Workload exited with code 3");
        assert_eq!(
            fitted.value["truncated"],
            json!({"output.result": result_len})
        );
        assert_eq!(fitted.cut, vec![("output.result".to_owned(), result_len)]);
        let reparsed: Value = serde_json::from_slice(&fitted.bytes).unwrap();
        assert_eq!(reparsed, fitted.value);
    }

    #[test]
    fn strings_keep_a_part_and_tails_their_end() {
        let tail = format!("{}END", "t".repeat(50_000));
        let error = format!("BEGIN{}", "e".repeat(50_000));
        let mut message = terminal(json!(null), &tail);
        message["error"] = json!(error);
        let fitted = fit(message, 8 * 1024);
        let kept_tail = fitted.value["output"]["stdout_tail"].as_str().unwrap();
        assert!(kept_tail.starts_with('…') && kept_tail.ends_with("END"));
        assert!(kept_tail.len() <= KEPT_BYTES + 3);
        let kept_error = fitted.value["error"].as_str().unwrap();
        assert!(kept_error.starts_with("BEGIN") && kept_error.ends_with('…'));
        assert_eq!(fitted.value["truncated"]["error"], 50_007);
        assert_eq!(fitted.value["truncated"]["output.stdout_tail"], 50_005);
    }

    #[test]
    fn a_tiny_budget_keeps_what_identifies_the_message() {
        let mut message = terminal(json!([1, 2, 3]), "done");
        message["request_id"] = json!("r".repeat(5000));
        let fitted = fit(message, 2000);
        assert!(fitted.bytes.len() <= 2000, "{}", fitted.bytes.len());
        assert_eq!(fitted.value["event"], "failed");
        assert_eq!(fitted.value["status"], "error");
        assert!(fitted.value["request_id"]
            .as_str()
            .unwrap()
            .ends_with("…(5000 bytes)"));
        assert!(fitted.value.get("output").is_none());
        assert!(fitted.value["truncated"].get("output").is_some());
    }

    #[test]
    fn not_an_object_is_replaced() {
        let fitted = fit(json!("z".repeat(100)), 50);
        assert_eq!(fitted.value, json!({"truncated": {"": 102}}));
    }
}
