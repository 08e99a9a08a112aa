//! Writing a snapshot into a destination root, safely.
//!
//! Every file appears whole, with its final mode and mtime already set, so a
//! reader (or a kill -9) sees the old content or the new, never a part: a new
//! file is written unnamed (`O_TMPFILE`) in its own directory and linked into
//! place; a file that replaces another, or any file where the file system
//! lacks unnamed files, is renamed from the root's staging directory. Directories named by the snapshot are
//! made real directories first, parents before children, so nothing is ever
//! written through a symlink; they are kept owner-writable while we work and
//! get their final (possibly read-only) modes and mtimes last, deepest first.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use filetime::FileTime;
use rayon::prelude::*;

use crate::fsutil;
use crate::hash::{Hash, HashingWriter};
use crate::manifest::{Entry, Manifest};
use crate::profile::STAGING_DIR;
use crate::rpc::frames::NewFile;

/// A failed file-system operation, with its path.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct TreeError {
    /// Where.
    pub path: PathBuf,
    /// What.
    #[source]
    pub source: io::Error,
}

type Result<T> = std::result::Result<T, TreeError>;

fn at(path: &Path) -> impl FnOnce(io::Error) -> TreeError + '_ {
    move |source| TreeError { path: path.to_path_buf(), source }
}

/// Opens `root` and takes an exclusive `flock` on it, without waiting.
fn lock_root(root: &Path) -> Result<fs::File> {
    use std::os::fd::AsRawFd;
    let dir = fs::File::open(root).map_err(at(root))?;
    // SAFETY: `dir` is an open descriptor for the duration of the call.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(dir);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        let why = "another pull is writing into this directory; try again when it has finished";
        return Err(TreeError { path: root.to_path_buf(), source: io::Error::new(io::ErrorKind::WouldBlock, why) });
    }
    Err(at(root)(e))
}

/// A destination root being written.
pub struct Tree {
    root: PathBuf,
    staging: PathBuf,
    counter: AtomicU64,
    fsync: bool,
    replace: bool,
    /// Unnamed files work here (probed at open).
    unnamed: bool,
    /// Existing directories made owner-writable, with their modes before:
    /// restored if the pull stops before [`Tree::finish`].
    unlocked: std::sync::Mutex<Vec<(PathBuf, u32)>>,
    finished: bool,
    /// The root, held with an exclusive `flock` while the tree is open: a
    /// second pull into it would remove this one's staging directory.
    _lock: fs::File,
}

impl Drop for Tree {
    /// A pull that failed leaves no staging directory and no directory whose
    /// mode it loosened (files already placed are complete and stay).
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let _ = remove_all(&self.staging);
        let unlocked = std::mem::take(&mut *self.unlocked.lock().unwrap_or_else(|e| e.into_inner()));
        for (path, mode) in unlocked.into_iter().rev() {
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(mode));
        }
    }
}

/// Most extra unnamed files one blob is written to at once (each holds a
/// file descriptor until the blob is complete).
pub(crate) const MAX_COPIES: usize = 16;

/// The directory part of a relative path ("" for the root).
fn parent(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(dir, _)| dir)
}

fn mtime(ns: i64) -> FileTime {
    FileTime::from_unix_time(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000) as u32)
}

impl Tree {
    /// Opens `root` (creating it), with a fresh staging directory. With
    /// `replace`, local entries of another kind standing where the snapshot
    /// has a directory, file or symlink are removed; without it, they are an error.
    ///
    /// # Errors
    ///
    /// I/O errors creating the root or staging directory.
    pub fn open(root: &Path, fsync: bool, replace: bool) -> Result<Tree> {
        fs::create_dir_all(root).map_err(at(root))?;
        let lock = lock_root(root)?;
        let mut tree = Tree {
            root: root.to_path_buf(),
            staging: root.join(STAGING_DIR),
            counter: AtomicU64::new(0),
            fsync,
            replace,
            unnamed: false,
            unlocked: Default::default(),
            finished: false,
            _lock: lock,
        };
        tree.unlock_dir(root)?;
        if fs::symlink_metadata(&tree.staging).is_ok() {
            remove_all(&tree.staging)?;
        }
        fs::create_dir(&tree.staging).map_err(at(&tree.staging))?;
        tree.unnamed = tree.probe_unnamed();
        Ok(tree)
    }

