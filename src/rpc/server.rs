//! The gRPC service over a [`Store`]: what a mirror serves.
//!
//! Every request is bounded and validated before it touches the store; blob
//! streams are received and sent on the blocking pool through [`frames`].
//! Errors become statuses only through [`ServerError`].

mod blobs;
mod commit;
mod gomod;
mod incoming;
mod manifests;
mod signer;
mod unpack;

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use super::frames::{self, FrameError, FrameReceiver};
use super::pb::cache_sync_server::{CacheSync, CacheSyncServer};
use super::{MAX_CHUNK, MAX_HASHES, MAX_MESSAGE, PROTOCOL_HEADER, PROTOCOL_VERSION};
use super::{ServerError, hash_from, hashes_from, pb};
use crate::auth::{Auth, Identity};
use crate::delta;
use crate::hash::Hash;
use crate::metrics::Metrics;
use crate::store::{self, Store};

/// The service as tonic serves it: protocol check in front of the generated server.
pub type GrpcService = tonic::service::interceptor::InterceptedService<blobs::Routes, Gate>;

/// In front of every call: the protocol version, then who is calling. The
/// caller's [`Identity`] travels to the service in the request's extensions.
#[derive(Clone)]
pub struct Gate {
    auth: Auth,
}

impl tonic::service::Interceptor for Gate {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let mut req = check_protocol(req)?;
        let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let identity = self.auth.identify(header).map_err(|e| Status::from(ServerError::Auth(e)))?;
        req.extensions_mut().insert(identity);
        Ok(req)
    }
}

/// The caller of a request that writes; only [`Gate`] establishes one.
#[allow(clippy::result_large_err)]
fn caller<T>(req: &Request<T>) -> Result<Identity, Status> {
    req.extensions().get::<Identity>().cloned().ok_or_else(|| Status::unauthenticated("no identity established"))
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Limits and tuning of the service.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// zstd level for blobs sent (0 turns compression off).
    pub compression_level: i32,
    /// Largest blob accepted.
    pub max_blob_bytes: u64,
}

/// The service over a store.
#[derive(Clone)]
pub struct MirrorService {
    store: Store,
    options: ServiceOptions,
    /// Commits buffer a whole manifest (up to 256 MiB): only a few at once.
    commits: std::sync::Arc<tokio::sync::Semaphore>,
    /// Manifest diffs sent decode two manifests each: only a few at once.
    diffs: std::sync::Arc<tokio::sync::Semaphore>,
    /// Zip hashes of go-mod snapshots already verified.
    zip_hashes: std::sync::Arc<gomod::ZipHashes>,
    metrics: Metrics,
    /// Every commit that changed a key, for whoever subscribed (the agent).
    committed: tokio::sync::broadcast::Sender<store::SnapshotRecord>,
    /// An agent's roots, for `AgentStatus`; `None` on a plain mirror.
    agent: Option<RootsReport>,
    /// Prepares the signatures of large blobs as they land.
    signer: signer::Signer,
}

/// How an agent reports its roots to its listener.
pub type RootsReport = std::sync::Arc<dyn Fn() -> Vec<crate::agent::RootStatus> + Send + Sync>;

/// Commits served at the same time; others wait their turn.
const CONCURRENT_COMMITS: usize = 4;

/// Checks the protocol header of every call.
///
/// # Errors
///
/// `FAILED_PRECONDITION` naming both versions.
#[allow(clippy::result_large_err)]
pub fn check_protocol(req: Request<()>) -> Result<Request<()>, Status> {
    let theirs = req.metadata().get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("none");
    if theirs == PROTOCOL_VERSION.to_string() {
        return Ok(req);
    }
    Err(Status::failed_precondition(format!(
        "protocol version mismatch: the client speaks {theirs}, this server speaks {PROTOCOL_VERSION}"
    )))
}

impl MirrorService {
    /// A service over `store`.
    pub fn new(store: Store, options: ServiceOptions) -> Self {
        MirrorService {
            store,
            options,
            commits: std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT_COMMITS)),
            diffs: std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT_COMMITS)),
            metrics: Metrics::default(),
            committed: tokio::sync::broadcast::channel(64).0,
            zip_hashes: Default::default(),
            agent: None,
            signer: Default::default(),
        }
    }

    /// Answers `AgentStatus` with what `report` gives (the agent's listener).
    pub fn with_agent_status(mut self, report: RootsReport) -> Self {
        self.agent = Some(report);
        self
    }

    /// Counts what the service does in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The snapshots committed from now on that changed their key, as they land.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<store::SnapshotRecord> {
        self.committed.subscribe()
    }

    /// The tonic service, behind the [`Gate`] (protocol check, tokens) and message bounds.
    pub fn into_server(self, auth: Auth) -> GrpcService {
        let mirror = self.clone();
        let server =
            CacheSyncServer::new(self).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
        tonic::service::interceptor::InterceptedService::new(blobs::Routes::new(server, mirror), Gate { auth })
    }
}

