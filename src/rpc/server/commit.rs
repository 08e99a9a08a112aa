//! Commits: a snapshot's manifest (whole or as a diff), checked against the
//! blobs the store holds and, for Go module caches, verified module by
//! module, then made durable and recorded under its key.

use bytes::Bytes;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use super::{MirrorService, caller, gomod, manifests};
use crate::hash::Hash;
use crate::rpc::{MAX_MANIFEST, ServerError, hash_from, pb};
use crate::store::{self, NewSnapshot};

impl MirrorService {
    /// A commit (the `commit` call counts how it ended in the metrics).
    pub(super) async fn commit_counted(
        &self,
        req: Request<Streaming<pb::CommitFrame>>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let writer = caller(&req)?;
        writer.check_upload().map_err(ServerError::Auth)?;
        let _turn = self.commits.acquire().await.map_err(|_| Status::unavailable("mirror shutting down"))?;
        let (header, bytes) = read_commit(req.into_inner()).await?;
        let id = hash_from(&header.manifest_id, "manifest id")?;
        store::check_key(&header.key).map_err(ServerError::from)?;
        writer.check_write(&header.key).map_err(ServerError::Auth)?;
        if header.base.len() > 300 || header.profile.len() > 64 {
            return Err(ServerError::BadRequest("base or profile too long".into()).into());
        }
        let (manifest, bytes, diffed) = match header.base_manifest_id.as_slice() {
            [] => {
                let (manifest, bytes) = manifests::received_whole(bytes, id).await?;
                (manifest, bytes, None)
            }
            base => {
                let base = hash_from(base, "base manifest id")?;
                let (manifest, bytes, added) = manifests::received_diff(&self.store, base, bytes, id).await?;
                (manifest, bytes, Some((base, added)))
            }
        };
        let hashes = self.blobs_to_check(&header.key, &manifest, diffed).await?;
        let missing = self.store.missing(&hashes).await.map_err(ServerError::from)?;
        if !missing.is_empty() {
            return Err(ServerError::Precondition(format!(
                "snapshot names {} blobs the mirror does not have (first: {}); push them first",
                missing.len(),
                missing[0]
            ))
            .into());
        }
        if header.profile.parse::<crate::profile::Profile>().is_ok_and(|p| p.is_go_mod()) {
            // The disk takes the blobs while the CPU verifies them: the
            // commit's own sync then finds little left to write.
            let (checked, synced) =
                tokio::join!(gomod::check(&self.store, &manifest, &self.zip_hashes), self.store.sync());
            checked?;
            synced.map_err(ServerError::from)?;
        }
        self.store.put_manifest(&id, Bytes::from(bytes)).await.map_err(ServerError::from)?;
        let committed = self
            .store
            .commit(NewSnapshot {
                key: header.key,
                manifest: id,
                files: manifest.file_count(),
                bytes: manifest.total_bytes(),
                profile: header.profile,
                writer: writer.name.clone(),
                base: header.base,
            })
            .await
            .map_err(ServerError::from)?;
        let s = &committed.snapshot;
        info!(key = %s.key, generation = s.generation, files = s.files, bytes = s.bytes, unchanged = committed.unchanged, "snapshot committed");
        if !committed.unchanged {
            let _ = self.committed.send(s.clone()); // nobody listening is fine
        }
        Ok(Response::new(pb::CommitResponse {
            snapshot: Some(committed.snapshot.into()),
            unchanged: committed.unchanged,
        }))
    }

    /// The blobs a commit must find in the store before its record is
    /// created, sorted and unique: every blob its manifest names, or for a
    /// diff against the key's newest snapshot (`diffed`: its base manifest
    /// and the blobs of the entries it adds or changes) only the latter.
    /// The newest snapshot's blobs are there: its own commit checked them,
    /// and a clean-up keeps every key's newest snapshot (`store::gc`).
    async fn blobs_to_check(
        &self,
        key: &str,
        manifest: &crate::manifest::Manifest,
        diffed: Option<(Hash, Vec<Hash>)>,
    ) -> Result<Vec<Hash>, Status> {
        let newest = match &diffed {
            Some(_) => self.store.latest(key).await.map_err(ServerError::from)?,
            None => None,
        };
        let mut hashes = match diffed {
            Some((base, added)) if newest.is_some_and(|s| s.manifest == base.to_hex()) => added,
            _ => manifest.entries().iter().filter_map(|e| e.file_hash()).collect(),
        };
        hashes.sort_unstable();
        hashes.dedup();
        Ok(hashes)
    }
}

async fn read_commit(mut stream: Streaming<pb::CommitFrame>) -> Result<(pb::CommitHeader, Vec<u8>), Status> {
    use pb::commit_frame::Frame;
    let header = match stream.message().await? {
        Some(pb::CommitFrame { frame: Some(Frame::Header(h)) }) => h,
        _ => return Err(ServerError::BadRequest("commit must start with a header".into()).into()),
    };
    if header.manifest_size > MAX_MANIFEST {
        return Err(ServerError::BadRequest(format!("manifest larger than {MAX_MANIFEST} bytes")).into());
    }
    // Grown as bytes arrive: a header alone must not make the mirror allocate.
    let mut bytes = Vec::new();
    while let Some(frame) = stream.message().await? {
        match frame.frame {
            Some(Frame::ManifestChunk(c)) if bytes.len() + c.len() <= header.manifest_size as usize => {
                bytes.extend_from_slice(&c)
            }
            _ => return Err(ServerError::BadRequest("unexpected or oversized commit frame".into()).into()),
        }
    }
    if bytes.len() as u64 != header.manifest_size {
        return Err(ServerError::BadRequest("manifest shorter than announced".into()).into());
    }
    Ok((header, bytes))
}
