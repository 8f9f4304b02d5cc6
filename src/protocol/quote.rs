//! Quoting what the node refuses. An error names a refused value by a short
//! prefix and its length, never the whole of it: a 5 MB field costs a reply
//! of a few hundred bytes and one short log line, not a 5 MB echo.

use std::fmt::Write as _;

use serde_json::Value;

use super::MAX_REQUEST_ID_LEN;

/// How many characters of a refused value an error quotes.
pub const QUOTE_CHARS: usize = 64;

/// `"explode"`, or past [`QUOTE_CHARS`] characters `"explod…" (5000000
/// bytes)`. Control characters are escaped (`\0`, `\n`), so a quote is
/// always one line.
pub fn quote(text: &str) -> String {
    let (prefix, cut) = prefix_chars(text, QUOTE_CHARS);
    let mut quoted = String::with_capacity(prefix.len() + 24);
    let _ = write!(quoted, "\"{}", prefix.escape_debug());
    if cut {
        let _ = write!(quoted, "…\" ({} bytes)", text.len());
    } else {
        quoted.push('"');
    }
    quoted
}

/// A refused JSON value: a string as [`quote`] does it, anything else as
/// compact JSON cut the same way: `[1,1,1,…] (5000001 bytes of JSON)`.
/// The value is measured as it is written, never copied whole.
pub fn quote_json(value: &Value) -> String {
    if let Value::String(text) = value {
        return quote(text);
    }
    let mut head = Head {
        kept: Vec::new(),
        keep: QUOTE_CHARS * 4,
        total: 0,
    };
    // Writing into `Head` cannot fail, and a Value always serializes.
    let _ = serde_json::to_writer(&mut head, value);
    let valid = match std::str::from_utf8(&head.kept) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&head.kept[..e.valid_up_to()]).unwrap_or_default(),
    };
    let (prefix, cut) = prefix_chars(valid, QUOTE_CHARS);
    if cut || head.total > head.kept.len() {
        format!("{prefix}… ({} bytes of JSON)", head.total)
    } else {
        prefix.to_owned()
    }
}

/// The request_id an error reply carries: the id as sent up to
/// [`MAX_REQUEST_ID_LEN`] bytes, else its first that many bytes (at a
/// character boundary) followed by `…(<length> bytes)`.
pub fn echoed_request_id(id: &str) -> String {
    if id.len() <= MAX_REQUEST_ID_LEN {
        return id.to_owned();
    }
    let mut end = MAX_REQUEST_ID_LEN;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", &id[..end], id.len())
}

/// The first `chars` characters of `text`, and whether anything was left.
fn prefix_chars(text: &str, chars: usize) -> (&str, bool) {
    match text.char_indices().nth(chars) {
        Some((end, _)) => (&text[..end], true),
        None => (text, false),
    }
}

/// Keeps the first `keep` bytes written and counts the rest.
struct Head {
    kept: Vec<u8>,
    keep: usize,
    total: usize,
}

impl std::io::Write for Head {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.keep.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&buf[..buf.len().min(room)]);
        self.total += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn short_values_are_quoted_whole() {
        assert_eq!(quote("explode"), "\"explode\"");
        assert_eq!(quote("a\0b\nc"), r#""a\0b\nc""#);
        assert_eq!(quote_json(&json!(-1)), "-1");
        assert_eq!(quote_json(&json!([1, "x"])), r#"[1,"x"]"#);
        assert_eq!(quote_json(&json!("SIGHUP")), "\"SIGHUP\"");
    }

    #[test]
    fn long_values_are_a_prefix_and_a_length() {
        let big = "a".repeat(5_000_000);
        assert_eq!(
            quote(&big),
            format!("\"{}…\" (5000000 bytes)", "a".repeat(QUOTE_CHARS))
        );
        let wide = "é".repeat(100);
        assert_eq!(
            quote(&wide),
            format!("\"{}…\" (200 bytes)", "é".repeat(QUOTE_CHARS))
        );
        let array = Value::Array(vec![json!(1); 2_500_000]);
        let quoted = quote_json(&array);
        assert!(quoted.starts_with("[1,1,1,"), "{quoted}");
        assert!(quoted.ends_with("… (5000001 bytes of JSON)"), "{quoted}");
        assert!(quoted.len() < 100);
        let object = json!({"k": "é".repeat(200)});
        assert!(quote_json(&object).ends_with("(408 bytes of JSON)"));
    }

    #[test]
    fn request_ids_are_echoed_up_to_the_limit() {
        assert_eq!(echoed_request_id("r-1"), "r-1");
        let max = "x".repeat(MAX_REQUEST_ID_LEN);
        assert_eq!(echoed_request_id(&max), max);
        let long = "L".repeat(5000);
        assert_eq!(
            echoed_request_id(&long),
            format!("{}…(5000 bytes)", "L".repeat(MAX_REQUEST_ID_LEN))
        );
        let wide = "é".repeat(MAX_REQUEST_ID_LEN);
        let echoed = echoed_request_id(&wide);
        assert!(echoed.starts_with(&"é".repeat(MAX_REQUEST_ID_LEN / 2)));
        assert!(echoed.ends_with("…(2048 bytes)"));
    }
}
