//! Small file-system helpers shared by the store and the tree writer.

use std::io;
use std::path::Path;

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
