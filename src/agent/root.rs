//! One root's task: watch, keep the index, push on schedule, apply what
//! peers (or the mirror) send.
//!
//! The loop waits on the schedule's next tick (or a retry, or a rescan),
//! on file events (to watch new directories), on snapshots committed to the
//! agent's own store, and on shutdown. A cycle with nothing dirty and every
//! destination up to date returns at once: no walk, no network.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::dest::Dest;
use super::index::{Applied, Index};
use super::state::RootState;
use super::status::{StatusCell, now_unix_ms};
use super::{AgentError, Shared};
use crate::config::RootConfig;
use crate::manifest::Manifest;
use crate::store::SnapshotRecord;
use crate::sync::{self, PullRequest, PushRequest, SyncError};
use crate::watch::{Changes, Watcher};

/// One root being kept in sync.
pub struct RootTask {
    cfg: RootConfig,
    shared: Arc<Shared>,
    index: Arc<Mutex<Index>>,
    dests: Vec<Dest>,
    /// The agent's own store, read through its listener.
    own: Option<Dest>,
    applied: Option<String>,
    /// The manifest of the index while a destination may need it; dropped
    /// once every destination holds it (an idle agent keeps one copy of the
    /// root: the index), built again from the index when needed.
    current: Option<Arc<Manifest>>,
    /// Hex id of the index's manifest (computing it encodes every entry).
    current_id: Option<String>,
    /// Entries, files and bytes of that manifest.
    held: (usize, u64, u64),
    commits: Option<broadcast::Receiver<SnapshotRecord>>,
    status: Arc<StatusCell>,
}

