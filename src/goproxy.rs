//! The Go module proxy endpoint of the mirror (`GOPROXY=http://mirror:port`):
//! `<module>/@v/list`, `@v/<version>.info|.mod|.zip` and `<module>/@latest`
//! over HTTP/1.1, served from the go-mod snapshots in the store (see
//! [`index`] for which). Answers 404 for what the snapshots lack (the go
//! command then tries its next proxy), 400 for malformed paths, 304 for a
//! current `If-None-Match`, 206 for one byte range; file bodies stream from
//! the store. It does not write anything, and knows nothing of gRPC; when
//! the mirror has tokens, it asks for one (HTTP Basic, the token as password,
//! or Bearer). Only this module uses axum.

mod conditional;
pub mod index;
mod request;
mod semver;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::Auth;
use crate::hash::Hash;
use crate::profile::go::FileKind;
use crate::store::{Store, StoreError};
use conditional::Wanted;
use index::{BlobRef, Catalog};
use request::{Query, RequestError};

/// What the endpoint serves, and where.
#[derive(Debug, Clone, Default)]
pub struct GoproxyOptions {
    /// The path it is mounted under: empty for the root, else `/a/b`.
    pub prefix: String,
    /// Only keys starting with this (empty: every key).
    pub keys: String,
}

/// The endpoint, bound to its address.
pub struct GoProxy {
    listener: TcpListener,
    proxy: Arc<Proxy>,
}

struct Proxy {
    store: Store,
    catalog: Catalog,
    auth: Auth,
    options: GoproxyOptions,
}

impl GoProxy {
    /// Binds `addr`.
    ///
    /// # Errors
    ///
    /// The I/O error of binding.
    pub async fn bind(addr: &str, options: GoproxyOptions, store: Store, auth: Auth) -> std::io::Result<GoProxy> {
        let listener = TcpListener::bind(addr).await?;
        let catalog = Catalog::new(store.clone(), options.keys.clone());
        Ok(GoProxy { listener, proxy: Arc::new(Proxy { store, catalog, auth, options }) })
    }

    /// The address actually bound (useful with port 0).
    ///
    /// # Errors
    ///
    /// The socket's error.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then lets requests in flight finish.
    ///
    /// # Errors
    ///
    /// The server's I/O error.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let addr = self.local_addr()?;
        let o = &self.proxy.options;
        info!(%addr, prefix = %o.prefix, keys = %o.keys, "goproxy listening");
        let app = Router::new().fallback(handle).with_state(self.proxy);
        axum::serve(self.listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
        info!("goproxy stopped");
        Ok(())
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

fn text(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, TEXT)], format!("{message}\n")).into_response()
}

async fn handle(State(proxy): State<Arc<Proxy>>, method: Method, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if let Some(refusal) = proxy.refusal(&headers) {
        return refusal;
    }
    let below = match proxy.options.prefix.as_str() {
        "" => Some(uri.path()),
        prefix => uri.path().strip_prefix(prefix).filter(|rest| rest.starts_with('/')),
    };
    let parsed = below.map_or(Err(RequestError::Unknown), |p| request::parse(p.trim_start_matches('/')));
    let req = match parsed {
        Ok(req) => req,
        Err(RequestError::Unknown) => return text(StatusCode::NOT_FOUND, "not found"),
        Err(RequestError::Malformed(why)) => return text(StatusCode::BAD_REQUEST, &why),
    };
    let index = match proxy.catalog.current().await {
        Ok(index) => index,
        Err(e) => return store_failure(&e, uri.path()),
    };
    let (found, content_type) = match &req.query {
        Query::List => (index.list(&req.module).map(|body| Content::Memory(Bytes::from(body))), TEXT),
        Query::Latest => (index.latest(&req.module).map(|(_, info)| Content::Blob(info)), JSON),
        Query::File(version, kind) => {
            let content_type = match kind {
                FileKind::Info => JSON,
                FileKind::Zip => "application/zip",
                _ => TEXT,
            };
            (index.file(&req.module, version, *kind).map(Content::Blob), content_type)
        }
    };
    match found {
        Some(content) => proxy.respond(content, content_type, &headers, method == Method::HEAD, uri.path()).await,
        None => text(StatusCode::NOT_FOUND, &format!("{} not found", uri.path())),
    }
}