    /// The absolute path of a root-relative path.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// A new, empty staging file.
    ///
    /// # Errors
    ///
    /// I/O errors creating it.
    pub fn staging_file(&self) -> io::Result<(PathBuf, fs::File)> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.staging.join(format!("s{n}"));
        let file = fs::File::create_new(&path)?;
        Ok((path, file))
    }

    /// A file for the content of `rel`: unnamed in `rel`'s directory (which
    /// must exist) where the file system allows it, else in staging. An
    /// unnamed file comes with unnamed copies for up to [`MAX_COPIES`] of
    /// `others`, the other paths of the same content, so that the receiver
    /// writes each byte to all of them; fewer come back when a directory
    /// cannot take one, and the caller copies the rest itself.
    ///
    /// # Errors
    ///
    /// I/O errors creating it.
    pub(crate) fn new_file<'a>(&self, rel: &str, others: impl Iterator<Item = &'a str>) -> io::Result<NewFile> {
        if self.unnamed
            && let Ok(file) = fsutil::create_unnamed(&self.path(parent(rel)), 0o600)
        {
            let copies =
                others.take(MAX_COPIES).map_while(|o| fsutil::create_unnamed(&self.path(parent(o)), 0o600).ok());
            return Ok(NewFile { file, path: None, copies: copies.collect() });
        }
        self.staging_file().map(NewFile::named)
    }

    /// Names an unnamed file from [`Tree::new_file`] `entry.path`, with its
    /// mode and mtime; returns its metadata.
    ///
    /// # Errors
    ///
    /// I/O errors, with the path.
    pub(crate) fn place_unnamed(&self, file: &fs::File, entry: &Entry) -> Result<fs::Metadata> {
        let dest = self.path(&entry.path);
        file.set_permissions(fs::Permissions::from_mode(entry.mode)).map_err(at(&dest))?;
        filetime::set_file_handle_times(file, None, Some(mtime(entry.mtime_ns))).map_err(at(&dest))?;
        if self.fsync {
            file.sync_all().map_err(at(&dest))?;
        }
        match fsutil::link_unnamed(file, &dest) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Something stands there: name the file in staging and rename over it.
                let staged = self.staging.join(format!("u{}", self.counter.fetch_add(1, Ordering::Relaxed)));
                fsutil::link_unnamed(file, &staged).map_err(at(&staged))?;
                self.clear_for(&dest, true)?;
                fsutil::replace(&staged, &dest).map_err(at(&dest))?;
            }
            other => other.map_err(at(&dest))?,
        }
        file.metadata().map_err(at(&dest))
    }

    /// Whether unnamed files can be made and linked here (not every file
    /// system has `O_TMPFILE`; linking needs `/proc`).
    fn probe_unnamed(&self) -> bool {
        let probe = self.staging.join("probe");
        let works = fsutil::create_unnamed(&self.staging, 0o600).and_then(|f| fsutil::link_unnamed(&f, &probe)).is_ok();
        let _ = fs::remove_file(&probe);
        works
    }

    /// Makes the directory entries `dirs` of `manifest` (indices, parents
    /// first) real, owner-writable directories, replacing files or symlinks
    /// standing in their place.
    ///
    /// # Errors
    ///
    /// I/O errors, with the path.
    pub fn prepare_dirs(&self, manifest: &Manifest, dirs: &[usize]) -> Result<()> {
        for e in dirs.iter().map(|&i| &manifest.entries()[i]) {
            let path = self.path(&e.path);
            // Most are new: make first, look only when something is there.
            match fs::create_dir(&path) {
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                other => {
                    other.map_err(at(&path))?;
                    continue;
                }
            }
            let meta = fs::symlink_metadata(&path).map_err(at(&path))?;
            if meta.is_dir() {
                self.unlock_dir_from(&path, meta.permissions().mode())?;
            } else {
                self.check_replace(&path)?;
                fs::remove_file(&path).map_err(at(&path))?;
                fs::create_dir(&path).map_err(at(&path))?;
            }
        }
        Ok(())
    }

    /// Moves a verified staging file to `entry.path` with its mode and mtime.
    ///
    /// # Errors
    ///
    /// I/O errors, with the path.
    pub fn place_file(&self, staged: &Path, entry: &Entry) -> Result<()> {
        if self.fsync {
            fs::File::open(staged).and_then(|f| f.sync_all()).map_err(at(staged))?;
        }
        set_mode_and_mtime(staged, entry)?;
        let dest = self.path(&entry.path);
        self.clear_for(&dest, true)?;
        fsutil::replace(staged, &dest).map_err(at(&dest))
    }

    /// Copies a local file into staging (to be placed later), checking on
    /// the way that it still is `expected`; `None` when it is not (the
    /// caller fetches it instead).
    ///
    /// # Errors
    ///
    /// I/O errors, with the path.
    pub fn stage_copy(&self, from: &Path, expected: Hash) -> Result<Option<PathBuf>> {
        let (path, file) = self.staging_file().map_err(at(&self.staging))?;
        let mut source = fs::File::open(from).map_err(at(from))?;
        let mut writer = HashingWriter::new(io::BufWriter::new(file));
        io::copy(&mut source, &mut writer).map_err(at(from))?;
        let (actual, _, out) = writer.finish();
        out.into_inner().map_err(|e| at(&path)(e.into_error()))?;
        if actual == expected {
            return Ok(Some(path));
        }
        fs::remove_file(&path).map_err(at(&path))?;
        Ok(None)
    }

    /// Creates or replaces a symlink, atomically.
    ///
    /// # Errors
    ///
    /// I/O errors, with the path.
    pub fn place_symlink(&self, entry: &Entry, target: &str) -> Result<()> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.staging.join(format!("l{n}"));
        symlink(target, &tmp).map_err(at(&tmp))?;
        filetime::set_symlink_file_times(&tmp, mtime(entry.mtime_ns), mtime(entry.mtime_ns)).map_err(at(&tmp))?;
        let dest = self.path(&entry.path);
        self.clear_for(&dest, false)?;
        fs::rename(&tmp, &dest).map_err(at(&dest))
    }

    /// Sets mode and mtime of an existing file whose content is already right.
    ///
    /// # Errors
    ///
    /// I/O errors, with the path.
    pub fn fix_metadata(&self, entry: &Entry) -> Result<()> {
        set_mode_and_mtime(&self.path(&entry.path), entry)
    }

    /// A directory in the way of a file or symlink is removed (rename cannot replace it).
    /// A symlink where a file goes was not planned (the plan replaces known
    /// links only with `--delete`): it too needs `--delete`.
    fn clear_for(&self, dest: &Path, placing_file: bool) -> Result<()> {
        match fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() => {
                self.check_replace(dest)?;
                remove_all(dest)
            }
            Ok(m) if placing_file && m.file_type().is_symlink() => self.check_replace(dest),
            _ => Ok(()),
        }
    }

    /// Local entries the scan did not report (a symlink leaving the root, a
    /// name that is not UTF-8) may still stand in the way: only `--delete` removes them.
    fn check_replace(&self, path: &Path) -> Result<()> {
        if self.replace {
            return Ok(());
        }
        let why = "exists locally as another kind of entry than in the snapshot; pull with --delete to replace it";
        Err(TreeError { path: path.to_path_buf(), source: io::Error::new(io::ErrorKind::AlreadyExists, why) })
    }

    /// Removes a local entry the snapshot does not have.
    ///
    /// # Errors
    ///
    /// I/O errors, with the path.
    pub fn remove(&self, rel: &str) -> Result<()> {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            self.unlock_dir(parent)?;
        }
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => remove_all(&path),
            Ok(_) => fs::remove_file(&path).map_err(at(&path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(at(&path)(e)),
        }
    }

    /// Removes the staging directory, gives the directory entries `dirs` of
    /// `manifest` (those [`Tree::prepare_dirs`] had) their final modes and
    /// mtimes, deepest first, and with `sync` (or `fsync`) runs one `syncfs`.
    ///
    /// # Errors
    ///
    /// I/O errors, with the path.
    pub fn finish(mut self, manifest: &Manifest, dirs: &[usize], sync: bool) -> Result<()> {
        self.finished = true;
        remove_all(&self.staging)?;
        // Deepest first, so that no directory loses its search permission
        // before those under it are done; the directories of one depth on
        // every core (a mode or mtime set under a directory leaves its mtime).
        let mut by_depth: Vec<Vec<&Entry>> = Vec::new();
        for e in dirs.iter().map(|&i| &manifest.entries()[i]) {
            let depth = e.path.matches('/').count();
            if by_depth.len() <= depth {
                by_depth.resize_with(depth + 1, Vec::new);
            }
            by_depth[depth].push(e);
        }
        for level in by_depth.iter().rev() {
            level.par_iter().try_for_each(|e| set_mode_and_mtime(&self.path(&e.path), e))?;
        }
        if sync || self.fsync {
            fsutil::syncfs(&self.root).map_err(at(&self.root))?;
        }
        Ok(())
    }
}

