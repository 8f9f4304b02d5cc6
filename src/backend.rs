//! The REST client for the Cyberwave backend (docs/protocol.md, "REST").
//!
//! Each call maps the HTTP outcome onto [`BackendError`] so the node's policy
//! (exit at once, retry with backoff, re-register) is decided by matching on
//! a variant, never by parsing text.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Secret;

/// Every request gives up after this long, so a hung backend shows up as an
/// error the retry policy can act on instead of a stuck node.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("API token rejected by {url} (HTTP {status}): the token came from {token_origin}; check that it is current, or log in again with `cyberwave-cli login`")]
    Rejected {
        url: String,
        status: u16,
        token_origin: String,
    },
    #[error("{url} answered HTTP 404 (not found)")]
    NotFound { url: String },
    #[error("cannot reach the Cyberwave backend at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the Cyberwave backend at {url} answered HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("unexpected answer from {url}: {reason}")]
    BadResponse { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl BackendError {
    /// True for outages worth waiting out: the network, 5xx, 408 and 429.
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::Unreachable { .. } => true,
            BackendError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            _ => false,
        }
    }
}

/// What register and create hand back: the identity from now on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub uuid: String,
    pub slug: String,
}

/// A client bound to one base URL and token.
#[derive(Clone)]
pub struct Backend {
    http: reqwest::Client,
    base_url: String,
    token: Secret,
    token_origin: String,
    workspace_slug: Option<String>,
}

impl Backend {
    pub fn new(
        base_url: &str,
        token: Secret,
        token_origin: String,
        workspace_slug: Option<String>,
    ) -> Result<Backend, BackendError> {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("cyberwave-cloud-node/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BackendError::Client(e.to_string()))?;
        Ok(Backend {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token,
            token_origin,
            workspace_slug,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /api/v1/cloud-node/instances`: is the token any good?
    pub async fn validate_token(&self) -> Result<(), BackendError> {
        self.call(Method::GET, "/api/v1/cloud-node/instances", None)
            .await
            .map(drop)
    }

    /// `POST /api/v1/cloud-node/{uuid}/register`.
    /// `hardware` (from [`crate::telemetry::detect`]) is an addition the
    /// backend may ignore.
    pub async fn register(
        &self,
        uuid: &str,
        profile_slug: &str,
        hardware: Option<&Value>,
    ) -> Result<Registration, BackendError> {
        let path = format!("/api/v1/cloud-node/{uuid}/register");
        let mut body = json!({ "profile_slug": profile_slug });
        if let Some(hardware) = hardware {
            body["hardware"] = hardware.clone();
        }
        let answer = self.call(Method::POST, &path, Some(body)).await?;
        if answer.get("success") == Some(&Value::Bool(false)) {
            let message = answer
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            return Err(BackendError::BadResponse {
                url: self.url(&path),
                reason: format!("registration refused: {message}"),
            });
        }
        let reply: IdentityReply = serde_json::from_value(answer).unwrap_or_default();
        Ok(Registration {
            uuid: reply.uuid.unwrap_or_else(|| uuid.to_owned()),
            slug: reply.slug.unwrap_or_default(),
        })
    }

    /// `POST /api/v1/cloud-node`: a new instance, named after `slug_hint` if
    /// the backend agrees.
    pub async fn create(
        &self,
        profile_slug: &str,
        slug_hint: Option<&str>,
    ) -> Result<Registration, BackendError> {
        let path = "/api/v1/cloud-node";
        let mut body = json!({ "profile_slug": profile_slug });
        if let Some(slug) = slug_hint {
            body["slug"] = json!(slug);
        }
        let answer = self.call(Method::POST, path, Some(body)).await?;
        let reply: IdentityReply = serde_json::from_value(answer).unwrap_or_default();
        match (reply.uuid, reply.slug) {
            (Some(uuid), Some(slug)) => Ok(Registration { uuid, slug }),
            _ => Err(BackendError::BadResponse {
                url: self.url(path),
                reason: "the created instance has no uuid or slug".into(),
            }),
        }
    }

    /// `POST /api/v1/cloud-node/{uuid}/heartbeat` with a status summary.
    pub async fn heartbeat(&self, uuid: &str, summary: Value) -> Result<(), BackendError> {
        let path = format!("/api/v1/cloud-node/{uuid}/heartbeat");
        self.call(Method::POST, &path, Some(summary))
            .await
            .map(drop)
    }

    /// `POST /api/v1/cloud-node/terminated`: a graceful stop.
    pub async fn terminated(&self, uuid: &str, slug: &str) -> Result<(), BackendError> {
        let mut body = json!({ "instance_uuid": uuid, "slug": slug });
        self.add_workspace(&mut body);
        self.call(Method::POST, "/api/v1/cloud-node/terminated", Some(body))
            .await
            .map(drop)
    }

    /// `POST /api/v1/cloud-node/failed`: the node is going down because of `error`.
    pub async fn failed(&self, error: &str, uuid: &str, slug: &str) -> Result<(), BackendError> {
        let mut body = json!({ "error": error, "instance_uuid": uuid, "slug": slug });
        self.add_workspace(&mut body);
        self.call(Method::POST, "/api/v1/cloud-node/failed", Some(body))
            .await
            .map(drop)
    }

    fn add_workspace(&self, body: &mut Value) {
        if let Some(ws) = &self.workspace_slug {
            body["workspace_slug"] = json!(ws);
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, BackendError> {
        let url = self.url(path);
        let mut request = self
            .http
            .request(method, &url)
            .header("Authorization", format!("Token {}", self.token.expose()))
            .header("Accept", "application/json");
        if let Some(ws) = &self.workspace_slug {
            request = request.query(&[("workspace_slug", ws)]);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| BackendError::Unreachable {
                url: url.clone(),
                reason: describe_reqwest_error(&e),
            })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match status {
            s if s.is_success() => Ok(serde_json::from_str(&text).unwrap_or(Value::Null)),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(BackendError::Rejected {
                url,
                status: status.as_u16(),
                token_origin: self.token_origin.clone(),
            }),
            StatusCode::NOT_FOUND => Err(BackendError::NotFound { url }),
            _ => Err(BackendError::Status {
                url,
                status: status.as_u16(),
                body: abbreviate(&text),
            }),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct IdentityReply {
    uuid: Option<String>,
    slug: Option<String>,
}

fn describe_reqwest_error(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut detail = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        detail = inner.to_string();
        source = inner.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind} ({detail})")
    }
}

/// Error bodies can be whole HTML pages; the first line is enough to act on.
fn abbreviate(body: &str) -> String {
    let line = body
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.chars().count() > 200 {
        format!("{}…", line.chars().take(200).collect::<String>())
    } else if line.is_empty() {
        "(empty body)".to_owned()
    } else {
        line.to_owned()
    }
}
