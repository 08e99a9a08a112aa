//! Shared helpers: in-process mirrors on 127.0.0.1:0, trees, comparisons.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cachesync::config::{MirrorSettings, TransferSettings};
use cachesync::mirror::Mirror;
use cachesync::rpc::client::Client;
use cachesync::sync::SyncOptions;
use tokio_util::sync::CancellationToken;

/// A mirror serving a store in this process.
pub struct TestMirror {
    pub url: String,
    pub store: PathBuf,
    /// `http://addr` of the Go module proxy endpoint, when it has one.
    pub goproxy: Option<String>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestMirror {
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for TestMirror {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a mirror over `store` on an ephemeral port.
pub async fn spawn_mirror(store: &Path) -> TestMirror {
    spawn_mirror_with_tokens(store, "").await
}

/// Starts a mirror over `store` that requires the tokens of `tokens_file`.
pub async fn spawn_mirror_with_tokens(store: &Path, tokens_file: &str) -> TestMirror {
    let settings = MirrorSettings {
        listen: "127.0.0.1:0".into(),
        store: store.to_string_lossy().into(),
        max_blob_bytes: 1 << 34,
        tokens_file: tokens_file.into(),
        ..MirrorSettings::default()
    };
    spawn_mirror_with(settings).await
}

/// Starts a mirror with these settings (`listen` should be 127.0.0.1:0).
pub async fn spawn_mirror_with(settings: MirrorSettings) -> TestMirror {
    let store = std::path::PathBuf::from(&settings.store);
    let mirror = Mirror::bind(&settings, &TransferSettings::default()).await.unwrap();
    let url = format!("http://{}", mirror.local_addr().unwrap());
    let goproxy = mirror.goproxy_addr().map(|a| format!("http://{a}"));
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { mirror.run(token).await.unwrap() });
    TestMirror { url, store, goproxy, shutdown, task: Some(task) }
}

pub async fn connect(url: &str) -> Client {
    Client::connect(url, Duration::from_secs(5)).await.unwrap()
}

/// Sync options with a private state directory.
pub fn options(state: &Path) -> SyncOptions {
    SyncOptions {
        delta_min_size: 128 << 10,
        compression_level: 3,
        fsync: false,
        state_dir: state.to_path_buf(),
        progress: false,
        connect_timeout: Duration::from_secs(5),
        streams: 4,
        fuzzy: cachesync::sync::When::Always, // every peer is on 127.0.0.1 here
        unpack: cachesync::sync::When::Always,
    }
}

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn write(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

pub fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    filetime::set_symlink_file_times(
        path,
        filetime::FileTime::from_unix_time(secs, nanos),
        filetime::FileTime::from_unix_time(secs, nanos),
    )
    .unwrap();
}

/// Every entry of a tree (skipping our staging directory) with what a pull must reproduce.
pub fn describe(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel.starts_with(".cachesync.tmp") {
            continue;
        }
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let what = if m.file_type().is_symlink() {
            format!("link -> {}", std::fs::read_link(e.path()).unwrap().display())
        } else if m.is_dir() {
            format!("dir {:o} mtime {}.{}", m.mode() & 0o777, m.mtime(), m.mtime_nsec())
        } else if !m.is_file() {
            format!("special {:o}", m.mode()) // never read a FIFO: it would block
        } else {
            let h = blake3_hex(&std::fs::read(e.path()).unwrap());
            format!("file {:o} mtime {}.{} {}", m.mode() & 0o777, m.mtime(), m.mtime_nsec(), h)
        };
        out.push(format!("{rel}: {what}"));
    }
    out
}

pub fn blake3_hex(data: &[u8]) -> String {
    cachesync::hash::Hash::of(data).to_hex()
}

pub fn assert_same_tree(a: &Path, b: &Path) {
    let (da, db) = (describe(a), describe(b));
    assert!(!da.is_empty(), "empty tree {}", a.display());
    assert_eq!(da, db, "trees differ: {} vs {}", a.display(), b.display());
}

/// Makes every directory writable again so a TempDir can be removed.
pub fn unlock(root: &Path) {
    for e in walkdir::WalkDir::new(root).into_iter().flatten() {
        if e.file_type().is_dir() {
            set_mode(e.path(), 0o755);
        }
    }
}

/// The path of the built binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cachesync"))
}

/// Waits until `cond` holds, polling; panics after `secs`.
pub async fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
