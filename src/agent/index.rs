//! A root's entries as the agent last saw them, kept up to date at dirty
//! paths only: a change to one file of 100,000 costs one `lstat` (and one
//! read if its size, mtime or inode changed), not a walk of the root.
//!
//! Digests come from the hash cache (persisted under the state directory),
//! so a restart walks the root with `lstat` but reads only changed files.
//! Files modified within the settle time are left out and handed back as
//! deferred: they are still being written. Blocking: call from the blocking pool.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ops::Bound;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::hash::cache::{FileKey, HashCache};
use crate::manifest::{Content, Entry, Manifest, ManifestError};
use crate::profile::Profile;
use crate::scan::{self, ScanError};

/// What applying changes did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Some entry was added, removed or changed.
    pub changed: bool,
    /// Paths still being written (or waiting for a `.partial` marker to go): mark them dirty again.
    pub deferred: Vec<String>,
    /// Files read and hashed.
    pub hashed: u64,
}

/// An entry, ordered and found by its path alone (the path is not kept a
/// second time as a map key: a root's index is the agent's largest
/// structure). Compare whole entries with [`same`].
#[derive(Debug, Clone)]
struct ByPath(Entry);

impl PartialEq for ByPath {
    fn eq(&self, other: &Self) -> bool {
        self.0.path == other.0.path
    }
}

impl Eq for ByPath {}

impl PartialOrd for ByPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByPath {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.path.cmp(&other.0.path)
    }
}

impl Borrow<str> for ByPath {
    fn borrow(&self) -> &str {
        &self.0.path
    }
}

type Entries = BTreeSet<ByPath>;

/// The two sets hold the same entries, every field equal.
fn same(a: &Entries, b: &Entries) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0)
}

/// The entries of one root.
pub struct Index {
    root: PathBuf,
    profile: Profile,
    entries: Entries,
    cache: HashCache,
    manifest: Option<Arc<Manifest>>,
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

impl Index {
    /// An empty index of `root`, with the digests of an earlier run.
    pub fn new(root: &Path, profile: Profile, cache: HashCache) -> Index {
        Index { root: root.to_path_buf(), profile, entries: Entries::new(), cache, manifest: None }
    }

    /// The digests, to persist.
    pub fn cache(&self) -> &HashCache {
        &self.cache
    }

    /// Entries (files, directories, symlinks) known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Walks the whole root again (at start, on schedule, after dropped events).
    ///
    /// # Errors
    ///
    /// [`ScanError`] naming the path that could not be read.
    pub fn rescan(&mut self, settle: Duration) -> Result<Applied, ScanError> {
        let part = scan::scan_part(&self.root, "", true, self.profile, &self.cache)?;
        let mut fresh = HashCache::default();
        for (path, key, hash) in part.fresh {
            fresh.insert(path, key, hash);
        }
        self.cache = fresh;
        let old = std::mem::take(&mut self.entries);
        let mut applied = Applied { hashed: part.hashed_files, ..Applied::default() };
        self.insert_settled(part.entries, &old, settle, &mut applied);
        applied.changed = !same(&old, &self.entries);
        if applied.changed {
            self.manifest = None;
        }
        Ok(applied)
    }

    /// Looks again at each dirty path (`walk`: and everything under it).
    ///
    /// # Errors
    ///
    /// [`ScanError`] naming the path that could not be read.
    pub fn apply(&mut self, dirty: &[(String, bool)], settle: Duration) -> Result<Applied, ScanError> {
        let mut applied = Applied::default();
        for (path, walk) in dirty {
            self.apply_one(path, *walk, settle, &mut applied)?;
        }
        if applied.changed {
            self.manifest = None;
        }
        Ok(applied)
    }

    fn is_dir(&self, path: &str) -> bool {
        self.entries.get(path).is_some_and(|e| e.0.content == Content::Dir)
    }

    fn apply_one(&mut self, path: &str, walk: bool, settle: Duration, applied: &mut Applied) -> Result<(), ScanError> {
        if self.profile.skips(path) {
            return Ok(());
        }
        // A path under a directory we do not know yet: look at that directory, whole.
        let top_unknown = path.match_indices('/').map(|(i, _)| &path[..i]).find(|a| !self.is_dir(a));
        let (path, walk) = match top_unknown {
            Some(ancestor) => (ancestor.to_string(), true),
            None => (path.to_string(), walk),
        };
        if self.in_progress(&path) {
            applied.deferred.push(path);
            return Ok(());
        }
        let recursive = walk || !self.is_dir(&path);
        let part = scan::scan_part(&self.root, &path, recursive, self.profile, &self.cache)?;
        applied.hashed += part.hashed_files;
        for (p, key, hash) in part.fresh {
            self.cache.insert(p, key, hash);
        }
        let still_dir = part.entries.iter().any(|e| e.path == path && e.content == Content::Dir);
        let whole = recursive || !still_dir;
        let old = self.region(&path, whole);
        for e in &old {
            self.entries.remove(e.0.path.as_str());
        }
        self.insert_settled(part.entries, &old, settle, applied);
        applied.changed |= !same(&self.region(&path, whole), &old);
        Ok(())
    }

