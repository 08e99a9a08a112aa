//! Small Linux file-system helpers shared by the store and the tree writer:
//! `syncfs` and early writeback, unnamed files (`O_TMPFILE`), replacing by
//! exchange, and the boot id.

use std::io;
use std::path::{Path, PathBuf};

/// Flushes every dirty page of the file system holding `path` (`syncfs(2)`).
///
/// # Errors
///
/// The I/O error of opening `path` or of the call.
pub fn syncfs(path: &Path) -> io::Result<()> {
    let dir = std::fs::File::open(path)?;
    use std::os::fd::AsRawFd;
    // SAFETY: `dir` is an open descriptor for the duration of the call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Replaces `path` with `bytes` whole: they are written to a temporary file
/// beside it that is then renamed over it; missing parent directories are
/// created. With `durable`, the file and its directory are fsynced, so the
/// new content survives a crash.
///
/// # Errors
///
/// The first I/O error; `path` then keeps its old content.
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let (dir, tmp) = write_beside(path, bytes)?;
    if durable {
        std::fs::File::open(&tmp)?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if durable {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// [`write_atomic`] for a file its reader checks (by a hash kept elsewhere):
/// the new file takes the old one's place by [`replace`], so the call does
/// not wait for ext4 to write it back, and a crash may leave it short.
///
/// # Errors
///
/// The first I/O error; `path` then keeps its old content.
pub fn write_checked(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (_, tmp) = write_beside(path, bytes)?;
    replace(&tmp, path)
}

/// Writes `bytes` to a temporary file beside `path`, creating the
/// directory; returns the directory and the file.
fn write_beside<'p>(path: &'p Path, bytes: &[u8]) -> io::Result<(&'p Path, PathBuf)> {
    let dir = path.parent().ok_or_else(|| io::Error::other("a file path needs a parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    Ok((dir, tmp))
}

/// Creates an unnamed file in directory `dir` (`O_TMPFILE`), with `mode`
/// (less the umask): it has no name until [`link_unnamed`] gives it one, and
/// vanishes if the process dies first.
///
/// # Errors
///
/// The I/O error of the call; `EOPNOTSUPP`/`EISDIR`/`EINVAL` where the file
/// system or kernel lacks `O_TMPFILE`.
pub fn create_unnamed(dir: &Path, mode: u32) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC).mode(mode).open(dir)
}

/// Gives an unnamed file from [`create_unnamed`] the name `dest`, atomically,
/// failing with `AlreadyExists` if `dest` exists. `linkat` from the
/// descriptor itself (`AT_EMPTY_PATH`) where the process may, otherwise
/// through `/proc/self/fd`, which needs no privilege.
///
/// # Errors
///
/// The I/O error of the call.
pub fn link_unnamed(file: &std::fs::File, dest: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    // Cleared for good at the first refusal (it needs CAP_DAC_READ_SEARCH).
    static FROM_FD: AtomicBool = AtomicBool::new(true);
    let to = std::ffi::CString::new(dest.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let fd = file.as_raw_fd();
    if FROM_FD.load(Ordering::Relaxed) {
        // SAFETY: `to` is NUL-terminated and outlives the call; `file` keeps the descriptor open.
        let rc = unsafe { libc::linkat(fd, c"".as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_EMPTY_PATH) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // The destination's directory is missing: that says nothing of the privilege.
            Some(libc::ENOENT) if dest.parent().is_some_and(|p| !p.exists()) => return Err(e),
            Some(libc::ENOENT | libc::EPERM | libc::EINVAL) => FROM_FD.store(false, Ordering::Relaxed),
            _ => return Err(e),
        }
    }
    let from = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).map_err(io::Error::other)?;
    // SAFETY: both strings are NUL-terminated and outlive the call; `file` keeps the descriptor open.
    let rc =
        unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Puts the file at `from` in place of `to`, atomically, as `rename(2)`
/// does. When `to` exists the two names are swapped (`RENAME_EXCHANGE`) and
/// the old file, now at `from`, is unlinked: ext4 writes back a file renamed
/// over another before the rename returns (`auto_da_alloc`, 0.2 s for
/// 256 MiB), and it does not for an exchange.
///
/// # Errors
///
/// The I/O error of the rename; `from` then still holds the new file.
pub fn replace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        // The new file is in place; an old one left behind goes with the staging directory.
        let _ = std::fs::remove_file(from);
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // `to` is missing, or the file system cannot exchange: a plain rename.
        Some(libc::ENOENT | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => std::fs::rename(from, to),
        _ => Err(e),
    }
}

/// Bytes written to a file between two starts of their writeback.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Smaller files are left to the `syncfs`: a call per file costs more than
/// it saves, and the kernel's writeback merges them better.
const WRITEBACK_MIN: u64 = 1 << 20;

/// A file the disk starts writing while it is still being written, when
/// asked to: `sync_file_range(SYNC_FILE_RANGE_WRITE)` every
/// [`WRITEBACK_STEP`] bytes and at the end, without waiting. A store that
/// makes its blobs durable with one `syncfs` at commit then finds most of
/// them on disk already: the disk works while the rest arrives, not after.
/// Advisory: a failure here is left for the `syncfs` to report.
pub struct WritingBack {
    file: std::fs::File,
    on: bool,
    /// Bytes whose writeback was started, and bytes written.
    started: u64,
    written: u64,
}

impl WritingBack {
    /// Wraps `file`; with `on`, its writeback starts as it is written.
    pub fn new(file: std::fs::File, on: bool) -> Self {
        WritingBack { file, on, started: 0, written: 0 }
    }

    /// Starts the writeback of the rest (files of [`WRITEBACK_MIN`] bytes
    /// or more) and returns the file.
    pub fn finish(mut self) -> std::fs::File {
        if self.written >= WRITEBACK_MIN {
            self.start();
        }
        self.file
    }

    /// Starts the writeback of what was written since the last start.
    fn start(&mut self) {
        use std::os::fd::AsRawFd;
        if self.on && self.written > self.started {
            let (from, len) = (self.started as libc::off64_t, (self.written - self.started) as libc::off64_t);
            // SAFETY: `file` is an open descriptor for the duration of the call.
            unsafe { libc::sync_file_range(self.file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE) };
            self.started = self.written;
        }
    }
}

impl io::Write for WritingBack {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_STEP {
            self.start();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// This boot's identity (`/proc/sys/kernel/random/boot_id`): a different one
/// means the machine restarted, and whatever the page cache held may be lost.
pub fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string()).filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_puts_the_new_file_in_place_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (new, dest, other) = (dir.path().join("new"), dir.path().join("dest"), dir.path().join("other"));
        std::fs::write(&dest, b"old").unwrap();
        std::fs::hard_link(&dest, &other).unwrap();
        std::fs::write(&new, b"new").unwrap();
        replace(&new, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert!(!new.exists(), "the old file, swapped to the new one's name, is gone");
        assert_eq!(std::fs::read(&other).unwrap(), b"old", "another name of the old file keeps it");

        std::fs::write(&new, b"newer").unwrap();
        let fresh = dir.path().join("fresh");
        replace(&new, &fresh).unwrap();
        assert_eq!(std::fs::read(&fresh).unwrap(), b"newer");
        assert!(!new.exists());

        let missing = dir.path().join("missing");
        let e = replace(&missing, &dest).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(std::fs::read(&dest).unwrap(), b"new", "a failed replace leaves the destination alone");
    }

    #[test]
    fn written_files_replace_the_old_whole_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.bin");
        for (bytes, durable) in [(&b"first"[..], false), (b"second", true)] {
            write_atomic(&path, bytes, durable).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
        }
        let other = dir.path().join("other");
        std::fs::hard_link(&path, &other).unwrap();
        write_checked(&path, b"third").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"third");
        assert_eq!(std::fs::read(&other).unwrap(), b"second", "the old file was swapped out, not written over");
        write_checked(&dir.path().join("new/fresh.bin"), b"fresh").unwrap();
        let left: Vec<_> = walkdir::WalkDir::new(dir.path())
            .into_iter()
            .flatten()
            .filter(|e| e.path().extension() == Some("tmp".as_ref()))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
