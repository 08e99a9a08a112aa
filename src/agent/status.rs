//! How each root is doing, as `cachesync status --agent` shows it (and the
//! agent's metrics count).
//!
//! A root's task reports what happens to a [`StatusCell`] (which also moves
//! the root's Prometheus series) and publishes its [`RootStatus`] after
//! each wake; the listener reads every cell when asked (the `AgentStatus`
//! call). What depends on the clock (is a destination still backing off?)
//! and the dirty paths pending are worked out when the status is read, not
//! when it was published.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::meter::RootMeter;
use crate::sync::Report;
use crate::watch::Changes;

/// What a root's task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Activity {
    /// Waiting for its next tick or for changes.
    #[default]
    #[serde(rename = "idle")]
    Idle,
    /// In a sync cycle (or applying a snapshot).
    #[serde(rename = "syncing")]
    Syncing,
    /// A destination failed and its retry is not due yet.
    #[serde(rename = "backing off")]
    BackingOff,
}

impl Activity {
    /// As shown and sent: `idle`, `syncing`, `backing off`.
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Idle => "idle",
            Activity::Syncing => "syncing",
            Activity::BackingOff => "backing off",
        }
    }

    /// The inverse of [`Activity::as_str`].
    pub fn parse(text: &str) -> Option<Activity> {
        [Activity::Idle, Activity::Syncing, Activity::BackingOff].into_iter().find(|a| a.as_str() == text)
    }
}

/// A root's status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RootStatus {
    /// The root's name.
    pub name: String,
    /// Its directory.
    pub path: String,
    /// Its profile.
    pub profile: String,
    /// Its key.
    pub key: String,
    /// `push`, `pull` or `both`.
    pub direction: String,
    /// Its schedule, as configured (`every 30s`).
    pub schedule: String,
    /// What it is doing.
    pub state: Activity,
    /// Files in its index.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// When a cycle last ended without error (Unix ms; 0: never).
    pub last_success_unix_ms: i64,
    /// The last cycle's error, if it failed.
    pub last_error: Option<String>,
    /// When the schedule next fires (Unix ms; 0: not known yet).
    pub next_run_unix_ms: i64,
    /// Files the last push that landed sent (whole or as deltas).
    pub last_push_files: u64,
    /// Bytes the last push that landed put on the wire.
    pub last_push_bytes: u64,
    /// Pushes that landed since the start.
    pub pushes: u64,
    /// Paths marked dirty by file events, not yet in the index.
    pub dirty: u64,
    /// Where it is pushed.
    pub destinations: Vec<DestStatus>,
}

/// One destination of a root.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DestStatus {
    /// Its URL.
    pub url: String,
    /// `peer` or `mirror`.
    pub kind: String,
    /// Hex id of the manifest it is known to hold.
    pub holds: Option<String>,
    /// It holds what the root holds now.
    pub up_to_date: bool,
    /// Waiting for a retry after failures.
    pub backing_off: bool,
    /// Failed pushes in a row.
    pub failures: u32,
    /// When the next try is due (Unix ms; 0: none pending).
    pub retry_unix_ms: i64,
    /// The last failure, while it lasts.
    pub last_error: Option<String>,
}

/// Now, in Unix milliseconds.
pub fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A root's status, written by its task and read by the listener, and its
/// Prometheus series, moved by the same events.
#[derive(Debug, Default)]
pub struct StatusCell {
    status: Mutex<RootStatus>,
    changes: OnceLock<Arc<Changes>>,
    meter: RootMeter,
}

impl StatusCell {
    /// A cell holding `status`, counting in `meter`.
    pub fn new(status: RootStatus, meter: RootMeter) -> StatusCell {
        StatusCell { status: Mutex::new(status), changes: OnceLock::new(), meter }
    }

    /// A cycle began.
    pub fn cycle_started(&self) {
        self.update(|s| s.state = Activity::Syncing);
    }

    /// A cycle ended after `took`, with the first `error` it met; `failed`
    /// when the cycle itself failed (not only a push, counted already).
    pub fn cycle_ended(&self, took: Duration, error: Option<String>, failed: bool) {
        let success = error.is_none().then(now_unix_ms);
        self.update(|s| {
            if let Some(ms) = success {
                s.last_success_unix_ms = ms;
            }
            s.last_error = error;
        });
        if failed {
            self.meter.failed();
        }
        self.meter.cycle(took, success);
    }

    /// A push landed.
    pub fn pushed(&self, r: &Report) {
        self.update(|s| {
            s.pushes += 1;
            (s.last_push_files, s.last_push_bytes) = (r.blobs_whole + r.blobs_delta, r.bytes_sent);
        });
        self.meter.pushed(r);
    }

    /// A push failed (the destination records why).
    pub fn push_failed(&self) {
        self.meter.failed();
    }

    /// A snapshot was applied to the root.
    pub fn applied(&self, r: &Report) {
        self.meter.applied(r);
    }

    /// A snapshot could not be fetched or applied.
    pub fn apply_failed(&self, error: String) {
        self.update(|s| s.last_error = Some(error));
        self.meter.failed();
    }

    /// What the root holds now and how its destinations are doing.
    pub fn publish(&self, files: u64, bytes: u64, destinations: Vec<DestStatus>) {
        self.update(|s| {
            s.state = Activity::Idle;
            (s.files, s.bytes, s.destinations) = (files, bytes, destinations);
        });
        self.meter.holds(files, bytes);
    }

    /// Changes `status` in place.
    pub fn update(&self, f: impl FnOnce(&mut RootStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Counts the dirty paths of `changes` from now on.
    pub fn watch(&self, changes: Arc<Changes>) {
        let _ = self.changes.set(changes);
    }

    /// The status now: dirty paths counted, backoff judged by the clock.
    pub fn read(&self) -> RootStatus {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.dirty = self.changes.get().map_or(0, |c| c.pending() as u64);
        let now = now_unix_ms();
        for d in &mut s.destinations {
            d.backing_off = d.retry_unix_ms > now;
        }
        if s.state != Activity::Syncing {
            let waiting = s.destinations.iter().any(|d| d.backing_off && !d.up_to_date);
            s.state = if waiting { Activity::BackingOff } else { Activity::Idle };
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_judged_when_read() {
        let later = now_unix_ms() + 60_000;
        let dest = |retry| DestStatus { url: "http://p".into(), retry_unix_ms: retry, ..DestStatus::default() };
        let status = RootStatus { destinations: vec![dest(later), dest(1)], ..RootStatus::default() };
        let cell = StatusCell::new(status, RootMeter::default());
        let s = cell.read();
        assert_eq!(s.state, Activity::BackingOff);
        assert!(s.destinations[0].backing_off && !s.destinations[1].backing_off);
        cell.update(|s| s.destinations.truncate(0));
        assert_eq!(cell.read().state, Activity::Idle);
        cell.update(|s| s.state = Activity::Syncing);
        assert_eq!(cell.read().state, Activity::Syncing);
        for a in [Activity::Idle, Activity::Syncing, Activity::BackingOff] {
            assert_eq!(Activity::parse(a.as_str()), Some(a));
        }
    }
}
