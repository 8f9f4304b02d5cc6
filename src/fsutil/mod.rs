//! Crash-safe file writes, and reads that no file can turn against the node.
//!
//! Every file the node writes goes through [`write_atomic`]: a temp file in
//! the same directory, fsync, rename, fsync of the directory. A crash at any
//! instant leaves the old content or the new one, never a torn file, which is
//! what lets a restarted node trust what it finds on disk.
//!
//! Every file the node reads on a workload's behalf (result, progress, logs)
//! or from its own state goes through [`open_regular`] and the bounded reads
//! built on it (docs/design.md, "Every read has a limit"): the path is checked to
//! be a regular file before it is opened (opening a device can have effects
//! of its own), opened with `O_NONBLOCK` (a FIFO swapped in meanwhile cannot
//! block the open) and checked again with `fstat`, then read up to a limit.
//! A link to `/dev/zero` or a FIFO is refused by name, never read.

pub mod atomic;
mod json;
pub mod names;

pub use atomic::{now_unix_ms, Durability};
pub use json::{load_json, write_json, write_json_with, StateFileError, STATE_FILE_LIMIT};

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` atomically and durably (synced to disk),
/// with permission bits `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    atomic::write_file(path, contents, mode, Durability::Synced)
}

/// Creates `dir` (and parents) with mode 0700 when it does not exist yet.
///
/// An existing directory keeps its permissions: it may be shared with
/// `cyberwave-cli`, which created it first.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Whether the last component of a path may be a symbolic link.
///
/// Files a workload writes are read [`Links::Follow`]: the workload runs as
/// the node's own user and could copy any file the node can read into its
/// result itself, so a link gives it nothing, and a result written elsewhere
/// and linked in is legitimate. What a link can do is point at a device or a
/// FIFO, and that is refused whatever the path. The node's own state files
/// are only ever written by [`write_atomic`], as regular files, so they are
/// read [`Links::NoFollow`]: a link there was put by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    Follow,
    NoFollow,
}

/// What a path that is not a regular file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
    Symlink,
    Other,
}

impl FileKind {
    fn of(file_type: fs::FileType) -> FileKind {
        match file_type {
            t if t.is_dir() => FileKind::Directory,
            t if t.is_fifo() => FileKind::Fifo,
            t if t.is_char_device() => FileKind::CharDevice,
            t if t.is_block_device() => FileKind::BlockDevice,
            t if t.is_socket() => FileKind::Socket,
            t if t.is_symlink() => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "a directory",
            FileKind::Fifo => "a FIFO",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Socket => "a socket",
            FileKind::Symlink => "a symbolic link",
            FileKind::Other => "an unknown kind of file",
        })
    }
}

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path} is not a regular file ({kind}); not read")]
    NotRegular { path: PathBuf, kind: FileKind },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A file's content, or only its size when that is over the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    Read(Vec<u8>),
    /// Nothing was read: the file holds `len` bytes, more than the limit.
    OverLimit {
        len: u64,
    },
}

/// Opens `path` for reading if it is a regular file; `Ok(None)` when it does
/// not exist. Returns the file and its length.
pub fn open_regular(path: &Path, links: Links) -> Result<Option<(File, u64)>, ReadError> {
    let io_error = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let not_regular = |kind| ReadError::NotRegular {
        path: path.to_owned(),
        kind,
    };
    let metadata = match links {
        Links::Follow => fs::metadata(path),
        Links::NoFollow => fs::symlink_metadata(path),
    };
    match metadata {
        Ok(m) if !m.is_file() => return Err(not_regular(FileKind::of(m.file_type()))),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    }
    // Checked above, but the path may have changed since: never block on
    // the open, and look at what was really opened.
    let mut flags = libc::O_NONBLOCK;
    if links == Links::NoFollow {
        flags |= libc::O_NOFOLLOW;
    }
    let file = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) && links == Links::NoFollow => {
            return Err(not_regular(FileKind::Symlink))
        }
        Err(e) => return Err(io_error(e)),
    };
    let metadata = file.metadata().map_err(io_error)?;
    if !metadata.is_file() {
        return Err(not_regular(FileKind::of(metadata.file_type())));
    }
    Ok(Some((file, metadata.len())))
}

