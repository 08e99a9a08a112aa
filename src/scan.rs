//! Scanning a root: walk it, and build its [`Manifest`].
//!
//! The walk runs on rayon's pool, a task per directory, and looks at each
//! entry relative to its directory's descriptor (no path walk per file).
//! Files whose (size, mtime, inode) match the hash cache are not read; the
//! others are hashed in parallel on the same pool (large ones on several
//! cores). The root is followed if it is a symlink; nothing under it is.
//! Names that are not UTF-8, special files and symlinks that leave the root
//! are skipped with a warning; entries that vanish during the walk are
//! skipped. This module reads; it never writes to the root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use tracing::{debug, warn};

use crate::hash::cache::{FileKey, HashCache};
use crate::hash::{self, Hash};
use crate::manifest::{self, Content, Entry, Manifest, ManifestError};
use crate::profile::Profile;

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// Reading the tree failed at a path.
    #[error("{}: {source}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        #[source]
        source: std::io::Error,
    },
    /// The tree produced an invalid manifest (should not happen for a real tree).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// A finished scan.
#[derive(Debug)]
pub struct Scan {
    /// The root's manifest.
    pub manifest: Manifest,
    /// Files read and hashed (not found in the cache).
    pub hashed_files: u64,
    /// Bytes read and hashed.
    pub hashed_bytes: u64,
}

/// A file seen by the walk, before hashing.
struct Pending {
    entry: Entry,
    key: FileKey,
}

/// Scans `root`, reusing and then refreshing `cache`.
///
/// # Errors
///
/// [`ScanError::Io`] naming the path that could not be read.
pub fn scan(root: &Path, profile: Profile, cache: &mut HashCache) -> Result<Scan, ScanError> {
    let part = scan_part(root, "", true, profile, cache)?;
    let mut fresh = HashCache::default();
    // Every digest a scan that hashed nothing keeps came from the cache: the
    // same count means the same cache.
    let same = !cache.changed() && part.hashed_files == 0 && part.fresh.len() == cache.len();
    for (path, key, hash) in part.fresh {
        fresh.insert(path, key, hash);
    }
    if same {
        fresh.mark_saved();
    }
    *cache = fresh;
    let mut entries = part.entries;
    drop_links_through_unknown_entries(&mut entries);
    let manifest = Manifest::new(entries)?;
    let hashed_files = part.hashed_files;
    debug!(root = %root.display(), entries = manifest.entries().len(), hashed_files, "scan finished");
    Ok(Scan { manifest, hashed_files, hashed_bytes: part.hashed_bytes })
}

/// The entries at and under one path of a root, unsorted and unchecked.
#[derive(Debug, Default)]
pub(crate) struct Part {
    /// Files (hashed), directories and symlinks found.
    pub entries: Vec<Entry>,
    /// Digests worth caching: files not modified in the last two seconds.
    pub fresh: Vec<(String, FileKey, Hash)>,
    /// Files read and hashed.
    pub hashed_files: u64,
    /// Bytes read and hashed.
    pub hashed_bytes: u64,
}

/// Scans `sub` (a root-relative path, `""` for the whole root) of `root`:
/// the entry at `sub` itself (unless it is the root), and with `recursive`
/// everything under it. A `sub` that does not exist gives no entries. Paths
/// are relative to `root`; `cache` is only read.
///
/// # Errors
///
/// [`ScanError::Io`] naming the path that could not be read.
pub(crate) fn scan_part(
    root: &Path,
    sub: &str,
    recursive: bool,
    profile: Profile,
    cache: &HashCache,
) -> Result<Part, ScanError> {
    let started = SystemTime::now();
    let Found { mut entries, pending } = match walk(root, sub, recursive, profile) {
        Err(ScanError::Io { source, .. }) if !sub.is_empty() && source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Part::default());
        }
        other => other?,
    };
    let results: Vec<Result<Option<(Pending, bool)>, ScanError>> =
        pending.into_par_iter().map(|p| hash_pending(root, p, cache)).collect();
    let mut part = Part::default();
    // A file modified in the last two seconds could change again within the
    // same mtime tick: never trust its cache entry next time.
    let racy = nanos(started.checked_sub(Duration::from_secs(2)).unwrap_or(UNIX_EPOCH));
    for result in results {
        let Some((p, was_hashed)) = result? else { continue };
        if was_hashed {
            part.hashed_files += 1;
            part.hashed_bytes += p.entry.size;
        }
        if p.key.mtime_ns < racy {
            let h = p.entry.file_hash().expect("pending entries are files");
            part.fresh.push((p.entry.path.clone(), p.key, h));
        }
        entries.push(p.entry);
    }
    part.entries = entries;
    Ok(part)
}

/// What a walk found: entries, and the files among them still to hash.
#[derive(Default)]
struct Found {
    entries: Vec<Entry>,
    pending: Vec<Pending>,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ScanError + '_ {
    move |source| ScanError::Io { path: path.to_path_buf(), source }
}

