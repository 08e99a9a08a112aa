//! How durable a pull is, and what a later push or pull does about it.
//!
//! A cache can be rebuilt, so a pull does not wait for the disk (a `syncfs`
//! costs as much as a third of a restore). Instead, before its first write it
//! leaves a marker naming this boot. Files still appear whole (see
//! [`super::tree`]); only a machine restart before the kernel wrote them back
//! can lose them. The marker turns that case into a clear state:
//! - the next push of the root, in the same boot, runs one `syncfs` (cheap
//!   by then) and drops the marker;
//! - after a restart the tree is not trusted: a push is refused until a pull
//!   has re-checked every file, and that pull starts with no hash cache.
//!
//! With `transfer.fsync` (or where the boot id is unknown) a pull syncs
//! before it returns, as before, and leaves no marker.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{SyncError, root_id};
use crate::fsutil;

/// A pull of this root whose files may not be on disk yet.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    boot_id: String,
    /// When the pull started, seconds since the epoch.
    pulled_at: u64,
}

/// What became of the last unsynced pull of a root.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pending {
    /// None, or it was synced.
    Nothing,
    /// It happened in this boot: its files are at least in the page cache.
    ThisBoot,
    /// The machine restarted since: its files may be incomplete on disk.
    Rebooted {
        /// When that pull started, seconds since the epoch.
        pulled_at: u64,
    },
}

fn marker_path(state_dir: &Path, root: &Path) -> PathBuf {
    state_dir.join("unsynced").join(format!("{}.json", root_id(root)))
}

/// Reads the root's marker.
pub(super) fn pending(state_dir: &Path, root: &Path) -> Pending {
    let Ok(bytes) = std::fs::read(marker_path(state_dir, root)) else {
        return Pending::Nothing;
    };
    match (serde_json::from_slice::<Marker>(&bytes), fsutil::boot_id()) {
        (Ok(m), Some(now)) if m.boot_id == now => Pending::ThisBoot,
        (Ok(m), _) => Pending::Rebooted { pulled_at: m.pulled_at },
        (Err(_), _) => Pending::Rebooted { pulled_at: 0 },
    }
}

/// Leaves a marker before a pull writes into `root`. Returns false when it
/// could not (no boot id, or the state directory is not writable): the pull
/// must then sync before it returns.
pub(super) fn mark(state_dir: &Path, root: &Path) -> bool {
    let Some(boot_id) = fsutil::boot_id() else {
        return false;
    };
    let pulled_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let marker = serde_json::to_vec(&Marker { boot_id, pulled_at }).expect("markers serialize");
    // The marker itself must survive a crash, or a restart would go unnoticed.
    fsutil::write_atomic(&marker_path(state_dir, root), &marker, true).is_ok()
}

/// Drops the marker (after a sync).
pub(super) fn clear(state_dir: &Path, root: &Path) {
    let _ = std::fs::remove_file(marker_path(state_dir, root));
}

/// Before a push: makes an earlier pull of this boot durable, or refuses a
/// tree that an unsynced pull left before a restart.
///
/// # Errors
///
/// [`SyncError::Unsynced`] after a restart; the I/O error of `syncfs`.
pub(super) fn settle_before_push(state_dir: &Path, root: &Path) -> Result<(), SyncError> {
    match pending(state_dir, root) {
        Pending::Nothing => Ok(()),
        Pending::ThisBoot => {
            fsutil::syncfs(root).map_err(|source| super::tree::TreeError { path: root.to_path_buf(), source })?;
            clear(state_dir, root);
            Ok(())
        }
        Pending::Rebooted { pulled_at } => Err(SyncError::Unsynced { root: root.to_path_buf(), pulled_at }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_from_another_boot_means_a_restart() {
        let state = tempfile::tempdir().unwrap();
        let root = state.path().join("root");
        assert_eq!(pending(state.path(), &root), Pending::Nothing);
        assert!(mark(state.path(), &root), "this machine has a boot id");
        assert_eq!(pending(state.path(), &root), Pending::ThisBoot);
        let other = Marker { boot_id: "another-boot".into(), pulled_at: 7 };
        std::fs::write(marker_path(state.path(), &root), serde_json::to_vec(&other).unwrap()).unwrap();
        assert_eq!(pending(state.path(), &root), Pending::Rebooted { pulled_at: 7 });
        let refused = settle_before_push(state.path(), &root).unwrap_err();
        assert!(refused.to_string().contains("pull again"), "{refused}");
        clear(state.path(), &root);
        assert_eq!(pending(state.path(), &root), Pending::Nothing);
    }
}
