//! Cleaning a node's Go caches: remove what was not used for a while, or
//! beyond a size budget least recently used first, always keeping what
//! given go.sum files need.
//!
//! - Module cache: the unit is a module version, all of it: its files under
//!   `cache/download/<module>/@v/` and its extracted tree (read-only
//!   directories are made writable first); the module's `list` file is
//!   rewritten to the versions left. Go never touches a module's files when
//!   it uses them, but it reads the version's `.mod` on every build, so "last
//!   used" is the newest access or modification time of the version's
//!   files (and the modification time of its tree): with the default `relatime` mount option the access time
//!   moves at least once a day, which is the resolution `--older-than`
//!   needs. On a `noatime` mount it is the download time: a version is then
//!   removed N days after it was downloaded, used or not.
//! - Build cache: the unit is one entry file in the two-hex-digit
//!   directories; Go sets an entry's mtime each time it uses it (at most
//!   hourly), exactly what its own trim reads.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::gosum::SumLine;
use super::{DOWNLOAD_DIR, FileKind, download_path, parse_download_path};

/// What to remove.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Remove what was not used for this long.
    pub older_than: Option<Duration>,
    /// Then remove least recently used first until the total fits.
    pub max_size: Option<u64>,
    /// Module versions (`module@version`) never removed.
    pub keep: HashSet<String>,
}

impl Policy {
    /// Keeps every module version these go.sum lines name.
    pub fn keep_go_sum(&mut self, lines: &[SumLine]) {
        self.keep.extend(lines.iter().map(SumLine::name));
    }
}

/// One removable thing: a module version or a build-cache entry.
#[derive(Debug, Clone, Serialize)]
pub struct Unit {
    /// `module@version`, or the entry's path.
    pub name: String,
    /// Bytes it takes.
    pub bytes: u64,
    /// When it was last used, Unix seconds.
    pub last_used: i64,
    /// Root-relative paths to remove.
    #[serde(skip)]
    pub paths: Vec<String>,
    /// Module: the `list` file to rewrite afterwards, and the escaped version.
    #[serde(skip)]
    list: Option<(String, String)>,
}

/// What a clean-up removes.
#[derive(Debug, Default, Serialize)]
pub struct Plan {
    /// What goes, least recently used first.
    pub remove: Vec<Unit>,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Bytes the cache holds afterwards.
    pub bytes_left: u64,
}

/// Chooses what goes: units unused since `now - older_than`, then the least
/// recently used until at most `max_size` bytes are left; never a kept one.
pub fn choose(mut units: Vec<Unit>, policy: &Policy, now: SystemTime) -> Plan {
    units.sort_by_key(|u| (u.last_used, u.name.clone()));
    let mut total: u64 = units.iter().map(|u| u.bytes).sum();
    let cutoff = policy.older_than.map(|d| secs(now.checked_sub(d).unwrap_or(UNIX_EPOCH)));
    let mut plan = Plan::default();
    for u in units {
        let kept = policy.keep.contains(&u.name);
        let old = cutoff.is_some_and(|c| u.last_used < c);
        let over = policy.max_size.is_some_and(|max| total > max);
        if !kept && (old || over) {
            total -= u.bytes;
            plan.bytes_freed += u.bytes;
            plan.remove.push(u);
        }
    }
    plan.bytes_left = total;
    plan
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn used(meta: &std::fs::Metadata) -> i64 {
    meta.atime().max(meta.mtime())
}

/// The module versions of a module cache, with their sizes and last use.
///
/// # Errors
///
/// I/O errors reading the cache.
pub fn module_units(root: &Path) -> io::Result<Vec<Unit>> {
    let mut units: BTreeMap<(String, String), Unit> = BTreeMap::new();
    let top = root.join(DOWNLOAD_DIR);
    for item in walkdir::WalkDir::new(&top).follow_links(false) {
        let item = item.map_err(io::Error::other)?;
        let Some(rel) = item.path().strip_prefix(root).ok().and_then(|p| p.to_str()) else { continue };
        let Ok(Some(file)) = parse_download_path(rel) else { continue };
        let Some(version) = file.version else { continue };
        let meta = item.metadata().map_err(io::Error::other)?;
        let key = (file.module.clone(), version.clone());
        let unit = units.entry(key).or_insert_with(|| new_unit(&file.module, &version));
        unit.bytes += meta.len();
        unit.last_used = unit.last_used.max(used(&meta));
        unit.paths.push(rel.to_string());
    }
    for unit in units.values_mut() {
        let Some(tree) = unit.paths.first().and_then(|p| tree_of(p)) else { continue };
        let Ok(meta) = std::fs::symlink_metadata(root.join(&tree)) else { continue };
        // A directory's access time moves whenever anything lists it: only its mtime counts.
        unit.last_used = unit.last_used.max(meta.mtime());
        for item in walkdir::WalkDir::new(root.join(&tree)).follow_links(false).into_iter().flatten() {
            if let Ok(m) = item.metadata() {
                unit.bytes += m.len();
            }
        }
        unit.paths.push(tree);
    }
    Ok(units.into_values().collect())
}

fn new_unit(module: &str, version: &str) -> Unit {
    let list = download_path(module, version, FileKind::List).ok();
    let escaped = download_path(module, version, FileKind::Mod)
        .ok()
        .and_then(|p| p.rsplit('/').next().map(|n| n.trim_end_matches(".mod").to_string()));
    Unit { name: format!("{module}@{version}"), bytes: 0, last_used: 0, paths: Vec::new(), list: list.zip(escaped) }
}

/// `cache/download/<m>/@v/<v>.<ext>` → the extracted tree `<m>@<v>`.
fn tree_of(download_file: &str) -> Option<String> {
    let rest = download_file.strip_prefix(DOWNLOAD_DIR)?.strip_prefix('/')?;
    let (module, file) = rest.rsplit_once("/@v/")?;
    let version = file.rsplit_once('.')?.0;
    Some(format!("{module}@{version}"))
}

/// The entries of a build cache, with their sizes and last use (mtime).
///
/// # Errors
///
/// I/O errors reading the cache.
pub fn build_units(root: &Path) -> io::Result<Vec<Unit>> {
    let mut units = Vec::new();
    for item in walkdir::WalkDir::new(root).min_depth(2).max_depth(2).follow_links(false) {
        let item = item.map_err(io::Error::other)?;
        let Some(rel) = item.path().strip_prefix(root).ok().and_then(|p| p.to_str()) else { continue };
        if !item.file_type().is_file() || !super::rules::go_build_immutable(rel) {
            continue;
        }
        let meta = item.metadata().map_err(io::Error::other)?;
        let (name, paths) = (rel.to_string(), vec![rel.to_string()]);
        units.push(Unit { name, bytes: meta.len(), last_used: meta.mtime(), paths, list: None });
    }
    Ok(units)
}

/// Removes what `plan` chose, then rewrites the `list` files of modules
/// that lost versions. Read-only trees are made writable first.
///
/// # Errors
///
/// The first I/O error, with its path; what was removed before it stays removed.
pub fn execute(root: &Path, plan: &Plan) -> Result<(), crate::sync::tree::TreeError> {
    let mut lists: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for unit in &plan.remove {
        for p in &unit.paths {
            let path = root.join(p);
            if let Some(parent) = path.parent() {
                make_writable(parent)?;
            }
            crate::sync::tree::remove_all(&path)?;
        }
        if let Some((list, version)) = &unit.list {
            lists.entry(list.clone()).or_default().push(version.clone());
        }
    }
    for (list, _) in lists {
        rewrite_list(&root.join(list))
            .map_err(|source| crate::sync::tree::TreeError { path: root.join("list"), source })?;
    }
    Ok(())
}

fn make_writable(dir: &Path) -> Result<(), crate::sync::tree::TreeError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| crate::sync::tree::TreeError { path: dir.to_path_buf(), source };
    let mode = std::fs::symlink_metadata(dir).map_err(err)?.permissions().mode();
    if mode & 0o200 == 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700)).map_err(err)?;
    }
    Ok(())
}

