//! Blobs as they arrive (uploads, members unpacked from archives): staged,
//! verified by the [`FrameReceiver`](crate::rpc::frames::FrameReceiver), and
//! stored; deltas applied to their base first.

use tokio::runtime::Handle;
use tracing::info;

use super::MirrorService;
use crate::delta;
use crate::fsutil;
use crate::hash::Hash;
use crate::rpc::frames::{self, FrameError, Incoming, NewFile};
use crate::store::{self, Store};

impl MirrorService {
    /// Stores one verified blob (applying a delta to its base first);
    /// a delta that does not apply is added to `rejected`.
    pub(super) fn handle_incoming(
        store: &Store,
        mut incoming: Incoming,
        rejected: &mut Vec<Vec<u8>>,
    ) -> Result<(), FrameError> {
        let rt = Handle::current();
        let handler = |e: store::StoreError| FrameError::Handler(e.to_string());
        let Some(base) = incoming.delta_base else {
            return publish_whole(store, &rt, &incoming).map_err(handler);
        };
        if let Some(file) = incoming.unnamed.take() {
            // A delta is read back by name.
            incoming.staged = store.staging_name();
            fsutil::link_unnamed(&file, &incoming.staged).map_err(frames::io_err(&incoming.staged))?;
        }
        let base_file = rt.block_on(store.blob_file(&base));
        let out = store.staging_file().map_err(handler)?.0;
        let _ = std::fs::remove_file(&out);
        let applied = base_file.map_err(handler).and_then(|base_file| {
            delta::apply_files(
                &base_file.path,
                &incoming.staged,
                &out,
                incoming.hash,
                incoming.size,
                store.syncs_staged_files(),
            )
            .map_err(|e| FrameError::Handler(e.to_string()))
        });
        let _ = std::fs::remove_file(&incoming.staged);
        match applied {
            Ok(()) => rt.block_on(store.publish_blob(&incoming.hash, &out)).map_err(handler),
            Err(e) => {
                info!(blob = %incoming.hash, base = %base, error = %e, "delta refused; the client will send it whole");
                rt.block_on(store.forget_signature(&base));
                rejected.push(incoming.hash.as_bytes().to_vec());
                Ok(())
            }
        }
    }
}

/// Staging files for incoming blobs: unnamed where the store can link them
/// into place (see [`Store::unnamed_staging_file`]), else named.
pub(super) fn blob_staging(store: Store) -> frames::Staging {
    Box::new(move |_: &Hash| match store.unnamed_staging_file() {
        Some(file) => Ok(NewFile { file, path: None, copies: Vec::new() }),
        None => store.staging_file().map(NewFile::named).map_err(std::io::Error::other),
    })
}

/// Stores a verified whole blob from [`blob_staging`]'s file, named or not.
pub(super) fn publish_whole(store: &Store, rt: &Handle, incoming: &Incoming) -> Result<(), store::StoreError> {
    match &incoming.unnamed {
        Some(file) => store.publish_unnamed(&incoming.hash, file),
        None => rt.block_on(store.publish_blob(&incoming.hash, &incoming.staged)),
    }
}
