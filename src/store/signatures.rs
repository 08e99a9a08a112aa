//! Signatures of blobs (see [`crate::delta`]), kept beside them as
//! `sigs/<2 hex>/<64 hex>`. Every delta against a blob, pushed or pulled,
//! needs the blob's signature, and computing one reads the whole blob: 90 ms
//! for 256 MiB on two cores, or a whole download from a bucket.
//!
//! A signature is only a hint: a wrong one makes a delta that rebuilds a
//! file whose blake3 does not match, which the receiver refuses. So they are
//! written without fsync, checked against the size of their blob when read,
//! and swept with the blobs they describe.

use bytes::Bytes;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutPayload};
use tokio::runtime::Handle;
use tracing::warn;

use super::{BlobFile, Result, Store, StoreError};
use crate::delta::{self, DeltaError};
use crate::hash::Hash;

impl Store {
    fn signature_path(h: &Hash) -> ObjPath {
        let hex = h.to_hex();
        ObjPath::from(format!("sigs/{}/{}", &hex[..2], hex))
    }

    /// The signature of blob `h`: the stored one, or else computed from the
    /// blob (on the blocking pool) and stored.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] if the store lacks the blob; I/O and backend
    /// errors reading it.
    pub async fn signature(&self, h: &Hash) -> Result<Bytes> {
        if let Some(sig) = self.stored_signature(h).await? {
            return Ok(sig);
        }
        let file = self.blob_file(h).await?;
        let sig = tokio::task::spawn_blocking(move || compute(&file)).await.expect("signature task panicked")?;
        self.keep_signature(h, sig.clone()).await;
        Ok(sig)
    }

    /// Computes and stores the signature of blob `h` on this thread, unless
    /// it is stored already: for a background worker outside the runtime.
    ///
    /// # Errors
    ///
    /// Those of [`Store::signature`].
    pub fn prepare_signature(&self, rt: &Handle, h: &Hash) -> Result<()> {
        if rt.block_on(self.stored_signature(h))?.is_some() {
            return Ok(());
        }
        let file = rt.block_on(self.blob_file(h))?;
        let sig = compute(&file)?;
        rt.block_on(self.keep_signature(h, sig));
        Ok(())
    }

    /// Drops the stored signature of `h`, if any: a delta made against it
    /// did not rebuild its file (the file changed while it was diffed, or
    /// the signature is wrong), and the next one is made from the blob.
    pub async fn forget_signature(&self, h: &Hash) {
        let _ = self.blobs.delete(&Self::signature_path(h)).await;
    }

    /// The stored signature of `h` if there is one that fits the blob's size.
    async fn stored_signature(&self, h: &Hash) -> Result<Option<Bytes>> {
        let Some(size) = self.blob_size(h).await? else {
            return Err(StoreError::NotFound(format!("blob {h}")));
        };
        match self.get(&self.blobs, &Self::signature_path(h), "signature").await {
            Ok(sig) if delta::is_signature_for(&sig, size) => Ok(Some(sig)),
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores a signature; a failure only costs computing it again.
    async fn keep_signature(&self, h: &Hash, sig: Bytes) {
        if let Err(e) = self.blobs.put(&Self::signature_path(h), PutPayload::from(sig)).await {
            warn!(blob = %h, error = %e, "could not store a signature; it will be computed again");
        }
    }
}

fn compute(file: &BlobFile) -> Result<Bytes> {
    match delta::signature_file(&file.path) {
        Ok(sig) => Ok(sig.into()),
        Err(DeltaError::Io { path, source }) => Err(StoreError::Io { path, source }),
        Err(e) => Err(StoreError::Corrupt { what: file.path.display().to_string(), why: e.to_string() }),
    }
}