    /// The entry at `path`, and with `whole` every entry under it.
    fn region(&self, path: &str, whole: bool) -> Entries {
        let mut out = Entries::new();
        if let Some(e) = self.entries.get(path) {
            out.insert(e.clone());
        }
        if whole {
            let under = format!("{path}/");
            let after = (Bound::Included(under.as_str()), Bound::Unbounded);
            let inside = self.entries.range::<str, _>(after).take_while(|e| e.0.path.starts_with(&under));
            out.extend(inside.cloned());
        }
        out
    }

    /// Inserts `found`, except files modified within `settle`: those keep
    /// their `old` entry (if any) and are deferred.
    fn insert_settled(&mut self, found: Vec<Entry>, old: &Entries, settle: Duration, applied: &mut Applied) {
        let cutoff = now_ns().saturating_sub(settle.as_nanos() as i64);
        for e in found {
            if e.file_hash().is_some() && e.mtime_ns > cutoff {
                if let Some(previous) = old.get(e.path.as_str()) {
                    self.entries.replace(previous.clone());
                }
                applied.deferred.push(e.path);
                continue;
            }
            self.entries.replace(ByPath(e));
        }
    }

    /// A path whose profile marks work in progress with a `<path>.partial`
    /// file (Go's module cache, while a module is extracted) that exists.
    fn in_progress(&self, path: &str) -> bool {
        let marker = format!("{path}.partial");
        self.profile.skips(&marker) && std::fs::symlink_metadata(self.root.join(marker)).is_ok()
    }

    /// The manifest of the entries (computed once per change). Entries whose
    /// parent is not a known directory, and symlinks through unknown
    /// entries, are left out until their parent is seen.
    ///
    /// # Errors
    ///
    /// [`ManifestError`] if an entry is invalid (a path the scanner should not give).
    pub fn manifest(&mut self) -> Result<Arc<Manifest>, ManifestError> {
        if let Some(m) = &self.manifest {
            return Ok(m.clone());
        }
        let mut entries: Vec<Entry> = self
            .entries
            .iter()
            .map(|b| &b.0)
            .filter(|e| e.path.rsplit_once('/').is_none_or(|(parent, _)| self.is_dir(parent)))
            .cloned()
            .collect();
        scan::drop_links_through_unknown_entries(&mut entries);
        let m = Arc::new(Manifest::new(entries)?);
        self.manifest = Some(m.clone());
        Ok(m)
    }

    /// Drops the manifest kept since the last change (it is built again on demand).
    pub fn forget_manifest(&mut self) {
        self.manifest = None;
    }

    /// Takes in a snapshot just written to the root by a pull: its entries
    /// replace ours where the file on disk is what the snapshot says (size
    /// and mtime), so the content is not read again. Returns the paths that
    /// differ already (changed since): mark them dirty.
    pub fn overlay(&mut self, snapshot: &Manifest) -> Vec<String> {
        let mut differ = Vec::new();
        for e in snapshot.entries() {
            if self.profile.skips(&e.path) {
                continue;
            }
            let meta = match std::fs::symlink_metadata(self.root.join(&e.path)) {
                Ok(m) => m,
                Err(_) => {
                    differ.push(e.path.clone());
                    continue;
                }
            };
            if let Some(hash) = e.file_hash() {
                let key = FileKey { size: meta.len(), mtime_ns: scan::mtime_ns(&meta), ino: meta.ino() };
                if !meta.is_file() || key.size != e.size || key.mtime_ns != e.mtime_ns {
                    differ.push(e.path.clone());
                    continue;
                }
                self.cache.insert(e.path.clone(), key, hash);
            }
            if self.entries.get(e.path.as_str()).map(|b| &b.0) != Some(e) {
                self.entries.replace(ByPath(e.clone()));
                self.manifest = None;
            }
        }
        differ
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;

    fn write_old(root: &Path, rel: &str, data: &[u8]) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        filetime::set_file_mtime(&path, filetime::FileTime::from_unix_time(1_600_000_000, 0)).unwrap();
    }

