//! Pull: restore a snapshot into a local root, moving only what differs.

mod prepared;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::{debug, info, warn};

use self::prepared::{FailUnlessOpened, Prepared};
use super::durability::{self, Pending};
use super::plan::{PlannedDelta, PullPlan, plan_pull};
use super::tree::Tree;
use super::unpack;
use super::{Base, Report, SyncError, SyncOptions, cache_path, save_base, save_cache, split_balanced};
use crate::delta;
use crate::hash::Hash;
use crate::hash::cache::{FileKey, HashCache};
use crate::manifest::{Content, Entry, Manifest};
use crate::profile::Profile;
use crate::profile::go::gosum::SumLine;
use crate::profile::go::select;
use crate::progress::Progress;
use crate::rpc::MAX_HASHES;
use crate::rpc::client::{Client, DeltaBase, Via};
use crate::rpc::frames::{FrameError, FrameReceiver, Incoming, NewFile};
use crate::scan;
use crate::store::SnapshotRecord;

/// What to pull.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// The local root (created if missing).
    pub root: PathBuf,
    /// The key to restore.
    pub key: String,
    /// Key prefixes to fall back to, in order.
    pub restore_prefixes: Vec<String>,
    /// Remove local entries the snapshot lacks.
    pub delete: bool,
    /// Restore only snapshots written by these tokens (any writer when empty).
    pub trusted_writers: Vec<String>,
}

impl PullRequest {
    /// A pull of `key` into `root`: no restore keys, no `--delete`, any writer.
    pub fn new(root: impl Into<PathBuf>, key: impl Into<String>) -> PullRequest {
        PullRequest {
            root: root.into(),
            key: key.into(),
            restore_prefixes: Vec::new(),
            delete: false,
            trusted_writers: Vec::new(),
        }
    }

    /// Checks what can be checked before connecting: the key, the restore
    /// prefixes, and that the root is a directory if it exists.
    ///
    /// # Errors
    ///
    /// [`SyncError::Key`], [`SyncError::NotADirectory`].
    pub fn validate(&self) -> Result<(), SyncError> {
        crate::store::check_key(&self.key)?;
        for prefix in &self.restore_prefixes {
            crate::store::check_prefix(prefix)?;
        }
        if std::fs::symlink_metadata(&self.root).is_ok_and(|m| !m.is_dir()) {
            return Err(SyncError::NotADirectory(self.root.clone()));
        }
        Ok(())
    }
}

/// Files placed so far, for the hash cache.
pub(super) type Placed = Arc<Mutex<Vec<(String, FileKey, Hash)>>>;

/// Restores the newest snapshot of `req.key` (or of a restore prefix) into `req.root`.
///
/// # Errors
///
/// [`SyncError::Miss`] when no snapshot matches; transport, mirror and local
/// I/O errors. Files already placed are complete; nothing is half-written.
pub async fn pull(client: &mut Client, req: &PullRequest, opts: &SyncOptions) -> Result<Report, SyncError> {
    pull_inner(client, req, opts, None).await
}

/// Like [`pull`], for a go-mod snapshot, restoring only the module versions
/// the go.sum `lines` name (and their list files); never removes anything.
/// [`Report::missing`] lists what the snapshot lacked.
///
/// # Errors
///
/// As [`pull`]; [`SyncError::GoSum`] when the snapshot is not a module cache
/// or `req.delete` is set.
pub async fn pull_go_sum(
    client: &mut Client,
    req: &PullRequest,
    opts: &SyncOptions,
    lines: &[SumLine],
) -> Result<Report, SyncError> {
    if req.delete {
        return Err(SyncError::GoSum("a restore from go.sum files never deletes: drop --delete".into()));
    }
    pull_inner(client, req, opts, Some(lines)).await
}

