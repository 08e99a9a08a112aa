//! Prometheus metrics: counters kept in atomics behind one cloneable
//! [`Metrics`] handle, written out in the text exposition format (by hand)
//! and served on `GET /metrics` when a listen address is configured.
//!
//! Fixed counters cover the mirror and its replication; other parts (the
//! agent's roots) register labelled gauges and counters with
//! [`Metrics::gauge`] and [`Metrics::counter`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A value that goes up and down, as registered with [`Metrics::gauge`].
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that only goes up, as registered with [`Metrics::counter`].
#[derive(Debug, Clone, Default)]
pub struct Counter(Gauge);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        (self.0).0.fetch_add(n as i64, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.0.get() as u64
    }
}

struct Registered {
    name: String,
    help: String,
    kind: &'static str,
    labels: Vec<(String, String)>,
    gauge: Gauge,
}

#[derive(Default)]
struct Inner {
    blobs_received: AtomicU64,
    bytes_received: AtomicU64,
    blobs_sent: AtomicU64,
    bytes_sent: AtomicU64,
    dedupe_blobs: AtomicU64,
    dedupe_bytes: AtomicU64,
    delta_saved_bytes: AtomicU64,
    commits: AtomicU64,
    commits_unchanged: AtomicU64,
    errors: AtomicU64,
    replication_ok: AtomicU64,
    replication_failed: AtomicU64,
    replication_last_success: AtomicU64,
    gauges: Mutex<Vec<Registered>>,
}

/// The process's metrics; clones share the same counters.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Inner>);

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// A blob stored from a client's upload, of `bytes` bytes.
    pub fn blob_received(&self, bytes: u64) {
        add(&self.0.blobs_received, 1);
        add(&self.0.bytes_received, bytes);
    }

    /// A blob of `bytes` bytes sent whole to a client.
    pub fn blob_sent(&self, bytes: u64) {
        add(&self.0.blobs_sent, 1);
        add(&self.0.bytes_sent, bytes);
    }

    /// Blobs a client offered that the store already had, and their bytes.
    pub fn deduplicated(&self, blobs: u64, bytes: u64) {
        add(&self.0.dedupe_blobs, blobs);
        add(&self.0.dedupe_bytes, bytes);
    }

    /// A blob received as a delta: `bytes` fewer than its whole content crossed.
    pub fn delta_saved(&self, bytes: u64) {
        add(&self.0.delta_saved_bytes, bytes);
    }

    /// A commit; `unchanged` when it wrote no new generation.
    pub fn committed(&self, unchanged: bool) {
        add(if unchanged { &self.0.commits_unchanged } else { &self.0.commits }, 1);
    }

    /// A call that failed.
    pub fn error(&self) {
        add(&self.0.errors, 1);
    }

    /// A replication run ended; a success records its time.
    pub fn replication_run(&self, ok: bool) {
        if ok {
            add(&self.0.replication_ok, 1);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            self.0.replication_last_success.store(now.as_secs(), Ordering::Relaxed);
        } else {
            add(&self.0.replication_failed, 1);
        }
    }

    /// Registers a gauge named `name` (a Prometheus name) with these labels;
    /// the caller keeps the handle and sets it. Gauges of one name share
    /// their help text (the first one's).
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        self.register(name, help, "gauge", labels)
    }

    /// Registers a counter, as [`Metrics::gauge`] does a gauge (a name ending in `_total`).
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        Counter(self.register(name, help, "counter", labels))
    }

    fn register(&self, name: &str, help: &str, kind: &'static str, labels: &[(&str, &str)]) -> Gauge {
        let gauge = Gauge::default();
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let entry = Registered { name: name.into(), help: help.into(), kind, labels, gauge: gauge.clone() };
        self.0.gauges.lock().expect("gauges lock").push(entry);
        gauge
    }

    /// Everything in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let i = &self.0;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let counters = [
            ("cachesync_mirror_blobs_received_total", "Blobs stored from uploads.", &i.blobs_received),
            ("cachesync_mirror_blob_bytes_received_total", "Bytes of blobs stored from uploads.", &i.bytes_received),
            ("cachesync_mirror_blobs_sent_total", "Blobs sent whole to clients.", &i.blobs_sent),
            ("cachesync_mirror_blob_bytes_sent_total", "Bytes of blobs sent whole to clients.", &i.bytes_sent),
            ("cachesync_mirror_dedupe_blobs_total", "Blobs offered that the store already had.", &i.dedupe_blobs),
            ("cachesync_mirror_dedupe_bytes_total", "Bytes the store already had: not transferred.", &i.dedupe_bytes),
            ("cachesync_mirror_delta_saved_bytes_total", "Bytes deltas spared uploads.", &i.delta_saved_bytes),
            ("cachesync_mirror_commits_total", "Commits that wrote a new generation.", &i.commits),
            ("cachesync_mirror_commits_unchanged_total", "Commits of unchanged content.", &i.commits_unchanged),
            ("cachesync_mirror_errors_total", "Uploads, downloads and commits that failed.", &i.errors),
        ];
        for (name, help, counter) in counters {
            sample(&mut out, name, help, "counter", "", &get(counter).to_string());
        }
        let runs = "cachesync_replication_runs_total";
        sample(
            &mut out,
            runs,
            "Replication runs (each attempt).",
            "counter",
            "result=\"ok\"",
            &get(&i.replication_ok).to_string(),
        );
        let _ = writeln!(out, "{runs}{{result=\"failed\"}} {}", get(&i.replication_failed));
        let last = get(&i.replication_last_success).to_string();
        let help = "Unix time of the last successful replication run (0: none yet).";
        sample(&mut out, "cachesync_replication_last_success_timestamp_seconds", help, "gauge", "", &last);
        let gauges = i.gauges.lock().expect("gauges lock");
        let mut names: Vec<&str> = gauges.iter().map(|g| g.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let mut first = true;
            for g in gauges.iter().filter(|g| g.name == name) {
                let labels: Vec<String> = g.labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
                let value = g.gauge.get().to_string();
                if first {
                    sample(&mut out, name, &g.help, g.kind, &labels.join(","), &value);
                    first = false;
                } else {
                    let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
                }
            }
        }
        out
    }
}

