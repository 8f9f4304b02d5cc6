//! Turning a template and params into the command line `/bin/sh -c` runs,
//! and the environment the workload sees.
//!
//! Params never reach the shell as code: `{body}` becomes one single-quoted
//! shell word, and `{params_file}` a quoted path. The only other thing
//! substituted is nothing at all: every other brace stays as written.

use crate::supervised::launch::shell_quote;
use serde_json::{Map, Value};

/// Linux refuses a single argument longer than this (MAX_ARG_STRLEN, 32
/// pages), and `sh -c` gets the whole rendered command as one argument.
pub const MAX_COMMAND_BYTES: usize = 128 * 1024 - 1;

/// The param the backend uses to hand a workload its own short-lived token.
pub const WORKLOAD_TOKEN_PARAM: &str = "cyberwave_workload_token";

/// Why a template could not become a command line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    #[error(
        "the rendered command is {len} bytes, over the {limit} bytes Linux allows for one argument; \
         use {{params_file}} instead of {{body}} in the template so the params are passed as a file",
        limit = MAX_COMMAND_BYTES
    )]
    TooLong { len: usize },
}

/// Renders `template`; errors say how far over the limit it went.
pub fn render(template: &str, params_json: &str, params_file: &str) -> Result<String, RenderError> {
    let rendered = expand_placeholders(template, params_json, params_file);
    if rendered.len() > MAX_COMMAND_BYTES {
        return Err(RenderError::TooLong {
            len: rendered.len(),
        });
    }
    Ok(rendered)
}

/// Expands `{body}` and `{params_file}` in one pass over the template, so a
/// value that itself contains a placeholder's text reaches the workload as
/// written: substituting one placeholder and then searching the result for
/// the next would rewrite the params.
fn expand_placeholders(template: &str, params_json: &str, params_file: &str) -> String {
    const BODY: &str = "{body}";
    const PARAMS_FILE: &str = "{params_file}";
    let mut rendered = String::with_capacity(template.len() + params_json.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        rendered.push_str(&rest[..open]);
        let tail = &rest[open..];
        if let Some(after) = tail.strip_prefix(BODY) {
            rendered.push_str(&shell_quote(params_json));
            rest = after;
        } else if let Some(after) = tail.strip_prefix(PARAMS_FILE) {
            rendered.push_str(&shell_quote(params_file));
            rest = after;
        } else {
            rendered.push('{');
            rest = &tail[1..];
        }
    }
    rendered.push_str(rest);
    rendered
}

/// Takes the per-workload token out of the params, so it is never written
/// to disk, logged or echoed. A non-string value is dropped all the same.
pub fn take_workload_token(params: &mut Map<String, Value>) -> Option<String> {
    match params.remove(WORKLOAD_TOKEN_PARAM) {
        Some(Value::String(token)) if !token.is_empty() => Some(token),
        _ => None,
    }
}

/// Variables the workload must not inherit from the node: the broker
/// password is the node's alone (the API token is handed on on purpose),
/// and `NOTIFY_SOCKET` is systemd's line to the node (`Type=notify`), not
/// to the programs it runs.
pub const WITHHELD_VARS: &[&str] = &["CYBERWAVE_MQTT_PASSWORD", "NOTIFY_SOCKET"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_one_quoted_word() {
        let rendered = render(
            "python t.py --params {body}",
            r#"{"a":"it's $(rm -rf /)"}"#,
            "/p",
        )
        .unwrap();
        assert_eq!(
            rendered,
            r#"python t.py --params '{"a":"it'\''s $(rm -rf /)"}'"#
        );
    }

    #[test]
    fn params_file_is_quoted_and_other_braces_stay() {
        let rendered = render("x {params_file} {other} ${HOME}", "{}", "/a b/p.json").unwrap();
        assert_eq!(rendered, "x '/a b/p.json' {other} ${HOME}");
    }

    #[test]
    fn placeholders_inside_values_are_left_alone() {
        let rendered = render(
            "run {body} --file {params_file}",
            r#"{"a":"{params_file} and {body}"}"#,
            "/p.json",
        )
        .unwrap();
        assert_eq!(
            rendered,
            r#"run '{"a":"{params_file} and {body}"}' --file '/p.json'"#
        );
        let in_path = render("run {params_file} {body}", "{}", "/x/{body}.json").unwrap();
        assert_eq!(in_path, "run '/x/{body}.json' '{}'");
    }

    #[test]
    fn oversized_body_points_to_params_file() {
        let big = "x".repeat(MAX_COMMAND_BYTES);
        let err = render("run {body}", &big, "/p").unwrap_err().to_string();
        assert!(err.contains("{params_file}"), "{err}");
        assert!(render("run {params_file}", &big, "/p").is_ok());
    }

    #[test]
    fn workload_token_is_removed() {
        let mut params = serde_json::json!({"a": 1, "cyberwave_workload_token": "wt"})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(take_workload_token(&mut params).as_deref(), Some("wt"));
        assert!(!params.contains_key(WORKLOAD_TOKEN_PARAM));
    }
}
