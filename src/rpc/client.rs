//! The client side of the protocol: connecting, the version check, counting
//! the bytes that cross the socket, and typed wrappers over each call.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};
use tonic::{Code, Request, Status};

mod manifests;
mod raw;
mod unpack;

pub use manifests::Via;

use super::counting::Counted;
pub use super::counting::Counters;
use super::frames::{self, FrameError, FrameReceiver, Incoming};
use super::pb::cache_sync_client::CacheSyncClient;
use super::{MAX_HASHES, MAX_MESSAGE, PROTOCOL_HEADER, PROTOCOL_VERSION, pb};
use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::store::SnapshotRecord;

/// Why a call to a mirror failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL cannot be used.
    #[error("invalid mirror URL {url:?}: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// Nothing answered.
    #[error("cannot reach the mirror at {url}: {why}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What the transport said.
        why: String,
    },
    /// The two sides speak different protocol versions.
    #[error("the mirror at {url} speaks protocol {theirs}, this cachesync speaks {PROTOCOL_VERSION}")]
    Version {
        /// The URL.
        url: String,
        /// The server's version.
        theirs: u32,
    },
    /// The connection broke during a call.
    #[error("lost the connection to the mirror at {url}: {why}")]
    Lost {
        /// The URL.
        url: String,
        /// What the transport said.
        why: String,
    },
    /// The mirror answered with an error.
    #[error("the mirror at {url} refused: {message}")]
    Refused {
        /// The URL.
        url: String,
        /// The gRPC code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// The mirror sent something invalid.
    #[error("the mirror at {url} sent an invalid {what}: {why}")]
    Invalid {
        /// The URL.
        url: String,
        /// Which message.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// A blob stream failed.
    #[error(transparent)]
    Frames(#[from] FrameError),
    /// `AgentStatus` asked of a server that is not an agent.
    #[error(
        "{url} is not a cachesync agent (a plain mirror has no roots); `cachesync status --mirror {url}` lists its keys"
    )]
    NotAnAgent {
        /// The URL.
        url: String,
    },
}

/// Adds the protocol version, and the token if there is one, to every call.
#[derive(Clone)]
pub struct Outgoing {
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
}