/// The whole of a regular file of at most `limit` bytes; a bigger one is
/// not read at all (its content cut anywhere would be no use to a parser).
pub fn read_whole(path: &Path, links: Links, limit: u64) -> Result<Option<Contents>, ReadError> {
    let Some((file, len)) = open_regular(path, links)? else {
        return Ok(None);
    };
    if len > limit {
        return Ok(Some(Contents::OverLimit { len }));
    }
    // The length may be stale (the file grows, or it is a /proc file that
    // says 0): read one byte past the limit to know.
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| ReadError::Io {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        let len = len.max(bytes.len() as u64);
        return Ok(Some(Contents::OverLimit { len }));
    }
    Ok(Some(Contents::Read(bytes)))
}

/// At most `max` bytes of a regular file from `offset`, and the file's
/// length; `Ok(None)` when it does not exist.
pub fn read_range(
    path: &Path,
    links: Links,
    offset: u64,
    max: u64,
) -> Result<Option<(Vec<u8>, u64)>, ReadError> {
    let Some((mut file, len)) = open_regular(path, links)? else {
        return Ok(None);
    };
    let io_error = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    file.seek(SeekFrom::Start(offset)).map_err(io_error)?;
    let mut bytes = Vec::with_capacity(len.saturating_sub(offset).min(max) as usize);
    file.take(max).read_to_end(&mut bytes).map_err(io_error)?;
    Ok(Some((bytes, len)))
}

/// The last `max` bytes of a file as text, starting at a character
/// boundary; empty when it is missing or not a regular file.
pub fn tail_text(path: &Path, max: u64) -> String {
    let Ok(Some((mut file, len))) = open_regular(path, Links::Follow) else {
        return String::new();
    };
    let start = len.saturating_sub(max);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::with_capacity((len - start) as usize);
    let _ = file.take(max).read_to_end(&mut bytes);
    // Skip UTF-8 continuation bytes cut off by the window.
    let skip = if start > 0 {
        bytes
            .iter()
            .take(3)
            .take_while(|b| (**b & 0xC0) == 0x80)
            .count()
    } else {
        0
    };
    String::from_utf8_lossy(&bytes[skip..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.json");
        write_atomic(&path, b"old", 0o600).unwrap();
        write_atomic(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file may be left behind");
    }

    #[test]
    fn private_dir_is_0700() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b");
        create_private_dir(&target).unwrap();
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn devices_and_fifos_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("result.json");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let err = read_whole(&link, Links::Follow, 10).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::NotRegular {
                    kind: FileKind::CharDevice,
                    ..
                }
            ),
            "{err}"
        );
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = read_whole(&fifo, Links::Follow, 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not a regular file (a FIFO); not read",
                fifo.display()
            )
        );
        assert!(read_whole(&dir.path().join("missing"), Links::Follow, 10)
            .unwrap()
            .is_none());
    }

    #[test]
    fn links_are_followed_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"{}").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(
            read_whole(&link, Links::Follow, 10).unwrap(),
            Some(Contents::Read(b"{}".to_vec()))
        );
        let err = read_whole(&link, Links::NoFollow, 10).unwrap_err();
        assert!(err.to_string().contains("a symbolic link"), "{err}");
    }

    #[test]
    fn over_the_limit_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let file = File::create(&path).unwrap();
        file.set_len(500_000_000).unwrap(); // sparse
        assert_eq!(
            read_whole(&path, Links::Follow, 1024).unwrap(),
            Some(Contents::OverLimit { len: 500_000_000 })
        );
        fs::write(&path, b"12345").unwrap();
        assert_eq!(
            read_whole(&path, Links::Follow, 5).unwrap(),
            Some(Contents::Read(b"12345".to_vec()))
        );
        let (bytes, len) = read_range(&path, Links::Follow, 1, 2).unwrap().unwrap();
        assert_eq!((bytes.as_slice(), len), (&b"23"[..], 5));
    }
}