fn chunked(bytes: Bytes) -> Stream_<pb::Chunk> {
    let chunks: Vec<Result<pb::Chunk, Status>> =
        bytes.chunks(MAX_CHUNK).map(|c| Ok(pb::Chunk { data: c.to_vec() })).collect();
    Box::pin(futures::stream::iter(chunks))
}

fn frame_status(e: FrameError) -> Status {
    match e {
        FrameError::HashMismatch { .. } | FrameError::Protocol(_) => Status::invalid_argument(e.to_string()),
        other => ServerError::BadRequest(other.to_string()).into(),
    }
}

#[tonic::async_trait]
impl CacheSync for MirrorService {
    async fn hello(&self, _req: Request<pb::HelloRequest>) -> Result<Response<pb::HelloResponse>, Status> {
        Ok(Response::new(pb::HelloResponse {
            protocol: PROTOCOL_VERSION,
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            max_chunk: MAX_CHUNK as u32,
            max_hashes: MAX_HASHES as u32,
            manifest_diffs: true,
            unpack_blobs: true,
        }))
    }

    async fn resolve(&self, req: Request<pb::ResolveRequest>) -> Result<Response<pb::ResolveResponse>, Status> {
        let req = req.into_inner();
        store::check_key(&req.key).map_err(ServerError::from)?;
        for p in &req.restore_prefixes {
            store::check_prefix(p).map_err(ServerError::from)?;
        }
        if req.restore_prefixes.len() > 64 {
            return Err(ServerError::BadRequest("more than 64 restore prefixes".into()).into());
        }
        if req.trusted_writers.len() > 64 || req.trusted_writers.iter().any(|w| w.len() > 128) {
            return Err(ServerError::BadRequest("more than 64 trusted writers, or a name over 128 bytes".into()).into());
        }
        let found = self
            .store
            .resolve(&req.key, &req.restore_prefixes, &req.trusted_writers)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::ResolveResponse { snapshot: found.map(Into::into) }))
    }

    async fn list_keys(&self, req: Request<pb::ListKeysRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        let prefix = req.into_inner().prefix;
        let list = self.store.list_latest(&prefix).await.map_err(ServerError::from)?;
        Ok(Response::new(pb::ListKeysResponse { snapshots: list.into_iter().map(Into::into).collect() }))
    }

    type GetManifestStream = Stream_<pb::Chunk>;

    async fn get_manifest(
        &self,
        req: Request<pb::GetManifestRequest>,
    ) -> Result<Response<Self::GetManifestStream>, Status> {
        let req = req.into_inner();
        let id = hash_from(&req.manifest_id, "manifest id")?;
        let base = (!req.base_id.is_empty()).then(|| hash_from(&req.base_id, "base manifest id")).transpose()?;
        let bytes = manifests::to_send(&self.store, id, base, &self.diffs).await?;
        Ok(Response::new(chunked(bytes)))
    }

    async fn missing_blobs(
        &self,
        req: Request<pb::MissingBlobsRequest>,
    ) -> Result<Response<pb::MissingBlobsResponse>, Status> {
        let hashes = hashes_from(&req.into_inner().hashes, "missing blobs")?;
        let (missing, present_bytes) = self.store.missing_sized(&hashes).await.map_err(ServerError::from)?;
        self.metrics.deduplicated((hashes.len() - missing.len()) as u64, present_bytes);
        Ok(Response::new(pb::MissingBlobsResponse { missing: missing.iter().map(|h| h.as_bytes().to_vec()).collect() }))
    }

    async fn put_blobs(
        &self,
        req: Request<Streaming<pb::BlobFrame>>,
    ) -> Result<Response<pb::PutBlobsResponse>, Status> {
        caller(&req)?.check_upload().map_err(ServerError::Auth)?;
        let store = self.store.clone();
        let staging_store = store.clone();
        let receiver = FrameReceiver::new(incoming::blob_staging(staging_store), self.options.max_blob_bytes)
            .writing_back(store.syncs_staged_files());
        let counts = std::sync::Arc::new(std::sync::Mutex::new((0u64, Vec::new())));
        let shared = counts.clone();
        let (metrics, signer) = (self.metrics.clone(), self.signer.clone());
        frames::receive_blobs(req.into_inner(), receiver, move |incoming| {
            let mut guard = shared.lock().expect("counts lock");
            guard.0 += 1;
            let (hash, size, rejected_before) = (incoming.hash, incoming.size, guard.1.len());
            let delta = incoming.delta_base.map(|_| {
                let meta = match &incoming.unnamed {
                    Some(file) => file.metadata(),
                    None => std::fs::metadata(&incoming.staged),
                };
                meta.map_or(size, |m| m.len())
            });
            Self::handle_incoming(&store, incoming, &mut guard.1)?;
            if guard.1.len() == rejected_before {
                metrics.blob_received(size);
                metrics.delta_saved(delta.map_or(0, |d| size.saturating_sub(d)));
                if size >= signer::PREPARED_FROM {
                    signer.prepare(&store, hash);
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| {
            self.metrics.error();
            frame_status(e)
        })?;
        let (stored, rejected) = std::mem::take(&mut *counts.lock().expect("counts lock"));
        debug!(stored, rejected = rejected.len(), "blobs received");
        Ok(Response::new(pb::PutBlobsResponse { stored, already_present: 0, rejected_deltas: rejected }))
    }

    async fn unpack_blobs(
        &self,
        req: Request<pb::UnpackBlobsRequest>,
    ) -> Result<Response<pb::UnpackBlobsResponse>, Status> {
        caller(&req)?.check_upload().map_err(ServerError::Auth)?;
        let stored = unpack::unpack(&self.store, req.into_inner(), self.options.max_blob_bytes).await?;
        debug!(stored, "blobs unpacked");
        Ok(Response::new(pb::UnpackBlobsResponse { stored }))
    }

    type GetBlobsStream = Stream_<pb::BlobFrame>;

    async fn get_blobs(&self, req: Request<pb::GetBlobsRequest>) -> Result<Response<Self::GetBlobsStream>, Status> {
        Ok(Response::new(blobs::decoded(self, req.into_inner())?))
    }

    type GetSignatureStream = Stream_<pb::Chunk>;

    async fn get_signature(
        &self,
        req: Request<pb::GetSignatureRequest>,
    ) -> Result<Response<Self::GetSignatureStream>, Status> {
        let h = hash_from(&req.into_inner().hash, "signature base")?;
        let sig = self.store.signature(&h).await.map_err(ServerError::from)?;
        Ok(Response::new(chunked(sig)))
    }

    type GetDeltaStream = Stream_<pb::BlobFrame>;

    async fn get_delta(&self, req: Request<pb::GetDeltaRequest>) -> Result<Response<Self::GetDeltaStream>, Status> {
        let req = req.into_inner();
        let h = hash_from(&req.hash, "delta target")?;
        let signature = match (req.signature.is_empty(), req.base.is_empty()) {
            (true, false) => {
                let base = hash_from(&req.base, "delta base")?;
                self.store.signature(&base).await.map_err(ServerError::from)?
            }
            _ => Bytes::from(req.signature),
        };
        let file = self.store.blob_file(&h).await.map_err(ServerError::from)?;
        let level = self.options.compression_level;
        let (tx, rx) = mpsc::channel(8);
        tokio::task::spawn_blocking(move || {
            let result = (|| -> Result<(), ServerError> {
                let size = std::fs::metadata(&file.path).map_err(|e| ServerError::BadRequest(e.to_string()))?.len();
                let mut send = |f| tx.blocking_send(Ok(f)).map_err(|_| FrameError::Gone);
                let mut writer = frames::DeltaWriter::new(h, size, Hash::from_bytes([0; 32]), level, &mut send);
                match delta::diff_file(&signature, &file.path, (h, size), frames::Check::Trust, &mut writer) {
                    Err(_) if writer.is_gone() => Ok(()), // the client hung up
                    Err(delta::DeltaError::Changed { .. }) => Err(ServerError::Corrupt(h)),
                    Err(e) => Err(e.into()),
                    Ok(()) => writer.finish().map_err(|e| ServerError::Precondition(e.to_string())),
                }
            })();
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e.into()));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn agent_status(
        &self,
        _req: Request<pb::AgentStatusRequest>,
    ) -> Result<Response<pb::AgentStatusResponse>, Status> {
        let report =
            self.agent.as_ref().ok_or_else(|| ServerError::Precondition(super::agent_status::NOT_AN_AGENT.into()))?;
        Ok(Response::new(pb::AgentStatusResponse { roots: report().into_iter().map(Into::into).collect() }))
    }

    async fn commit(&self, req: Request<Streaming<pb::CommitFrame>>) -> Result<Response<pb::CommitResponse>, Status> {
        let result = self.commit_counted(req).await;
        match &result {
            Ok(resp) => self.metrics.committed(resp.get_ref().unchanged),
            Err(_) => self.metrics.error(),
        }
        result
    }
}