impl tonic::service::Interceptor for Outgoing {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert(PROTOCOL_HEADER, PROTOCOL_VERSION.to_string().parse().expect("ascii"));
        if let Some(value) = &self.authorization {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

/// How to reach a mirror.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// How long to wait for the connection.
    pub timeout: Duration,
    /// The token to present, if the mirror wants one.
    pub token: Option<String>,
    /// For `https://`: the CA (PEM file) to trust instead of the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// For mutual TLS: client certificate and key (PEM files).
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl ConnectOptions {
    /// Plain options: a timeout, nothing else.
    pub fn new(timeout: Duration) -> ConnectOptions {
        ConnectOptions { timeout, token: None, ca_file: None, identity: None }
    }

    /// The options of the `[client]` section: the token (read from
    /// `token_file` if that is the one given), CA and client certificate.
    ///
    /// # Errors
    ///
    /// The token file's I/O error, with its path.
    pub fn from_settings(c: &crate::config::ClientSettings) -> Result<ConnectOptions, (String, std::io::Error)> {
        let token = match (c.token.as_str(), c.token_file.as_str()) {
            ("", "") => None,
            ("", file) => Some(std::fs::read_to_string(file).map_err(|e| (file.to_string(), e))?),
            (token, _) => Some(token.to_string()),
        };
        let path = |p: &str| (!p.is_empty()).then(|| std::path::PathBuf::from(p));
        Ok(ConnectOptions {
            timeout: Duration::from_millis(c.connect_timeout_ms),
            token,
            ca_file: path(&c.ca_file),
            identity: path(&c.cert_file).zip(path(&c.key_file)),
        })
    }
}

/// The TLS settings for an `https://` URL; `None` for `http://`.
fn tls_config(url: &str, opts: &ConnectOptions) -> Result<Option<ClientTlsConfig>, ClientError> {
    let bad = |why: String| ClientError::BadUrl { url: url.to_string(), why };
    if url.starts_with("http://") {
        return Ok(None);
    }
    if !url.starts_with("https://") {
        return Err(bad("expected http://HOST:PORT or https://HOST:PORT".into()));
    }
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| bad(format!("{}: {e}", path.display())));
    let mut tls = ClientTlsConfig::new();
    tls = match &opts.ca_file {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => tls.with_native_roots(),
    };
    if let Some((cert, key)) = &opts.identity {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

/// A connector that counts what crosses each TCP stream (TLS goes on top).
/// It also notes whether the mirror is on this host.
fn counting_connector(
    counters: Counters,
    loopback: Arc<AtomicBool>,
) -> impl tower::Service<Uri, Response = TokioIo<Counted>, Error = io::Error, Future: Send> + Clone + Send + 'static {
    tower::service_fn(move |uri: Uri| {
        let (counters, loopback) = (counters.clone(), loopback.clone());
        async move {
            let host = uri.host().unwrap_or("127.0.0.1").trim_matches(|c| c == '[' || c == ']').to_string();
            let default_port = if uri.scheme_str() == Some("https") { 443 } else { 80 };
            let inner = TcpStream::connect((host.as_str(), uri.port_u16().unwrap_or(default_port))).await?;
            inner.set_nodelay(true)?;
            loopback.store(inner.peer_addr()?.ip().is_loopback(), Ordering::Relaxed);
            Ok::<_, io::Error>(TokioIo::new(Counted::new(inner, counters)))
        }
    })
}

/// A connection to a mirror.
#[derive(Clone)]
pub struct Client {
    inner: CacheSyncClient<raw::Service>,
    /// The same channel, for calls whose responses skip tonic's decoder.
    raw: raw::Service,
    counters: Counters,
    url: String,
    loopback: Arc<AtomicBool>,
    /// The mirror takes a commit's manifest as a diff.
    manifest_diffs: bool,
    /// The mirror unpacks blobs from archives it has.
    unpack_blobs: bool,
}

impl Client {
    /// Connects to `url` (`http://host:port`) and checks the protocol version.
    ///
    /// # Errors
    ///
    /// [`ClientError::BadUrl`], [`ClientError::Unreachable`], [`ClientError::Version`].
    pub async fn connect(url: &str, timeout: Duration) -> Result<Client, ClientError> {
        Self::connect_with(url, &ConnectOptions::new(timeout)).await
    }

    /// Connects with a token (and the other [`ConnectOptions`]).
    ///
    /// # Errors
    ///
    /// As [`Client::connect`]; a token that is not valid header text is a [`ClientError::BadUrl`].
    pub async fn connect_with(url: &str, opts: &ConnectOptions) -> Result<Client, ClientError> {
        let timeout = opts.timeout;
        let bad = |why: String| ClientError::BadUrl { url: url.to_string(), why };
        let authorization = match &opts.token {
            None => None,
            Some(t) => Some(
                format!("Bearer {}", t.trim()).parse().map_err(|_| bad("the token is not printable ASCII".into()))?,
            ),
        };
        let tls = tls_config(url, opts)?;
        let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| bad(e.to_string()))?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(source_chain(&e)))?;
        }
        let counters = Counters::default();
        let loopback = Arc::new(AtomicBool::new(false));
        let channel = endpoint
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .max_frame_size(super::MAX_FRAME)
            .connect_with_connector(counting_connector(counters.clone(), loopback.clone()))
            .await
            .map_err(|e| ClientError::Unreachable { url: url.to_string(), why: source_chain(&e) })?;
        let raw = InterceptedService::new(channel.clone(), Outgoing { authorization });
        let inner = CacheSyncClient::new(raw.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let mut client =
            Client { inner, raw, counters, url: url.to_string(), loopback, manifest_diffs: false, unpack_blobs: false };
        client.hello().await?;
        Ok(client)
    }

    /// Bytes on the wire so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// True when the mirror is on this host (a loopback address), where
    /// compressing what it sends would only cost CPU.
    pub fn is_loopback(&self) -> bool {
        self.loopback.load(Ordering::Relaxed)
    }

    /// The zstd level to use on this connection for `configured`: none to a
    /// mirror on this host (see [`Client::is_loopback`]).
    pub fn wire_level(&self, configured: i32) -> i32 {
        if self.is_loopback() { 0 } else { configured }
    }

