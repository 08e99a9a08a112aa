//! Push and pull: scanning, planning and transferring a root against a mirror.
//!
//! [`plan`] is pure; [`tree`] writes destinations safely; `push` and `pull`
//! drive a [`Client`] through a plan. Reports carry what a person or a
//! script wants to know afterwards, bytes on the wire included.

mod durability;
mod held;
pub mod plan;
mod pull;
mod push;
pub mod tree;
mod unpack;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use held::{load as held_manifest, park as park_manifest, unpark as unpark_manifest};
pub use pull::{PullRequest, pull, pull_go_sum};
pub use push::{PushRequest, push, push_manifest};

use crate::delta::DeltaError;
use crate::hash::Hash;
use crate::hash::cache::HashCache;
use crate::rpc::client::{Client, ClientError};
use crate::scan::ScanError;

/// Settings shared by push and pull.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Files smaller than this are sent whole.
    pub delta_min_size: u64,
    /// zstd level for content sent (0: off).
    pub compression_level: i32,
    /// fsync every pulled file, then syncfs, before a pull returns (off: no
    /// wait for the disk; see the `durability` module).
    pub fsync: bool,
    /// Where hash caches live.
    pub state_dir: PathBuf,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// Concurrent blob streams per transfer.
    pub streams: usize,
    /// When a new file may travel as a delta against another version of it.
    pub fuzzy: When,
    /// When files are unpacked from an archive of the snapshot rather than
    /// moved, by this side on a pull and by the mirror on a push (see
    /// [`Profile::unpacked_from`](crate::profile::Profile::unpacked_from)).
    pub unpack: When,
}

/// When a way of saving bytes that costs CPU is used: fuzzy deltas (a new
/// file as a delta against another version of itself, its family, see
/// [`Profile::family`](crate::profile::Profile::family), as rsync's
/// `--fuzzy`: a round trip, a signature and a diff per file), or unpacking
/// tree files from their zips on the receiver (inflating them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum When {
    /// Except with a mirror on a loopback address, where bytes cost nothing
    /// and CPU is shared with the mirror (rsync, too, copies whole files
    /// locally).
    #[default]
    Remote,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl When {
    /// Whether it applies to transfers with the mirror `client` talks to.
    pub fn applies(self, client: &Client) -> bool {
        match self {
            When::Remote => !client.is_loopback(),
            When::Always => true,
            When::Never => false,
        }
    }
}

impl TryFrom<String> for When {
    type Error = String;

    fn try_from(text: String) -> Result<When, String> {
        match text.as_str() {
            "remote" => Ok(When::Remote),
            "always" => Ok(When::Always),
            "never" => Ok(When::Never),
            _ => Err(format!("{text:?}: expected remote, always or never")),
        }
    }
}

impl SyncOptions {
    /// How to plan a transfer of a `profile` root with `client`.
    fn plan_options(&self, profile: crate::profile::Profile, client: &Client) -> plan::PlanOptions {
        let kin = self.fuzzy.applies(client);
        plan::PlanOptions { delta_min_size: self.delta_min_size, profile, kin }
    }
}