async fn pull_inner(
    client: &mut Client,
    req: &PullRequest,
    opts: &SyncOptions,
    go_sum: Option<&[SumLine]>,
) -> Result<Report, SyncError> {
    let started = Instant::now();
    req.validate()?;
    let snapshot = client.resolve_trusted(&req.key, &req.restore_prefixes, &req.trusted_writers).await?;
    let snapshot = snapshot.ok_or_else(|| SyncError::Miss(req.key.clone()))?;
    let profile: Profile = snapshot.profile.parse().unwrap_or_default();
    let cache_file = cache_path(&opts.state_dir, &req.root);
    let rebooted = matches!(durability::pending(&opts.state_dir, &req.root), Pending::Rebooted { .. });
    if rebooted {
        warn!(root = %req.root.display(), "an earlier pull may not have reached the disk before a restart; re-checking every file");
        let _ = std::fs::remove_file(&cache_file);
    }
    // The destination is scanned while the mirror works out the manifest.
    let scanning = scan_destination(req.root.clone(), cache_file.clone(), profile);
    let held = super::held::load(&opts.state_dir, &req.root).await;
    let (fetched, via) = client.manifest_since(snapshot.manifest_id().map_err(SyncError::Key)?, held.as_ref()).await?;
    drop(held);
    debug!(?via, "pull: manifest");
    let (manifest, missing) = match go_sum {
        None => (fetched.manifest.clone(), Vec::new()),
        Some(lines) => {
            let (selected, missing) = select_go_sum(&snapshot, profile, &fetched.manifest, lines)?;
            (Arc::new(selected), missing)
        }
    };
    // Everything that can refuse the pull happens before the first write.
    let (local, cache) = scanning.await.expect("scan task panicked")?;
    let unknown = unknown_in_the_way(req.root.clone(), local.clone(), manifest.clone()).await;
    let popts = opts.plan_options(profile, client);
    let mut plan = plan_pull(&manifest, &local.manifest, popts, req.delete, &unknown)?;
    debug!(fetch_bytes = plan.fetch_bytes, "pull: planned");
    // Stored while the pull works; it counts once the base record names it.
    let saving = (via != Via::Held).then(|| super::held::save(&opts.state_dir, &req.root, fetched.manifest.clone()));
    let writes = plan.fetch_bytes > 0 || !plan.local_copies.is_empty() || !plan.removals.is_empty();
    let sync = opts.fsync || (writes && !durability::mark(&opts.state_dir, &req.root));
    let mut report = Report {
        key: snapshot.key.clone(),
        requested_key: req.key.clone(),
        hit: true,
        cache_hit: snapshot.key == req.key,
        restored_key: snapshot.key.clone(),
        generation: snapshot.generation,
        manifest: snapshot.manifest.clone(),
        files: manifest.file_count(),
        bytes: manifest.total_bytes(),
        files_hashed: local.hashed_files,
        unchanged: !writes,
        missing,
        ..Report::default()
    };
    // Nothing on disk changes when idle: no staging directory, no directory touched.
    let cache = if plan.is_idle() {
        cache
    } else {
        let job = Job {
            tree: Arc::new(open_tree(req, opts).await?),
            manifest,
            placed: Arc::default(),
            progress: Progress::bytes("pull", plan.fetch_bytes, opts.progress),
            prepared: Arc::default(),
        };
        let (symlinks, dirs) = (std::mem::take(&mut plan.symlinks), plan.dirs.clone());
        job.apply(client, opts, profile, plan, &mut report).await?;
        debug!("pull: fetched");
        let cache = job.finish(symlinks, dirs, cache, sync).await?;
        debug!("pull: tree finished");
        cache
    };
    let cache_saved = tokio::task::spawn_blocking(move || save_cache(&cache, &cache_file));
    // After a restart this pull read every file again: finding nothing to
    // repair, it knows the tree is on disk.
    if sync || (rebooted && !writes) {
        durability::clear(&opts.state_dir, &req.root);
    }
    if let Some(saving) = saving {
        saving.await;
    }
    save_base(&opts.state_dir, &req.root, &Base::of(&snapshot, client));
    cache_saved.await.expect("save task panicked");
    report.finish(client, started);
    info!(key = %report.key, generation = report.generation, files = report.files, bytes_received = report.bytes_received, "pull finished");
    Ok(report)
}

/// The part of a go-mod snapshot that go.sum `lines` need, and what it lacks.
fn select_go_sum(
    snapshot: &SnapshotRecord,
    profile: Profile,
    manifest: &Manifest,
    lines: &[SumLine],
) -> Result<(Manifest, Vec<String>), SyncError> {
    if !profile.is_go_mod() {
        let (key, generation) = (&snapshot.key, snapshot.generation);
        return Err(SyncError::GoSum(format!(
            "{key}#{generation} is a {profile} snapshot, not a module cache (go-mod)"
        )));
    }
    let s = select::select(manifest, lines).map_err(|e| SyncError::GoSum(e.to_string()))?;
    Ok((s.manifest, s.missing))
}