    /// The mirror's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn refused(&self, status: Status) -> ClientError {
        let why = match std::error::Error::source(&status) {
            Some(source) => source_chain(source),
            None => status.message().to_string(),
        };
        match status.code() {
            Code::Unavailable => ClientError::Unreachable { url: self.url.clone(), why },
            // tonic reports a connection that broke mid-call as Unknown "transport error".
            Code::Unknown if status.message().contains("transport error") => {
                ClientError::Lost { url: self.url.clone(), why }
            }
            code => ClientError::Refused { url: self.url.clone(), code, message: status.message().to_string() },
        }
    }

    fn invalid(&self, what: &'static str, why: impl ToString) -> ClientError {
        ClientError::Invalid { url: self.url.clone(), what, why: why.to_string() }
    }

    async fn hello(&mut self) -> Result<(), ClientError> {
        let resp = self.inner.hello(pb::HelloRequest { protocol: PROTOCOL_VERSION }).await;
        let resp = resp.map_err(|s| self.refused(s))?.into_inner();
        if resp.protocol != PROTOCOL_VERSION {
            return Err(ClientError::Version { url: self.url.clone(), theirs: resp.protocol });
        }
        self.manifest_diffs = resp.manifest_diffs;
        self.unpack_blobs = resp.unpack_blobs;
        Ok(())
    }

    /// The newest snapshot of `key`, else of the newest key under each prefix.
    ///
    /// # Errors
    ///
    /// Transport errors and refusals.
    pub async fn resolve(&mut self, key: &str, prefixes: &[String]) -> Result<Option<SnapshotRecord>, ClientError> {
        self.resolve_trusted(key, prefixes, &[]).await
    }

    /// As [`Client::resolve`], counting only snapshots written by the `trusted`
    /// tokens (any writer when empty).
    ///
    /// # Errors
    ///
    /// Transport errors and refusals.
    pub async fn resolve_trusted(
        &mut self,
        key: &str,
        prefixes: &[String],
        trusted: &[String],
    ) -> Result<Option<SnapshotRecord>, ClientError> {
        let req = pb::ResolveRequest {
            key: key.to_string(),
            restore_prefixes: prefixes.to_vec(),
            trusted_writers: trusted.to_vec(),
        };
        let resp = self.inner.resolve(req).await.map_err(|s| self.refused(s))?.into_inner();
        resp.snapshot.map(|s| SnapshotRecord::try_from(s).map_err(|e| self.invalid("snapshot", e))).transpose()
    }

    /// The newest snapshot of every key under `prefix`.
    ///
    /// # Errors
    ///
    /// Transport errors and refusals.
    pub async fn list_keys(&mut self, prefix: &str) -> Result<Vec<SnapshotRecord>, ClientError> {
        let req = pb::ListKeysRequest { prefix: prefix.to_string() };
        let resp = self.inner.list_keys(req).await.map_err(|s| self.refused(s))?.into_inner();
        resp.snapshots
            .into_iter()
            .map(|s| SnapshotRecord::try_from(s).map_err(|e| self.invalid("snapshot", e)))
            .collect()
    }

    /// An agent's roots and how each is doing.
    ///
    /// # Errors
    ///
    /// [`ClientError::NotAnAgent`] from a plain mirror (or one too old to
    /// know the call); transport errors and refusals.
    pub async fn agent_status(&mut self) -> Result<Vec<crate::agent::RootStatus>, ClientError> {
        let resp = self.inner.agent_status(pb::AgentStatusRequest {}).await.map_err(|s| match s.code() {
            Code::Unimplemented => ClientError::NotAnAgent { url: self.url.clone() },
            Code::FailedPrecondition if s.message() == super::agent_status::NOT_AN_AGENT => {
                ClientError::NotAnAgent { url: self.url.clone() }
            }
            _ => self.refused(s),
        })?;
        let roots = resp.into_inner().roots.into_iter();
        roots.map(|r| crate::agent::RootStatus::try_from(r).map_err(|e| self.invalid("agent status", e))).collect()
    }

    /// Downloads, verifies and decodes a manifest, whole.
    ///
    /// # Errors
    ///
    /// Refusals, and [`ClientError::Invalid`] for bytes that do not match or validate.
    pub async fn manifest(&mut self, id: Hash) -> Result<Manifest, ClientError> {
        let (known, _) = self.manifest_since(id, None).await?;
        Ok(Arc::unwrap_or_clone(known.manifest))
    }

    /// The hashes the mirror lacks, asked in bounded batches.
    ///
    /// # Errors
    ///
    /// Transport errors and refusals.
    pub async fn missing(&mut self, hashes: &[Hash]) -> Result<Vec<Hash>, ClientError> {
        let mut out = Vec::new();
        for batch in hashes.chunks(MAX_HASHES) {
            let req = pb::MissingBlobsRequest { hashes: batch.iter().map(|h| h.as_bytes().to_vec()).collect() };
            let resp = self.inner.missing_blobs(req).await.map_err(|s| self.refused(s))?.into_inner();
            for m in resp.missing {
                out.push(Hash::from_slice(&m).map_err(|e| self.invalid("hash", e))?);
            }
        }
        Ok(out)
    }

    /// Streams blobs to the mirror; `produce` runs on the blocking pool and
    /// sends frames. Returns the hashes of deltas the mirror refused.
    ///
    /// # Errors
    ///
    /// The producer's error, or the mirror's.
    pub(crate) async fn put_blobs<P>(&mut self, produce: P) -> Result<Vec<Hash>, ClientError>
    where
        P: FnOnce(&mut frames::Send<'_>) -> Result<(), FrameError> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<pb::BlobFrame>(16);
        let producer = tokio::task::spawn_blocking(move || {
            let mut send = |f| tx.blocking_send(f).map_err(|_| FrameError::Gone);
            produce(&mut send)
        });
        let call = self.inner.put_blobs(ReceiverStream::new(rx)).await;
        let produced = producer.await.map_err(|e| FrameError::Handler(e.to_string()))?;
        match (produced, call) {
            (Err(e), _) if !matches!(e, FrameError::Gone) => Err(e.into()),
            (_, Err(status)) => Err(self.refused(status)),
            (_, Ok(resp)) => resp
                .into_inner()
                .rejected_deltas
                .iter()
                .map(|h| Hash::from_slice(h).map_err(|e| self.invalid("hash", e)))
                .collect(),
        }
    }

    /// Downloads blobs whole, asking for at most `level` zstd compression;
    /// `handle` receives each verified staging file.
    ///
    /// # Errors
    ///
    /// Refusals, stream and verification failures, `handle`'s errors.
    pub(crate) async fn get_blobs<H>(
        &mut self,
        hashes: &[Hash],
        level: i32,
        receiver: FrameReceiver,
        handle: H,
    ) -> Result<(), ClientError>
    where
        H: FnMut(Incoming) -> Result<(), FrameError> + Send + 'static,
    {
        assert!(hashes.len() <= MAX_HASHES, "callers batch hashes");
        let hashes = hashes.iter().map(|h| h.as_bytes().to_vec()).collect();
        let req = pb::GetBlobsRequest { hashes, compression_level: Some(level), batch: true };
        let stream = raw::call(&self.raw, super::wire::GET_BLOBS, &req).await.map_err(|s| self.refused(s))?;
        frames::receive_blobs(stream, receiver, handle).await.map_err(Into::into)
    }

    /// The signature of a blob the mirror has.
    ///
    /// # Errors
    ///
    /// Refusals; an oversized signature.
    pub async fn signature(&mut self, h: Hash) -> Result<Vec<u8>, ClientError> {
        let req = pb::GetSignatureRequest { hash: h.as_bytes().to_vec() };
        let mut stream = self.inner.get_signature(req).await.map_err(|s| self.refused(s))?.into_inner();
        let mut sig = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(|s| self.refused(s))? {
            if sig.len() + chunk.data.len() > crate::delta::MAX_SIGNATURE_BYTES {
                return Err(self.invalid("signature", "larger than the limit"));
            }
            sig.extend_from_slice(&chunk.data);
        }
        Ok(sig)
    }

    /// Downloads blob `h` as a delta against a local base, described by its
    /// signature or named by the blob it holds.
    ///
    /// # Errors
    ///
    /// Refusals (`NOT_FOUND` for a named base the mirror lacks), stream
    /// failures, `handle`'s errors.
    pub(crate) async fn get_delta<H>(
        &mut self,
        h: Hash,
        base: DeltaBase,
        receiver: FrameReceiver,
        handle: H,
    ) -> Result<(), ClientError>
    where
        H: FnMut(Incoming) -> Result<(), FrameError> + Send + 'static,
    {
        let (signature, base) = match base {
            DeltaBase::Signature(sig) => (sig, Vec::new()),
            DeltaBase::Blob(b) => (Vec::new(), b.as_bytes().to_vec()),
        };
        let req = pb::GetDeltaRequest { hash: h.as_bytes().to_vec(), signature, base };
        let stream = self.inner.get_delta(req).await.map_err(|s| self.refused(s))?.into_inner();
        frames::receive_blobs(stream, receiver, handle).await.map_err(Into::into)
    }

    /// Commits a manifest under `key`, whole; returns the snapshot and
    /// whether it was unchanged.
    ///
    /// # Errors
    ///
    /// Refusals (missing blobs, bad key).
    pub async fn commit(
        &mut self,
        key: &str,
        manifest: &Manifest,
        profile: &str,
        base: &str,
    ) -> Result<(SnapshotRecord, bool), ClientError> {
        let (snapshot, unchanged, _) = self.commit_since(key, manifest, profile, base, None).await?;
        Ok((snapshot, unchanged))
    }
}

/// What a delta is made against (see [`Client::get_delta`]).
pub(crate) enum DeltaBase {
    /// The signature of the client's base file.
    Signature(Vec<u8>),
    /// The blob the client's base file holds, whose signature the mirror has.
    Blob(Hash),
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