fn walk(root: &Path, sub: &str, recursive: bool, profile: Profile) -> Result<Found, ScanError> {
    if sub.is_empty() {
        return walk_tree(root, "", profile);
    }
    let mut found = Found::default();
    if !profile.skips(sub) {
        let path = root.join(sub);
        let meta = std::fs::symlink_metadata(&path).map_err(io_at(&path))?;
        describe(|| path.clone(), sub.to_owned(), &meta, &mut found);
        if recursive && meta.is_dir() {
            found.append(walk_tree(&path, sub, profile)?);
        }
    }
    Ok(found)
}

impl Found {
    fn append(&mut self, mut other: Found) {
        self.entries.append(&mut other.entries);
        self.pending.append(&mut other.pending);
    }
}

/// Walks everything under `dir` (at `rel`): a rayon task per
/// directory, queued rather than nested, so that no depth of tree grows the
/// stack. The first error stops the walk.
fn walk_tree(dir: &Path, rel: &str, profile: Profile) -> Result<Found, ScanError> {
    let (found, failed) = (Mutex::new(Found::default()), Mutex::new(None));
    rayon::scope(|s| walk_dir(s, dir.to_path_buf(), rel.to_owned(), profile, &found, &failed));
    match failed.into_inner().expect("walk lock") {
        Some(e) => Err(e),
        None => Ok(found.into_inner().expect("walk lock")),
    }
}

fn walk_dir<'s>(
    s: &rayon::Scope<'s>,
    dir: PathBuf,
    rel: String,
    profile: Profile,
    found: &'s Mutex<Found>,
    failed: &'s Mutex<Option<ScanError>>,
) {
    if failed.lock().expect("walk lock").is_some() {
        return;
    }
    match read_dir(&dir, &rel, profile) {
        Ok((here, subdirs)) => {
            found.lock().expect("walk lock").append(here);
            for (dir, rel) in subdirs {
                s.spawn(move |s| walk_dir(s, dir, rel, profile, found, failed));
            }
        }
        Err(e) => {
            failed.lock().expect("walk lock").get_or_insert(e);
        }
    }
}

/// What `dir` (at `rel`) holds, and its subdirectories. A directory that
/// vanished holds nothing.
fn read_dir(dir: &Path, rel: &str, profile: Profile) -> Result<(Found, Vec<(PathBuf, String)>), ScanError> {
    let (mut here, mut subdirs) = (Found::default(), Vec::new());
    let items = match std::fs::read_dir(dir) {
        Err(e) if !rel.is_empty() && e.kind() == std::io::ErrorKind::NotFound => return Ok((here, subdirs)),
        other => other.map_err(io_at(dir))?,
    };
    for item in items {
        let item = item.map_err(io_at(dir))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else {
            warn!(path = %item.path().display(), "skipping a name that is not UTF-8");
            continue;
        };
        let child = match rel.is_empty() {
            true => name.to_owned(),
            false => {
                let mut child = String::with_capacity(rel.len() + 1 + name.len());
                child.extend([rel, "/", name]);
                child
            }
        };
        if profile.skips(&child) {
            continue;
        }
        let meta = match item.metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_at(&item.path())(e)),
        };
        if meta.is_dir() {
            subdirs.push((item.path(), child.clone()));
        }
        describe(|| item.path(), child, &meta, &mut here);
    }
    Ok((here, subdirs))
}

/// What one walked path is: an entry now, or a file to hash. `path` gives
/// its full path, needed only for a symlink.
fn describe(path: impl FnOnce() -> PathBuf, rel: String, meta: &std::fs::Metadata, found: &mut Found) {
    let base = |content| Entry {
        path: rel.clone(),
        size: 0,
        mode: meta.permissions().mode() & manifest::MODE_MASK,
        mtime_ns: mtime_ns(meta),
        content,
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        found.entries.push(base(Content::Dir));
    } else if ft.is_file() {
        let key = FileKey { size: meta.len(), mtime_ns: mtime_ns(meta), ino: meta.ino() };
        let mut entry = base(Content::File(Hash::from_bytes([0; 32])));
        entry.size = meta.len();
        found.pending.push(Pending { entry, key });
    } else if ft.is_symlink() {
        if let Some(entry) = symlink_entry(&path(), &rel, base(Content::Dir)) {
            found.entries.push(entry);
        }
    } else {
        debug!(path = %rel, "skipping a special file");
    }
}

/// A symlink whose target passes through a local link (or anything but a
/// directory of the root) cannot be described safely: skip it, as the pull
/// side would refuse it.
pub(crate) fn drop_links_through_unknown_entries(entries: &mut Vec<Entry>) {
    if !entries.iter().any(|e| matches!(e.content, Content::Symlink(_))) {
        return;
    }
    let dirs: std::collections::HashSet<String> =
        entries.iter().filter(|e| e.content == Content::Dir).map(|e| e.path.clone()).collect();
    let dirs: std::collections::HashSet<&str> = dirs.iter().map(String::as_str).collect();
    entries.retain(|e| match &e.content {
        Content::Symlink(target) => match manifest::check_symlink_within(&e.path, target, &dirs) {
            Ok(()) => true,
            Err(err) => {
                warn!(path = %e.path, "skipping symlink: {err}");
                false
            }
        },
        _ => true,
    });
}

