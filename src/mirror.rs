//! The mirror process: the gRPC service over a store (and the Go module
//! proxy endpoint, when configured), until shutdown.

use std::net::SocketAddr;

use std::path::Path;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use tracing::{error, info, warn};

use crate::auth::{Auth, AuthError};

use crate::config::{MirrorSettings, TransferSettings};
use crate::goproxy::{GoProxy, GoproxyOptions};
use crate::metrics::Metrics;
use crate::replicate::Source;
use crate::rpc::server::{MirrorService, ServiceOptions};
use crate::schedule::Schedule;
use crate::store::{Store, StoreError};

/// Why the mirror could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// Reading a TLS file.
    #[error("{path}: {source}")]
    Tls {
        /// The file.
        path: String,
        /// What.
        #[source]
        source: std::io::Error,
    },
    /// Installing the SIGHUP handler.
    #[error("cannot handle SIGHUP: {0}")]
    Signal(#[source] std::io::Error),
    /// Reading the tokens file.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Opening the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Binding the address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The Go module proxy's server failed.
    #[error("goproxy server: {0}")]
    Goproxy(#[source] std::io::Error),
}

/// A mirror bound to its address.
pub struct Mirror {
    listener: TcpListener,
    store: Store,
    replication: Option<(Source, Schedule)>,
    metrics: Metrics,
    metrics_listener: Option<TcpListener>,
    service: MirrorService,
    auth: Auth,
    tls: Option<ServerTlsConfig>,
    goproxy: Option<GoProxy>,
}

/// TLS from the settings' PEM files: a certificate and key, and for mutual
/// TLS the CA that every client certificate must chain to.
fn tls_config(settings: &MirrorSettings) -> Result<Option<ServerTlsConfig>, MirrorError> {
    if settings.tls_cert.is_empty() {
        return Ok(None);
    }
    let read = |path: &str| std::fs::read(path).map_err(|source| MirrorError::Tls { path: path.into(), source });
    let identity = Identity::from_pem(read(&settings.tls_cert)?, read(&settings.tls_key)?);
    let mut tls = ServerTlsConfig::new().identity(identity);
    if !settings.tls_client_ca.is_empty() {
        tls = tls.client_ca_root(Certificate::from_pem(read(&settings.tls_client_ca)?));
    }
    Ok(Some(tls))
}

impl Mirror {
    /// Opens the store and binds the listener.
    ///
    /// # Errors
    ///
    /// [`MirrorError::Store`], [`MirrorError::Bind`].
    pub async fn bind(settings: &MirrorSettings, transfer: &TransferSettings) -> Result<Mirror, MirrorError> {
        let store = Store::open(&settings.store)?;
        store.check().await?;
        let listener = TcpListener::bind(&settings.listen)
            .await
            .map_err(|source| MirrorError::Bind { addr: settings.listen.clone(), source })?;
        let options =
            ServiceOptions { compression_level: transfer.compression_level, max_blob_bytes: settings.max_blob_bytes };
        let auth = match settings.tokens_file.as_str() {
            "" => {
                warn!("no tokens file (mirror.tokens_file): anyone who can reach this mirror can read and write");
                Auth::open()
            }
            path => Auth::load(Path::new(path))?,
        };
        let tls = tls_config(settings)?;
        let goproxy = match settings.goproxy_listen.as_str() {
            "" => None,
            addr => {
                let options =
                    GoproxyOptions { prefix: settings.goproxy_prefix.clone(), keys: settings.goproxy_keys.clone() };
                let bound = GoProxy::bind(addr, options, store.clone(), auth.clone()).await;
                Some(bound.map_err(|source| MirrorError::Bind { addr: format!("{addr} (goproxy)"), source })?)
            }
        };
        let metrics_listener = match settings.metrics_listen.as_str() {
            "" => None,
            addr => {
                Some(TcpListener::bind(addr).await.map_err(|source| MirrorError::Bind { addr: addr.into(), source })?)
            }
        };
        let metrics = Metrics::default();
        let service = MirrorService::new(store.clone(), options).with_metrics(metrics.clone());
        Ok(Mirror { listener, store, replication: None, metrics, metrics_listener, service, auth, tls, goproxy })
    }

    /// The address the Go module proxy endpoint bound, if it has one.
    pub fn goproxy_addr(&self) -> Option<SocketAddr> {
        self.goproxy.as_ref().and_then(|g| g.local_addr().ok())
    }

    /// Also replicates from `source` into the store on `schedule` while serving.
    pub fn with_replication(mut self, source: Source, schedule: Schedule) -> Mirror {
        self.replication = Some((source, schedule));
        self
    }

    /// Answers `AgentStatus` with what `report` gives (an agent's listener).
    pub fn with_agent_status(mut self, report: crate::rpc::server::RootsReport) -> Mirror {
        self.service = self.service.with_agent_status(report);
        self
    }

    /// The address actually bound (useful with port 0).
    ///
    /// # Errors
    ///
    /// The socket's error.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address of the metrics endpoint, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The metrics handle, for more gauges.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The snapshots committed from now on that changed their key (the agent
    /// applies those of its roots' keys).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::store::SnapshotRecord> {
        self.service.subscribe()
    }

    /// Serves until `shutdown` is cancelled, then lets calls in flight finish.
    ///
    /// # Errors
    ///
    /// [`MirrorError::Serve`].
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), MirrorError> {
        let addr = self.local_addr().map_err(|source| MirrorError::Bind { addr: "?".into(), source })?;
        // SIGHUP's default action ends the process: take it over before
        // anyone can learn that we listen.
        let hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(MirrorError::Signal)?;
        let reloader = tokio::spawn(reload_on_sighup(self.auth.clone(), hangups, shutdown.clone()));
        let goproxy = self.goproxy.map(|g| tokio::spawn(g.run(shutdown.clone())));
        let metrics = self.metrics.clone();
        let replicator = self.replication.map(|(source, schedule)| {
            tokio::spawn(crate::replicate::run_scheduled(source, self.store, schedule, metrics, shutdown.clone()))
        });
        if let Some(listener) = self.metrics_listener {
            crate::metrics::spawn(listener, self.metrics.clone(), shutdown.clone());
        }
        info!(%addr, tokens = self.auth.is_enforced(), tls = self.tls.is_some(), "mirror listening");
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls)?;
        }
        // The builder's tcp_nodelay applies only to listeners it binds itself:
        // without it here, every small answer waited for a delayed ACK (40 ms).
        let incoming = tonic::transport::server::TcpIncoming::from(self.listener).with_nodelay(Some(true));
        builder
            .initial_stream_window_size(crate::rpc::STREAM_WINDOW)
            .initial_connection_window_size(crate::rpc::CONNECTION_WINDOW)
            .max_frame_size(crate::rpc::MAX_FRAME)
            .add_service(self.service.into_server(self.auth))
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
            .await?;
        reloader.abort();
        if let Some(replicator) = replicator {
            replicator.abort();
        }
        if let Some(goproxy) = goproxy {
            goproxy.await.expect("goproxy task panicked").map_err(MirrorError::Goproxy)?;
        }
        info!("mirror stopped");
        Ok(())
    }
}

/// Reloads the tokens file on every SIGHUP; a bad file keeps the tokens in force.
async fn reload_on_sighup(auth: Auth, mut hangups: tokio::signal::unix::Signal, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = hangups.recv() => match auth.reload() {
                Ok(n) => info!(tokens = n, "tokens file reloaded"),
                Err(e) => error!(error = %e, "tokens file not reloaded; the previous tokens stay in force"),
            },
        }
    }
}
