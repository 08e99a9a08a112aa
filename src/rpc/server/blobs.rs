//! GetBlobs, the call that carries a restore's bytes. Its messages are
//! written by [`wire`] with each blob read straight into them, and
//! [`Routes`] answers the call without tonic's encoder, which would copy
//! every byte once more. Every other call goes to the generated server,
//! and [`Gate`](super::Gate) stands in front of both.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use super::{CacheSyncServer, MirrorService, Stream_};
use crate::hash::Hash;
use crate::metrics::Metrics;
use crate::rpc::frames::FrameError;
use crate::rpc::wire::{self, GET_BLOBS, PREFIX, prefix_len};
use crate::rpc::{MAX_MESSAGE, ServerError, hashes_from, pb};
use crate::store::Store;

/// The generated server, with GetBlobs answered here.
#[derive(Clone)]
pub struct Routes {
    grpc: CacheSyncServer<MirrorService>,
    mirror: MirrorService,
}

impl Routes {
    pub(super) fn new(grpc: CacheSyncServer<MirrorService>, mirror: MirrorService) -> Self {
        Routes { grpc, mirror }
    }
}

impl NamedService for Routes {
    const NAME: &'static str = <CacheSyncServer<MirrorService> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for Routes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<Body>>::poll_ready(&mut self.grpc, cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != GET_BLOBS {
            return self.grpc.call(req);
        }
        let mirror = self.mirror.clone();
        Box::pin(async move {
            Ok(match serve(mirror, req).await {
                Ok(response) => response,
                Err(status) => status.into_http(),
            })
        })
    }
}

/// Starts streaming what `req` asks for; refuses a malformed request.
async fn serve(mirror: MirrorService, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
    let body = http_body_util::Limited::new(req.into_body(), PREFIX + MAX_MESSAGE)
        .collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("get blobs: the request could not be read: {e}")))?
        .to_bytes();
    let announced = body.get(..PREFIX).and_then(|p| prefix_len(p.try_into().expect("PREFIX bytes")));
    if announced != Some(body.len().saturating_sub(PREFIX)) {
        return Err(Status::invalid_argument("get blobs: a malformed or compressed request"));
    }
    let req = pb::GetBlobsRequest::decode(body.slice(PREFIX..))
        .map_err(|e| Status::invalid_argument(format!("get blobs: an undecodable request: {e}")))?;
    let messages = messages(&mirror, req)?;
    // The status ends the stream: the first error's, or OK after the last message.
    let frames = futures::stream::unfold(Some(messages), |rx| async move {
        let mut rx = rx?;
        let end = match rx.recv().await {
            Some(Ok(bytes)) => return Some((Ok::<_, Infallible>(Frame::data(bytes)), Some(rx))),
            Some(Err(status)) => trailers(&status),
            None => trailers(&Status::ok("")),
        };
        Some((Ok(Frame::trailers(end)), None))
    });
    let body = Body::new(http_body_util::StreamBody::new(frames));
    let response = http::Response::builder().header(http::header::CONTENT_TYPE, "application/grpc").body(body);
    response.map_err(|e| Status::internal(e.to_string()))
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    // A message that cannot be a header value is left out; the code stays.
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", (status.code() as i32).into());
    }
    map
}

/// The blobs `req` asks for, as wire messages, sent from the blocking pool;
/// an error ends them.
///
/// # Errors
///
/// A malformed list of hashes.
fn messages(mirror: &MirrorService, req: pb::GetBlobsRequest) -> Result<mpsc::Receiver<Result<Bytes, Status>>, Status> {
    let hashes = hashes_from(&req.hashes, "get blobs")?;
    let (tx, rx) = mpsc::channel(8);
    let (store, metrics) = (mirror.store.clone(), mirror.metrics.clone());
    let own = mirror.options.compression_level;
    let messages = wire::Messages::new(req.batch, req.compression_level.map_or(own, |asked| asked.clamp(0, own)));
    tokio::task::spawn_blocking(move || {
        let failed = tx.clone();
        let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            produce(&store, &metrics, hashes, messages, &tx);
        }));
        // A bug must not end the stream as if every blob had been sent.
        if sent.is_err() {
            let _ = failed.blocking_send(Err(Status::internal("the mirror failed while sending blobs")));
        }
    });
    Ok(rx)
}

/// Sends `hashes` to `tx` as `messages`, on the blocking pool; the first
/// error ends them.
fn produce(
    store: &Store,
    metrics: &Metrics,
    hashes: Vec<Hash>,
    mut messages: wire::Messages,
    tx: &mpsc::Sender<Result<Bytes, Status>>,
) {
    let rt = Handle::current();
    let mut sink = |m: Bytes| tx.blocking_send(Ok(m)).map_err(|_| FrameError::Gone);
    let mut send = |h: Hash, messages: &mut wire::Messages| {
        let (blob, file) = rt.block_on(store.open_blob(&h))?;
        let size = file.metadata().map_err(|e| ServerError::BadRequest(format!("blob {h}: {e}")))?.len();
        messages.add_file(file, &blob.path, (h, size), &mut sink).map_err(|e| match e {
            FrameError::Changed { .. } => ServerError::Corrupt(h),
            other => ServerError::Precondition(other.to_string()),
        })?;
        metrics.blob_sent(size);
        Ok::<(), ServerError>(())
    };
    for h in hashes {
        if let Err(e) = send(h, &mut messages) {
            metrics.error();
            let _ = tx.blocking_send(Err(e.into()));
            return;
        }
    }
    let _ = messages.finish(&mut sink);
}

/// GetBlobs through tonic, for a server built around a [`MirrorService`]
/// without [`Routes`]: the same messages, decoded.
///
/// # Errors
///
/// A malformed list of hashes.
pub(super) fn decoded(mirror: &MirrorService, req: pb::GetBlobsRequest) -> Result<Stream_<pb::BlobFrame>, Status> {
    let messages = ReceiverStream::new(messages(mirror, req)?);
    Ok(Box::pin(messages.map(|m| {
        pb::BlobFrame::decode(m?.slice(PREFIX..))
            .map_err(|e| Status::internal(format!("a message that does not decode: {e}")))
    })))
}
