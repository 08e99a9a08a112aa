//! Watching a root: the only user of `notify`.
//!
//! Events only mark paths dirty (the path, and its parent directory whose
//! mtime changed with it); what a path now holds is decided later, by an
//! `lstat` once it has been quiet for the settle time ([`Changes::take`]).
//! Each directory gets its own inotify watch, so a watch limit (the kernel's
//! `fs.inotify.max_user_watches`, or `agent.max_watches`) is noticed, warned
//! about once, and survived: unwatched directories are covered by rescans. A
//! queue overflow, an error, or too many dirty paths asks for a rescan.
//! This module reads nothing but directory listings and never writes.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher as _};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::profile::Profile;

/// More dirty paths than this are forgotten in favour of one rescan.
const MAX_DIRTY: usize = 100_000;

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}: {source}", path.display())]
pub struct WatchError {
    /// The root.
    pub path: PathBuf,
    /// What notify said.
    #[source]
    pub source: notify::Error,
}

/// Dirty paths with the time of their last event, merged: a path marked
/// twice is one path, with the later time and `walk` if either had it.
#[derive(Debug, Default)]
pub struct Dirty {
    paths: HashMap<String, (Instant, bool)>,
}

impl Dirty {
    /// Marks `path` (root-relative) dirty at `at`; `walk` asks for
    /// everything under it to be looked at too, not only the entry itself.
    pub fn mark(&mut self, path: String, walk: bool, at: Instant) {
        let slot = self.paths.entry(path).or_insert((at, walk));
        slot.0 = slot.0.max(at);
        slot.1 |= walk;
    }

    /// Dirty paths.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True when nothing is dirty.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Removes and returns, sorted, the paths quiet for `settle` at `now`;
    /// paths under a returned walked directory are folded into it.
    pub fn take_settled(&mut self, now: Instant, settle: Duration) -> Vec<(String, bool)> {
        let mut ready: Vec<(String, bool)> = Vec::new();
        self.paths.retain(|path, (at, walk)| {
            let settled = *at + settle <= now;
            if settled {
                ready.push((path.clone(), *walk));
            }
            !settled
        });
        ready.sort();
        let mut walked: HashSet<String> = HashSet::new();
        let mut out: Vec<(String, bool)> = Vec::with_capacity(ready.len());
        for (path, walk) in ready {
            let mut ancestors = path.match_indices('/').map(|(i, _)| &path[..i]);
            if walked.contains("") || ancestors.any(|a| walked.contains(a)) {
                continue;
            }
            if walk {
                walked.insert(path.clone());
            }
            out.push((path, walk));
        }
        out
    }

    /// When the earliest dirty path settles.
    pub fn next_settled(&self, settle: Duration) -> Option<Instant> {
        self.paths.values().map(|(at, _)| *at + settle).min()
    }
}

/// What the watcher found, shared between notify's thread and the agent.
#[derive(Debug, Default)]
struct State {
    dirty: Dirty,
    rescan: bool,
    new_dirs: Vec<PathBuf>,
    gone_dirs: Vec<PathBuf>,
    limit_hit: bool,
}

/// The dirty paths of one root and a wake-up for whoever waits on them.
#[derive(Debug, Default)]
pub struct Changes {
    state: Mutex<State>,
    wake: tokio::sync::Notify,
}

/// What [`Changes::take`] hands out.
#[derive(Debug, Default)]
pub struct Taken {
    /// Settled paths and whether to walk them.
    pub paths: Vec<(String, bool)>,
    /// The whole root must be walked again.
    pub rescan: bool,
}

impl Changes {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until an event arrives (or arrived since the last wait).
    pub async fn notified(&self) {
        self.wake.notified().await;
    }

    /// Marks a path dirty (again), as an event would.
    pub fn mark(&self, path: String, walk: bool) {
        let mut state = self.lock();
        state.dirty.mark(path, walk, Instant::now());
        if state.dirty.len() > MAX_DIRTY {
            state.dirty = Dirty::default();
            state.rescan = true;
        }
    }