/// A store that cannot be read: 503 when it may come back (I/O, backend),
/// 500 when it holds something wrong; one line in the log either way.
fn store_failure(e: &StoreError, path: &str) -> Response {
    warn!(path, error = %e, "goproxy cannot read the store");
    match e {
        StoreError::Io { .. } | StoreError::Backend { .. } => {
            text(StatusCode::SERVICE_UNAVAILABLE, "the mirror cannot read its store")
        }
        _ => text(StatusCode::INTERNAL_SERVER_ERROR, "the mirror's store is inconsistent"),
    }
}

/// What a response carries.
enum Content {
    /// Bytes made for the response (a version list).
    Memory(Bytes),
    /// A file of a snapshot.
    Blob(BlobRef),
}

impl Proxy {
    /// With tokens in force, any known token may read: as the password of
    /// HTTP Basic (`GOPROXY=http://user:TOKEN@host` or `.netrc`) or Bearer.
    /// `None` lets the request through; else the 401 to send.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        if !self.auth.is_enforced() {
            return None;
        }
        let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let bearer = match presented.and_then(|h| h.strip_prefix("Basic ")) {
            Some(basic) => basic_password(basic).map(|password| format!("Bearer {password}")),
            None => presented.map(str::to_string),
        };
        let e = self.auth.identify(bearer.as_deref()).err()?;
        let mut r = text(StatusCode::UNAUTHORIZED, &e.to_string());
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"cachesync\""));
        Some(r)
    }

    /// The content with its entity tag (the blake3 of its bytes), honouring
    /// `If-None-Match` and one `Range`.
    async fn respond(&self, content: Content, content_type: &str, req: &HeaderMap, head: bool, path: &str) -> Response {
        let (hash, size) = match &content {
            Content::Memory(bytes) => (Hash::of(bytes), bytes.len() as u64),
            Content::Blob(blob) => (blob.hash, blob.size),
        };
        let etag = format!("\"{}\"", hash.to_hex());
        let header_str = |name| req.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
        let mut r = Response::builder().header(header::ETAG, &etag).header(header::ACCEPT_RANGES, "bytes");
        if header_str(header::IF_NONE_MATCH).is_some_and(|v| conditional::none_match(v, &etag)) {
            return r.status(StatusCode::NOT_MODIFIED).body(Body::empty()).expect("valid response");
        }
        let if_range_ok = header_str(header::IF_RANGE).is_none_or(|v| v == etag);
        let wanted = match header_str(header::RANGE) {
            Some(range) if if_range_ok => conditional::range(range, size),
            _ => Wanted::Whole,
        };
        let part = match wanted {
            Wanted::Whole => 0..size,
            Wanted::Part(part) => {
                let range = format!("bytes {}-{}/{size}", part.start, part.end - 1);
                r = r.status(StatusCode::PARTIAL_CONTENT).header(header::CONTENT_RANGE, range);
                part
            }
            Wanted::Unsatisfiable => {
                let r = r
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}"));
                return r.body(Body::empty()).expect("valid response");
            }
        };
        r = r.header(header::CONTENT_TYPE, content_type).header(header::CONTENT_LENGTH, part.end - part.start);
        let body = match content {
            _ if head || part.is_empty() => Body::empty(),
            Content::Memory(bytes) => Body::from(bytes.slice(part.start as usize..part.end as usize)),
            Content::Blob(blob) => match self.stream(&blob, part, path).await {
                Ok(body) => body,
                Err(e) => return store_failure(&e, path),
            },
        };
        r.body(body).expect("valid response")
    }

    /// A blob's bytes `part` as a body streamed from the store; a failure
    /// after the head was sent cuts the response short, with a log line.
    async fn stream(&self, blob: &BlobRef, part: std::ops::Range<u64>, path: &str) -> Result<Body, StoreError> {
        let stream = self.store.blob_range(&blob.hash, part).await?;
        let path = path.to_string();
        Ok(Body::from_stream(stream.inspect(move |r| {
            if let Err(e) = r {
                warn!(path, error = %e, "goproxy response cut short: the store failed");
            }
        })))
    }
}

/// The password of an HTTP Basic credential (`base64(user:password)`).
fn basic_password(encoded: &str) -> Option<String> {
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in encoded.trim().trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
        }
    }
    let text = String::from_utf8(out).ok()?;
    text.split_once(':').map(|(_, password)| password.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn basic_credentials_decode() {
        // base64("go:s3cret-token")
        assert_eq!(super::basic_password("Z286czNjcmV0LXRva2Vu").as_deref(), Some("s3cret-token"));
        assert_eq!(super::basic_password("bm9jb2xvbg==").as_deref(), None);
        assert_eq!(super::basic_password("!!").as_deref(), None);
    }
}
