//! Manifests to and from the mirror: whole, or as a diff (`manifest::diff`)
//! against a manifest both sides hold, so that a pull or push of a tree that
//! barely changed moves a few entries instead of the whole manifest.
//!
//! Nothing from the network is trusted: a diff the mirror sends is applied
//! to this side's copy and the result must hash to the id asked for, or the
//! manifest is fetched whole. A commit sent as a diff that the mirror cannot
//! use (it lacks the base, or the result does not match) is sent again whole.

use std::sync::Arc;

use tonic::Code;
use tracing::{debug, warn};

use super::{Client, ClientError};
use crate::hash::Hash;
use crate::manifest::diff::{self, ManifestDiff};
use crate::manifest::{Known, Manifest};
use crate::rpc::{MAX_CHUNK, MAX_MANIFEST, pb};
use crate::store::SnapshotRecord;

/// How a manifest crossed (or did not cross) the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Not at all: this side held it.
    Held,
    /// As a diff against a manifest both sides held.
    Diff,
    /// Whole.
    Whole,
}

impl Client {
    /// Manifest `id`, verified: without a call when `held` is it, as a diff
    /// against `held` when the mirror holds that too, else whole.
    ///
    /// # Errors
    ///
    /// Refusals, and [`ClientError::Invalid`] for a whole manifest that does
    /// not match `id` or validate (a diff that does not is only logged: the
    /// manifest is then fetched whole).
    pub async fn manifest_since(&mut self, id: Hash, held: Option<&Known>) -> Result<(Known, Via), ClientError> {
        if let Some(k) = held.filter(|k| k.id == id) {
            return Ok((k.clone(), Via::Held));
        }
        if let Some(k) = held {
            let bytes = self.manifest_bytes(id, Some(k.id)).await?;
            if !diff::is_diff(&bytes) {
                return Ok((self.decode_whole(bytes, id).await?, Via::Whole));
            }
            let (base, size) = (k.manifest.clone(), bytes.len());
            let rebuilt = tokio::task::spawn_blocking(move || rebuild(&base, &bytes, id)).await;
            match rebuilt.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(manifest) => {
                    debug!(manifest = %id, base = %k.id, bytes = size, "manifest received as a diff");
                    return Ok((Known { id, manifest: Arc::new(manifest) }, Via::Diff));
                }
                Err(why) => {
                    warn!(mirror = %self.url, manifest = %id, base = %k.id, why, "the manifest diff did not rebuild the manifest; fetching it whole")
                }
            }
        }
        let bytes = self.manifest_bytes(id, None).await?;
        Ok((self.decode_whole(bytes, id).await?, Via::Whole))
    }

    /// The chunks of a GetManifest answer, bounded.
    async fn manifest_bytes(&mut self, id: Hash, base: Option<Hash>) -> Result<Vec<u8>, ClientError> {
        let base_id = base.map(|b| b.as_bytes().to_vec()).unwrap_or_default();
        let req = pb::GetManifestRequest { manifest_id: id.as_bytes().to_vec(), base_id };
        let mut stream = self.inner.get_manifest(req).await.map_err(|s| self.refused(s))?.into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(|s| self.refused(s))? {
            if bytes.len() as u64 + chunk.data.len() as u64 > MAX_MANIFEST {
                return Err(self.invalid("manifest", "larger than the limit"));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        Ok(bytes)
    }

    /// Checks a whole manifest's bytes against `id` and decodes them.
    async fn decode_whole(&self, bytes: Vec<u8>, id: Hash) -> Result<Known, ClientError> {
        if Hash::of(&bytes) != id {
            return Err(self.invalid("manifest", format!("bytes do not hash to {id}")));
        }
        let manifest = tokio::task::spawn_blocking(move || Manifest::decode(&bytes))
            .await
            .map_err(|e| self.invalid("manifest", e))?
            .map_err(|e| self.invalid("manifest", e))?;
        Ok(Known { id, manifest: Arc::new(manifest) })
    }

    /// Commits `manifest` under `key` (restored from snapshot `base`, if
    /// any), as a diff against `since` when the mirror can take one; returns
    /// the snapshot, whether it was unchanged, and how the manifest crossed.
    ///
    /// # Errors
    ///
    /// Refusals (missing blobs, bad key, tokens).
    pub async fn commit_since(
        &mut self,
        key: &str,
        manifest: &Manifest,
        profile: &str,
        base: &str,
        since: Option<&Known>,
    ) -> Result<(SnapshotRecord, bool, Via), ClientError> {
        let bytes = manifest.encode();
        let header = pb::CommitHeader {
            key: key.to_string(),
            manifest_id: Hash::of(&bytes).as_bytes().to_vec(),
            manifest_size: bytes.len() as u64,
            profile: profile.to_string(),
            base: base.to_string(),
            base_manifest_id: Vec::new(),
        };
        if let Some(k) = since.filter(|_| self.manifest_diffs) {
            let d = ManifestDiff::between(&k.manifest, manifest).encode();
            if d.len() < bytes.len() {
                let header = pb::CommitHeader {
                    manifest_size: d.len() as u64,
                    base_manifest_id: k.id.as_bytes().to_vec(),
                    ..header.clone()
                };
                match self.send_commit(header, &d).await {
                    Err(ClientError::Refused { code: Code::Aborted, message, .. }) => {
                        debug!(mirror = %self.url, why = %message, "the mirror cannot use the manifest diff; sending it whole")
                    }
                    sent => return sent.map(|(s, unchanged)| (s, unchanged, Via::Diff)),
                }
            }
        }
        let (snapshot, unchanged) = self.send_commit(header, &bytes).await?;
        Ok((snapshot, unchanged, Via::Whole))
    }

    async fn send_commit(
        &mut self,
        header: pb::CommitHeader,
        bytes: &[u8],
    ) -> Result<(SnapshotRecord, bool), ClientError> {
        use pb::commit_frame::Frame;
        let mut frames = vec![pb::CommitFrame { frame: Some(Frame::Header(header)) }];
        frames
            .extend(bytes.chunks(MAX_CHUNK).map(|c| pb::CommitFrame { frame: Some(Frame::ManifestChunk(c.to_vec())) }));
        let resp = self.inner.commit(futures::stream::iter(frames)).await.map_err(|s| self.refused(s))?.into_inner();
        let snapshot = resp.snapshot.ok_or_else(|| self.invalid("commit response", "no snapshot"))?;
        let record = SnapshotRecord::try_from(snapshot).map_err(|e| self.invalid("snapshot", e))?;
        Ok((record, resp.unchanged))
    }
}

/// Applies an untrusted diff to `base`; the result must be manifest `id`.
fn rebuild(base: &Manifest, bytes: &[u8], id: Hash) -> Result<Manifest, String> {
    let manifest = ManifestDiff::decode(bytes).and_then(|d| d.apply(base)).map_err(|e| e.to_string())?;
    if manifest.id() != id {
        return Err("the rebuilt manifest does not hash to the id asked for".into());
    }
    Ok(manifest)
}
