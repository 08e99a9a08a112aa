//! The mirror's check of go-mod snapshots: before a commit of a module
//! cache becomes visible, every module version it holds must pass the same
//! verification as `cachesync verify` (complete, zip hashes matching their
//! `.ziphash`), so one bad node cannot poison every node that pulls.
//!
//! Files are read from the store's blobs; a zip's `h1:` hash is remembered
//! by (blob, module prefix), so a zip is hashed once per mirror process
//! however many snapshots carry it.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;

use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::profile::go::DOWNLOAD_DIR;
use crate::profile::go::dirhash::{self, MAX_ZIP_BYTES, ZipCheckError};
use crate::profile::go::verify::{self, Source};
use crate::rpc::ServerError;
use crate::store::Store;

/// Remembered zip hashes; forgotten wholesale past this many.
const MEMO_LIMIT: usize = 1 << 20;

/// Zip hashes already computed, by (blob, `module@version/` prefix).
#[derive(Default)]
pub struct ZipHashes(Mutex<HashMap<(Hash, String), String>>);

struct StoreSource {
    store: Store,
    blobs: HashMap<String, (Hash, u64)>,
    memo: Arc<ZipHashes>,
    rt: Handle,
}

impl StoreSource {
    fn open(&self, path: &str, max: u64) -> io::Result<std::fs::File> {
        let (hash, size) = *self.blobs.get(path).ok_or_else(|| io::Error::other("not in the snapshot"))?;
        if size > max {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{size} bytes, more than {max}")));
        }
        // A temporary copy (remote stores) may be removed on drop: the open file stays readable.
        let blob = self.rt.block_on(self.store.blob_file(&hash)).map_err(io::Error::other)?;
        std::fs::File::open(&blob.path)
    }
}

impl Source for StoreSource {
    fn read(&self, path: &str, max: u64) -> io::Result<Vec<u8>> {
        verify::read_bounded(self.open(path, max)?, max)
    }

    fn zip_hash(&self, path: &str, prefix: &str) -> Result<String, ZipCheckError> {
        let key = (self.blobs.get(path).map_or(Hash::from_bytes([0; 32]), |b| b.0), prefix.to_string());
        if let Some(h) = self.memo.0.lock().expect("memo lock").get(&key) {
            return Ok(h.clone());
        }
        let file = self.open(path, MAX_ZIP_BYTES).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => ZipCheckError::TooLarge(self.blobs.get(path).map_or(0, |b| b.1)),
            _ => ZipCheckError::Io(e),
        })?;
        let h = dirhash::hash_zip(file, prefix)?;
        let mut memo = self.memo.0.lock().expect("memo lock");
        if memo.len() >= MEMO_LIMIT {
            memo.clear();
        }
        memo.insert(key, h.clone());
        Ok(h)
    }
}

/// Verifies the module versions of a go-mod snapshot whose blobs are all in `store`.
///
/// # Errors
///
/// [`ServerError::BadRequest`] naming the first problems' `module@version`.
pub async fn check(store: &Store, manifest: &Manifest, memo: &Arc<ZipHashes>) -> Result<(), ServerError> {
    let prefix = format!("{DOWNLOAD_DIR}/");
    let blobs: HashMap<String, (Hash, u64)> = manifest
        .entries()
        .iter()
        .filter(|e| e.path.starts_with(&prefix))
        .filter_map(|e| Some((e.path.clone(), (e.file_hash()?, e.size))))
        .collect();
    let source = StoreSource { store: store.clone(), blobs, memo: memo.clone(), rt: Handle::current() };
    let outcome = tokio::task::spawn_blocking(move || {
        let inventory = verify::inventory(source.blobs.keys().map(String::as_str));
        verify::verify(&inventory, &source, &[])
    })
    .await
    .map_err(|e| ServerError::Precondition(format!("verification task failed: {e}")))?;
    let n = outcome.problems.len();
    if n == 0 {
        return Ok(());
    }
    let shown: Vec<String> = outcome.problems.iter().take(3).map(ToString::to_string).collect();
    let more = if n > 3 { format!(" (and {} more)", n - 3) } else { String::new() };
    tracing::warn!(problems = n, first = %outcome.problems[0].subject, "refused a go-mod snapshot");
    Err(ServerError::BadRequest(format!(
        "refusing a go-mod snapshot with {n} bad module version{}, nothing stored: {}{more}",
        if n == 1 { "" } else { "s" },
        shown.join(" | ")
    )))
}
