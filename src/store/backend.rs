//! Where a store lives: a local directory (with fast paths: plain stats,
//! renames into place, one `syncfs`) or an S3-compatible bucket (generic
//! `object_store` calls only). The choice is made here, once, when a store
//! is opened; the rest of the store sees two `ObjectStore` handles and an
//! optional local root.
//!
//! S3 settings come from the usual environment: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or
//! `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP` for an
//! S3-compatible server. Conditional creates use `If-None-Match: *`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use super::{Result, StoreError, io_at};

/// An opened backend.
pub(super) struct Backend {
    /// For blobs (local: written without fsync, made durable by `syncfs`).
    pub blobs: Arc<dyn ObjectStore>,
    /// For manifests and snapshot records (local: fsynced).
    pub durable: Arc<dyn ObjectStore>,
    /// The directory of a local store: the fast paths.
    pub local_root: Option<PathBuf>,
    /// Where incoming blobs are staged (always local).
    pub staging: PathBuf,
}

/// Opens a local directory, a `file://` URL or an `s3://bucket/prefix` URL.
pub(super) fn open(location: &str) -> Result<Backend> {
    match location.split_once("://") {
        None => open_local(Path::new(location)),
        Some(("file", path)) => open_local(Path::new(path)),
        Some(("s3", rest)) => open_s3(location, rest),
        Some((scheme, _)) => Err(StoreError::Unsupported {
            location: location.into(),
            why: format!("{scheme}:// stores are not supported (use a directory or s3://bucket/prefix)"),
        }),
    }
}

fn open_local(dir: &Path) -> Result<Backend> {
    let staging = dir.join("tmp");
    std::fs::create_dir_all(&staging).map_err(io_at(&staging))?;
    clean_staging(&staging)?;
    let open = |fsync: bool| -> Result<Arc<dyn ObjectStore>> {
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|source| StoreError::Backend { what: format!("open {}", dir.display()), source })?;
        Ok(Arc::new(fs.with_fsync(fsync)))
    };
    Ok(Backend {
        blobs: open(false)?,
        durable: open(true)?,
        local_root: Some(std::fs::canonicalize(dir).map_err(io_at(dir))?),
        staging,
    })
}

fn open_s3(location: &str, rest: &str) -> Result<Backend> {
    let unsupported = |why: String| StoreError::Unsupported { location: location.into(), why };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(unsupported("no bucket: expected s3://bucket or s3://bucket/prefix".into()));
    }
    let prefix = ObjPath::parse(prefix.trim_matches('/')).map_err(|e| unsupported(format!("bad prefix: {e}")))?;
    // reqwest's rustls takes the process's provider: ring, as tonic's TLS does.
    // Installing fails harmlessly when a provider is already in place.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s3 = AmazonS3Builder::from_env().with_bucket_name(bucket).build().map_err(|e| unsupported(e.to_string()))?;
    let store: Arc<dyn ObjectStore> = match prefix.parts().count() {
        0 => Arc::new(s3),
        _ => Arc::new(PrefixStore::new(s3, prefix)),
    };
    // Staged blobs of every remote store of this user share one directory;
    // their names carry the process id, and idle ones are cleaned as locally.
    let staging = std::env::temp_dir().join("cachesync-staging");
    std::fs::create_dir_all(&staging).map_err(io_at(&staging))?;
    clean_staging(&staging)?;
    Ok(Backend { blobs: store.clone(), durable: store, local_root: None, staging })
}

/// Staged files of a process that died are garbage: nothing names them.
/// Another process may share the directory, so only files idle for an hour go.
fn clean_staging(staging: &Path) -> Result<()> {
    let stale = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for entry in std::fs::read_dir(staging).map_err(io_at(staging))?.flatten() {
        if entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < stale) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Uploads a local file to `location`: one put when small, a multipart upload
/// otherwise. Either way the object appears whole or not at all.
pub(super) async fn upload(store: &Arc<dyn ObjectStore>, location: &ObjPath, file: &Path) -> Result<()> {
    let backend = |source| StoreError::Backend { what: format!("put {location}"), source };
    let mut src = tokio::fs::File::open(file).await.map_err(io_at(file))?;
    let mut writer = BufWriter::with_capacity(store.clone(), location.clone(), 16 << 20);
    if let Err(e) = tokio::io::copy(&mut src, &mut writer).await {
        let _ = writer.abort().await;
        return Err(StoreError::Io { path: file.to_path_buf(), source: e });
    }
    if let Err(e) = writer.shutdown().await {
        let _ = writer.abort().await;
        let source = e.into_inner().and_then(|e| e.downcast::<object_store::Error>().ok());
        return Err(match source {
            Some(source) => backend(*source),
            None => StoreError::Corrupt { what: location.to_string(), why: "upload failed".into() },
        });
    }
    Ok(())
}

/// Downloads `location` into a new local file `dest`, streaming.
pub(super) async fn download(store: &Arc<dyn ObjectStore>, location: &ObjPath, what: &str, dest: &Path) -> Result<()> {
    let not_found = |source| match source {
        object_store::Error::NotFound { .. } => StoreError::NotFound(what.to_string()),
        source => StoreError::Backend { what: format!("get {what}"), source },
    };
    let mut stream = store.get(location).await.map_err(not_found)?.into_stream();
    let mut out = tokio::fs::File::create(dest).await.map_err(io_at(dest))?;
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk.map_err(not_found)?).await.map_err(io_at(dest))?;
    }
    out.flush().await.map_err(io_at(dest))
}

/// Checks that a remote store answers: its bucket exists and the credentials
/// may list it. One short line on failure, not the server's XML.
pub(super) async fn check(store: &Arc<dyn ObjectStore>, location: &str) -> Result<()> {
    let Err(e) = store.list_with_delimiter(Some(&ObjPath::from("keys"))).await else { return Ok(()) };
    let text = e.to_string();
    let why = if text.contains("NoSuchBucket") {
        "the bucket does not exist".to_string()
    } else if ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403 Forbidden"]
        .iter()
        .any(|code| text.contains(code))
    {
        "access denied: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_string()
    } else {
        text.replace('\n', " ")
    };
    Err(StoreError::Unavailable { location: location.to_string(), why })
}