/// Scans the destination (without writing to it) on the blocking pool, with
/// its hash cache.
fn scan_destination(
    root: PathBuf,
    cache_file: PathBuf,
    profile: Profile,
) -> tokio::task::JoinHandle<Result<(Arc<scan::Scan>, HashCache), SyncError>> {
    tokio::task::spawn_blocking(move || {
        let mut cache = HashCache::load(&cache_file);
        if !root.exists() {
            let empty = scan::Scan { manifest: Manifest::default(), hashed_files: 0, hashed_bytes: 0 };
            return Ok((Arc::new(empty), cache));
        }
        let local = scan::scan(&root, profile, &mut cache)?;
        Ok((Arc::new(local), cache))
    })
}

/// Snapshot paths the scan did not report that exist all the same (a
/// symlink leaving the root, a name that is not UTF-8). Only where the
/// parent exists locally can something stand (an unknown parent is itself
/// checked): one lstat per such entry.
async fn unknown_in_the_way(root: PathBuf, local: Arc<scan::Scan>, snapshot: Arc<Manifest>) -> Vec<String> {
    tokio::task::spawn_blocking(move || {
        let parent_here = |path: &str| match path.rsplit_once('/') {
            None => true,
            Some((parent, _)) => local.manifest.get(parent).is_some_and(|p| p.content == Content::Dir),
        };
        let here = snapshot.paired_with(&local.manifest);
        (snapshot.entries().iter().zip(here))
            .filter(|(e, here)| here.is_none() && parent_here(&e.path))
            .map(|(e, _)| e)
            .filter(|e| std::fs::symlink_metadata(root.join(&e.path)).is_ok())
            .map(|e| e.path.clone())
            .collect()
    })
    .await
    .expect("scan task panicked")
}

/// Creates the destination if needed, with a fresh staging directory.
async fn open_tree(req: &PullRequest, opts: &SyncOptions) -> Result<Tree, SyncError> {
    let (root, fsync, replace) = (req.root.clone(), opts.fsync, req.delete);
    let tree = tokio::task::spawn_blocking(move || Tree::open(&root, fsync, replace));
    Ok(tree.await.expect("open task panicked")?)
}

/// One pull in progress: the destination, the snapshot, what was placed.
struct Job {
    tree: Arc<Tree>,
    manifest: Arc<Manifest>,
    placed: Placed,
    progress: Progress,
    /// Open once [`Job::prepare`] has made the directories.
    prepared: Arc<Prepared>,
}

impl Job {
    /// Writes what `plan` asks (but its symlinks, placed by
    /// [`Job::finish`]): local copies, whole blobs, deltas, unpacked zips.
    async fn apply(
        &self,
        client: &mut Client,
        opts: &SyncOptions,
        profile: Profile,
        mut plan: PullPlan,
        report: &mut Report,
    ) -> Result<(), SyncError> {
        // Over loopback compression only costs CPU: ask the mirror not to.
        let level = client.wire_level(opts.compression_level);
        // Whole blobs first: some are the bases of deltas (another version of a file).
        let whole = std::mem::take(&mut plan.whole);
        // Tree files come out of the zips this pull brings (or has), not over the wire.
        let (whole, archives) = match opts.unpack.applies(client) {
            true => unpack::split(profile, &self.manifest, whole, &mut plan.deltas),
            false => (whole, Vec::new()),
        };
        report.blobs_whole = whole.len() as u64;
        // The first blobs travel while the directories are made.
        let (refetch, fetched) =
            tokio::join!(self.prepare(&plan), self.fetch_whole(client, whole, opts.streams, level));
        let refetch = refetch?;
        fetched?;
        let (deltas, mut failed) = self.fetch_deltas(client, &plan).await;
        report.blobs_delta = deltas;
        // Last: a zip may have come as a delta (a new version against another).
        let (unpacked, failed_unpacks) = self.unpack(archives).await;
        report.blobs_unpacked = unpacked;
        failed.extend(failed_unpacks);
        failed.extend(refetch);
        report.blobs_whole += failed.len() as u64;
        self.fetch_whole(client, failed, opts.streams, level).await?;
        self.progress.finish();
        Ok(())
    }

