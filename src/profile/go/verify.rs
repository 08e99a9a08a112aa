//! Verifying a module cache's download directory: every module version
//! complete, every zip's `h1:` hash recomputed as Go does and compared with
//! its `.ziphash` and with the go.sum lines given.
//!
//! The checks run over a [`Source`], so the same code checks a local
//! `GOMODCACHE` (`cachesync verify`) and a snapshot the mirror receives
//! (its files are blobs in the store). Every problem names its
//! `module@version` and what to do about it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};

use serde::Serialize;

use super::dirhash::{self, ZipCheckError};
use super::gosum::SumLine;
use super::{DOWNLOAD_DIR, FileKind, parse_download_path};

/// Largest `.info` or `.ziphash` read.
const MAX_SMALL: u64 = 1 << 20;
/// Largest `.mod` read (Go's `modzip.MaxGoMod`).
const MAX_GO_MOD: u64 = 16 << 20;

/// Where the files of a download cache are read from.
pub trait Source {
    /// Reads the whole file at a root-relative path; more than `max` bytes is an error.
    ///
    /// # Errors
    ///
    /// I/O errors.
    fn read(&self, path: &str, max: u64) -> io::Result<Vec<u8>>;

    /// The `h1:` hash of the module zip at `path`, whose entries must lie under `prefix`.
    ///
    /// # Errors
    ///
    /// [`ZipCheckError`].
    fn zip_hash(&self, path: &str, prefix: &str) -> Result<String, ZipCheckError>;
}

/// Reads `file` whole, refusing more than `max` bytes.
///
/// # Errors
///
/// I/O errors; [`io::ErrorKind::InvalidData`] past `max`.
pub fn read_bounded(file: impl Read, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {max} bytes")));
    }
    Ok(bytes)
}

/// One thing wrong with the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `module@version`, or the path for files that name no module version.
    pub subject: String,
    /// What is wrong.
    pub what: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.subject, self.what, self.fix)
    }
}

/// The files of one module version, as root-relative paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionFiles {
    /// `<version>.info`.
    pub info: Option<String>,
    /// `<version>.mod`.
    pub go_mod: Option<String>,
    /// `<version>.zip`.
    pub zip: Option<String>,
    /// `<version>.ziphash`.
    pub ziphash: Option<String>,
}

/// The module versions (and list files) of a download cache.
#[derive(Debug, Default)]
pub struct Inventory {
    /// By (module, version).
    pub versions: BTreeMap<(String, String), VersionFiles>,
    /// Each module's `list` file, by module.
    pub lists: BTreeMap<String, String>,
    /// Paths under `cache/download` whose module or version does not decode.
    pub problems: Vec<Problem>,
}

/// Sorts root-relative file paths into module versions; other paths are ignored.
pub fn inventory<'a>(paths: impl IntoIterator<Item = &'a str>) -> Inventory {
    let mut inv = Inventory::default();
    for path in paths {
        let file = match parse_download_path(path) {
            Ok(Some(file)) => file,
            Ok(None) => continue,
            Err(e) => {
                let fix = "remove it: Go never writes such a name".to_string();
                inv.problems.push(Problem { subject: path.to_string(), what: e.to_string(), fix });
                continue;
            }
        };
        let Some(version) = file.version else {
            inv.lists.insert(file.module, path.to_string());
            continue;
        };
        let files = inv.versions.entry((file.module, version)).or_default();
        let slot = match file.kind {
            FileKind::Info => &mut files.info,
            FileKind::Mod => &mut files.go_mod,
            FileKind::Zip => &mut files.zip,
            FileKind::ZipHash => &mut files.ziphash,
            FileKind::List | FileKind::Lock | FileKind::Partial => continue,
        };
        *slot = Some(path.to_string());
    }
    inv
}

/// What a verification found.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    /// Module versions seen.
    pub versions: u64,
    /// Zips whose hash was recomputed.
    pub zips: u64,
    /// go.sum lines compared with the cache.
    pub go_sum_lines_checked: u64,
    /// Everything wrong, in module order.
    pub problems: Vec<Problem>,
}

