//! Retention in the store: drop snapshot records beyond a policy, then the
//! manifests and blobs that no remaining snapshot names.
//!
//! - A key always keeps its newest snapshot, whatever the policy: that is
//!   what a restore finds.
//! - Pushes in flight upload blobs before the snapshot that names them
//!   exists, so only objects older than a grace period (an hour by default)
//!   are candidates, and the snapshot records are listed a second time just
//!   before deleting: what a snapshot committed meanwhile names is spared.
//!   A commit also checks that its blobs exist before it creates its record
//!   (a diff against the key's newest snapshot checks the blobs it adds: the
//!   others are that snapshot's, which stays), so a push that raced a
//!   clean-up is refused ("push them first"), never left with a dangling
//!   snapshot, except in the instant between that check and the record's
//!   creation: run `gc` when pushes are rare, not concurrently with a busy
//!   farm.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjPath;
use serde::Serialize;

use super::{Result, SnapshotRecord, Store, StoreError};
use crate::hash::Hash;
use crate::manifest::Manifest;

/// What to keep.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Keep the newest N snapshots of each key (at least 1).
    pub keep_last: Option<u64>,
    /// Drop snapshots older than this (a key's newest always stays).
    pub max_age: Option<Duration>,
    /// Only objects older than this may go (in-flight pushes).
    pub grace: Duration,
    /// List, do not delete.
    pub dry_run: bool,
}

/// What a clean-up removed (or would remove).
#[derive(Debug, Default, Serialize)]
pub struct Swept {
    /// Snapshots dropped, as `key#generation`.
    pub snapshots: Vec<String>,
    /// Manifests removed.
    pub manifests: u64,
    /// Blobs removed.
    pub blobs: u64,
    /// Bytes freed (blobs, manifests and blob signatures).
    pub bytes_freed: u64,
    /// Snapshots kept.
    pub snapshots_kept: u64,
}

fn backend(what: &str) -> impl FnOnce(object_store::Error) -> StoreError + '_ {
    move |source| StoreError::Backend { what: what.to_string(), source }
}

impl Store {
    /// Applies `policy`: drops snapshot records, then unreferenced manifests and blobs.
    ///
    /// # Errors
    ///
    /// Backend errors, corrupt records or manifests (nothing more is deleted after one).
    pub async fn sweep(&self, policy: &Retention) -> Result<Swept> {
        let now = SystemTime::now();
        let mut swept = Swept::default();
        let records = self.all_records().await?;
        let mut kept = Vec::new();
        for (_key, snaps) in records {
            let newest = snaps.len().saturating_sub(1);
            for (i, (location, record)) in snaps.into_iter().enumerate() {
                if i == newest || !expired(&record, i, newest, policy, now) {
                    kept.push(record);
                    continue;
                }
                swept.snapshots.push(format!("{}#{}", record.key, record.generation));
                if !policy.dry_run {
                    self.durable.delete(&location).await.map_err(backend(location.as_ref()))?;
                }
            }
        }
        swept.snapshots_kept = kept.len() as u64;
        let (mut manifests, mut blobs) = self.referenced(&kept).await?;
        let cutoff = now.checked_sub(policy.grace).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut doomed = self.unreferenced("manifests", &manifests, cutoff).await?;
        doomed.extend(self.unreferenced("blobs", &blobs, cutoff).await?);
        // Signatures go with their blobs; they are not counted, only their bytes.
        doomed.extend(self.unreferenced("sigs", &blobs, cutoff).await?);
        // Snapshots committed while we looked: spare what they name.
        let seen: HashSet<(String, u64)> = kept.iter().map(|r| (r.key.clone(), r.generation)).collect();
        let fresh: Vec<SnapshotRecord> = self
            .all_records()
            .await?
            .into_values()
            .flatten()
            .map(|(_, r)| r)
            .filter(|r| !seen.contains(&(r.key.clone(), r.generation)))
            .collect();
        let (m2, b2) = self.referenced(&fresh).await?;
        manifests.extend(m2);
        blobs.extend(b2);
        for (location, size, hash) in doomed {
            let (is_blob, is_manifest) =
                (location.as_ref().starts_with("blobs/"), location.as_ref().starts_with("manifests/"));
            if (is_manifest && manifests.contains(&hash)) || (!is_manifest && blobs.contains(&hash)) {
                continue;
            }
            swept.blobs += u64::from(is_blob);
            swept.manifests += u64::from(is_manifest);
            swept.bytes_freed += size;
            if !policy.dry_run {
                self.durable.delete(&location).await.map_err(backend(location.as_ref()))?;
            }
        }
        Ok(swept)
    }