    /// Local copies (staged first: a source may be removed or replaced),
    /// removals (with `--delete`), directories, metadata fixes. Returns the
    /// copies whose source no longer had the content the scan saw: those are
    /// fetched instead.
    async fn prepare(&self, plan: &PullPlan) -> Result<Vec<(Hash, Vec<usize>)>, SyncError> {
        let (t, m, p) = (self.tree.clone(), self.manifest.clone(), self.placed.clone());
        let (removals, copies, metadata) = (plan.removals.clone(), plan.local_copies.clone(), plan.metadata.clone());
        let (dirs, prepared) = (plan.dirs.clone(), self.prepared.clone());
        tokio::task::spawn_blocking(move || {
            let _opened = FailUnlessOpened(prepared.clone());
            let made = (|| -> Result<_, SyncError> {
                let mut staged = Vec::with_capacity(copies.len());
                for (i, src) in &copies {
                    let hash = m.entries()[*i].file_hash().expect("copies are files");
                    staged.push((*i, hash, t.stage_copy(&t.path(src), hash)?));
                }
                for r in &removals {
                    t.remove(r)?;
                }
                t.prepare_dirs(&m, &dirs)?;
                Ok(staged)
            })();
            // Whole blobs may be written from here on.
            prepared.open(made.is_ok());
            let mut refetch = Vec::new();
            for (i, hash, s) in made? {
                match s {
                    Some(s) => place(&t, &s, &m.entries()[i], &p)?,
                    None => refetch.push((hash, vec![i])),
                }
            }
            for i in metadata {
                t.fix_metadata(&m.entries()[i])?;
            }
            Ok(refetch)
        })
        .await
        .expect("pull task panicked")
    }

    /// Fetches the planned deltas; returns how many landed and the blobs to
    /// fetch whole instead (deltas that failed).
    async fn fetch_deltas(&self, client: &mut Client, plan: &PullPlan) -> (u64, Vec<(Hash, Vec<usize>)>) {
        let mut whole = Vec::new();
        let mut landed = 0;
        for d in &plan.deltas {
            let entries: Vec<Entry> = d.targets.iter().map(|i| self.manifest.entries()[*i].clone()).collect();
            match fetch_delta(client, &self.tree, d, entries, &self.placed).await {
                Ok(()) => {
                    landed += 1;
                    self.progress.inc(self.manifest.entries()[d.targets[0]].size);
                }
                Err(e) => {
                    warn!(path = %d.base, error = %e, "delta failed; fetching the whole file");
                    whole.push((d.hash, d.targets.clone()));
                }
            }
        }
        (landed, whole)
    }

    /// Unpacks blobs from archives already in the destination, on every
    /// core; returns how many landed and those to fetch instead.
    async fn unpack(&self, archives: Vec<unpack::Archive>) -> (u64, Vec<(Hash, Vec<usize>)>) {
        if archives.is_empty() {
            return (0, Vec::new());
        }
        let (t, m, p, prog) = (self.tree.clone(), self.manifest.clone(), self.placed.clone(), self.progress.clone());
        tokio::task::spawn_blocking(move || unpack::unpack(&t, &m, &p, &prog, archives))
            .await
            .expect("unpack task panicked")
    }

    /// Fetches whole blobs over `streams` concurrent streams, placing each as it lands.
    async fn fetch_whole(
        &self,
        client: &Client,
        whole: Vec<(Hash, Vec<usize>)>,
        streams: usize,
        level: i32,
    ) -> Result<(), SyncError> {
        let size = |(_, targets): &(Hash, Vec<usize>)| self.manifest.entries()[targets[0]].size;
        let calls = split_balanced(whole, size, streams).into_iter().map(|group| {
            let mut client = client.clone();
            async move {
                for batch in group.chunks(MAX_HASHES) {
                    self.fetch_batch(&mut client, batch, level).await?;
                }
                Ok::<(), SyncError>(())
            }
        });
        futures::future::try_join_all(calls).await?;
        Ok(())
    }