fn symlink_entry(path: &Path, rel: &str, mut entry: Entry) -> Option<Entry> {
    let target = std::fs::read_link(path).ok()?;
    let Some(target) = target.to_str() else {
        warn!(path = %rel, "skipping a symlink whose target is not UTF-8");
        return None;
    };
    if let Err(e) = manifest::check_symlink_target(rel, target) {
        warn!(path = %rel, "skipping symlink: {e}");
        return None;
    }
    entry.mode = 0o777;
    entry.content = Content::Symlink(target.to_string());
    Some(entry)
}

fn hash_pending(root: &Path, mut p: Pending, cache: &HashCache) -> Result<Option<(Pending, bool)>, ScanError> {
    if let Some(h) = cache.get(&p.entry.path, &p.key) {
        p.entry.content = Content::File(h);
        return Ok(Some((p, false)));
    }
    let full = root.join(&p.entry.path);
    match hash::hash_file(&full) {
        Ok((h, len)) => {
            p.entry.content = Content::File(h);
            if len != p.entry.size {
                // Changed while we looked: describe what we hashed, never cache it.
                p.entry.size = len;
                p.key.mtime_ns = i64::MAX;
            }
            Ok(Some((p, true)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ScanError::Io { path: full, source }),
    }
}

/// Modification time in nanoseconds, saturating far outside 1678–2262.
pub(crate) fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec())
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn old(path: &Path) {
        let t = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        filetime::set_file_mtime(path, t).unwrap();
    }

    #[test]
    fn scan_sees_files_dirs_symlinks_and_skips_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/ü.txt"), b"hi").unwrap();
        std::fs::write(r.join("empty"), b"").unwrap();
        symlink("b/ü.txt", r.join("a/ok")).unwrap();
        symlink("/etc/passwd", r.join("evil")).unwrap();
        std::fs::create_dir_all(r.join(".cachesync.tmp")).unwrap();
        std::fs::write(r.join(".cachesync.tmp/partial"), b"x").unwrap();
        let s = scan(r, Profile::Generic, &mut HashCache::default()).unwrap();
        let paths: Vec<_> = s.manifest.entries().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "a/b", "a/b/ü.txt", "a/ok", "empty"]);
        assert_eq!(s.manifest.get("a/b/ü.txt").unwrap().file_hash(), Some(Hash::of(b"hi")));
        assert_eq!(s.manifest.get("a/ok").unwrap().content, Content::Symlink("b/ü.txt".into()));
    }

    #[test]
    fn a_root_that_is_a_symlink_is_followed_and_nothing_under_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir_all(real.join("a/b")).unwrap();
        std::fs::write(real.join("a/b/f"), b"f").unwrap();
        symlink("a", real.join("l")).unwrap();
        symlink(&real, dir.path().join("root")).unwrap();
        let s = scan(&dir.path().join("root"), Profile::Generic, &mut HashCache::default()).unwrap();
        let paths: Vec<_> = s.manifest.entries().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "a/b", "a/b/f", "l"]);
        assert_eq!(s.manifest.get("l").unwrap().content, Content::Symlink("a".into()));
    }

    #[test]
    fn a_tree_as_deep_as_paths_allow_is_walked() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("r").join(["d"; 1800].join("/"));
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), b"bottom").unwrap();
        let s = scan(&dir.path().join("r"), Profile::Generic, &mut HashCache::default()).unwrap();
        assert_eq!(s.manifest.entries().len(), 1801);
        assert_eq!(s.manifest.file_count(), 1);
    }

    #[test]
    fn links_through_other_links_are_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("d")).unwrap();
        symlink("..", r.join("d/up")).unwrap();
        symlink("d/up/..", r.join("esc")).unwrap();
        let s = scan(r, Profile::Generic, &mut HashCache::default()).unwrap();
        let paths: Vec<_> = s.manifest.entries().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["d", "d/up"]);
    }

    #[test]
    fn unchanged_files_are_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for i in 0..10 {
            std::fs::write(r.join(format!("f{i}")), format!("content {i}")).unwrap();
            old(&r.join(format!("f{i}")));
        }
        let mut cache = HashCache::default();
        assert_eq!(scan(r, Profile::Generic, &mut cache).unwrap().hashed_files, 10);
        assert_eq!(scan(r, Profile::Generic, &mut cache).unwrap().hashed_files, 0);
        std::fs::write(r.join("f3"), b"changed, and longer").unwrap();
        old(&r.join("f3"));
        let s = scan(r, Profile::Generic, &mut cache).unwrap();
        assert_eq!(s.hashed_files, 1);
        assert_eq!(s.manifest.get("f3").unwrap().file_hash(), Some(Hash::of(b"changed, and longer")));
    }

    #[test]
    fn recently_modified_files_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("new"), b"x").unwrap();
        let mut cache = HashCache::default();
        scan(dir.path(), Profile::Generic, &mut cache).unwrap();
        assert!(cache.is_empty());
    }
}