/// Checks every module version of `inv`, reading through `source`, against
/// the go.sum lines in `sums` (lines for versions the cache lacks are not
/// problems: a build may not need every zip go.sum names). Versions are
/// checked on as many threads as there are cores (hashing a zip means
/// inflating all of it); the problems come out in module order all the same.
pub fn verify(inv: &Inventory, source: &(dyn Source + Sync), sums: &[SumLine]) -> Outcome {
    let mut by_version: BTreeMap<(&str, &str), Vec<&SumLine>> = BTreeMap::new();
    for line in sums {
        by_version.entry((&line.module, &line.version)).or_default().push(line);
    }
    let versions: Vec<_> = inv.versions.iter().collect();
    let results = crate::parallel::map(
        &versions,
        8,
        || (),
        |_, ((module, version), files)| {
            let lines = by_version.get(&(module.as_str(), version.as_str())).map_or(&[][..], Vec::as_slice);
            verify_version(module, version, files, source, lines)
        },
    );
    let mut out = Outcome { problems: inv.problems.clone(), ..Outcome::default() };
    for one in results {
        out.versions += one.versions;
        out.zips += one.zips;
        out.go_sum_lines_checked += one.go_sum_lines_checked;
        out.problems.extend(one.problems);
    }
    out
}

/// Checks one module version's files against its go.sum `lines`.
fn verify_version(
    module: &str,
    version: &str,
    files: &VersionFiles,
    source: &dyn Source,
    lines: &[&SumLine],
) -> Outcome {
    let mut out = Outcome { versions: 1, ..Outcome::default() };
    let mut check = Check { module, version, source, problems: &mut out.problems };
    check.complete(files);
    check.info(files);
    let zip_hash = check.zip(files);
    let mod_hash = check.go_mod(files);
    let mut checked = 0;
    for line in lines.iter().filter(|l| l.hash.starts_with("h1:")) {
        let (have, what) = if line.go_mod_only { (&mod_hash, ".mod") } else { (&zip_hash, ".zip") };
        let Some(have) = have else { continue };
        checked += 1;
        if *have != line.hash {
            check.problem(
                format!("its {what} hashes to {have}, but go.sum says {}", line.hash),
                "the cache does not hold what go.sum expects: remove the version's files and download it again (or check go.sum)",
            );
        }
    }
    out.zips = u64::from(zip_hash.is_some());
    out.go_sum_lines_checked = checked;
    out
}

/// The checks of one module version.
struct Check<'a> {
    module: &'a str,
    version: &'a str,
    source: &'a dyn Source,
    problems: &'a mut Vec<Problem>,
}

