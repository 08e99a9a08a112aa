//! The agent: watches its roots, pushes them to peers and the mirror on
//! their schedules, and serves the mirror's gRPC service over an embedded
//! store so that peers can push to it.
//!
//! A snapshot a peer commits into the embedded store for a key one of the
//! roots uses is written to that root by the pull code (staging, blake3
//! checks, no writes through symlinks), then counted as held by every
//! destination: the root's next cycle finds nothing new and sends nothing
//! back, so a mesh goes quiet once it has converged. Each agent pushes its
//! own changes to every peer: snapshots received are not forwarded, so
//! peers must form a full mesh (or share a mirror).
//!
//! What it does not own: watching ([`crate::watch`]), moving bytes
//! ([`crate::sync`]), serving ([`crate::mirror`]).

mod dest;
mod index;
mod meter;
mod root;
mod state;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub use index::{Applied, Index};
use meter::RootMeter;
use status::StatusCell;
pub use status::{Activity, DestStatus, RootStatus};

use crate::config::{AgentConfig, MirrorSettings, Settings};
use crate::metrics::Metrics;
use crate::mirror::{Mirror, MirrorError};
use crate::rpc::client::ConnectOptions;
use crate::sync::SyncOptions;

/// How long the embedded server may take to finish calls in flight at shutdown.
const SERVER_DRAIN: Duration = Duration::from_secs(3);

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The `[agent]` section is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// No `[[agent.root]]` table.
    #[error("invalid configuration: no [[agent.root]] table: the agent has nothing to sync")]
    NoRoots,
    /// Reading the token file of the `[client]` section.
    #[error("reading the token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The embedded server.
    #[error(transparent)]
    Server(#[from] MirrorError),
    /// A root that pushes only does not exist.
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// Creating a root.
    #[error("{}: {source}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        #[source]
        source: std::io::Error,
    },
    /// Watching a root.
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    /// Walking a root.
    #[error(transparent)]
    Scan(#[from] crate::scan::ScanError),
    /// A root's entries do not form a manifest.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
}

/// What every root task shares.
pub(crate) struct Shared {
    settle: Duration,
    rescan: Duration,
    max_watches: usize,
    sync: SyncOptions,
    connect: ConnectOptions,
    own_url: Option<String>,
    mirror: Option<String>,
    peers: Vec<String>,
    state_dir: PathBuf,
}

/// An agent with its listener bound.
pub struct Agent {
    config: AgentConfig,
    shared: Arc<Shared>,
    server: Option<Mirror>,
    status: Vec<Arc<StatusCell>>,
    metrics: Option<(TcpListener, Metrics)>,
}

/// Every root's status, as the agent's listener reports it
/// (`cachesync status --agent`).
#[derive(Clone)]
pub struct AgentStatus(Arc<Vec<Arc<StatusCell>>>);

impl AgentStatus {
    /// Each root's status now, in the configuration's order.
    pub fn roots(&self) -> Vec<RootStatus> {
        self.0.iter().map(|c| c.read()).collect()
    }
}

impl Agent {
    /// Checks the settings and binds the listener (if `agent.listen` is set).
    ///
    /// # Errors
    ///
    /// [`AgentError::NoRoots`], [`AgentError::Config`], [`AgentError::Server`], [`AgentError::TokenFile`].
    pub async fn bind(settings: &Settings) -> Result<Agent, AgentError> {
        let config = settings.agent.resolve()?;
        if config.roots.is_empty() {
            return Err(AgentError::NoRoots);
        }
        let server = match config.listen {
            Some(addr) => Some(Mirror::bind(&server_settings(settings, addr), &settings.transfer).await?),
            None => None,
        };
        let own_url = match &server {
            Some(s) => {
                Some(loopback_url(s.local_addr().map_err(|source| AgentError::Io { path: "listener".into(), source })?))
            }
            None => None,
        };
        let connect = ConnectOptions::from_settings(&settings.client)
            .map_err(|(path, source)| AgentError::TokenFile { path, source })?;
        let t = &settings.transfer;
        let sync = SyncOptions {
            delta_min_size: t.delta_min_size,
            compression_level: t.compression_level,
            fsync: t.fsync,
            state_dir: settings.state_dir.clone(),
            progress: false,
            connect_timeout: settings.connect_timeout(),
            streams: t.streams,
            fuzzy: t.fuzzy,
            unpack: t.unpack,
        };
        let shared = Arc::new(Shared {
            settle: config.settle,
            rescan: config.rescan,
            max_watches: config.max_watches,
            sync,
            connect,
            own_url,
            mirror: config.use_mirror.then(|| settings.client.mirror.clone()),
            peers: config.peers.clone(),
            state_dir: settings.state_dir.clone(),
        });
        let metrics = server.as_ref().map_or_else(Metrics::default, |s| s.metrics().clone());
        let status: Vec<Arc<StatusCell>> = config
            .roots
            .iter()
            .map(|r| Arc::new(StatusCell::new(initial(r), RootMeter::new(&metrics, &r.name))))
            .collect();
        let report = AgentStatus(Arc::new(status.clone()));
        let server = server.map(|s| s.with_agent_status(Arc::new(move || report.roots())));
        let metrics = match config.metrics_listen {
            Some(addr) => Some((bind_metrics(addr).await?, metrics)),
            None => None,
        };
        Ok(Agent { config, shared, server, status, metrics })
    }

