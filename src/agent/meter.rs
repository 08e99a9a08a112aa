//! A root's Prometheus series (labelled `root="<name>"`), registered on the
//! metrics handle the agent's listener shares: what its pushes sent, what
//! applied snapshots brought, its cycles, its errors.

use std::time::Duration;

use crate::metrics::{Counter, Gauge, Metrics};
use crate::sync::Report;

/// One root's series.
#[derive(Debug, Default)]
pub struct RootMeter {
    files_sent: Counter,
    bytes_sent: Counter,
    files_received: Counter,
    bytes_received: Counter,
    pushes: Counter,
    errors: Counter,
    cycles: Counter,
    cycle_ms: Counter,
    last_cycle_ms: Gauge,
    last_success: Gauge,
    files: Gauge,
    bytes: Gauge,
}

impl RootMeter {
    /// Registers root `name`'s series on `metrics`.
    pub fn new(metrics: &Metrics, name: &str) -> RootMeter {
        let l = [("root", name)];
        let c = |n: &str, help: &str| metrics.counter(&format!("cachesync_agent_{n}"), help, &l);
        let g = |n: &str, help: &str| metrics.gauge(&format!("cachesync_agent_{n}"), help, &l);
        RootMeter {
            files_sent: c("files_sent_total", "Files pushes sent (whole or as deltas), all destinations."),
            bytes_sent: c("bytes_sent_total", "Bytes pushes put on the wire, all destinations."),
            files_received: c("files_received_total", "Files written into the root by applied snapshots."),
            bytes_received: c("bytes_received_total", "Bytes read from the socket by pulls that applied snapshots."),
            pushes: c("pushes_total", "Pushes that landed."),
            errors: c("errors_total", "Failed pushes, failed snapshot applies and failed cycles."),
            cycles: c("cycles_total", "Sync cycles run (a cycle with nothing to do is not counted)."),
            cycle_ms: c("cycle_duration_milliseconds_total", "Time spent in sync cycles."),
            last_cycle_ms: g("last_cycle_duration_milliseconds", "How long the last sync cycle took."),
            last_success: g("last_success_timestamp_seconds", "Unix time a cycle last ended without error (0: never)."),
            files: g("root_files", "Files in the root's index."),
            bytes: g("root_bytes", "Bytes of those files."),
        }
    }

    /// A push landed.
    pub fn pushed(&self, r: &Report) {
        self.pushes.add(1);
        self.files_sent.add(r.blobs_whole + r.blobs_delta);
        self.bytes_sent.add(r.bytes_sent);
    }

    /// A snapshot was applied to the root.
    pub fn applied(&self, r: &Report) {
        self.files_received.add(r.blobs_whole + r.blobs_delta);
        self.bytes_received.add(r.bytes_received);
    }

    /// A push, an apply or a cycle failed.
    pub fn failed(&self) {
        self.errors.add(1);
    }

    /// A cycle ended after `took`; `success_unix_ms` if it ended without error.
    pub fn cycle(&self, took: Duration, success_unix_ms: Option<i64>) {
        self.cycles.add(1);
        self.cycle_ms.add(took.as_millis() as u64);
        self.last_cycle_ms.set(took.as_millis() as i64);
        if let Some(ms) = success_unix_ms {
            self.last_success.set(ms / 1000);
        }
    }

    /// What the root holds now.
    pub fn holds(&self, files: u64, bytes: u64) {
        self.files.set(files as i64);
        self.bytes.set(bytes as i64);
    }
}
