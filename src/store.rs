//! The mirror's store: blobs, manifests and snapshots over `object_store`.
//!
//! Layout (object paths):
//! - `blobs/<2 hex>/<64 hex>`: file contents, addressed by blake3, stored once;
//! - `manifests/<64 hex>`: canonical manifest bytes, addressed by blake3;
//! - `keys/<key>/@snap/<generation, 20 digits>`: a snapshot record (JSON);
//! - `sigs/<2 hex>/<64 hex>`: a blob's delta signature, made when first
//!   needed (see [`signatures`]).
//!
//! Everything is immutable. A key's newest snapshot record *is* its ref: it is
//! created last, with a conditional put (`PutMode::Create`), after the blobs it
//! names are durable and its manifest is stored, so two writers can never take
//! the same generation and a reader never sees a snapshot with missing parts.
//!
//! Blobs arrive through a staging file that the receiver has verified against
//! its blake3; on the local file system they are renamed into place and made
//! durable by one `syncfs` before the snapshot that names them is committed,
//! instead of one fsync per blob. In an S3 bucket they are uploaded to their
//! final name only once verified (a put, or a multipart upload that appears
//! whole when completed), and snapshot records are created with
//! `If-None-Match: *`, so mirrors sharing a bucket never take the same
//! generation. This module knows nothing about gRPC.

mod backend;
mod gc;
mod keys;
mod read;
mod signatures;
mod snapshots;
mod staging;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

pub use gc::{Retention, Swept};
pub use keys::{check_key, check_prefix};
pub use snapshots::{Committed, NewSnapshot};