/// Splits `items` into at most `n` groups of about equal total size (largest
/// first, each to the lightest group), dropping empty groups.
pub fn split_balanced<T>(mut items: Vec<T>, size: impl Fn(&T) -> u64, n: usize) -> Vec<Vec<T>> {
    let n = n.max(1);
    items.sort_by_key(|i| std::cmp::Reverse(size(i)));
    let mut groups: Vec<(u64, Vec<T>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for item in items {
        let lightest = groups.iter_mut().min_by_key(|(total, g)| (*total, g.len())).expect("n >= 1");
        lightest.0 += size(&item);
        lightest.1.push(item);
    }
    groups.into_iter().map(|(_, g)| g).filter(|g| !g.is_empty()).collect()
}

/// Why a push or pull failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Talking to the mirror.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Reading the local root.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// Writing the local root.
    #[error(transparent)]
    Tree(#[from] tree::TreeError),
    /// A local entry in the way.
    #[error(transparent)]
    Conflict(#[from] plan::Conflict),
    /// Computing a delta.
    #[error(transparent)]
    Delta(#[from] DeltaError),
    /// A key or restore prefix that is not allowed.
    #[error(transparent)]
    Key(#[from] crate::store::StoreError),
    /// The root given is not a directory.
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// A restore from go.sum files that cannot be done.
    #[error("{0}")]
    GoSum(String),
    /// An earlier pull into the root may not have reached the disk before
    /// the machine restarted.
    #[error(
        "{}: the machine restarted before the pull of {} reached the disk, so files may be incomplete; pull again (it re-checks every file) before pushing",
        root.display(), crate::schedule::iso_utc(*pulled_at as i64 * 1000)
    )]
    Unsynced {
        /// The root.
        root: PathBuf,
        /// When that pull started, seconds since the epoch.
        pulled_at: u64,
    },
    /// The key has no snapshot and no restore key matched.
    #[error("no snapshot for key {0:?} (nor for any restore key)")]
    Miss(String),
}

/// What a push or pull did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The key written or restored.
    pub key: String,
    /// Pull: the key asked for (`key` is the one restored, maybe a fallback).
    pub requested_key: String,
    /// Pull: a snapshot was restored (the exact key or a restore key).
    pub hit: bool,
    /// Pull: the exact key was restored, as actions/cache's `cache-hit`.
    pub cache_hit: bool,
    /// Pull: the key restored; empty on a miss.
    pub restored_key: String,
    /// The snapshot's generation.
    pub generation: u64,
    /// The snapshot's manifest id.
    pub manifest: String,
    /// Regular files in the tree.
    pub files: u64,
    /// Total size of the tree.
    pub bytes: u64,
    /// Bytes written to the socket.
    pub bytes_sent: u64,
    /// Bytes read from the socket.
    pub bytes_received: u64,
    /// Blobs moved whole.
    pub blobs_whole: u64,
    /// Blobs moved as deltas.
    pub blobs_delta: u64,
    /// Blobs unpacked from an archive of the snapshot instead of moved (the
    /// trees of `go-mod-trees`, from their zips): by this side on a pull, by
    /// the mirror on a push.
    pub blobs_unpacked: u64,
    /// Files hashed (not served by the hash cache).
    pub files_hashed: u64,
    /// Nothing needed to change.
    pub unchanged: bool,
    /// Wall time.
    pub duration_ms: u64,
    /// Pull from go.sum files: what they name that the snapshot lacks
    /// (`module@version`, or `module@version/go.mod`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

impl Report {
    fn finish(&mut self, client: &Client, started: std::time::Instant) {
        self.bytes_sent = client.counters().sent();
        self.bytes_received = client.counters().received();
        self.duration_ms = started.elapsed().as_millis() as u64;
    }
}

/// Makes what earlier pulls wrote into `root` durable (one `syncfs`, only if
/// a pull left a marker in this boot); pushes call it first, and an agent
/// after applying a snapshot. See the `durability` module.
///
/// # Errors
///
/// [`SyncError::Unsynced`] when the machine restarted after such a pull; the
/// I/O error of `syncfs`.
pub async fn make_durable(state_dir: &Path, root: &Path) -> Result<(), SyncError> {
    let (state_dir, root) = (state_dir.to_path_buf(), root.to_path_buf());
    tokio::task::spawn_blocking(move || durability::settle_before_push(&state_dir, &root))
        .await
        .expect("settle task panicked")
}

/// Names a root's state files. The absolute path is taken lexically, so the
/// name is the same before a pull creates the root and after.
fn root_id(root: &Path) -> String {
    let absolute = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    Hash::of(absolute.as_os_str().as_encoded_bytes()).to_hex()[..24].to_string()
}

/// Where the hash cache of a root lives.
fn cache_path(state_dir: &Path, root: &Path) -> PathBuf {
    state_dir.join("hashcache").join(format!("{}.bin", root_id(root)))
}

/// The snapshot a root was last pulled from or pushed as: what a push at the
/// end of a CI job compares with.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub(crate) struct Base {
    key: String,
    generation: u64,
    manifest: String,
    /// The mirror it is on: a push to another mirror is never skipped.
    #[serde(default)]
    mirror: String,
}

impl Base {
    fn of(snapshot: &crate::store::SnapshotRecord, client: &Client) -> Base {
        let (key, generation, manifest) = (snapshot.key.clone(), snapshot.generation, snapshot.manifest.clone());
        Base { key, generation, manifest, mirror: client.url().to_string() }
    }
}

fn base_path(state_dir: &Path, root: &Path) -> PathBuf {
    state_dir.join("bases").join(format!("{}.json", root_id(root)))
}

fn load_base(state_dir: &Path, root: &Path) -> Option<Base> {
    serde_json::from_slice(&std::fs::read(base_path(state_dir, root)).ok()?).ok()
}

fn save_base(state_dir: &Path, root: &Path, base: &Base) {
    let path = base_path(state_dir, root);
    if let Err(e) = crate::fsutil::write_atomic(&path, &serde_json::to_vec(base).expect("bases serialize"), false) {
        tracing::warn!(path = %path.display(), error = %e, "could not record the base snapshot");
    }
}

fn save_cache(cache: &HashCache, path: &Path) {
    if !cache.changed() {
        return;
    }
    if let Err((path, e)) = cache.save(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not save the hash cache; the next scan will hash again");
    }
}

#[cfg(test)]
mod tests {
    use super::split_balanced;

    #[test]
    fn split_balanced_evens_out_sizes_and_keeps_everything() {
        let groups = split_balanced(vec![100, 1, 1, 1, 50, 50, 0], |x| *x, 3);
        let totals: Vec<u64> = groups.iter().map(|g| g.iter().sum()).collect();
        assert_eq!(totals, vec![100, 52, 51]);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 7);
        assert_eq!(split_balanced(vec![5, 6], |x| *x, 8).len(), 2, "no empty groups");
        assert!(split_balanced(Vec::<u64>::new(), |x| *x, 4).is_empty());
        assert_eq!(split_balanced(vec![1, 2], |x| *x, 0).len(), 1);
    }
}
