//! The gRPC protocol: generated types enter the crate here and nowhere else.
//!
//! Owns the protocol version check, message bounds, conversions between
//! protobuf messages and domain types, blob framing ([`frames`]), the one
//! place where errors become `tonic::Status` ([`ServerError`]), the service
//! over a store ([`server`]) and the client ([`client`]).

mod agent_status;
pub mod client;
mod counting;
pub(crate) mod frames;
pub mod server;
mod wire;

use tonic::{Code, Status};

use crate::delta::DeltaError;
use crate::hash::Hash;
use crate::manifest::ManifestError;
use crate::store::{SnapshotRecord, StoreError};

/// The generated protocol types, for tools and tests that speak the raw
/// protocol (the rest of the crate converts them to domain types here).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("cachesync.v1");
}

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Metadata header carrying the protocol version on every call.
pub const PROTOCOL_HEADER: &str = "cachesync-protocol";
/// Most uncompressed bytes in one data chunk.
pub const MAX_CHUNK: usize = 1 << 20;
/// Largest encoded message either side accepts.
pub const MAX_MESSAGE: usize = 2 << 20;
/// Most hashes in one request or response.
pub const MAX_HASHES: usize = 8192;
/// Most bytes (declared member sizes) one UnpackBlobs request may unpack.
pub const MAX_UNPACK_BYTES: u64 = 4 << 30;
/// HTTP/2 flow-control window per stream: several chunks in flight, so a
/// receiver never waits a round trip for the next one.
pub const STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 flow-control window per connection (streams share it).
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// Largest HTTP/2 frame each side accepts. The default, 16 KiB, made a
/// restore of 165 MiB cost 10,500 `writev` calls on the mirror and twice as
/// many reads on the client: one per frame. Larger than the largest message
/// (and the few small ones tonic sends in the same write), so that a
/// message travels in one frame and a pull decodes it where it landed.
pub const MAX_FRAME: u32 = 4 << 20;
/// Largest manifest accepted (about two million entries).
pub const MAX_MANIFEST: u64 = 256 << 20;

/// A failure while serving a call, mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The request is malformed or out of bounds.
    #[error("{0}")]
    BadRequest(String),
    /// The call is refused in the server's current state.
    #[error("{0}")]
    Precondition(String),
    /// A store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest that does not validate.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A delta or signature that cannot be used.
    #[error(transparent)]
    Delta(#[from] DeltaError),
    /// The caller may not do this.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// A stored blob whose content no longer matches its name (bit rot, tampering).
    #[error("the mirror's copy of blob {0} is corrupt: its content no longer matches its blake3")]
    Corrupt(Hash),
    /// A commit's manifest diff cannot be used: the base is not held, or the
    /// rebuilt manifest does not match its id. The client sends it whole.
    #[error("{0}")]
    UnusableDiff(String),
    /// A stream ended or broke.
    #[error("stream: {0}")]
    Stream(#[from] Status),
}

impl From<ServerError> for Status {
    fn from(err: ServerError) -> Status {
        let code = match &err {
            ServerError::BadRequest(_) | ServerError::Manifest(_) => Code::InvalidArgument,
            ServerError::Precondition(_) => Code::FailedPrecondition,
            ServerError::Store(StoreError::NotFound(_)) => Code::NotFound,
            ServerError::Store(StoreError::BadKey { .. }) => Code::InvalidArgument,
            ServerError::Delta(DeltaError::BadSignature(_) | DeltaError::BadDelta(_)) => Code::InvalidArgument,
            ServerError::Corrupt(_) => Code::DataLoss,
            ServerError::UnusableDiff(_) => Code::Aborted,
            ServerError::Auth(crate::auth::AuthError::Unauthenticated(_)) => Code::Unauthenticated,
            ServerError::Auth(_) => Code::PermissionDenied,
            ServerError::Stream(s) => return s.clone(),
            _ => Code::Internal,
        };
        if matches!(code, Code::Internal | Code::DataLoss) {
            tracing::error!(error = %err, "request failed");
        }
        Status::new(code, err.to_string())
    }
}

pub(crate) fn hash_from(bytes: &[u8], what: &str) -> Result<Hash, ServerError> {
    Hash::from_slice(bytes).map_err(|_| ServerError::BadRequest(format!("{what}: not a 32-byte blake3 hash")))
}

pub(crate) fn hashes_from(list: &[Vec<u8>], what: &str) -> Result<Vec<Hash>, ServerError> {
    if list.len() > MAX_HASHES {
        return Err(ServerError::BadRequest(format!("{what}: more than {MAX_HASHES} hashes")));
    }
    list.iter().map(|b| hash_from(b, what)).collect()
}

impl From<SnapshotRecord> for pb::Snapshot {
    fn from(s: SnapshotRecord) -> pb::Snapshot {
        pb::Snapshot {
            manifest_id: Hash::from_hex(&s.manifest).map(|h| h.as_bytes().to_vec()).unwrap_or_default(),
            key: s.key,
            generation: s.generation,
            files: s.files,
            bytes: s.bytes,
            created_unix_ms: s.created_unix_ms,
            profile: s.profile,
            writer: s.writer,
            base: s.base,
        }
    }
}

impl TryFrom<pb::Snapshot> for SnapshotRecord {
    type Error = ServerError;

    fn try_from(s: pb::Snapshot) -> Result<SnapshotRecord, ServerError> {
        let id = hash_from(&s.manifest_id, "snapshot manifest id")?;
        Ok(SnapshotRecord {
            key: s.key,
            generation: s.generation,
            manifest: id.to_hex(),
            files: s.files,
            bytes: s.bytes,
            created_unix_ms: s.created_unix_ms,
            profile: s.profile,
            writer: s.writer,
            base: s.base,
        })
    }
}