    /// Asks for a full rescan.
    pub fn request_rescan(&self) {
        self.lock().rescan = true;
        self.wake.notify_one();
    }

    /// The settled paths, and whether a rescan was asked for (then every
    /// dirty path is taken: the rescan covers them).
    pub fn take(&self, settle: Duration) -> Taken {
        let mut state = self.lock();
        if std::mem::take(&mut state.rescan) {
            state.dirty = Dirty::default();
            return Taken { paths: Vec::new(), rescan: true };
        }
        Taken { paths: state.dirty.take_settled(Instant::now(), settle), rescan: false }
    }

    /// Dirty paths not yet taken.
    pub fn pending(&self) -> usize {
        self.lock().dirty.len()
    }

    /// When the next dirty path settles, if any is dirty.
    pub fn next_settled(&self, settle: Duration) -> Option<Instant> {
        self.lock().dirty.next_settled(settle)
    }

    /// Records one event from notify.
    fn record(&self, root: &Path, profile: Profile, event: notify::Result<notify::Event>) {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                let mut state = self.lock();
                state.rescan = true;
                state.limit_hit |= matches!(e.kind, notify::ErrorKind::MaxFilesWatch);
                drop(state);
                debug!(error = %e, "watch error; a rescan follows");
                self.wake.notify_one();
                return;
            }
        };
        if event.need_rescan() {
            self.request_rescan();
            return;
        }
        if matches!(event.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write)) {
            return;
        }
        let now = Instant::now();
        let maybe_new_dir = matches!(
            event.kind,
            EventKind::Create(CreateKind::Folder | CreateKind::Any) | EventKind::Modify(ModifyKind::Name(_))
        );
        let mut state = self.lock();
        for path in &event.paths {
            let Some(rel) = path.strip_prefix(root).ok().and_then(Path::to_str) else { continue };
            if rel.is_empty() || profile.skips(rel) {
                continue;
            }
            if let Some((parent, _)) = rel.rsplit_once('/') {
                state.dirty.mark(parent.to_string(), false, now);
            }
            state.dirty.mark(rel.to_string(), true, now);
            if maybe_new_dir {
                state.new_dirs.push(path.clone());
            }
            if matches!(event.kind, EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))) {
                state.gone_dirs.push(path.clone());
            }
        }
        if state.dirty.len() > MAX_DIRTY {
            state.dirty = Dirty::default();
            state.rescan = true;
        }
        drop(state);
        self.wake.notify_one();
    }
}

/// The inotify watches of one root.
pub struct Watcher {
    root: PathBuf,
    profile: Profile,
    changes: Arc<Changes>,
    inner: notify::RecommendedWatcher,
    watched: HashSet<PathBuf>,
    max: usize,
    limited: bool,
}

impl Watcher {
    /// Starts watching every directory of `root` (blocking: it lists them).
    /// `max_watches` caps the watches (0: as many as the kernel allows).
    ///
    /// # Errors
    ///
    /// [`WatchError`] when inotify cannot be set up at all.
    pub fn start(root: &Path, profile: Profile, max_watches: usize) -> Result<Watcher, WatchError> {
        let changes = Arc::new(Changes::default());
        let (sink, r) = (changes.clone(), root.to_path_buf());
        let handler = move |event| sink.record(&r, profile, event);
        let inner =
            notify::recommended_watcher(handler).map_err(|source| WatchError { path: root.to_path_buf(), source })?;
        let mut w = Watcher {
            root: root.to_path_buf(),
            profile,
            changes,
            inner,
            watched: HashSet::new(),
            max: max_watches,
            limited: false,
        };
        w.watch_tree(root);
        Ok(w)
    }

    /// The dirty paths this watcher feeds.
    pub fn changes(&self) -> Arc<Changes> {
        self.changes.clone()
    }

    /// True once a watch limit was hit: some directories are not watched.
    pub fn limited(&self) -> bool {
        self.limited
    }

    /// Directories watched.
    pub fn watches(&self) -> usize {
        self.watched.len()
    }

