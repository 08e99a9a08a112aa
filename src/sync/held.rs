//! The manifest a root was last pulled from or pushed as, kept in the state
//! directory next to its base record (`bases/<root id>.json`), so that the
//! next pull or push moves a manifest diff against it instead of the whole
//! manifest.
//!
//! One file per root, replaced atomically, never larger than a manifest the
//! protocol accepts. It is trusted only when its blake3 is the manifest id of
//! the base record: a file that was tampered with, that a crash left older
//! than the record, or that a transfer stored before it stopped, is ignored
//! (the manifest then travels whole).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, warn};

use super::{load_base, root_id};
use crate::hash::Hash;
use crate::manifest::{Known, Manifest};
use crate::rpc::MAX_MANIFEST;

fn held_path(state_dir: &Path, root: &Path) -> PathBuf {
    state_dir.join("bases").join(format!("{}.manifest.bin", root_id(root)))
}

/// The manifest `root` was last pulled from or pushed as, if its stored copy
/// matches the base record. The read starts at once, on the blocking pool.
pub fn load(state_dir: &Path, root: &Path) -> impl Future<Output = Option<Known>> + use<> {
    let (state_dir, root) = (state_dir.to_path_buf(), root.to_path_buf());
    let loading = tokio::task::spawn_blocking(move || load_blocking(&state_dir, &root));
    async move { loading.await.expect("load task panicked") }
}

fn load_blocking(state_dir: &Path, root: &Path) -> Option<Known> {
    let id = Hash::from_hex(&load_base(state_dir, root)?.manifest).ok()?;
    read_known(&held_path(state_dir, root), id)
}

/// The manifest stored at `path`, if it is `id`. It was validated before
/// this program stored it: matching `id` is enough.
fn read_known(path: &Path, id: Hash) -> Option<Known> {
    let len = std::fs::metadata(path).ok()?.len();
    let bytes = (len <= MAX_MANIFEST).then(|| std::fs::read(path).ok()).flatten()?;
    match Manifest::decode_stored(&bytes, &id) {
        Ok(manifest) => Some(Known { id, manifest: Arc::new(manifest) }),
        Err(e) => {
            // A transfer that stopped after storing its manifest leaves this too.
            debug!(path = %path.display(), manifest = %id, error = %e, "the stored base manifest is not the one its record names; ignoring it");
            None
        }
    }
}

/// Stores `manifest` as what `root` holds. The write starts at once, on the
/// blocking pool; await it before writing the base record that names the
/// manifest. A failure is logged: the next transfer then moves the whole
/// manifest.
pub fn save(state_dir: &Path, root: &Path, manifest: Arc<Manifest>) -> impl Future<Output = ()> + use<> {
    let written = write(held_path(state_dir, root), manifest);
    async move {
        written.await;
    }
}

fn parked_path(state_dir: &Path, root: &Path) -> PathBuf {
    state_dir.join("bases").join(format!("{}.parked.bin", root_id(root)))
}

/// Parks `manifest`, what the agent's destinations hold for `root`, on disk
/// while the agent is idle, so that memory does not hold it; true when stored.
pub async fn park(state_dir: &Path, root: &Path, manifest: Arc<Manifest>) -> bool {
    write(parked_path(state_dir, root), manifest).await
}

/// The manifest parked for `root`, if it is `id`.
pub async fn unpark(state_dir: &Path, root: &Path, id: Hash) -> Option<Known> {
    let path = parked_path(state_dir, root);
    tokio::task::spawn_blocking(move || read_known(&path, id)).await.expect("load task panicked")
}

/// Starts writing `manifest` to `path`; the future tells whether it was stored.
fn write(path: PathBuf, manifest: Arc<Manifest>) -> impl Future<Output = bool> {
    let saving = tokio::task::spawn_blocking(move || {
        let bytes = manifest.encode();
        (bytes.len() as u64 <= MAX_MANIFEST).then(|| crate::fsutil::write_checked(&path, &bytes).map_err(|e| (path, e)))
    });
    async move {
        match saving.await.expect("save task panicked") {
            Some(Ok(())) => true,
            Some(Err((path, e))) => {
                warn!(path = %path.display(), error = %e, "could not store the base manifest");
                false
            }
            None => {
                debug!("the base manifest is larger than the protocol allows; not stored");
                false
            }
        }
    }
}