    fn paths(index: &mut Index) -> Vec<String> {
        index.manifest().unwrap().entries().iter().map(|e| e.path.clone()).collect()
    }

    #[test]
    fn dirty_paths_update_only_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write_old(r, "a/one", b"1");
        write_old(r, "a/two", b"2");
        write_old(r, "b/three", b"3");
        let mut index = Index::new(r, Profile::Generic, HashCache::default());
        assert_eq!(index.rescan(Duration::ZERO).unwrap().hashed, 3);
        let first = index.manifest().unwrap().id();
        // Unchanged: nothing hashed, same manifest (the same Arc, not rebuilt).
        let same = index.apply(&[("a/one".into(), false)], Duration::ZERO).unwrap();
        assert!(!same.changed && same.hashed == 0);
        assert_eq!(index.manifest().unwrap().id(), first);
        // A changed file: only it is read.
        write_old(r, "a/two", b"two, longer");
        let changed = index.apply(&[("a/two".into(), false)], Duration::ZERO).unwrap();
        assert!(changed.changed);
        assert_eq!(changed.hashed, 1);
        let m = index.manifest().unwrap();
        assert_eq!(m.get("a/two").unwrap().file_hash(), Some(Hash::of(b"two, longer")));
        // A file under directories we never saw: the top new directory is walked.
        write_old(r, "n/e/w", b"new");
        index.apply(&[("n/e/w".into(), false)], Duration::ZERO).unwrap();
        assert_eq!(paths(&mut index), ["a", "a/one", "a/two", "b", "b/three", "n", "n/e", "n/e/w"]);
        // A removed directory takes its entries with it.
        std::fs::remove_dir_all(r.join("b")).unwrap();
        assert!(index.apply(&[("b".into(), true)], Duration::ZERO).unwrap().changed);
        assert_eq!(paths(&mut index), ["a", "a/one", "a/two", "n", "n/e", "n/e/w"]);
    }

    #[test]
    fn a_restart_walks_but_does_not_read_unchanged_files() {
        let (dir, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for i in 0..50 {
            write_old(dir.path(), &format!("d/f{i}"), format!("content {i}").as_bytes());
        }
        let mut index = Index::new(dir.path(), Profile::Generic, HashCache::default());
        assert_eq!(index.rescan(Duration::ZERO).unwrap().hashed, 50);
        let before = index.manifest().unwrap().id();
        super::super::state::RootState::default().save(state.path(), "tree", index.cache());
        let cache = super::super::state::RootState::load(state.path(), "tree").cache;
        let mut again = Index::new(dir.path(), Profile::Generic, cache);
        assert_eq!(again.rescan(Duration::ZERO).unwrap().hashed, 0);
        assert_eq!(again.manifest().unwrap().id(), before);
    }

    #[test]
    fn files_still_being_written_are_deferred() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write_old(r, "done", b"old");
        let mut index = Index::new(r, Profile::GoModTrees, HashCache::default());
        index.rescan(Duration::from_secs(2)).unwrap();
        std::fs::write(r.join("done"), b"being rewritten").unwrap();
        std::fs::write(r.join("fresh"), b"just written").unwrap();
        std::fs::write(r.join("x.lock"), b"").unwrap();
        let dirty = [("done".into(), false), ("fresh".into(), false), ("x.lock".into(), false)];
        let applied = index.apply(&dirty, Duration::from_secs(2)).unwrap();
        assert_eq!(applied.deferred, ["done", "fresh"]);
        assert!(!applied.changed, "the old entry stays until the file settles");
        assert_eq!(index.manifest().unwrap().get("done").unwrap().file_hash(), Some(Hash::of(b"old")));
        assert!(index.manifest().unwrap().get("x.lock").is_none(), "the profile skips locks");
        // A module directory is not taken while its .partial marker exists.
        write_old(r, "m@v1/go.mod", b"module m");
        std::fs::write(r.join("m@v1.partial"), b"").unwrap();
        assert_eq!(index.apply(&[("m@v1".into(), true)], Duration::ZERO).unwrap().deferred, ["m@v1"]);
        std::fs::remove_file(r.join("m@v1.partial")).unwrap();
        assert!(index.apply(&[("m@v1".into(), true)], Duration::ZERO).unwrap().changed);
        assert!(index.manifest().unwrap().get("m@v1/go.mod").is_some());
    }
}
