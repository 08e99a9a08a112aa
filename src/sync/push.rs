//! Push: scan a root, send the blobs the mirror lacks, commit a snapshot.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::plan::{Upload, plan_push};
use super::unpack;
use super::{Base, Report, SyncError, SyncOptions, cache_path, load_base, save_base, save_cache, split_balanced};
use crate::delta;
use crate::hash::Hash;
use crate::hash::cache::HashCache;
use crate::manifest::{Known, Manifest};
use crate::profile::Profile;
use crate::progress::Progress;
use crate::rpc::client::{Client, ClientError};
use crate::rpc::frames::{self, Check, DeltaWriter, FrameError};
use crate::scan;
use crate::store::SnapshotRecord;

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

impl PushRequest {
    /// Checks what can be checked before connecting: the key and the directory.
    ///
    /// # Errors
    ///
    /// [`SyncError::Key`], [`SyncError::NotADirectory`].
    pub fn validate(&self) -> Result<(), SyncError> {
        crate::store::check_key(&self.key)?;
        if !self.root.is_dir() {
            return Err(SyncError::NotADirectory(self.root.clone()));
        }
        Ok(())
    }
}

/// Pushes `req.root` to the mirror behind `client` as a new snapshot of `req.key`.
///
/// # Errors
///
/// Scan, transport and mirror errors; the mirror's previous state is kept.
pub async fn push(client: &mut Client, req: &PushRequest, opts: &SyncOptions) -> Result<Report, SyncError> {
    let started = Instant::now();
    req.validate()?;
    super::make_durable(&opts.state_dir, &req.root).await?;
    // What the push needs besides the scan is fetched while the scan runs:
    // the key's newest snapshot, and the manifest this root was last
    // pulled from or pushed as (wasted when nothing changed).
    let base = load_base(&opts.state_dir, &req.root);
    let held = base.is_some().then(|| super::held::load(&opts.state_dir, &req.root).boxed());
    let newest = {
        let (mut client, key) = (client.clone(), req.key.clone());
        tokio::spawn(async move { client.resolve(&key, &[]).await })
    };
    let (scanned, cache_saved) = scan_root(req, opts).await?;
    let result = push_scanned(client, req, opts, scanned, Fetching { base, held, newest }, started).await;
    cache_saved.await.expect("save task panicked");
    result
}

/// What a push fetches while it scans.
struct Fetching {
    /// This root's base record.
    base: Option<Base>,
    /// The manifest the base record names, if this side holds it.
    held: Option<BoxFuture<'static, Option<Known>>>,
    /// The key's newest snapshot.
    newest: JoinHandle<Result<Option<SnapshotRecord>, ClientError>>,
}

/// [`push`] once the root is scanned.
async fn push_scanned(
    client: &mut Client,
    req: &PushRequest,
    opts: &SyncOptions,
    scanned: scan::Scan,
    fetching: Fetching,
    started: Instant,
) -> Result<Report, SyncError> {
    let local = match req.profile {
        Profile::GoModTrees => without_partial_trees(&req.root, scanned.manifest)?,
        _ => scanned.manifest,
    };
    debug!(ms = started.elapsed().as_millis() as u64, hashed = scanned.hashed_files, "push: scanned");
    let mut report = Report {
        key: req.key.clone(),
        files: local.file_count(),
        bytes: local.total_bytes(),
        files_hashed: scanned.hashed_files,
        manifest: local.id().to_hex(),
        ..Report::default()
    };
    let Fetching { base, held, newest } = fetching;
    let base_label = base.as_ref().map(|b| format!("{}#{}", b.key, b.generation));
    if let Some(b) =
        base.as_ref().filter(|b| b.key == req.key && b.manifest == report.manifest && b.mirror == client.url())
    {
        debug!(key = %b.key, generation = b.generation, "nothing changed since this root's last pull or push");
        report.generation = b.generation;
        report.unchanged = true;
        report.finish(client, started);
        return Ok(report);
    }
    let newest = newest.await.expect("resolve task panicked")?;
    let previous_hint = base.and_then(|b| Hash::from_hex(&b.manifest).ok());
    let held = match held {
        Some(loading) => loading.await,
        None => None,
    };
    let restored_from = base_label.unwrap_or_default();
    let from = Previous { hint: previous_hint, held, restored_from: &restored_from };
    let local = Arc::new(local);
    let Some(snapshot) = send(client, req, &local, newest, from, opts, &mut report).await? else {
        report.finish(client, started);
        return Ok(report);
    };
    super::held::save(&opts.state_dir, &req.root, local).await;
    save_base(&opts.state_dir, &req.root, &Base::of(&snapshot, client));
    report.finish(client, started);
    info!(key = %req.key, generation = report.generation, files = report.files, bytes_sent = report.bytes_sent, "push finished");
    Ok(report)
}

