//! Which files a message may load as a model: only those inside the
//! `model_roots` setting, judged after resolving symlinks, so neither `..`
//! nor a link can reach the rest of the machine.

use std::path::{Component, Path, PathBuf};

use super::RunnerError;

/// Resolves `requested` (relative to `working_dir`) and checks that it is a
/// file inside one of `roots`.
pub fn resolve_model_path(
    requested: &str,
    working_dir: &Path,
    roots: &[PathBuf],
) -> Result<PathBuf, RunnerError> {
    if requested.trim().is_empty() {
        return Err(RunnerError::BadRequest(
            "\"model\" is empty: give the path of a model file".into(),
        ));
    }
    let joined = working_dir.join(requested);
    let canonical_roots: Vec<PathBuf> = roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
    let refuse = || {
        RunnerError::BadRequest(format!(
            "model path {requested} is outside the model roots ({}); put the model there or add its directory to model_roots",
            describe_roots(roots)
        ))
    };
    let resolved = match joined.canonicalize() {
        Ok(resolved) => resolved,
        // Say "does not exist" only for paths inside the roots, so a message
        // cannot probe which files exist elsewhere.
        Err(_) if !lexically_inside(&joined, roots) => return Err(refuse()),
        Err(e) => {
            return Err(RunnerError::Load {
                path: joined,
                reason: format!("{e}"),
            })
        }
    };
    if !canonical_roots.iter().any(|root| resolved.starts_with(root)) {
        return Err(refuse());
    }
    if !resolved.is_file() {
        return Err(RunnerError::Load {
            path: resolved,
            reason: "not a regular file".into(),
        });
    }
    Ok(resolved)
}

/// `a, b` for error messages.
pub fn describe_roots(roots: &[PathBuf]) -> String {
    roots
        .iter()
        .map(|r| r.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `path`, with `.` and `..` folded away, starts with a root.
fn lexically_inside(path: &Path, roots: &[PathBuf]) -> bool {
    let normal = normalize(path);
    roots.iter().any(|root| normal.starts_with(normalize(root)))
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_inside_the_roots_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("models");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("m.onnx"), b"x").unwrap();
        std::fs::write(dir.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link.onnx")).unwrap();
        let roots = vec![root.clone()];

        let ok = resolve_model_path("m.onnx", &root, &roots).unwrap();
        assert_eq!(ok, root.canonicalize().unwrap().join("m.onnx"));
        for outside in ["../secret", "link.onnx", "/etc/passwd", "../nothing-here"] {
            let error = resolve_model_path(outside, &root, &roots).unwrap_err().to_string();
            assert!(error.contains("outside the model roots"), "{outside}: {error}");
            assert!(error.contains(&root.display().to_string()), "{error}");
        }
        let missing = resolve_model_path("absent.onnx", &root, &roots).unwrap_err();
        assert!(missing.to_string().contains("No such file"), "{missing}");
        let not_file = resolve_model_path(".", &root, &roots).unwrap_err();
        assert!(not_file.to_string().contains("not a regular file"), "{not_file}");
        assert!(resolve_model_path(" ", &root, &roots).is_err());
    }
}
