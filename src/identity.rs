//! The node's identity on disk: `instance_identity.json` in the config dir.
//!
//! The backend owns uuids and slugs; this file only remembers the last ones it
//! handed out, so a restarted node registers the same instance again instead
//! of creating a new one on every start.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::mqtt::topics::parse_topic_segment;

pub const IDENTITY_FILE: &str = "instance_identity.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub uuid: String,
    pub slug: String,
    /// Written as `null` when unknown: the file always has its four keys
    /// (docs/protocol.md), so tools reading it need no special case.
    #[serde(default)]
    pub workspace_slug: Option<String>,
    #[serde(default)]
    pub registered_at: String,
    /// Made locally by `start --standalone`, never registered with a backend.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standalone: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity file {path} is corrupt ({reason})")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot read identity file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write identity file {path}: {source}; check that the config dir is writable")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn identity_path(config_dir: &Path) -> PathBuf {
    config_dir.join(IDENTITY_FILE)
}

/// Reads the identity file; `Ok(None)` when there is none yet.
pub fn load(path: &Path) -> Result<Option<Identity>, IdentityError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(IdentityError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let corrupt = |reason: String| IdentityError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let identity: Identity = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    // The uuid and slug end up in topics and URLs: a hand-edited file must
    // not be able to smuggle a wildcard or a path separator in.
    parse_topic_segment(&identity.uuid).map_err(|e| corrupt(format!("uuid {e}")))?;
    parse_topic_segment(&identity.slug).map_err(|e| corrupt(format!("slug {e}")))?;
    Ok(Some(identity))
}

/// Saves the identity atomically with mode 0600.
pub fn save(path: &Path, identity: &Identity) -> Result<(), IdentityError> {
    let mut json = serde_json::to_vec_pretty(identity).expect("identity serializes");
    json.push(b'\n');
    fsutil::write_atomic(path, &json, 0o600).map_err(|source| IdentityError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = identity_path(dir.path());
        assert_eq!(load(&path).unwrap(), None);
        let identity = Identity {
            uuid: "0b4f5d6e-0000-4000-8000-000000000001".into(),
            slug: "gpu1".into(),
            workspace_slug: Some("ws".into()),
            registered_at: "2026-11-22T10:00:00Z".into(),
            standalone: false,
        };
        save(&path, &identity).unwrap();
        assert_eq!(load(&path).unwrap(), Some(identity));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn unknown_workspace_slug_is_written_as_null() {
        let dir = tempfile::tempdir().unwrap();
        let path = identity_path(dir.path());
        let identity = Identity {
            uuid: "u1".into(),
            slug: "gpu1".into(),
            workspace_slug: None,
            registered_at: "2026-11-22T10:00:00Z".into(),
            standalone: false,
        };
        save(&path, &identity).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let keys: Vec<&str> = written
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["registered_at", "slug", "uuid", "workspace_slug"],
            "{written}"
        );
        assert!(written["workspace_slug"].is_null(), "{written}");
    }

    #[test]
    fn corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = identity_path(dir.path());
        std::fs::write(&path, "{\"uuid\": 3").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains(IDENTITY_FILE) && err.contains("corrupt"),
            "{err}"
        );
    }

    #[test]
    fn wildcard_in_slug_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = identity_path(dir.path());
        std::fs::write(&path, r#"{"uuid":"u1","slug":"a/#"}"#).unwrap();
        assert!(matches!(load(&path), Err(IdentityError::Corrupt { .. })));
    }
}
