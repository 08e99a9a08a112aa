//! Replication: copying another mirror's snapshots into this store, e.g.
//! nightly into an offline network.
//!
//! A run lists the source's keys and, for every key whose newest snapshot
//! this store does not already have, fetches the manifest, asks the store
//! which blobs it lacks and fetches only those (verified by blake3 on
//! arrival, as every blob stream is), then commits the snapshot with the
//! source's writer, base, profile and time. Only each key's newest snapshot
//! is copied: it is what jobs restore; older generations stay at the source.
//! The record is created last, so a run killed midway leaves at most blobs
//! that nothing names yet, and the next run reuses them. A run that finds
//! everything present moves nothing but the key list.

use std::time::{Duration, SystemTime};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::hash::Hash;
use crate::metrics::Metrics;
use crate::rpc::MAX_HASHES;
use crate::rpc::client::{Client, ClientError, ConnectOptions};
use crate::rpc::frames::{FrameError, FrameReceiver, Incoming, NewFile};
use crate::schedule::Schedule;
use crate::store::{SnapshotRecord, Store, StoreError};

/// Why a replication run failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// Talking to the source mirror.
    #[error(transparent)]
    Source(#[from] ClientError),
    /// This mirror's store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source served a snapshot it does not hold whole.
    #[error("the source mirror lacks {missing} blobs of {key}#{generation}")]
    Incomplete {
        /// The key.
        key: String,
        /// Its generation at the source.
        generation: u64,
        /// Blobs still missing.
        missing: usize,
    },
}

/// Where and what to replicate from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The source mirror's URL.
    pub url: String,
    /// How to connect (a read token, TLS files).
    pub connect: ConnectOptions,
    /// Only keys starting with this.
    pub keys: String,
    /// Largest blob accepted.
    pub max_blob_bytes: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Replicated {
    /// The source's keys considered.
    pub keys: u64,
    /// Snapshots committed here.
    pub snapshots: u64,
    /// Blobs fetched.
    pub blobs: u64,
    /// Bytes read from the socket (all messages, counted at the socket).
    pub bytes_received: u64,
    /// Bytes written to the socket.
    pub bytes_sent: u64,
}

/// One run: connects to the source and copies what this store lacks.
///
/// # Errors
///
/// The first failure; snapshots committed before it stay.
pub async fn replicate_once(source: &Source, store: &Store) -> Result<Replicated, ReplicateError> {
    let mut client = Client::connect_with(&source.url, &source.connect).await?;
    let mut done = Replicated::default();
    for snapshot in client.list_keys(&source.keys).await? {
        done.keys += 1;
        let blobs = copy_snapshot(&mut client, store, &snapshot, source.max_blob_bytes).await?;
        if let Some(blobs) = blobs {
            done.snapshots += 1;
            done.blobs += blobs;
        }
    }
    done.bytes_received = client.counters().received();
    done.bytes_sent = client.counters().sent();
    Ok(done)
}

/// Copies one snapshot unless the store's newest for its key has the same
/// manifest; returns the blobs fetched, or `None` when nothing was copied.
async fn copy_snapshot(
    client: &mut Client,
    store: &Store,
    snapshot: &SnapshotRecord,
    max_blob_bytes: u64,
) -> Result<Option<u64>, ReplicateError> {
    if store.latest(&snapshot.key).await?.is_some_and(|s| s.manifest == snapshot.manifest) {
        return Ok(None);
    }
    let id = snapshot.manifest_id()?;
    let manifest = client.manifest(id).await?;
    let mut hashes: Vec<Hash> = manifest.entries().iter().filter_map(|e| e.file_hash()).collect();
    hashes.sort_unstable();
    hashes.dedup();
    let missing = store.missing(&hashes).await?;
    for batch in missing.chunks(MAX_HASHES) {
        fetch_blobs(client, store, batch, max_blob_bytes).await?;
    }
    let still = store.missing(&missing).await?;
    if !still.is_empty() {
        let (key, generation) = (snapshot.key.clone(), snapshot.generation);
        return Err(ReplicateError::Incomplete { key, generation, missing: still.len() });
    }
    // The manifest was verified against its id on arrival; encoding is canonical.
    store.put_manifest(&id, manifest.encode().into()).await?;
    let record = SnapshotRecord { files: manifest.file_count(), bytes: manifest.total_bytes(), ..snapshot.clone() };
    let committed = store.import(&record).await?;
    let s = &committed.snapshot;
    info!(key = %s.key, generation = s.generation, source_generation = snapshot.generation, blobs = missing.len(), writer = %s.writer, "snapshot replicated");
    Ok(Some(missing.len() as u64))
}

/// Fetches whole blobs into the store; each is verified before it is published.
async fn fetch_blobs(client: &mut Client, store: &Store, batch: &[Hash], max: u64) -> Result<(), ReplicateError> {
    let staging = store.clone();
    let new_file = move |_: &Hash| staging.staging_file().map(NewFile::named).map_err(std::io::Error::other);
    let receiver = FrameReceiver::new(Box::new(new_file), max).writing_back(store.syncs_staged_files());
    let store = store.clone();
    let publish = move |incoming: Incoming| {
        if incoming.delta_base.is_some() {
            let _ = std::fs::remove_file(&incoming.staged);
            return Err(FrameError::Protocol("a delta where whole blobs were asked for".into()));
        }
        Handle::current()
            .block_on(store.publish_blob(&incoming.hash, &incoming.staged))
            .map_err(|e| FrameError::Handler(e.to_string()))
    };
    // The source's own compression level; none over loopback, where it only costs CPU.
    let level = if client.is_loopback() { 0 } else { i32::MAX };
    Ok(client.get_blobs(batch, level, receiver, publish).await?)
}

/// First wait between attempts of a failed run; doubled each time.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between attempts.
const MAX_RETRY: Duration = Duration::from_secs(300);
/// Attempts per scheduled run; then the next scheduled run catches up.
const ATTEMPTS: u32 = 8;

/// Replicates on `schedule` until `shutdown`: at start for an interval
/// schedule, then at every scheduled time. A failed run is retried with
/// backoff, then left to the next scheduled run.
pub async fn run_scheduled(
    source: Source,
    store: Store,
    schedule: Schedule,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    info!(from = %source.url, keys = %source.keys, ?schedule, "replication scheduled");
    if matches!(schedule, Schedule::Every(_)) {
        run_with_retries(&source, &store, &metrics, &shutdown).await;
    }
    loop {
        let now = SystemTime::now();
        let wait = schedule.next_after(now).duration_since(now).unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => run_with_retries(&source, &store, &metrics, &shutdown).await,
        }
    }
}

async fn run_with_retries(source: &Source, store: &Store, metrics: &Metrics, shutdown: &CancellationToken) {
    let mut delay = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        let result = replicate_once(source, store).await;
        metrics.replication_run(result.is_ok());
        match result {
            Ok(done) => {
                info!(from = %source.url, keys = done.keys, snapshots = done.snapshots, blobs = done.blobs, bytes_received = done.bytes_received, "replication done");
                return;
            }
            Err(e) if attempt == ATTEMPTS => {
                error!(from = %source.url, attempt, error = %e, "replication failed; the next scheduled run catches up");
            }
            Err(e) => {
                warn!(from = %source.url, attempt, error = %e, retry_in = ?delay, "replication failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
    }
}