    /// The address of the metrics endpoint, if the agent serves one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The address peers push to, if the agent listens.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// Runs every root until `shutdown`, then saves their state and stops
    /// the listener (calls in flight get a few seconds).
    ///
    /// # Errors
    ///
    /// A root that cannot start (not a directory, cannot be watched or walked).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let stop = shutdown.child_token();
        let server_stop = CancellationToken::new();
        let mut server_task = None;
        if let Some((listener, metrics)) = self.metrics {
            crate::metrics::spawn(listener, metrics, server_stop.clone());
        }
        if let Some(server) = self.server {
            let receivers: Vec<_> = self.config.roots.iter().map(|_| server.subscribe()).collect();
            let addr = server.local_addr().ok();
            let token = server_stop.clone();
            server_task = Some((tokio::spawn(server.run(token)), receivers));
            info!(addr = ?addr, roots = self.config.roots.len(), peers = self.shared.peers.len(), "agent listening");
        } else {
            info!(roots = self.config.roots.len(), peers = self.shared.peers.len(), "agent started (not listening)");
        }
        let mut receivers = server_task.as_mut().map(|(_, r)| std::mem::take(r).into_iter());
        let mut tasks = tokio::task::JoinSet::new();
        for (cfg, status) in self.config.roots.into_iter().zip(self.status) {
            let rx = receivers.as_mut().and_then(Iterator::next);
            let task = root::RootTask::new(cfg, self.shared.clone(), rx, status);
            tasks.spawn(task.run(stop.clone()));
        }
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Err(e)) = joined {
                error!(error = %e, "a root could not start; stopping");
                stop.cancel();
                result = result.and(Err(e));
            }
        }
        server_stop.cancel();
        if let Some((task, _)) = server_task
            && tokio::time::timeout(SERVER_DRAIN, task).await.is_err()
        {
            info!("calls still in flight at shutdown were dropped");
        }
        info!("agent stopped");
        result
    }
}

/// Makes every thread allocate from one malloc arena. glibc gives threads
/// arenas of their own, and each keeps the peak of what its thread once
/// allocated (the walk at start runs on one thread, a push on another):
/// measured on a 100,000-file root, an idle agent held 96 MiB with the
/// default arenas, 50 MiB with one. The agent allocates little once it
/// runs, so sharing one arena costs nothing that shows. Call it first
/// thing, before the runtime starts its threads.
pub fn use_one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes an allocator setting; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands memory freed after a cycle back to the system: glibc keeps freed
/// memory in each thread's arena, so an idle agent would otherwise stay at
/// the peak of its last cycle (the walk at start, a push of a big manifest).
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn bind_metrics(addr: SocketAddr) -> Result<TcpListener, AgentError> {
    let bound = TcpListener::bind(addr).await;
    Ok(bound.map_err(|source| MirrorError::Bind { addr: format!("{addr} (agent.metrics_listen)"), source })?)
}

/// A root's status before its task starts.
fn initial(r: &crate::config::RootConfig) -> RootStatus {
    let direction = match r.direction {
        crate::config::Direction::Push => "push",
        crate::config::Direction::Pull => "pull",
        crate::config::Direction::Both => "both",
    };
    RootStatus {
        name: r.name.clone(),
        path: r.path.display().to_string(),
        profile: r.profile.to_string(),
        key: r.key.clone(),
        direction: direction.into(),
        schedule: r.schedule.to_string(),
        ..RootStatus::default()
    }
}

/// The embedded server: the mirror's settings, with the agent's address,
/// store and tokens (and no TLS: see the README).
fn server_settings(settings: &Settings, addr: SocketAddr) -> MirrorSettings {
    let a = &settings.agent;
    let store = match a.store.as_str() {
        "" => settings.state_dir.join("agent-store").to_string_lossy().into_owned(),
        s => s.to_string(),
    };
    MirrorSettings { listen: addr.to_string(), store, tokens_file: a.tokens_file.clone(), ..MirrorSettings::default() }
}

/// How the agent (or `cachesync status --agent` on its host) reaches its listener.
pub fn loopback_url(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() { "127.0.0.1".parse().expect("an address") } else { addr.ip() };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}