/// Pushes `local`, a manifest of `req.root` the caller prepared (the agent
/// keeps one up to date from file events), without scanning the root or
/// consulting its recorded base: only the receiver's newest snapshot of the
/// key decides what is sent. `held` is a manifest the caller knows the
/// receiver holds (the last one it pushed there): manifests then cross as
/// diffs against it. Files that changed since `local` was made fail the push
/// ([`SyncError::Client`]); nothing is committed then.
///
/// # Errors
///
/// Transport and receiver errors; the receiver's previous state is kept.
pub async fn push_manifest(
    client: &mut Client,
    req: &PushRequest,
    local: &Manifest,
    held: Option<&Known>,
    opts: &SyncOptions,
) -> Result<Report, SyncError> {
    let started = Instant::now();
    crate::store::check_key(&req.key)?;
    super::make_durable(&opts.state_dir, &req.root).await?;
    let mut report = Report {
        key: req.key.clone(),
        files: local.file_count(),
        bytes: local.total_bytes(),
        manifest: local.id().to_hex(),
        ..Report::default()
    };
    let from = Previous { hint: None, held: held.cloned(), restored_from: "" };
    let newest = client.resolve(&req.key, &[]).await?;
    send(client, req, local, newest, from, opts, &mut report).await?;
    report.finish(client, started);
    Ok(report)
}

/// What a push knows of the tree's past: the snapshot manifest it was
/// restored from or last pushed as (`hint`), that manifest itself if this
/// side holds it (`held`), and the snapshot's name for provenance.
struct Previous<'a> {
    hint: Option<Hash>,
    held: Option<Known>,
    restored_from: &'a str,
}

/// Sends what the receiver lacks of `local` and commits it; `None` when the
/// key's newest snapshot (`newest`) already is `local`. Deltas are computed
/// against the key's newest snapshot, or else against `from.hint` (the
/// snapshot this root was restored from, under a fallback restore key).
/// Manifests cross as diffs against `from.held` and the previous manifest
/// where both sides hold them.
async fn send(
    client: &mut Client,
    req: &PushRequest,
    local: &Manifest,
    newest: Option<SnapshotRecord>,
    from: Previous<'_>,
    opts: &SyncOptions,
    report: &mut Report,
) -> Result<Option<SnapshotRecord>, SyncError> {
    let held = from.held.as_ref();
    let (previous, newest) = match newest {
        Some(s) if s.manifest == report.manifest => {
            report.generation = s.generation;
            report.unchanged = true;
            return Ok(None);
        }
        Some(s) => (Some(client.manifest_since(s.manifest_id()?, held).await?.0), true),
        None => match from.hint {
            Some(id) => (client.manifest_since(id, held).await.ok().map(|(k, _)| k), false),
            None => (None, false),
        },
    };
    // Blobs of the key's newest snapshot are on the receiver (its commit
    // needed them all, and retention keeps them): ask only about the others.
    let held: std::collections::HashSet<Hash> = match (&previous, newest) {
        (Some(p), true) => p.manifest.entries().iter().filter_map(|e| e.file_hash()).collect(),
        _ => Default::default(),
    };
    let mut hashes: Vec<_> =
        local.entries().iter().filter_map(|e| e.file_hash()).filter(|h| !held.contains(h)).collect();
    hashes.sort_unstable();
    hashes.dedup();
    let missing = client.missing(&hashes).await?;
    debug!(asked = hashes.len(), missing = missing.len(), "push: asked what the receiver lacks");
    let popts = opts.plan_options(req.profile, client);
    let uploads = plan_push(local, previous.as_ref().map(|p| &*p.manifest), &missing, popts);
    // Tree files the mirror can unpack from the zips it has (or is sent) stay here.
    let unpackable = match opts.unpack.applies(client) && client.unpacks() {
        true => unpack::sources(req.profile, local, &uploads.iter().map(upload_hash).collect()),
        false => HashMap::new(),
    };
    let counts = upload(client, &req.root, uploads, &unpackable, opts).await?;
    (report.blobs_delta, report.blobs_whole, report.blobs_unpacked) = counts;
    let profile = req.profile.to_string();
    let (snapshot, unchanged, via) =
        client.commit_since(&req.key, local, &profile, from.restored_from, previous.as_ref()).await?;
    debug!(?via, "push: committed");
    report.generation = snapshot.generation;
    report.unchanged = unchanged;
    Ok(Some(snapshot))
}

