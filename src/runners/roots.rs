//! Which files a message may load as a model: only those inside the
//! `model_roots` setting, judged after resolving symlinks, so neither `..`
//! nor a link can reach the rest of the machine.

use std::path::{Component, Path, PathBuf};

use super::RunnerError;

/// Resolves `requested` and checks that it is a file inside one of `roots`.
/// A relative path is looked up in `working_dir`, then in each root, so
/// `"model": "resnet.onnx"` finds `<config dir>/models/resnet.onnx`.
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
    let canonical_roots: Vec<PathBuf> =
        roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
    let refuse = || {
        RunnerError::BadRequest(format!(
            "model path {requested} is outside the model roots ({}); put the model there or add its directory to model_roots",
            describe_roots(roots)
        ))
    };
    let bases: Vec<&Path> = std::iter::once(working_dir)
        .chain(roots.iter().map(PathBuf::as_path))
        .collect();
    let Some(joined) = bases
        .iter()
        .map(|base| base.join(requested))
        .find(|candidate| candidate.exists())
    else {
        // Say "not found" only for paths inside the roots, so a message
        // cannot probe which files exist elsewhere.
        if !bases
            .iter()
            .any(|b| lexically_inside(&b.join(requested), roots))
        {
            return Err(refuse());
        }
        if Path::new(requested).is_relative() {
            let looked: Vec<String> = bases.iter().map(|b| b.display().to_string()).collect();
            return Err(RunnerError::BadRequest(format!(
                "model {requested} not found in the working directory or the model roots ({})",
                looked.join(", ")
            )));
        }
        return Err(RunnerError::Load {
            path: PathBuf::from(requested),
            reason: "No such file or directory".into(),
        });
    };
    let resolved = match joined.canonicalize() {
        Ok(resolved) => resolved,
        // A dangling symlink: refuse without saying where it points.
        Err(_) => return Err(refuse()),
    };
    if !canonical_roots
        .iter()
        .any(|root| resolved.starts_with(root))
    {
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
        let from_root = resolve_model_path("m.onnx", dir.path(), &roots).unwrap();
        assert_eq!(
            from_root, ok,
            "a relative path is also looked up in the roots"
        );
        for outside in ["../secret", "link.onnx", "/etc/passwd", "../nothing-here"] {
            let error = resolve_model_path(outside, &root, &roots)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("outside the model roots"),
                "{outside}: {error}"
            );
            assert!(error.contains(&root.display().to_string()), "{error}");
        }
        let missing = resolve_model_path("absent.onnx", &root, &roots).unwrap_err();
        assert!(
            missing.to_string().contains(
                "model absent.onnx not found in the working directory or the model roots"
            ),
            "{missing}"
        );
        let absolute = root.join("absent.onnx");
        let missing = resolve_model_path(absolute.to_str().unwrap(), &root, &roots).unwrap_err();
        assert!(missing.to_string().contains("No such file"), "{missing}");
        let not_file = resolve_model_path(".", &root, &roots).unwrap_err();
        assert!(
            not_file.to_string().contains("not a regular file"),
            "{not_file}"
        );
        assert!(resolve_model_path(" ", &root, &roots).is_err());
    }
}