impl Tree {
    /// Makes an existing directory owner-writable, remembering its mode.
    fn unlock_dir(&self, path: &Path) -> Result<()> {
        let mode = fs::symlink_metadata(path).map_err(at(path))?.permissions().mode();
        self.unlock_dir_from(path, mode)
    }

    /// [`Tree::unlock_dir`] for a directory whose mode is known to be `mode`.
    fn unlock_dir_from(&self, path: &Path, mode: u32) -> Result<()> {
        if let Some(mode) = make_writable(path, mode)? {
            self.unlocked.lock().unwrap_or_else(|e| e.into_inner()).push((path.to_path_buf(), mode));
        }
        Ok(())
    }
}

/// Gives a file or directory the entry's mode and mtime.
fn set_mode_and_mtime(path: &Path, entry: &Entry) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(entry.mode)).map_err(at(path))?;
    filetime::set_file_mtime(path, mtime(entry.mtime_ns)).map_err(at(path))
}

/// Makes a directory whose mode is `mode` owner-writable; returns its
/// previous mode if it changed.
fn make_writable(path: &Path, mode: u32) -> Result<Option<u32>> {
    if mode & 0o700 == 0o700 {
        return Ok(None);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700)).map_err(at(path))?;
    Ok(Some(mode & 0o7777))
}