    /// Watches directories created or moved in since the last call, and
    /// forgets those removed (blocking, briefly).
    pub fn pump(&mut self) {
        let (new_dirs, gone, limit_hit) = {
            let mut state = self.changes.lock();
            let taken = (std::mem::take(&mut state.new_dirs), std::mem::take(&mut state.gone_dirs), state.limit_hit);
            state.limit_hit = false;
            taken
        };
        if limit_hit {
            self.limit_reached();
        }
        for dir in gone {
            if !dir.is_dir() {
                self.watched.retain(|w| !w.starts_with(&dir));
            }
        }
        for dir in new_dirs {
            self.watch_tree(&dir);
        }
    }

    /// Watches `dir` and every directory under it not yet watched.
    fn watch_tree(&mut self, dir: &Path) {
        let (root, profile) = (self.root.clone(), self.profile);
        let walker = walkdir::WalkDir::new(dir).follow_links(false).follow_root_links(false).into_iter();
        let dirs = walker.filter_entry(|e| {
            let rel = e.path().strip_prefix(&root).ok().and_then(Path::to_str);
            e.file_type().is_dir() && rel.is_none_or(|rel| rel.is_empty() || !profile.skips(rel))
        });
        for d in dirs.flatten() {
            if self.limited {
                return;
            }
            if self.watched.contains(d.path()) {
                continue;
            }
            if self.max > 0 && self.watched.len() >= self.max {
                self.limit_reached();
                return;
            }
            match self.inner.watch(d.path(), RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(d.path().to_path_buf());
                }
                Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => self.limit_reached(),
                Err(e) => debug!(path = %d.path().display(), error = %e, "not watched (gone?)"),
            }
        }
    }

    fn limit_reached(&mut self) {
        if self.limited {
            return;
        }
        self.limited = true;
        warn!(
            root = %self.root.display(),
            watched = self.watched.len(),
            "inotify watch limit reached (fs.inotify.max_user_watches, or agent.max_watches): directories beyond \
             it are not watched and their changes are found by the periodic rescan only; raise the limit with \
             `sysctl fs.inotify.max_user_watches=1048576` (and a file in /etc/sysctl.d/ to keep it)"
        );
        self.changes.request_rescan();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(v: &[(String, bool)]) -> Vec<&str> {
        v.iter().map(|(p, _)| p.as_str()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn paths_settle_after_their_last_event() {
        let settle = Duration::from_secs(2);
        let mut d = Dirty::default();
        d.mark("a".into(), true, Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        d.mark("b".into(), true, Instant::now());
        assert!(d.take_settled(Instant::now(), settle).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(paths(&d.take_settled(Instant::now(), settle)), ["a"]);
        // An event on b restarts its clock.
        d.mark("b".into(), false, Instant::now());
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(d.take_settled(Instant::now(), settle).is_empty());
        assert_eq!(d.next_settled(settle), Some(Instant::now() + Duration::from_millis(500)));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(d.take_settled(Instant::now(), settle), [("b".to_string(), true)], "walk is kept when merged");
        assert!(d.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn walked_directories_fold_in_their_children() {
        let mut d = Dirty::default();
        let now = Instant::now();
        for (p, walk) in [("x/y/z", true), ("x/y", true), ("x", false), ("x/yy", true), ("x/y/z/w", false)] {
            d.mark(p.into(), walk, now);
        }
        let got = d.take_settled(now, Duration::ZERO);
        assert_eq!(paths(&got), ["x", "x/y", "x/yy"]);
        d.mark("".into(), true, now);
        d.mark("q".into(), true, now);
        assert_eq!(paths(&d.take_settled(now, Duration::ZERO)), [""]);
    }

    #[test]
    fn too_many_dirty_paths_become_one_rescan() {
        let c = Changes::default();
        for i in 0..=MAX_DIRTY {
            c.mark(format!("f{i}"), false);
        }
        assert_eq!(c.pending(), 0);
        let taken = c.take(Duration::ZERO);
        assert!(taken.rescan && taken.paths.is_empty());
        assert!(!c.take(Duration::ZERO).rescan);
    }
}