/// Keeps the versions of a `list` file whose `.mod` is still there (as Go
/// lists only versions it can supply a go.mod for); removes an empty list.
fn rewrite_list(list: &PathBuf) -> io::Result<()> {
    let Ok(text) = std::fs::read_to_string(list) else { return Ok(()) };
    let dir = list.parent().expect("list files have a parent");
    let left: Vec<&str> = text
        .lines()
        .filter(|v| {
            let escaped = super::escape_version(v.trim()).unwrap_or_default();
            !escaped.is_empty() && dir.join(format!("{escaped}.mod")).exists()
        })
        .collect();
    if left.is_empty() {
        return std::fs::remove_file(list);
    }
    let tmp = dir.join("list.cachesync-gc.tmp");
    std::fs::write(&tmp, left.iter().map(|v| format!("{v}\n")).collect::<String>())?;
    std::fs::rename(&tmp, list)
}

/// Parses a size: a number with an optional unit, `B`, `KiB`, `MiB`,
/// `GiB`, `TiB` (or `K`, `M`, `G`, `T`, also binary) or `KB`, `MB`, `GB`, `TB` (decimal).
///
/// # Errors
///
/// A message naming the text.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("invalid size {text:?}: expected e.g. 10GiB or 500MB"))?;
    let factor: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "KiB" => 1024.0,
        "M" | "MiB" => 1024f64.powi(2),
        "G" | "GiB" => 1024f64.powi(3),
        "T" | "TiB" => 1024f64.powi(4),
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {unit:?} (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ));
        }
    };
    Ok((n * factor) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str, bytes: u64, last_used: i64) -> Unit {
        Unit { name: name.into(), bytes, last_used, paths: vec![], list: None }
    }

    #[test]
    fn old_then_least_recently_used_go_and_kept_ones_stay() {
        let now = UNIX_EPOCH + Duration::from_secs(100 * 86_400);
        let units = vec![unit("a@v1", 10, 10 * 86_400), unit("b@v1", 10, 95 * 86_400), unit("c@v1", 10, 99 * 86_400)];
        let mut policy = Policy { older_than: Some(Duration::from_secs(30 * 86_400)), ..Policy::default() };
        let plan = choose(units.clone(), &policy, now);
        assert_eq!(plan.remove.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), ["a@v1"]);
        assert_eq!((plan.bytes_freed, plan.bytes_left), (10, 20));
        policy.max_size = Some(10);
        policy.keep.insert("b@v1".into());
        let plan = choose(units, &policy, now);
        assert_eq!(plan.remove.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), ["a@v1", "c@v1"], "b is kept");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1.5K").unwrap(), 1536);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("10XB").is_err());
        assert_eq!(tree_of("cache/download/example.com/!a/@v/v1.0.0.zip").as_deref(), Some("example.com/!a@v1.0.0"));
    }
}