/// One metric with its `# HELP` and `# TYPE` lines and one sample.
fn sample(out: &mut String, name: &str, help: &str, kind: &str, labels: &str, value: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    match labels {
        "" => writeln!(out, "{name} {value}"),
        labels => writeln!(out, "{name}{{{labels}}} {value}"),
    }
    .expect("writing to a String");
}

/// A label value as the exposition format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

async fn scrape(State(metrics): State<Metrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render())
}

/// Serves `GET /metrics` on `listener` in a task until `shutdown`, logging
/// where it listens (and, at ERROR, if it fails).
pub fn spawn(listener: TcpListener, metrics: Metrics, shutdown: CancellationToken) {
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, "metrics on GET /metrics"),
        Err(e) => tracing::warn!(error = %e, "metrics listener has no address"),
    }
    tokio::spawn(async move {
        if let Err(e) = serve(listener, metrics, shutdown).await {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
///
/// # Errors
///
/// The server's I/O error.
pub async fn serve(listener: TcpListener, metrics: Metrics, shutdown: CancellationToken) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(scrape)).with_state(metrics);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let m = Metrics::default();
        m.blob_received(10);
        m.blob_received(5);
        m.committed(false);
        let a = m.gauge("cachesync_agent_root_files", "Files under a root.", &[("root", "/go/\"mod\"")]);
        let b = m.gauge("cachesync_agent_root_files", "ignored", &[("root", "/b")]);
        a.set(3);
        b.set(-1);
        let c = m.counter("cachesync_agent_pushes_total", "Pushes.", &[("root", "a")]);
        c.add(2);
        c.add(1);
        let text = m.render();
        assert!(
            text.contains(
                "# TYPE cachesync_mirror_blobs_received_total counter\ncachesync_mirror_blobs_received_total 2\n"
            ),
            "{text}"
        );
        assert!(text.contains("cachesync_mirror_blob_bytes_received_total 15\n"), "{text}");
        assert!(text.contains("cachesync_mirror_commits_total 1\n"), "{text}");
        assert!(text.contains("cachesync_replication_runs_total{result=\"failed\"} 0\n"), "{text}");
        assert!(
            text.contains(
                "cachesync_agent_root_files{root=\"/go/\\\"mod\\\"\"} 3\ncachesync_agent_root_files{root=\"/b\"} -1\n"
            ),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE cachesync_agent_root_files gauge").count(), 1);
        assert!(
            text.contains("# TYPE cachesync_agent_pushes_total counter\ncachesync_agent_pushes_total{root=\"a\"} 3\n"),
            "{text}"
        );
    }
}
