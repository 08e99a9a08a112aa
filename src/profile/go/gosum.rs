//! go.sum files: which module versions a build needs, and their hashes.
//!
//! Each line is `<module> <version> <hash>` (the zip's hash: the build needs
//! the module's files) or `<module> <version>/go.mod <hash>` (only its
//! go.mod, for the module graph). Parsed as Go parses them: fields split on
//! white space, blank lines skipped, anything else an error naming the file
//! and line.

use std::path::{Path, PathBuf};

/// Largest go.sum read (real ones are well under 1 MiB).
const MAX_GO_SUM: u64 = 64 << 20;

/// A go.sum that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GoSumError {
    /// Reading it failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What.
        #[source]
        source: std::io::Error,
    },
    /// A line that is not a go.sum line.
    #[error("{}:{line}: {why}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// One line of a go.sum.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SumLine {
    /// The module path, as written (not escaped).
    pub module: String,
    /// The version.
    pub version: String,
    /// True for a `/go.mod` line: only the go.mod is needed.
    pub go_mod_only: bool,
    /// The hash, `h1:…`.
    pub hash: String,
}

impl SumLine {
    /// `module@version`, as Go prints it.
    pub fn name(&self) -> String {
        format!("{}@{}", self.module, self.version)
    }
}

/// Parses go.sum text; `path` only names the file in errors.
///
/// # Errors
///
/// [`GoSumError::Malformed`] for a line without exactly three fields, or
/// with a module path or version Go would refuse.
pub fn parse(text: &str, path: &Path) -> Result<Vec<SumLine>, GoSumError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |why: String| GoSumError::Malformed { path: path.to_path_buf(), line: i + 1, why };
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [] => continue,
            [module, version, hash] => {
                let (version, go_mod_only) = match version.strip_suffix("/go.mod") {
                    Some(v) => (v, true),
                    None => (*version, false),
                };
                super::escape_path(module).map_err(|e| bad(e.to_string()))?;
                super::escape_version(version).map_err(|e| bad(e.to_string()))?;
                let (module, version, hash) = (module.to_string(), version.to_string(), hash.to_string());
                out.push(SumLine { module, version, go_mod_only, hash });
            }
            _ => return Err(bad(format!("expected \"<module> <version>[/go.mod] <hash>\", found {line:?}"))),
        }
    }
    Ok(out)
}

/// Reads and parses go.sum files, returning their lines sorted and deduplicated.
///
/// # Errors
///
/// [`GoSumError`] naming the file (and line).
pub fn read_all(paths: &[PathBuf]) -> Result<Vec<SumLine>, GoSumError> {
    let mut lines = Vec::new();
    for path in paths {
        let io = |source| GoSumError::Io { path: path.clone(), source };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_GO_SUM {
            let source = std::io::Error::other(format!("{size} bytes, more than a go.sum can be ({MAX_GO_SUM})"));
            return Err(GoSumError::Io { path: path.clone(), source });
        }
        let text = std::fs::read(path).map_err(|source| GoSumError::Io { path: path.clone(), source })?;
        let text = String::from_utf8(text).map_err(|_| GoSumError::Malformed {
            path: path.clone(),
            line: 0,
            why: "not UTF-8 text".into(),
        })?;
        lines.extend(parse(&text, path)?);
    }
    lines.sort();
    lines.dedup();
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_go_writes_them() {
        let text = "github.com/BurntSushi/toml v1.3.2 h1:abc=\n\ngithub.com/BurntSushi/toml v1.3.2/go.mod h1:def=\n";
        let lines = parse(text, Path::new("go.sum")).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].name(), "github.com/BurntSushi/toml@v1.3.2");
        assert!(!lines[0].go_mod_only && lines[1].go_mod_only);
        assert_eq!(lines[1].hash, "h1:def=");
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let e = parse("a.com/x v1.0.0 h1:x\nonly two\n", Path::new("ci/go.sum")).unwrap_err().to_string();
        assert!(e.starts_with("ci/go.sum:2: expected"), "{e}");
        let e = parse("nodot v1.0.0 h1:x\n", Path::new("go.sum")).unwrap_err().to_string();
        assert!(e.contains("go.sum:1:") && e.contains("nodot"), "{e}");
    }
}