/// What woke the loop.
enum Wake {
    Stop,
    Events,
    Commit,
    Closed,
    Timer,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RootTask {
    /// A task for `cfg`, resuming from its persisted state.
    pub fn new(
        cfg: RootConfig,
        shared: Arc<Shared>,
        commits: Option<broadcast::Receiver<SnapshotRecord>>,
        status: Arc<StatusCell>,
    ) -> RootTask {
        let state = RootState::load(&shared.state_dir, &cfg.name);
        let index = Index::new(&cfg.path, cfg.profile, state.cache);
        let known = |url: &String| state.known.get(url).cloned();
        let mut dests: Vec<Dest> = shared.peers.iter().map(|u| Dest::new(u.clone(), "peer", known(u))).collect();
        if let Some(m) = &shared.mirror {
            dests.push(Dest::new(m.clone(), "mirror", known(m)));
        }
        let own = shared.own_url.clone().map(|u| Dest::new(u, "self", None));
        let index = Arc::new(Mutex::new(index));
        RootTask {
            cfg,
            shared,
            index,
            dests,
            own,
            applied: state.applied,
            current: None,
            current_id: None,
            held: (0, 0, 0),
            commits,
            status,
        }
    }

    /// Runs until `shutdown`; saves the index and what each destination holds.
    ///
    /// # Errors
    ///
    /// Start-up failures: the root cannot be created, watched or walked.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let (watcher, changes) = self.start().await?;
        let mut next_tick = Instant::now();
        self.status.update(|s| s.next_run_unix_ms = now_unix_ms());
        self.publish();
        let mut next_rescan = Instant::now() + self.shared.rescan;
        loop {
            let wake = self.wait(&changes, next_tick.min(next_rescan), &shutdown).await;
            let work = async {
                match wake {
                    Wake::Stop => {}
                    Wake::Closed => self.commits = None,
                    Wake::Events => pump(&watcher).await,
                    Wake::Commit => self.apply_own(&changes).await,
                    Wake::Timer => {
                        let now = Instant::now();
                        if now >= next_rescan {
                            changes.request_rescan();
                            next_rescan = now + self.rescan_period(&watcher);
                        }
                        let tick = now >= next_tick;
                        if tick {
                            let next = self.cfg.schedule.next_after(SystemTime::now());
                            next_tick = now + until(next);
                            self.status.update(|s| s.next_run_unix_ms = unix_ms(next));
                        }
                        self.cycle(&changes, tick).await;
                    }
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => info!(root = %self.cfg.name, "shutting down; the transfer in flight is abandoned"),
                () = work => {}
            }
            if shutdown.is_cancelled() {
                break;
            }
            self.release_if_idle().await;
            self.publish();
        }
        self.save().await;
        Ok(())
    }

    fn rescan_period(&self, watcher: &Arc<Mutex<Watcher>>) -> Duration {
        let limited = lock(watcher).limited();
        if limited { self.shared.rescan.min(Duration::from_secs(60)) } else { self.shared.rescan }
    }

    /// Creates the root if it receives, watches it, walks it once.
    async fn start(&mut self) -> Result<(Arc<Mutex<Watcher>>, Arc<Changes>), AgentError> {
        let (root, profile, max) = (self.cfg.path.clone(), self.cfg.profile, self.shared.max_watches);
        let pulls = self.cfg.direction.pulls();
        let watcher = tokio::task::spawn_blocking(move || {
            if pulls {
                std::fs::create_dir_all(&root).map_err(|source| AgentError::Io { path: root.clone(), source })?;
            }
            if !root.is_dir() {
                return Err(AgentError::NotADirectory(root));
            }
            Ok(Watcher::start(&root, profile, max)?)
        })
        .await
        .expect("watch task panicked")?;
        let changes = watcher.changes();
        self.status.watch(changes.clone());
        info!(root = %self.cfg.name, path = %self.cfg.path.display(), watches = watcher.watches(), "watching");
        let applied = self.with_index(|i, settle| i.rescan(settle)).await?;
        self.requeue(&changes, &applied);
        self.apply_own(&changes).await;
        Ok((Arc::new(Mutex::new(watcher)), changes))
    }

    /// Runs `f` on the index on the blocking pool, then refreshes the manifest.
    async fn with_index(
        &mut self,
        f: impl FnOnce(&mut Index, Duration) -> Result<Applied, crate::scan::ScanError> + Send + 'static,
    ) -> Result<Applied, AgentError> {
        let (index, settle, known) = (self.index.clone(), self.shared.settle, self.current_id.is_some());
        let (applied, manifest) = tokio::task::spawn_blocking(move || {
            let mut index = lock(&index);
            let applied = f(&mut index, settle)?;
            let manifest = if applied.changed || !known { Some(index.manifest()?) } else { None };
            Ok::<_, AgentError>((applied, manifest))
        })
        .await
        .expect("index task panicked")?;
        if let Some(manifest) = manifest {
            self.set_current(manifest);
        }
        Ok(applied)
    }

    /// The index's manifest: the one kept, or built again.
    async fn manifest(&mut self) -> Result<Arc<Manifest>, AgentError> {
        if let Some(m) = &self.current {
            return Ok(m.clone());
        }
        let index = self.index.clone();
        let built = tokio::task::spawn_blocking(move || lock(&index).manifest()).await.expect("index task panicked")?;
        self.set_current(built.clone());
        Ok(built)
    }

    /// Drops the manifest once no destination needs it, and hands memory
    /// freed by the cycle back to the system.
    async fn release_if_idle(&mut self) {
        if self.current.is_none() || self.dests.iter().any(|d| self.needs(d)) {
            return;
        }
        let current = self.current.take().expect("checked above");
        // The destinations' diff base is this manifest: on disk while idle.
        if self.dests.iter().any(|d| d.holds(&current))
            && sync::park_manifest(&self.shared.sync.state_dir, &self.cfg.path, current.clone()).await
        {
            self.dests.iter_mut().filter(|d| d.holds(&current)).for_each(Dest::park);
        }
        drop(current);
        let index = self.index.clone();
        let _ = tokio::task::spawn_blocking(move || {
            lock(&index).forget_manifest();
            super::release_freed_memory();
        })
        .await;
    }

    fn set_current(&mut self, manifest: Arc<Manifest>) {
        if self.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &manifest)) {
            return;
        }
        self.current_id = Some(manifest.id().to_hex());
        self.held = (manifest.entries().len(), manifest.file_count(), manifest.total_bytes());
        self.current = Some(manifest);
    }

    fn requeue(&self, changes: &Changes, applied: &Applied) {
        for path in &applied.deferred {
            changes.mark(path.clone(), true);
        }
    }

    async fn wait(&mut self, changes: &Changes, timer: Instant, shutdown: &CancellationToken) -> Wake {
        let retry = self.dests.iter().filter(|d| self.needs(d)).filter_map(Dest::retry_at).min();
        let timer = retry.map_or(timer, |r| r.min(timer));
        let (key, pulls) = (self.cfg.key.clone(), self.cfg.direction.pulls());
        tokio::select! {
            () = shutdown.cancelled() => Wake::Stop,
            () = changes.notified() => Wake::Events,
            r = recv(self.commits.as_mut()) => match r {
                Err(broadcast::error::RecvError::Closed) => Wake::Closed,
                Ok(s) if s.key != key || !pulls => Wake::Events,
                _ => Wake::Commit,
            },
            () = tokio::time::sleep_until(timer) => Wake::Timer,
        }
    }

    fn needs(&self, d: &Dest) -> bool {
        self.cfg.direction.pushes() && self.held.0 > 0 && d.known != self.current_id
    }

    /// One sync cycle: settled changes into the index, then pushes where due.
    async fn cycle(&mut self, changes: &Changes, tick: bool) {
        let taken = changes.take(self.shared.settle);
        let pending = self.dests.iter().any(|d| self.needs(d) && d.due(Instant::now()));
        let mirror_pull = tick && self.cfg.direction.pulls() && self.shared.mirror.is_some();
        if taken.paths.is_empty() && !taken.rescan && !pending && !mirror_pull {
            return;
        }
        let span = info_span!("sync_cycle", root = %self.cfg.name, files = tracing::field::Empty,
            bytes = tracing::field::Empty, duration_ms = tracing::field::Empty);
        let started = Instant::now();
        self.status.cycle_started();
        let result = self.cycle_work(changes, taken, tick, mirror_pull).instrument(span.clone()).await;
        span.record("files", self.held.1).record("bytes", self.held.2);
        span.record("duration_ms", started.elapsed().as_millis() as u64);
        let (error, failed) = match result {
            Ok((pushed, error)) => {
                let ms = started.elapsed().as_millis() as u64;
                debug!(parent: &span, pushed, duration_ms = ms, "sync cycle finished");
                (error, false)
            }
            Err(e) => {
                warn!(parent: &span, root = %self.cfg.name, error = %e, "sync cycle failed; retrying next cycle");
                (Some(e.to_string()), true)
            }
        };
        self.status.cycle_ended(started.elapsed(), error, failed);
    }

    /// Publishes what the root holds and how its destinations are doing.
    fn publish(&self) {
        let current = self.current_id.as_deref();
        let dests = self.dests.iter().map(|d| d.status(current)).collect();
        self.status.publish(self.held.1, self.held.2, dests);
    }

    async fn cycle_work(
        &mut self,
        changes: &Changes,
        taken: crate::watch::Taken,
        tick: bool,
        mirror_pull: bool,
    ) -> Result<(u64, Option<String>), AgentError> {
        let applied = if taken.rescan {
            self.with_index(|i, settle| i.rescan(settle)).await?
        } else {
            self.with_index(move |i, settle| i.apply(&taken.paths, settle)).await?
        };
        self.requeue(changes, &applied);
        debug!(root = %self.cfg.name, changed = applied.changed, hashed = applied.hashed, deferred = applied.deferred.len(), "index updated");
        if mirror_pull {
            self.pull_mirror(changes).await;
        }
        Ok(self.push_all(tick).await)
    }

    /// Pushes the current manifest to every destination that lacks it and is
    /// due. Returns how many pushes landed and the first error.
    async fn push_all(&mut self, _tick: bool) -> (u64, Option<String>) {
        if !self.cfg.direction.pushes() || self.current_id.is_none() {
            return (0, None);
        }
        if self.held.0 == 0 {
            // An empty (or unmounted) root would replace the key's content for everyone.
            debug!(root = %self.cfg.name, "the root is empty: nothing is pushed");
            return (0, None);
        }
        let now = Instant::now();
        if !self.dests.iter().any(|d| d.due(now) && d.known != self.current_id) {
            return (0, None);
        }
        let manifest = match self.manifest().await {
            Ok(m) => m,
            Err(e) => return (0, Some(e.to_string())),
        };
        let req = PushRequest { root: self.cfg.path.clone(), key: self.cfg.key.clone(), profile: self.cfg.profile };
        let (mut pushed, mut first_error) = (0, None);
        for dest in self.dests.iter_mut().filter(|d| d.due(now)) {
            if dest.known == self.current_id {
                continue;
            }
            match dest.push(&req, &manifest, &self.shared.sync, &self.shared.connect).await {
                Ok(r) => {
                    pushed += 1;
                    self.status.pushed(&r);
                    let (dest, generation) = (dest.url.as_str(), r.generation);
                    info!(root = %self.cfg.name, dest, generation, files = r.files, bytes_sent = r.bytes_sent, "pushed");
                }
                Err(e) => {
                    self.status.push_failed();
                    first_error.get_or_insert_with(|| format!("{}: {e}", dest.url));
                }
            }
        }
        (pushed, first_error)
    }

    /// Pulls the key's newest snapshot on the mirror if it is new to us.
    async fn pull_mirror(&mut self, changes: &Changes) {
        let Some(i) = self.dests.iter().position(|d| d.kind == "mirror") else { return };
        let mut dest = std::mem::replace(&mut self.dests[i], Dest::new(String::new(), "mirror", None));
        if dest.due(Instant::now()) {
            match self.pull_from(&mut dest, changes).await {
                Ok(Some(m)) => dest.succeeded(&self.cfg.key, m),
                Ok(None) => {}
                Err(e) => {
                    self.status.apply_failed(format!("{}: {e}", dest.url));
                    dest.failed(&self.cfg.key, &e);
                }
            }
        }
        self.dests[i] = dest;
    }

    /// Applies the newest snapshot of the agent's own store (what peers pushed).
    async fn apply_own(&mut self, changes: &Changes) {
        if !self.cfg.direction.pulls() {
            return;
        }
        let Some(mut own) = self.own.take() else { return };
        // A fresh store has no snapshot: nothing to apply.
        if let Err(e) = self.pull_from(&mut own, changes).await {
            warn!(root = %self.cfg.name, error = %e, "could not apply a snapshot a peer pushed");
            own = Dest::new(own.url, "self", None);
            self.status.apply_failed(e.to_string());
        }
        self.own = Some(own);
    }

    /// Pulls the newest snapshot of the key from `dest` into the root unless
    /// it was applied already or is what the root holds; then takes it into
    /// the index and counts it as held by every destination (so it is not
    /// echoed back). Returns the manifest applied.
    async fn pull_from(&mut self, dest: &mut Dest, changes: &Changes) -> Result<Option<String>, SyncError> {
        let opts = self.shared.sync.clone();
        let client = dest.client(&self.shared.connect).await?;
        let Some(snapshot) = client.resolve(&self.cfg.key, &[]).await? else { return Ok(None) };
        let known = [&self.applied, &self.current_id];
        if known.iter().any(|k| k.as_ref() == Some(&snapshot.manifest)) {
            return Ok(None);
        }
        let report = sync::pull(client, &PullRequest::new(&self.cfg.path, &self.cfg.key), &opts).await?;
        // An agent is not waiting on its pulls as a CI job is: sync now, so a
        // restart cannot leave this root refused for pushes.
        sync::make_durable(&opts.state_dir, &self.cfg.path).await?;
        let id = match crate::hash::Hash::from_hex(&report.manifest) {
            Ok(id) => id,
            Err(_) => snapshot.manifest_id()?,
        };
        let held = sync::held_manifest(&opts.state_dir, &self.cfg.path).await; // the pull just stored it
        let manifest = client.manifest_since(id, held.as_ref()).await?.0.manifest;
        info!(root = %self.cfg.name, from = %dest.url, generation = report.generation, files = report.files, "applied a snapshot");
        self.status.applied(&report);
        let index = self.index.clone();
        let differ = tokio::task::spawn_blocking(move || {
            let mut index = lock(&index);
            let differ = index.overlay(&manifest);
            (differ, index.manifest())
        })
        .await
        .expect("overlay task panicked");
        for path in differ.0 {
            changes.mark(path, true);
        }
        if let Ok(m) = differ.1 {
            self.set_current(m);
        }
        for d in &mut self.dests {
            d.known = Some(report.manifest.clone());
        }
        self.applied = Some(report.manifest.clone());
        Ok(Some(report.manifest))
    }

    async fn save(&self) {
        let state = RootState {
            known: self.dests.iter().filter_map(|d| Some((d.url.clone(), d.known.clone()?))).collect(),
            applied: self.applied.clone(),
            cache: Default::default(),
        };
        let (index, dir, name) = (self.index.clone(), self.shared.state_dir.clone(), self.cfg.name.clone());
        let _ = tokio::task::spawn_blocking(move || state.save(&dir, &name, lock(&index).cache())).await;
    }
}

/// Receives from the channel, or waits forever without one.
async fn recv(
    rx: Option<&mut broadcast::Receiver<SnapshotRecord>>,
) -> Result<SnapshotRecord, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn pump(watcher: &Arc<Mutex<Watcher>>) {
    let w = watcher.clone();
    let _ = tokio::task::spawn_blocking(move || lock(&w).pump()).await;
}

/// `t` in Unix milliseconds.
fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// From now until `t`, zero if `t` passed.
fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now()).unwrap_or_default()
}
