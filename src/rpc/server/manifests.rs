//! Manifests as the mirror sends and receives them: whole, or as a diff
//! (`manifest::diff`) against a base manifest the other side holds, so that
//! a pull or push of a tree that barely changed moves a few entries instead
//! of the whole manifest.
//!
//! Sending, the mirror falls back to the whole manifest whenever it cannot
//! diff (the base is not in its store, or does not decode); the client
//! checks what it rebuilds anyway. Receiving, it rebuilds the manifest from
//! its stored base and checks it against the commit's manifest id before
//! any other check of the commit sees it.

use bytes::Bytes;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::manifest::diff::{self, ManifestDiff};
use crate::rpc::{MAX_MANIFEST, ServerError};
use crate::store::{Store, StoreError};

/// The bytes that answer a request for manifest `id` from a client holding
/// `base`: a diff against it when the store holds it too and the diff is
/// smaller, else the whole manifest. `diffs` bounds the diffs computed at once
/// (each decodes two manifests).
///
/// # Errors
///
/// The store's errors reading manifest `id` (not found included).
pub async fn to_send(store: &Store, id: Hash, base: Option<Hash>, diffs: &Semaphore) -> Result<Bytes, ServerError> {
    let whole = store.get_manifest(&id).await?;
    let Some(base) = base else { return Ok(whole) };
    let base_bytes = match store.get_manifest(&base).await {
        Ok(bytes) => bytes,
        Err(StoreError::NotFound(_)) => {
            debug!(manifest = %id, base = %base, "the client's base manifest is not here; sending it whole");
            return Ok(whole);
        }
        Err(e) => return Err(e.into()),
    };
    let _turn = diffs.acquire().await.map_err(|_| ServerError::Precondition("mirror shutting down".into()))?;
    let target = whole.clone();
    let diffed = tokio::task::spawn_blocking(move || diff::between_stored((&base_bytes, base), (&target, id)))
        .await
        .map_err(|e| ServerError::Precondition(e.to_string()))?;
    match diffed {
        Ok(d) if d.len() < whole.len() => {
            debug!(manifest = %id, base = %base, bytes = d.len(), whole = whole.len(), "sending a manifest diff");
            Ok(Bytes::from(d))
        }
        Ok(_) => Ok(whole),
        Err(e) => {
            warn!(manifest = %id, base = %base, error = %e, "a stored manifest does not decode; sending it whole");
            Ok(whole)
        }
    }
}

/// A commit's whole manifest, checked against `id` and decoded; its bytes
/// are returned for storing.
///
/// # Errors
///
/// [`ServerError::BadRequest`] for bytes that do not hash to `id`; the
/// manifest's validation error.
pub async fn received_whole(bytes: Vec<u8>, id: Hash) -> Result<(Manifest, Vec<u8>), ServerError> {
    if Hash::of(&bytes) != id {
        return Err(ServerError::BadRequest("manifest bytes do not match the manifest id".into()));
    }
    let decoded = tokio::task::spawn_blocking(move || Manifest::decode(&bytes).map(|m| (m, bytes)))
        .await
        .map_err(|e| ServerError::Precondition(e.to_string()))?;
    Ok(decoded?)
}

/// A commit's manifest rebuilt from `diff` against the stored manifest
/// `base`, checked against `id`; its canonical bytes are returned for
/// storing, with the blobs of the entries the diff adds or changes.
///
/// # Errors
///
/// [`ServerError::UnusableDiff`] when the store lacks `base`, or the result
/// does not apply or match `id` (the client then sends the whole manifest);
/// [`ServerError::Manifest`] for a diff that does not decode.
pub async fn received_diff(
    store: &Store,
    base: Hash,
    diff: Vec<u8>,
    id: Hash,
) -> Result<(Manifest, Vec<u8>, Vec<Hash>), ServerError> {
    let base_bytes = match store.get_manifest(&base).await {
        Ok(bytes) => bytes,
        Err(StoreError::NotFound(_)) => {
            return Err(ServerError::UnusableDiff(format!("this mirror does not hold the base manifest {base}")));
        }
        Err(e) => return Err(e.into()),
    };
    let rebuilt = tokio::task::spawn_blocking(move || rebuild(&base_bytes, &diff, base, id))
        .await
        .map_err(|e| ServerError::Precondition(e.to_string()))??;
    debug!(manifest = %id, base = %base, "rebuilt a committed manifest from its diff");
    Ok(rebuilt)
}

fn rebuild(
    base_bytes: &[u8],
    diff: &[u8],
    base: Hash,
    id: Hash,
) -> Result<(Manifest, Vec<u8>, Vec<Hash>), ServerError> {
    let unusable = |why: String| ServerError::UnusableDiff(format!("the diff against base manifest {base}: {why}"));
    let diff = ManifestDiff::decode(diff)?;
    let base = Manifest::decode_stored(base_bytes, &base).map_err(|e| unusable(format!("stored base: {e}")))?;
    let manifest = diff.apply(&base).map_err(|e| unusable(e.to_string()))?;
    let bytes = manifest.encode();
    if bytes.len() as u64 > MAX_MANIFEST {
        return Err(ServerError::BadRequest(format!("manifest larger than {MAX_MANIFEST} bytes")));
    }
    if Hash::of(&bytes) != id {
        return Err(unusable("the rebuilt manifest does not match the manifest id".into()));
    }
    let added = diff.upserts().iter().filter_map(|e| e.file_hash()).collect();
    Ok((manifest, bytes, added))
}