use crate::hash::Hash;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A key or prefix that is not allowed.
    #[error("invalid key {key:?}: {why}")]
    BadKey {
        /// The key.
        key: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A stored object that cannot be read back.
    #[error("corrupt store object {what}: {why}")]
    Corrupt {
        /// Which object.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// A store location this build cannot open.
    #[error("cannot open store {location:?}: {why}")]
    Unsupported {
        /// The location given.
        location: String,
        /// Why.
        why: String,
    },
    /// A remote store that does not answer as it should.
    #[error("store {location}: {why}")]
    Unavailable {
        /// The location given.
        location: String,
        /// Why, in one line.
        why: String,
    },
    /// Local file I/O.
    #[error("{}: {source}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        #[source]
        source: std::io::Error,
    },
    /// The object store backend failed.
    #[error("store {what}: {source}")]
    Backend {
        /// Which operation and object.
        what: String,
        /// The backend's error.
        #[source]
        source: object_store::Error,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// A snapshot: a manifest committed under a key with a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The key.
    pub key: String,
    /// 1 for the first snapshot of a key, then increasing.
    pub generation: u64,
    /// Hex blake3 of the manifest.
    pub manifest: String,
    /// Regular files in the manifest.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// When it was committed.
    pub created_unix_ms: i64,
    /// The profile of the root it came from.
    pub profile: String,
    /// The token that wrote it (`anonymous` on an open mirror).
    #[serde(default)]
    pub writer: String,
    /// The snapshot (`key#generation`) the writing job had restored from.
    #[serde(default)]
    pub base: String,
}

impl SnapshotRecord {
    /// The manifest id as a [`Hash`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] if the record holds no valid hash.
    pub fn manifest_id(&self) -> Result<Hash> {
        Hash::from_hex(&self.manifest).map_err(|_| StoreError::Corrupt {
            what: format!("snapshot {}#{}", self.key, self.generation),
            why: "bad manifest id".into(),
        })
    }
}

/// A blob's content as a local file (the blob itself, or a downloaded copy
/// that is removed when this is dropped).
pub struct BlobFile {
    /// Where to read it.
    pub path: PathBuf,
    temporary: bool,
}

impl Drop for BlobFile {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// [`Store::missing_sized`] on a local store: one blocking task of stats
/// relative to the blobs directory, on every core (a commit checks every
/// blob its snapshot names: 15,000 in 45 ms through full paths on one core).
fn local_sizes(root: &Path, hashes: &[Hash]) -> Result<(Vec<Hash>, u64)> {
    use rayon::prelude::*;
    use std::os::fd::AsRawFd;
    let dir = root.join("blobs");
    let blobs = match std::fs::File::open(&dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((hashes.to_vec(), 0)),
        Err(source) => return Err(StoreError::Io { path: dir, source }),
    };
    let size = |h: &Hash| -> Result<Option<u64>> {
        let hex = h.to_hex();
        let name = std::ffi::CString::new(format!("{}/{hex}", &hex[..2])).expect("hex has no NUL");
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `blobs` is open, `name` is NUL-terminated, `st` is written by the call.
        let rc = unsafe { libc::fstatat(blobs.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
        if rc == 0 {
            // SAFETY: the call succeeded, so it filled `st`.
            return Ok(Some(unsafe { st.assume_init() }.st_size as u64));
        }
        match std::io::Error::last_os_error() {
            e if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            source => Err(StoreError::Io { path: dir.join(format!("{}/{hex}", &hex[..2])), source }),
        }
    };
    let sizes: Vec<Option<u64>> = hashes.par_iter().with_min_len(256).map(size).collect::<Result<_>>()?;
    let present = sizes.iter().flatten().sum();
    let missing = hashes.iter().zip(&sizes).filter(|(_, s)| s.is_none()).map(|(h, _)| *h).collect();
    Ok((missing, present))
}

/// The mirror's store.
#[derive(Clone)]
pub struct Store {
    blobs: Arc<dyn ObjectStore>,
    durable: Arc<dyn ObjectStore>,
    local_root: Option<PathBuf>,
    staging: PathBuf,
    /// Incoming blobs can be staged unnamed (a local store whose file
    /// system has `O_TMPFILE`, with `/proc` to link them).
    unnamed: bool,
    location: String,
}

impl Store {
    /// Opens (creating if needed) a store at a local directory, a `file://`
    /// URL, or an `s3://bucket/prefix` URL (settings from the `AWS_*`
    /// environment). Nothing remote is contacted: see [`Store::check`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Unsupported`] for other URL schemes; I/O errors creating it.
    pub fn open(location: &str) -> Result<Store> {
        let opened = backend::open(location)?;
        let unnamed = opened.local_root.is_some() && staging::probe_unnamed(&opened.staging);
        Ok(Store {
            blobs: opened.blobs,
            durable: opened.durable,
            local_root: opened.local_root,
            staging: opened.staging,
            unnamed,
            location: location.to_string(),
        })
    }

    /// Checks that the store answers (a remote bucket exists and the
    /// credentials may list it); a local store always does.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] saying why, in one line.
    pub async fn check(&self) -> Result<()> {
        match self.local_root {
            Some(_) => Ok(()),
            None => backend::check(&self.durable, &self.location).await,
        }
    }

    fn blob_path(h: &Hash) -> ObjPath {
        let hex = h.to_hex();
        ObjPath::from(format!("blobs/{}/{}", &hex[..2], hex))
    }

    /// True when the store holds the blob.
    ///
    /// # Errors
    ///
    /// Backend errors other than "not found".
    pub async fn has_blob(&self, h: &Hash) -> Result<bool> {
        Ok(self.blob_size(h).await?.is_some())
    }

    async fn blob_size(&self, h: &Hash) -> Result<Option<u64>> {
        match self.blobs.head(&Self::blob_path(h)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(StoreError::Backend { what: format!("head blob {h}"), source }),
        }
    }

    /// The hashes among `hashes` that the store lacks, in their order.
    ///
    /// # Errors
    ///
    /// Backend errors.
    pub async fn missing(&self, hashes: &[Hash]) -> Result<Vec<Hash>> {
        Ok(self.missing_sized(hashes).await?.0)
    }

    /// The hashes the store lacks, in their order, and the total size of
    /// those it has (read from the same stat or HEAD).
    ///
    /// # Errors
    ///
    /// Backend errors.
    pub async fn missing_sized(&self, hashes: &[Hash]) -> Result<(Vec<Hash>, u64)> {
        if let Some(root) = self.local_root.clone() {
            let hashes = hashes.to_vec();
            return tokio::task::spawn_blocking(move || local_sizes(&root, &hashes)).await.expect("stat task panicked");
        }
        let found: Vec<(Hash, Option<u64>)> = futures::stream::iter(hashes.iter().copied())
            .map(|h| async move { self.blob_size(&h).await.map(|size| (h, size)) })
            .buffered(64)
            .try_collect()
            .await?;
        let present = found.iter().filter_map(|(_, size)| *size).sum();
        Ok((found.into_iter().filter(|(_, size)| size.is_none()).map(|(h, _)| h).collect(), present))
    }

    /// Whether blobs are made durable by [`Store::sync`] (a local store):
    /// writers of staging files then start their writeback early.
    pub fn syncs_staged_files(&self) -> bool {
        self.local_root.is_some()
    }

    /// The blob's content, opened for reading, with the file it was read
    /// from: on a local store the blob itself, opened without a look first.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] if the store lacks it.
    pub async fn open_blob(&self, h: &Hash) -> Result<(BlobFile, std::fs::File)> {
        let file = match &self.local_root {
            Some(root) => BlobFile { path: root.join(Self::blob_path(h).as_ref()), temporary: false },
            None => self.blob_file(h).await?,
        };
        match std::fs::File::open(&file.path) {
            Ok(opened) => Ok((file, opened)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound(format!("blob {h}"))),
            Err(source) => Err(StoreError::Io { path: file.path.clone(), source }),
        }
    }

    /// The blob's content as a local file to read or map.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] if the store lacks it.
    pub async fn blob_file(&self, h: &Hash) -> Result<BlobFile> {
        let location = Self::blob_path(h);
        if let Some(root) = &self.local_root {
            let path = root.join(location.as_ref());
            return match std::fs::symlink_metadata(&path) {
                Ok(_) => Ok(BlobFile { path, temporary: false }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound(format!("blob {h}"))),
                Err(source) => Err(StoreError::Io { path, source }),
            };
        }
        let (path, _) = self.staging_file()?;
        let file = BlobFile { path, temporary: true };
        backend::download(&self.blobs, &location, &format!("blob {h}"), &file.path).await?;
        Ok(file)
    }

    async fn get(&self, store: &Arc<dyn ObjectStore>, location: &ObjPath, what: &str) -> Result<Bytes> {
        let result = store.get(location).await;
        let result = match result {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        result.map_err(|source| match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound(what.to_string()),
            source => StoreError::Backend { what: format!("get {what}"), source },
        })
    }

    /// Stores canonical manifest bytes under their id.
    ///
    /// # Errors
    ///
    /// Backend errors.
    pub async fn put_manifest(&self, id: &Hash, bytes: Bytes) -> Result<()> {
        let location = ObjPath::from(format!("manifests/{id}"));
        self.durable
            .put(&location, PutPayload::from(bytes))
            .await
            .map_err(|source| StoreError::Backend { what: format!("put manifest {id}"), source })?;
        Ok(())
    }

    /// The canonical bytes of a manifest.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] if the store lacks it.
    pub async fn get_manifest(&self, id: &Hash) -> Result<Bytes> {
        let location = ObjPath::from(format!("manifests/{id}"));
        self.get(&self.durable, &location, &format!("manifest {id}")).await
    }

    /// Makes every blob written so far durable (one `syncfs` on a local store;
    /// remote stores are durable when a put returns).
    ///
    /// # Errors
    ///
    /// The I/O error of `syncfs`.
    pub async fn sync(&self) -> Result<()> {
        let Some(root) = self.local_root.clone() else { return Ok(()) };
        tokio::task::spawn_blocking(move || {
            crate::fsutil::syncfs(&root).map_err(|source| StoreError::Io { path: root, source })
        })
        .await
        .expect("syncfs task panicked")
    }
}
