//! UnpackBlobs: members of archives (module zips) the store has, stored as
//! blobs, so that a push of `go-mod-trees` sends a module's zip and not
//! its extracted tree as well.
//!
//! The client names each member with the blake3 and size it expects; a
//! member goes through the same [`FrameReceiver`] as uploaded content and is
//! stored only if it hashes to that. Anything else (an archive the store
//! lacks, an absent, different or unreadable member) is skipped: the client
//! asks which blobs are still missing and sends those. A request is bounded
//! like an upload: each member by the largest blob, the whole request by
//! [`MAX_UNPACK_BYTES`] and [`MAX_HASHES`] members, so an archive that
//! inflates without end costs no more than its declared sizes.

use tokio::runtime::Handle;
use tracing::debug;

use crate::hash::Hash;
use crate::rpc::frames::FrameReceiver;
use crate::rpc::{MAX_HASHES, MAX_UNPACK_BYTES, ServerError, hash_from, pb};
use crate::store::{BlobFile, Store, StoreError};

/// One archive's members: name, blob, size.
type Members = Vec<(String, Hash, u64)>;

/// Unpacks what `req` names into `store`; returns how many members were stored.
///
/// # Errors
///
/// A malformed or oversized request; the store's errors other than a
/// missing archive.
pub async fn unpack(store: &Store, req: pb::UnpackBlobsRequest, max_blob: u64) -> Result<u64, ServerError> {
    let (mut count, mut bytes) = (0usize, 0u64);
    let mut archives = Vec::with_capacity(req.archives.len());
    for a in req.archives {
        let archive = hash_from(&a.hash, "archive")?;
        let mut members = Members::with_capacity(a.members.len());
        for m in a.members {
            if m.size > max_blob {
                return Err(ServerError::BadRequest(format!("unpack: member {} exceeds the blob limit", m.name)));
            }
            (count, bytes) = (count + 1, bytes.saturating_add(m.size));
            members.push((m.name, hash_from(&m.hash, "member")?, m.size));
        }
        archives.push((archive, members));
    }
    if count > MAX_HASHES || bytes > MAX_UNPACK_BYTES {
        return Err(ServerError::BadRequest(format!(
            "unpack: {count} members of {bytes} bytes; at most {MAX_HASHES} and {MAX_UNPACK_BYTES} per request"
        )));
    }
    let mut files = Vec::with_capacity(archives.len());
    for (archive, members) in archives {
        match store.blob_file(&archive).await {
            Ok(file) => files.push((file, members)),
            Err(StoreError::NotFound(_)) => debug!(%archive, "unpack: no such archive; the client sends its files"),
            Err(e) => return Err(e.into()),
        }
    }
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || unpack_all(&store, files)).await.expect("unpack task panicked"))
}

/// Unpacks the archives on every core.
fn unpack_all(store: &Store, archives: Vec<(BlobFile, Members)>) -> u64 {
    let rt = Handle::current();
    let receiver = || {
        FrameReceiver::new(super::incoming::blob_staging(store.clone()), u64::MAX)
            .writing_back(store.syncs_staged_files())
    };
    let stored = crate::parallel::map(&archives, usize::MAX, receiver, |receiver, (file, members)| {
        unpack_one(store, &rt, receiver, file, members)
    });
    stored.into_iter().sum()
}

fn unpack_one(store: &Store, rt: &Handle, receiver: &mut FrameReceiver, file: &BlobFile, members: &Members) -> u64 {
    let zip = std::fs::File::open(&file.path).map_err(zip::result::ZipError::from).and_then(zip::ZipArchive::new);
    let mut zip = match zip {
        Ok(zip) => zip,
        Err(e) => {
            debug!(archive = %file.path.display(), error = %e, "unpack: not a readable zip");
            return 0;
        }
    };
    let mut stored = 0;
    for (name, hash, size) in members {
        match receiver.accept_zip_member(&mut zip, name, *hash, *size) {
            Ok(incoming) => match super::incoming::publish_whole(store, rt, &incoming) {
                Ok(()) => stored += 1,
                Err(e) => debug!(member = %name, error = %e, "unpack: cannot store"),
            },
            Err(e) => debug!(member = %name, error = %e, "unpack: skipped"),
        }
    }
    stored
}
