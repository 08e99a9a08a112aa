//! Where a root is pushed: a peer agent or the mirror, with what it is known
//! to hold and when to try again after a failure.
//!
//! A destination that fails is retried with exponential backoff (1 s
//! doubling up to 60 s, with jitter), logged at WARN once per outage and at
//! INFO when it answers again. What it is known to hold only moves on a
//! successful push, so nothing written meanwhile is lost: the next push
//! after the outage sends the root as it is then.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::status::{DestStatus, now_unix_ms};
use crate::hash::Hash;
use crate::manifest::{Known, Manifest};
use crate::rpc::client::{Client, ConnectOptions};
use crate::sync::{self, PushRequest, Report, SyncError, SyncOptions};

/// The first retry waits this long.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// No retry waits longer than this.
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// The wait before retry number `failures` (1 for the first), scaled by
/// `jitter` in 0..1 to between half and all of the full wait.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let full = BACKOFF_FIRST.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(BACKOFF_CAP);
    full.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// A number in 0..1 that differs between calls and processes.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// One destination of one root.
pub struct Dest {
    /// Its URL.
    pub url: String,
    /// `peer` or `mirror`, for logs.
    pub kind: &'static str,
    client: Option<Client>,
    /// The manifest (hex id) it is known to hold for the root's key.
    pub known: Option<String>,
    /// The last manifest pushed there: the next push's manifests cross as diffs against it.
    held: Option<Known>,
    /// The id of `held` while it is parked on disk (see [`Dest::park`]).
    parked: Option<Hash>,
    failures: u32,
    retry_at: Option<Instant>,
    /// The last error, while it lasts.
    pub last_error: Option<String>,
}

impl Dest {
    /// A destination known to hold `known`.
    pub fn new(url: String, kind: &'static str, known: Option<String>) -> Dest {
        Dest { url, kind, client: None, known, held: None, parked: None, failures: 0, retry_at: None, last_error: None }
    }

    /// Not waiting for a retry at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// When the next retry is due, while failing.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// A connection, made on first use and after a failure.
    ///
    /// # Errors
    ///
    /// The connection's error.
    pub async fn client(&mut self, opts: &ConnectOptions) -> Result<&mut Client, SyncError> {
        if self.client.is_none() {
            self.client = Some(Client::connect_with(&self.url, opts).await?);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    /// Pushes `manifest` of `req.root`.
    ///
    /// # Errors
    ///
    /// The push's error (also recorded: backoff, WARN once per outage).
    pub async fn push(
        &mut self,
        req: &PushRequest,
        manifest: &Arc<Manifest>,
        opts: &SyncOptions,
        connect: &ConnectOptions,
    ) -> Result<Report, SyncError> {
        let held = match (self.held.take(), self.parked.take()) {
            (Some(held), _) => Some(held),
            (None, Some(id)) => sync::unpark_manifest(&opts.state_dir, &req.root, id).await,
            (None, None) => None,
        };
        let result = match self.client(connect).await {
            Ok(client) => sync::push_manifest(client, req, manifest, held.as_ref(), opts).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(report) => {
                self.held = Hash::from_hex(&report.manifest).ok().map(|id| Known { id, manifest: manifest.clone() });
                self.succeeded(&req.key, report.manifest.clone());
                Ok(report)
            }
            Err(e) => {
                self.held = held; // still there, most likely; a receiver that lost it takes whole manifests
                self.failed(&req.key, &e);
                Err(e)
            }
        }
    }

    /// Whether the last manifest pushed there is `manifest` itself.
    pub fn holds(&self, manifest: &Arc<Manifest>) -> bool {
        self.held.as_ref().is_some_and(|k| Arc::ptr_eq(&k.manifest, manifest))
    }

    /// Lets go of the last manifest pushed there, which the caller parked on
    /// disk; the next push reads it back.
    pub fn park(&mut self) {
        self.parked = self.held.take().map(|k| k.id);
    }

    /// What it holds and how it is doing, for status; `current`: the hex id
    /// of what the root holds now.
    pub fn status(&self, current: Option<&str>) -> DestStatus {
        let retry_unix_ms = self.retry_at.map_or(0, |t| {
            let left = t.saturating_duration_since(Instant::now());
            now_unix_ms() + left.as_millis() as i64
        });
        DestStatus {
            url: self.url.clone(),
            kind: self.kind.to_string(),
            holds: self.known.clone(),
            up_to_date: current.is_some() && self.known.as_deref() == current,
            backing_off: self.retry_at.is_some_and(|t| t > Instant::now()),
            failures: self.failures,
            retry_unix_ms,
            last_error: self.last_error.clone(),
        }
    }

    /// Records a success: what it holds now, and the end of an outage.
    pub fn succeeded(&mut self, key: &str, manifest: String) {
        if self.failures > 0 {
            info!(dest = %self.url, kind = self.kind, key, failures = self.failures, "reachable again; caught up");
        }
        self.known = Some(manifest);
        self.failures = 0;
        self.retry_at = None;
        self.last_error = None;
    }

    /// Records a failure: the connection is dropped and the next try waits.
    pub fn failed(&mut self, key: &str, error: &SyncError) {
        self.client = None;
        self.failures += 1;
        let wait = backoff(self.failures, jitter());
        self.retry_at = Some(Instant::now() + wait);
        if self.failures == 1 {
            warn!(dest = %self.url, kind = self.kind, key, error = %error, "push failed; retrying with backoff until it answers");
        } else {
            tracing::debug!(dest = %self.url, failures = self.failures, retry_in_ms = wait.as_millis() as u64, error = %error, "push failed again");
        }
        self.last_error = Some(error.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(2, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(4, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(50, 1.0), BACKOFF_CAP);
        assert_eq!(backoff(3, 0.0), Duration::from_secs(2));
        let j = jitter();
        assert!((0.0..1.0).contains(&j));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_wait_and_success_clears() {
        let mut d = Dest::new("http://127.0.0.1:1".into(), "peer", None);
        assert!(d.due(Instant::now()));
        d.failed("k", &SyncError::Miss("k".into()));
        assert!(!d.due(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(d.due(Instant::now()));
        d.failed("k", &SyncError::Miss("k".into()));
        assert!(!d.due(Instant::now() + Duration::from_millis(900)));
        d.succeeded("k", "abc".into());
        assert!(d.due(Instant::now()) && d.last_error.is_none());
        assert_eq!(d.known.as_deref(), Some("abc"));
    }
}