    /// Every snapshot record, by key, oldest generation first.
    async fn all_records(&self) -> Result<BTreeMap<String, Vec<(ObjPath, SnapshotRecord)>>> {
        let metas: Vec<_> =
            self.durable.list(Some(&ObjPath::from("keys"))).try_collect().await.map_err(backend("list keys"))?;
        let mut by_key: BTreeMap<String, Vec<ObjPath>> = BTreeMap::new();
        for m in metas {
            let s = m.location.as_ref();
            if let Some((key, _)) = s.strip_prefix("keys/").and_then(|s| s.rsplit_once("/@snap/")) {
                by_key.entry(key.to_string()).or_default().push(m.location.clone());
            }
        }
        let mut out = BTreeMap::new();
        for (key, mut locations) in by_key {
            locations.sort();
            let mut records = Vec::with_capacity(locations.len());
            for location in locations {
                let record = self.read_record(&location).await?;
                records.push((location, record));
            }
            out.insert(key, records);
        }
        Ok(out)
    }

    /// The manifests and blobs `records` name.
    async fn referenced(&self, records: &[SnapshotRecord]) -> Result<(HashSet<Hash>, HashSet<Hash>)> {
        let (mut manifests, mut blobs) = (HashSet::new(), HashSet::new());
        for record in records {
            let id = record.manifest_id()?;
            if !manifests.insert(id) {
                continue;
            }
            let bytes = self.get_manifest(&id).await?;
            let manifest = Manifest::decode(&bytes)
                .map_err(|e| StoreError::Corrupt { what: format!("manifest {id}"), why: e.to_string() })?;
            blobs.extend(manifest.entries().iter().filter_map(|e| e.file_hash()));
        }
        Ok((manifests, blobs))
    }

    /// Objects under `prefix` named by a hash not in `keep`, older than `cutoff`.
    async fn unreferenced(
        &self,
        prefix: &str,
        keep: &HashSet<Hash>,
        cutoff: SystemTime,
    ) -> Result<Vec<(ObjPath, u64, Hash)>> {
        let metas: Vec<_> =
            self.durable.list(Some(&ObjPath::from(prefix))).try_collect().await.map_err(backend(prefix))?;
        let mut out = Vec::new();
        for m in metas {
            let Some(hash) = m.location.filename().and_then(|name| Hash::from_hex(name).ok()) else { continue };
            let modified: SystemTime = m.last_modified.into();
            if !keep.contains(&hash) && modified < cutoff {
                out.push((m.location, m.size, hash));
            }
        }
        Ok(out)
    }
}

/// Whether the `i`-th of a key's snapshots (`newest` is the last index) goes.
fn expired(record: &SnapshotRecord, i: usize, newest: usize, policy: &Retention, now: SystemTime) -> bool {
    let beyond_count = policy.keep_last.is_some_and(|n| (newest - i) as u64 >= n.max(1));
    let created = SystemTime::UNIX_EPOCH + Duration::from_millis(record.created_unix_ms.max(0) as u64);
    let too_old = policy.max_age.is_some_and(|age| now.duration_since(created).is_ok_and(|d| d > age));
    beyond_count || too_old
}