impl Check<'_> {
    fn problem(&mut self, what: String, fix: &str) {
        let subject = format!("{}@{}", self.module, self.version);
        let files = super::download_path(self.module, self.version, FileKind::Zip)
            .map(|p| format!("{}.*", p.trim_end_matches(".zip")))
            .unwrap_or_else(|_| DOWNLOAD_DIR.to_string());
        let fix = fix.replace("the version's files", &files);
        let fix = format!("{fix}, then run `go mod download {subject}`");
        self.problems.push(Problem { subject, what, fix });
    }

    /// A version with a zip needs its .info, .mod and .ziphash; a .ziphash needs its zip.
    fn complete(&mut self, f: &VersionFiles) {
        let fix = "remove the version's files";
        if f.zip.is_some() {
            let missing: Vec<&str> = [(".info", &f.info), (".mod", &f.go_mod), (".ziphash", &f.ziphash)]
                .iter()
                .filter(|(_, p)| p.is_none())
                .map(|(n, _)| *n)
                .collect();
            if !missing.is_empty() {
                self.problem(format!("incomplete: it has a .zip but no {}", missing.join(", ")), fix);
            }
        } else if f.ziphash.is_some() {
            self.problem("incomplete: it has a .ziphash but no .zip".into(), fix);
        }
    }

    /// The .info is JSON naming this version.
    fn info(&mut self, f: &VersionFiles) {
        let Some(path) = &f.info else { return };
        let fix = "remove the version's files";
        let json = match self.source.read(path, MAX_SMALL) {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes),
            Err(e) => return self.problem(format!("cannot read its .info: {e}"), fix),
        };
        let named = json.ok().and_then(|v| v.get("Version").and_then(|v| v.as_str()).map(str::to_string));
        if named.as_deref() != Some(self.version) {
            self.problem(format!("its .info is not JSON naming version {}", self.version), fix);
        }
    }

    /// The zip's recomputed hash, compared with the .ziphash.
    fn zip(&mut self, f: &VersionFiles) -> Option<String> {
        let path = f.zip.as_ref()?;
        let fix = "remove the version's files";
        let prefix = format!("{}@{}/", self.module, self.version);
        let computed = match self.source.zip_hash(path, &prefix) {
            Ok(h) => h,
            Err(e) => {
                self.problem(format!("its .zip cannot be used: {e}"), fix);
                return None;
            }
        };
        let recorded = f.ziphash.as_ref().map(|p| self.source.read(p, MAX_SMALL));
        match recorded {
            Some(Ok(bytes)) => {
                let text = String::from_utf8_lossy(&bytes).trim().to_string();
                if text != computed {
                    self.problem(format!("its .zip hashes to {computed}, but its .ziphash says {text:?}"), fix);
                }
            }
            Some(Err(e)) => self.problem(format!("cannot read its .ziphash: {e}"), fix),
            None => {}
        }
        Some(computed)
    }

    /// The go.mod hash, for go.sum's `/go.mod` lines.
    fn go_mod(&mut self, f: &VersionFiles) -> Option<String> {
        let path = f.go_mod.as_ref()?;
        match self.source.read(path, MAX_GO_MOD) {
            Ok(bytes) => Some(dirhash::hash_go_mod(&bytes)),
            Err(e) => {
                self.problem(format!("cannot read its .mod: {e}"), "remove the version's files");
                None
            }
        }
    }
}

/// A module cache on the local disk.
pub struct LocalSource<'a> {
    /// The `GOMODCACHE` directory.
    pub root: &'a std::path::Path,
}

impl Source for LocalSource<'_> {
    fn read(&self, path: &str, max: u64) -> io::Result<Vec<u8>> {
        read_bounded(std::fs::File::open(self.root.join(path))?, max)
    }

    fn zip_hash(&self, path: &str, prefix: &str) -> Result<String, ZipCheckError> {
        dirhash::hash_zip(std::fs::File::open(self.root.join(path))?, prefix)
    }
}

/// The root-relative paths of the files under `root`'s download cache
/// (skipping the checksum database's cache and anything the profile never syncs).
///
/// # Errors
///
/// I/O errors walking the tree.
pub fn local_paths(root: &std::path::Path) -> io::Result<Vec<String>> {
    let top = root.join(DOWNLOAD_DIR);
    if !top.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("{}: no such directory", top.display())));
    }
    let mut out = Vec::new();
    for item in walkdir::WalkDir::new(&top).follow_links(false) {
        let item = item.map_err(io::Error::other)?;
        if !item.file_type().is_file() {
            continue;
        }
        if let Some(rel) = item.path().strip_prefix(root).ok().and_then(|p| p.to_str()) {
            out.push(rel.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_groups_files_by_version() {
        let inv = inventory([
            "cache/download/example.com/!a/@v/v1.0.0.zip",
            "cache/download/example.com/!a/@v/v1.0.0.mod",
            "cache/download/example.com/!a/@v/list",
            "cache/download/example.com/!a/@v/v1.0.0.lock",
            "cache/download/example.com/Bad/@v/v1.0.0.mod",
            "example.com/!a@v1.0.0/a.go",
        ]);
        let files = &inv.versions[&("example.com/A".to_string(), "v1.0.0".to_string())];
        assert!(files.zip.is_some() && files.go_mod.is_some() && files.ziphash.is_none());
        assert_eq!(inv.versions.len(), 1);
        assert_eq!(inv.lists.len(), 1);
        assert_eq!(inv.problems.len(), 1);
    }
}