    /// Symlinks, final directory modes and mtimes, the sync if asked; returns
    /// `cache` with what was placed.
    async fn finish(
        self,
        symlinks: Vec<usize>,
        dirs: Vec<usize>,
        mut cache: HashCache,
        sync: bool,
    ) -> Result<HashCache, SyncError> {
        let Job { tree, manifest, placed, .. } = self;
        let tree = Arc::into_inner(tree).expect("no other tree users remain");
        tokio::task::spawn_blocking(move || -> Result<HashCache, SyncError> {
            for i in symlinks {
                let e = &manifest.entries()[i];
                if let Content::Symlink(target) = &e.content {
                    tree.place_symlink(e, target)?;
                }
            }
            tree.finish(&manifest, &dirs, sync)?;
            for (path, key, hash) in placed.lock().expect("placed lock").drain(..) {
                cache.insert(path, key, hash);
            }
            Ok(cache)
        })
        .await
        .expect("finish task panicked")
    }
}

/// Places a verified staging file at `entry`, recording it for the hash cache.
fn place(tree: &Tree, staged: &std::path::Path, entry: &Entry, placed: &Placed) -> Result<(), super::tree::TreeError> {
    tree.place_file(staged, entry)?;
    if let Ok(meta) = std::fs::symlink_metadata(tree.path(&entry.path)) {
        record(entry, &meta, placed);
    }
    Ok(())
}

/// Remembers a placed file's identity and hash for the hash cache.
fn record(entry: &Entry, meta: &std::fs::Metadata, placed: &Placed) {
    use std::os::unix::fs::MetadataExt;
    if let Some(hash) = entry.file_hash() {
        let key = FileKey { size: meta.len(), mtime_ns: scan::mtime_ns(meta), ino: meta.ino() };
        placed.lock().expect("placed lock").push((entry.path.clone(), key, hash));
    }
}

/// Places one received blob at every entry that holds it: the first gets
/// the received file, the others verified copies of it.
pub(super) fn place_all(tree: &Tree, incoming: Incoming, entries: &[Entry], placed: &Placed) -> Result<(), FrameError> {
    let err = |e: super::tree::TreeError| FrameError::Handler(e.to_string());
    let first = &entries[0];
    match &incoming.unnamed {
        Some(file) => record(first, &tree.place_unnamed(file, first).map_err(err)?, placed),
        None => place(tree, &incoming.staged, first, placed).map_err(err)?,
    }
    // Copies written alongside the first file hold the same verified bytes.
    let written = incoming.copies.len();
    for (copy, extra) in incoming.copies.iter().zip(&entries[1..]) {
        record(extra, &tree.place_unnamed(copy, extra).map_err(err)?, placed);
    }
    for extra in entries.iter().skip(1 + written) {
        let copy = tree.stage_copy(&tree.path(&first.path), incoming.hash).map_err(err)?;
        let copy = copy.ok_or_else(|| FrameError::Handler(format!("{} changed while being copied", first.path)))?;
        place(tree, &copy, extra, placed).map_err(err)?;
    }
    Ok(())
}

/// A receiver into named staging files (deltas need a path to apply).
fn receiver(tree: &Arc<Tree>, max: u64) -> FrameReceiver {
    let t = tree.clone();
    FrameReceiver::new(Box::new(move |_: &Hash| t.staging_file().map(NewFile::named)), max)
}