/// Removes a directory tree, making read-only directories writable first
/// (Go's module trees are 0555). Never follows symlinks.
///
/// # Errors
///
/// I/O errors, with the path.
pub fn remove_all(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(at(path)(e)),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(at(path));
    }
    make_writable(path, meta.permissions().mode())?;
    for child in fs::read_dir(path).map_err(at(path))? {
        remove_all(&child.map_err(at(path))?.path())?;
    }
    fs::remove_dir(path).map_err(at(path))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::manifest::Content;

    fn entry(path: &str, data: &[u8]) -> Entry {
        let content = Content::File(Hash::of(data));
        Entry { path: path.into(), size: data.len() as u64, mode: 0o444, mtime_ns: 1_000_000_000_123, content }
    }

    #[test]
    fn directories_are_made_writable_and_get_their_modes_and_mtimes_last() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let dir = |path: &str, mode: u32, secs: i64| Entry {
            path: path.into(),
            size: 0,
            mode,
            mtime_ns: secs * 1_000_000_000 + 7,
            content: Content::Dir,
        };
        let mut entries = vec![dir("a", 0o555, 1), dir("a/b", 0o500, 2), dir("a/b/c", 0o700, 3), dir("z", 0o755, 4)];
        entries.extend((0..40).map(|i| dir(&format!("a/b/c/d{i}"), 0o555, 5 + i)));
        let m = Manifest::new(entries).unwrap();
        let all: Vec<usize> = (0..m.entries().len()).collect();
        let tree = Tree::open(&root, false, false).unwrap();
        tree.prepare_dirs(&m, &all).unwrap();
        for e in m.entries() {
            fs::write(root.join(&e.path).join("f"), b"x").unwrap(); // writable until the end
        }
        tree.finish(&m, &all, false).unwrap();
        for e in m.entries() {
            let meta = fs::metadata(root.join(&e.path)).unwrap();
            assert_eq!((meta.mode() & 0o777, meta.mtime(), meta.mtime_nsec()), (e.mode, e.mtime_ns / 1_000_000_000, 7));
        }
        crate::sync::tree::remove_all(&root).unwrap();
    }

    #[test]
    fn a_second_pull_into_a_root_is_refused_while_the_first_writes() {
        let dir = tempfile::tempdir().unwrap();
        let first = Tree::open(dir.path(), false, false).unwrap();
        let (staged, _) = first.staging_file().unwrap();
        let e = Tree::open(dir.path(), false, false).err().expect("the root is held");
        assert_eq!(e.source.kind(), io::ErrorKind::WouldBlock);
        assert!(e.to_string().contains("another pull is writing into this directory"), "{e}");
        assert!(staged.exists(), "the first pull's staging is untouched");
        drop(first);
        Tree::open(dir.path(), false, false).expect("free again once the first is done");
    }

    #[test]
    fn new_files_are_invisible_until_linked_whole_and_replace_what_stands_there() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let tree = Tree::open(&root, false, false).unwrap();
        fs::create_dir(root.join("d")).unwrap();
        for data in [&b"first"[..], b"second, longer"] {
            let mut new = tree.new_file("d/a", std::iter::empty()).unwrap();
            assert!(new.path.is_none(), "this file system has unnamed files");
            new.file.write_all(data).unwrap();
            let before: Vec<_> = fs::read_dir(root.join("d")).unwrap().flatten().map(|e| e.file_name()).collect();
            assert!(before.len() <= 1, "only the previous version is visible: {before:?}");
            let meta = tree.place_unnamed(&new.file, &entry("d/a", data)).unwrap();
            assert_eq!(fs::read(root.join("d/a")).unwrap(), data);
            let on_disk = fs::metadata(root.join("d/a")).unwrap();
            assert_eq!((on_disk.mode() & 0o777, on_disk.mtime_nsec(), on_disk.ino()), (0o444, 123, meta.ino()));
        }
        tree.finish(&Manifest::default(), &[], false).unwrap();
        assert!(!root.join(STAGING_DIR).exists());
    }
}
