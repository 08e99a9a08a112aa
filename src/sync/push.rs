//! Push: scan a root, send the blobs the mirror lacks, commit a snapshot.

use std::path::PathBuf;
use std::time::Instant;

use tracing::info;

use super::plan::{PlanOptions, Upload, plan_push};
use super::{Report, SyncError, SyncOptions, cache_path, save_cache};
use crate::delta;
use crate::hash::cache::HashCache;
use crate::profile::Profile;
use crate::progress::Progress;
use crate::rpc::client::Client;
use crate::rpc::frames::{self, DeltaWriter, FrameError};
use crate::scan;

/// What to push.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// The local root.
    pub root: PathBuf,
    /// The key to commit under.
    pub key: String,
    /// What kind of cache the root is.
    pub profile: Profile,
}

/// Pushes `req.root` to the mirror behind `client` as a new snapshot of `req.key`.
///
/// # Errors
///
/// Scan, transport and mirror errors; the mirror's previous state is kept.
pub async fn push(client: &mut Client, req: &PushRequest, opts: &SyncOptions) -> Result<Report, SyncError> {
    let started = Instant::now();
    if !req.root.is_dir() {
        return Err(SyncError::NotADirectory(req.root.clone()));
    }
    crate::store::check_key(&req.key)?;
    let cache_file = cache_path(&opts.state_dir, &req.root);
    let (root, profile) = (req.root.clone(), req.profile);
    let scanned = tokio::task::spawn_blocking(move || {
        let mut cache = HashCache::load(&cache_file);
        let s = scan::scan(&root, profile, &mut cache);
        save_cache(&cache, &cache_file);
        s
    })
    .await
    .expect("scan task panicked")?;
    let local = scanned.manifest;
    let mut report = Report {
        key: req.key.clone(),
        files: local.file_count(),
        bytes: local.total_bytes(),
        files_hashed: scanned.hashed_files,
        manifest: local.id().to_hex(),
        ..Report::default()
    };
    let previous = match client.resolve(&req.key, &[]).await? {
        Some(s) if s.manifest == report.manifest => {
            report.generation = s.generation;
            report.unchanged = true;
            report.finish(client, started);
            return Ok(report);
        }
        Some(s) => Some(client.manifest(s.manifest_id().expect("validated by the client")).await?),
        None => None,
    };
    let mut hashes: Vec<_> = local.entries().iter().filter_map(|e| e.file_hash()).collect();
    hashes.sort_unstable();
    hashes.dedup();
    let missing = client.missing(&hashes).await?;
    let popts = PlanOptions { delta_min_size: opts.delta_min_size, profile: req.profile };
    let uploads = plan_push(&local, previous.as_ref(), &missing, popts);
    let total: u64 = uploads
        .iter()
        .map(|u| match u {
            Upload::Whole { size, .. } | Upload::Delta { size, .. } => *size,
        })
        .sum();
    let progress = Progress::bytes("push", total, opts.progress);
    let mut whole = Vec::new();
    for upload in uploads {
        match upload {
            Upload::Whole { .. } => whole.push(upload),
            Upload::Delta { hash, ref path, size, base } => {
                if send_delta(client, &req.root.join(path), hash, size, base, opts.compression_level).await? {
                    report.blobs_delta += 1;
                    progress.inc(size);
                } else {
                    whole.push(Upload::Whole { hash, path: path.clone(), size });
                }
            }
        }
    }
    report.blobs_whole = whole.len() as u64;
    send_whole(client, &req.root, whole, opts.compression_level, progress.clone()).await?;
    progress.finish();
    let (snapshot, unchanged) = client.commit(&req.key, &local, &req.profile.to_string()).await?;
    report.generation = snapshot.generation;
    report.unchanged = unchanged;
    report.finish(client, started);
    info!(key = %req.key, generation = report.generation, files = report.files, bytes_sent = report.bytes_sent, "push finished");
    Ok(report)
}

/// Sends one blob as a delta; false when the mirror refused the result.
async fn send_delta(
    client: &mut Client,
    path: &std::path::Path,
    hash: crate::hash::Hash,
    size: u64,
    base: crate::hash::Hash,
    level: i32,
) -> Result<bool, SyncError> {
    let signature = client.signature(base).await?;
    let path = path.to_path_buf();
    let rejected = client
        .put_blobs(move |send| {
            let mapped = delta::Mapped::open(&path).map_err(|e| FrameError::Handler(e.to_string()))?;
            if mapped.bytes().len() as u64 != size || crate::hash::Hash::of(mapped.bytes()) != hash {
                return Err(FrameError::Changed { path });
            }
            let mut writer = DeltaWriter::new(hash, size, base, level, send);
            delta::diff(&signature, mapped.bytes(), &mut writer).map_err(|e| FrameError::Handler(e.to_string()))?;
            writer.finish()
        })
        .await?;
    Ok(rejected.is_empty())
}

async fn send_whole(
    client: &mut Client,
    root: &std::path::Path,
    uploads: Vec<Upload>,
    level: i32,
    progress: Progress,
) -> Result<(), SyncError> {
    if uploads.is_empty() {
        return Ok(());
    }
    let root = root.to_path_buf();
    client
        .put_blobs(move |send| {
            for u in uploads {
                if let Upload::Whole { hash, path, size } = u {
                    frames::send_file(&root.join(&path), hash, size, level, send, &|n| progress.inc(n))?;
                }
            }
            Ok(())
        })
        .await?;
    Ok(())
}