impl Job {
    /// Fetches one batch of whole blobs over one stream, placing each as it lands.
    async fn fetch_batch(
        &self,
        client: &mut Client,
        batch: &[(Hash, Vec<usize>)],
        level: i32,
    ) -> Result<(), SyncError> {
        let (tree, manifest, placed, progress) = (&self.tree, &self.manifest, &self.placed, &self.progress);
        let hashes: Vec<Hash> = batch.iter().map(|(h, _)| *h).collect();
        let mut targets: HashMap<Hash, Vec<Entry>> = HashMap::new();
        for (h, idx) in batch {
            targets.insert(*h, idx.iter().map(|i| manifest.entries()[*i].clone()).collect());
        }
        let max = targets.values().flatten().map(|e| e.size).max().unwrap_or(0);
        let targets = Arc::new(Mutex::new(targets));
        let (t, p, prog, left) = (tree.clone(), placed.clone(), progress.clone(), targets.clone());
        // Each blob is written in the directories of its entries, so that it can be linked in place.
        let (t2, dests, prepared) = (tree.clone(), targets.clone(), self.prepared.clone());
        let new_file = move |hash: &Hash| {
            if !prepared.wait() {
                return Err(std::io::Error::other("the destination could not be prepared"));
            }
            match dests.lock().expect("targets lock").get(hash) {
                Some(entries) => t2.new_file(&entries[0].path, entries[1..].iter().map(|e| e.path.as_str())),
                None => t2.staging_file().map(NewFile::named), // refused by the handler
            }
        };
        client
            .get_blobs(&hashes, level, FrameReceiver::new(Box::new(new_file), max), move |incoming: Incoming| {
                let entries = left
                    .lock()
                    .expect("targets lock")
                    .remove(&incoming.hash)
                    .ok_or_else(|| FrameError::Protocol(format!("unrequested blob {}", incoming.hash)))?;
                if incoming.delta_base.is_some() {
                    return Err(FrameError::Protocol("a delta where a whole blob was asked".into()));
                }
                prog.inc(incoming.size);
                place_all(&t, incoming, &entries, &p)
            })
            .await?;
        let missing = targets.lock().expect("targets lock").len();
        if missing > 0 {
            let why = format!("the stream ended with {missing} of the {} requested blobs missing", hashes.len());
            return Err(SyncError::Client(FrameError::Protocol(why).into()));
        }
        Ok(())
    }
}

/// Fetches one blob as a delta against a local file: first against the
/// mirror's signature of the blob the scan says the file holds (no reading
/// of the file to sign it), then, if that fails (the mirror lacks that blob,
/// predates asking by hash, or the file was not what the scan said), against
/// the file's own signature.
async fn fetch_delta(
    client: &mut Client,
    tree: &Arc<Tree>,
    planned: &PlannedDelta,
    entries: Vec<Entry>,
    placed: &Placed,
) -> Result<(), SyncError> {
    let by_hash = fetch_delta_against(client, tree, planned, &entries, DeltaBase::Blob(planned.base_hash), placed);
    let Err(e) = by_hash.await else { return Ok(()) };
    debug!(path = %planned.base, error = %e, "delta against the mirror's signature failed; signing the local file");
    let base_path = tree.path(&planned.base);
    let signature = tokio::task::spawn_blocking(move || delta::signature_file(&base_path))
        .await
        .expect("signature task panicked")?;
    fetch_delta_against(client, tree, planned, &entries, DeltaBase::Signature(signature), placed).await
}

async fn fetch_delta_against(
    client: &mut Client,
    tree: &Arc<Tree>,
    planned: &PlannedDelta,
    entries: &[Entry],
    against: DeltaBase,
    placed: &Placed,
) -> Result<(), SyncError> {
    let (t, p, hash, entries) = (tree.clone(), placed.clone(), planned.hash, entries.to_vec());
    let base_path = tree.path(&planned.base);
    let size = entries[0].size;
    let landed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = landed.clone();
    client
        .get_delta(hash, against, receiver(tree, size), move |incoming: Incoming| {
            if incoming.hash != hash || done.swap(true, std::sync::atomic::Ordering::Relaxed) {
                return Err(FrameError::Protocol("a delta for another blob, or a second one".into()));
            }
            if incoming.delta_base.is_none() {
                return place_all(&t, incoming, &entries, &p); // sent whole, already verified
            }
            let (out, _) = t.staging_file().map_err(|e| FrameError::Io { path: "staging".into(), source: e })?;
            let _ = std::fs::remove_file(&out);
            let applied = delta::apply_files(&base_path, &incoming.staged, &out, hash, size, false);
            let _ = std::fs::remove_file(&incoming.staged);
            applied.map_err(|e| FrameError::Handler(e.to_string()))?;
            let applied = Incoming { staged: out, unnamed: None, delta_base: None, ..incoming };
            place_all(&t, applied, &entries, &p)
        })
        .await?;
    if !landed.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(SyncError::Client(FrameError::Protocol("the delta stream ended without a delta".into()).into()));
    }
    Ok(())
}