/// Leaves out the module trees Go is still extracting (their `.partial`
/// marker exists): a receiver would take a half-extracted tree for a whole one.
fn without_partial_trees(
    root: &Path,
    manifest: crate::manifest::Manifest,
) -> Result<crate::manifest::Manifest, SyncError> {
    let partial: Vec<String> = manifest
        .entries()
        .iter()
        .filter(|e| e.content == crate::manifest::Content::Dir)
        .filter(|e| crate::profile::go::rules::partial_marker(&e.path).is_some_and(|m| root.join(m).exists()))
        .map(|e| e.path.clone())
        .collect();
    if partial.is_empty() {
        return Ok(manifest);
    }
    debug!(trees = partial.len(), "leaving out module trees that Go is still extracting");
    let inside =
        |p: &str| partial.iter().any(|t| p == t || p.strip_prefix(t.as_str()).is_some_and(|r| r.starts_with('/')));
    let kept = manifest.entries().iter().filter(|e| !inside(&e.path)).cloned().collect();
    Ok(crate::manifest::Manifest::new(kept).map_err(scan::ScanError::from)?)
}

/// Scans the root, reusing its hash cache, and starts saving the refreshed
/// cache while the push goes on (the task ends when it is saved).
async fn scan_root(
    req: &PushRequest,
    opts: &SyncOptions,
) -> Result<(scan::Scan, tokio::task::JoinHandle<()>), SyncError> {
    let cache_file = cache_path(&opts.state_dir, &req.root);
    let (root, profile) = (req.root.clone(), req.profile);
    let (scanned, cache, cache_file) = tokio::task::spawn_blocking(move || {
        let mut cache = HashCache::load(&cache_file);
        let s = scan::scan(&root, profile, &mut cache);
        (s, cache, cache_file)
    })
    .await
    .expect("scan task panicked");
    let saved = tokio::task::spawn_blocking(move || save_cache(&cache, &cache_file));
    Ok((scanned?, saved))
}

/// Sends the planned blobs, except those the mirror can unpack from an
/// archive it has by then (`unpackable`): it is asked to, and what it could
/// not unpack is sent after all. Returns (deltas, whole, unpacked) counts.
async fn upload(
    client: &mut Client,
    root: &Path,
    uploads: Vec<Upload>,
    unpackable: &HashMap<Hash, (Hash, String, u64)>,
    opts: &SyncOptions,
) -> Result<(u64, u64, u64), SyncError> {
    let total: u64 = uploads.iter().map(upload_size).sum();
    let progress = Progress::bytes("push", total, opts.progress);
    let (later, now): (Vec<Upload>, Vec<Upload>) =
        uploads.into_iter().partition(|u| unpackable.contains_key(&upload_hash(u)));
    let (mut deltas, mut whole) = send_blobs(client, root, now, opts, &progress).await?;
    let mut unpacked = 0;
    if !later.is_empty() {
        let mut archives: HashMap<Hash, Vec<(String, Hash, u64)>> = HashMap::new();
        for u in &later {
            let (archive, member, size) = &unpackable[&upload_hash(u)];
            archives.entry(*archive).or_default().push((member.clone(), upload_hash(u), *size));
        }
        client.unpack(&archives.into_iter().collect::<Vec<_>>()).await?;
        let hashes: Vec<Hash> = later.iter().map(upload_hash).collect();
        let still: HashSet<Hash> = client.missing(&hashes).await?.into_iter().collect();
        let (rest, done): (Vec<Upload>, Vec<Upload>) = later.into_iter().partition(|u| still.contains(&upload_hash(u)));
        debug!(unpacked = done.len(), sent = rest.len(), "push: the mirror unpacked tree files");
        unpacked = done.len() as u64;
        done.iter().for_each(|u| progress.inc(upload_size(u)));
        let (d, w) = send_blobs(client, root, rest, opts, &progress).await?;
        (deltas, whole) = (deltas + d, whole + w);
    }
    progress.finish();
    Ok((deltas, whole, unpacked))
}

