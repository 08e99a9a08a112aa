//! The mirror process: the gRPC service over a store, until shutdown.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{MirrorSettings, TransferSettings};
use crate::rpc::server::{MirrorService, ServiceOptions};
use crate::store::{Store, StoreError};

/// Why the mirror could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
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
}

/// A mirror bound to its address.
pub struct Mirror {
    listener: TcpListener,
    service: MirrorService,
}

impl Mirror {
    /// Opens the store and binds the listener.
    ///
    /// # Errors
    ///
    /// [`MirrorError::Store`], [`MirrorError::Bind`].
    pub async fn bind(settings: &MirrorSettings, transfer: &TransferSettings) -> Result<Mirror, MirrorError> {
        let store = Store::open(&settings.store)?;
        let listener = TcpListener::bind(&settings.listen)
            .await
            .map_err(|source| MirrorError::Bind { addr: settings.listen.clone(), source })?;
        let options =
            ServiceOptions { compression_level: transfer.compression_level, max_blob_bytes: settings.max_blob_bytes };
        Ok(Mirror { listener, service: MirrorService::new(store, options) })
    }

    /// The address actually bound (useful with port 0).
    ///
    /// # Errors
    ///
    /// The socket's error.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then lets calls in flight finish.
    ///
    /// # Errors
    ///
    /// [`MirrorError::Serve`].
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), MirrorError> {
        let addr = self.local_addr().map_err(|source| MirrorError::Bind { addr: "?".into(), source })?;
        info!(%addr, "mirror listening");
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(crate::rpc::STREAM_WINDOW)
            .initial_connection_window_size(crate::rpc::CONNECTION_WINDOW)
            .add_service(self.service.into_server())
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown.cancelled())
            .await?;
        info!("mirror stopped");
        Ok(())
    }
}
