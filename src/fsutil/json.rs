//! The node's own JSON state files (records, started and exit files,
//! offsets, deployment state): written whole and atomically, read as
//! regular files only, never through a link, never past [`STATE_FILE_LIMIT`].

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{read_whole, Contents, Durability, Links, ReadError};

/// The most the node reads of one of its own state files (records, started
/// and exit files, offsets, deployment state): far more than any of them
/// holds, small enough that a wrong file cannot exhaust memory.
pub const STATE_FILE_LIMIT: u64 = 8 * 1024 * 1024;

/// Writes `value` as JSON, atomically, mode 0600.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_json_with(path, value, Durability::Synced)
}

/// [`write_json`], as durable as `durability` says.
pub fn write_json_with<T: Serialize>(
    path: &Path,
    value: &T,
    durability: Durability,
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    super::atomic::write_file(path, &bytes, 0o600, durability)
}

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{path} is {len} bytes, over the {limit} bytes a state file may have; not read")]
    TooBig { path: PathBuf, len: u64, limit: u64 },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Reads one of the node's JSON state files; `Ok(None)` when it does not
/// exist.
pub fn load_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateFileError> {
    let bytes = match read_whole(path, Links::NoFollow, STATE_FILE_LIMIT)? {
        None => return Ok(None),
        Some(Contents::Read(bytes)) => bytes,
        Some(Contents::OverLimit { len }) => {
            return Err(StateFileError::TooBig {
                path: path.to_owned(),
                len,
                limit: STATE_FILE_LIMIT,
            })
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(StateFileError::Empty {
            path: path.to_owned(),
        });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateFileError::Corrupt {
            path: path.to_owned(),
            source,
        })
}