/// Sends blobs: whole files first (some are the bases of the deltas), then
/// deltas one by one (each needs the mirror's signature), then whole the
/// deltas the mirror refused. Returns (deltas, whole) counts.
async fn send_blobs(
    client: &mut Client,
    root: &Path,
    uploads: Vec<Upload>,
    opts: &SyncOptions,
    progress: &Progress,
) -> Result<(u64, u64), SyncError> {
    let level = client.wire_level(opts.compression_level);
    let (whole, deltas): (Vec<Upload>, Vec<Upload>) =
        uploads.into_iter().partition(|u| matches!(u, Upload::Whole { .. }));
    let mut whole_count = whole.len() as u64;
    send_whole(client, root, whole, (opts.streams, level), progress.clone()).await?;
    let (mut sent_as_delta, mut refused) = (0, Vec::new());
    for upload in deltas {
        if let Upload::Delta { hash, ref path, size, base } = upload {
            if send_delta(client, &root.join(path), hash, size, base, level).await? {
                sent_as_delta += 1;
                progress.inc(size);
            } else {
                refused.push(Upload::Whole { hash, path: path.clone(), size });
            }
        }
    }
    whole_count += refused.len() as u64;
    send_whole(client, root, refused, (opts.streams, level), progress.clone()).await?;
    Ok((sent_as_delta, whole_count))
}

fn upload_hash(u: &Upload) -> Hash {
    match u {
        Upload::Whole { hash, .. } | Upload::Delta { hash, .. } => *hash,
    }
}

fn upload_size(u: &Upload) -> u64 {
    match u {
        Upload::Whole { size, .. } | Upload::Delta { size, .. } => *size,
    }
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
            let mut writer = DeltaWriter::new(hash, size, base, level, send);
            match delta::diff_file(&signature, &path, (hash, size), Check::Hash, &mut writer) {
                Ok(()) => writer.finish(),
                Err(_) if writer.is_gone() => Err(FrameError::Gone),
                Err(delta::DeltaError::Changed { path }) => Err(FrameError::Changed { path }),
                Err(e) => Err(FrameError::Handler(e.to_string())),
            }
        })
        .await?;
    Ok(rejected.is_empty())
}

/// Sends whole files over `streams` concurrent streams, balanced by size, so
/// reading, compressing (at `level`) and the mirror's writing run in parallel.
async fn send_whole(
    client: &Client,
    root: &std::path::Path,
    uploads: Vec<Upload>,
    (streams, level): (usize, i32),
    progress: Progress,
) -> Result<(), SyncError> {
    let calls = split_balanced(uploads, upload_size, streams).into_iter().map(|group| {
        let (mut client, root, progress) = (client.clone(), root.to_path_buf(), progress.clone());
        async move {
            client
                .put_blobs(move |send| {
                    for u in group {
                        if let Upload::Whole { hash, path, size } = u {
                            let path = root.join(&path);
                            let file = std::fs::File::open(&path).map_err(frames::io_err(&path))?;
                            let how = (level, Check::Hash);
                            frames::send_file(file, &path, (hash, size), how, send, &|n| progress.inc(n))?;
                        }
                    }
                    Ok(())
                })
                .await
        }
    });
    futures::future::try_join_all(calls).await?;
    Ok(())
}
