//! Snapshot records: committing a manifest under a key, finding the newest.

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{PutMode, PutOptions, PutPayload};

use super::{Result, SnapshotRecord, Store, StoreError, check_key, check_prefix};
use crate::hash::Hash;

/// What a commit did.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The key's newest snapshot after the commit.
    pub snapshot: SnapshotRecord,
    /// The newest snapshot already had this manifest: nothing was written.
    pub unchanged: bool,
}

/// What to commit.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    /// The key.
    pub key: String,
    /// The manifest id; its bytes must already be stored.
    pub manifest: Hash,
    /// Files in the manifest.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// The profile of the root.
    pub profile: String,
    /// The token writing it.
    pub writer: String,
    /// The snapshot the tree was restored from (`key#generation`), or empty.
    pub base: String,
}

fn snap_dir(key: &str) -> ObjPath {
    ObjPath::from(format!("keys/{key}/@snap"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Store {
    /// Commits a snapshot: blobs are synced, then the record is created with
    /// the next generation by a conditional put (retrying if another writer
    /// took it). Unchanged content gives no new generation.
    ///
    /// # Errors
    ///
    /// [`StoreError::BadKey`]; backend errors.
    pub async fn commit(&self, new: NewSnapshot) -> Result<Committed> {
        check_key(&new.key)?;
        let latest = self.latest(&new.key).await?;
        if let Some(s) = &latest
            && s.manifest == new.manifest.to_hex()
        {
            return Ok(Committed { snapshot: s.clone(), unchanged: true });
        }
        let record = SnapshotRecord {
            key: new.key.clone(),
            generation: latest.map_or(1, |s| s.generation + 1),
            manifest: new.manifest.to_hex(),
            files: new.files,
            bytes: new.bytes,
            created_unix_ms: 0,
            profile: new.profile.clone(),
            writer: new.writer.clone(),
            base: new.base.clone(),
        };
        self.create(record, true).await
    }

    /// Commits a snapshot copied from another mirror, keeping its writer,
    /// base, profile and creation time. It keeps its generation too when this
    /// store's newest is older (so `base` references name the same snapshot
    /// on both mirrors), else takes the next free one. The newest snapshot
    /// already having this manifest gives no new generation.
    ///
    /// # Errors
    ///
    /// [`StoreError::BadKey`]; backend errors.
    pub async fn import(&self, source: &SnapshotRecord) -> Result<Committed> {
        check_key(&source.key)?;
        let latest = self.latest(&source.key).await?;
        if let Some(s) = &latest
            && s.manifest == source.manifest
        {
            return Ok(Committed { snapshot: s.clone(), unchanged: true });
        }
        let generation = source.generation.max(latest.map_or(1, |s| s.generation + 1));
        self.create(SnapshotRecord { generation, ..source.clone() }, false).await
    }

    /// Makes the blobs durable, then creates `record` by a conditional put,
    /// at its generation or the next free one after it (`stamp`: with the
    /// creation time of the attempt that succeeds).
    async fn create(&self, mut record: SnapshotRecord, stamp: bool) -> Result<Committed> {
        self.sync().await?;
        loop {
            if stamp {
                record.created_unix_ms = now_ms();
            }
            let location = ObjPath::from(format!("keys/{}/@snap/{:020}", record.key, record.generation));
            let body = serde_json::to_vec(&record).expect("records serialize");
            let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
            match self.durable.put_opts(&location, PutPayload::from(body), opts).await {
                Ok(_) => return Ok(Committed { snapshot: record, unchanged: false }),
                Err(object_store::Error::AlreadyExists { .. }) => record.generation += 1,
                Err(source) => {
                    return Err(StoreError::Backend { what: format!("create {location}"), source });
                }
            }
        }
    }

    /// All snapshot records of a key, oldest first.
    ///
    /// # Errors
    ///
    /// Backend errors; corrupt records.
    pub async fn snapshots(&self, key: &str) -> Result<Vec<SnapshotRecord>> {
        let locations = self.record_locations(key).await?;
        let mut out = Vec::with_capacity(locations.len());
        for location in &locations {
            out.push(self.read_record(location).await?);
        }
        Ok(out)
    }

    /// Where a key's snapshot records are, oldest first (generations are
    /// zero-padded: their names sort as their numbers do).
    async fn record_locations(&self, key: &str) -> Result<Vec<ObjPath>> {
        check_key(key)?;
        let dir = snap_dir(key);
        let metas: Vec<_> = self
            .durable
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|source| StoreError::Backend { what: format!("list {dir}"), source })?;
        // Only direct children: `keys/a/@snap/…`, not `keys/a/b/@snap/…`.
        let mut locations: Vec<ObjPath> = metas
            .into_iter()
            .map(|m| m.location)
            .filter(|l| l.prefix_matches(&dir) && l.parts().count() == dir.parts().count() + 1)
            .collect();
        locations.sort();
        Ok(locations)
    }

    pub(super) async fn read_record(&self, location: &ObjPath) -> Result<SnapshotRecord> {
        let bytes = self.get(&self.durable, location, location.as_ref()).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt { what: location.to_string(), why: e.to_string() })
    }

    /// The newest snapshot of a key, if any. Only its record is read.
    ///
    /// # Errors
    ///
    /// Backend errors; a corrupt newest record.
    pub async fn latest(&self, key: &str) -> Result<Option<SnapshotRecord>> {
        match self.record_locations(key).await?.last() {
            Some(location) => Ok(Some(self.read_record(location).await?)),
            None => Ok(None),
        }
    }

    /// The newest snapshot of every key starting with `prefix`, sorted by key.
    ///
    /// # Errors
    ///
    /// Backend errors; corrupt records.
    pub async fn list_latest(&self, prefix: &str) -> Result<Vec<SnapshotRecord>> {
        check_prefix(prefix)?;
        let metas: Vec<_> = self
            .durable
            .list(Some(&ObjPath::from("keys")))
            .try_collect()
            .await
            .map_err(|source| StoreError::Backend { what: "list keys".into(), source })?;
        let mut newest: std::collections::BTreeMap<String, ObjPath> = Default::default();
        for m in metas {
            let s = m.location.as_ref();
            let Some((key, _gen)) = s.strip_prefix("keys/").and_then(|s| s.rsplit_once("/@snap/")) else {
                continue;
            };
            if !key.starts_with(prefix) {
                continue;
            }
            let slot = newest.entry(key.to_string()).or_insert_with(|| m.location.clone());
            if m.location > *slot {
                *slot = m.location.clone();
            }
        }
        let mut out = Vec::with_capacity(newest.len());
        for location in newest.values() {
            out.push(self.read_record(location).await?);
        }
        Ok(out)
    }

    /// The exact key's newest snapshot, else the newest snapshot among keys
    /// starting with each restore prefix in turn.
    ///
    /// # Errors
    ///
    /// [`StoreError::BadKey`]; backend errors.
    pub async fn resolve(&self, key: &str, prefixes: &[String], trusted: &[String]) -> Result<Option<SnapshotRecord>> {
        if let Some(s) = self.newest_trusted(key, trusted).await? {
            return Ok(Some(s));
        }
        for prefix in prefixes {
            let mut candidates = Vec::new();
            for newest in self.list_latest(prefix).await? {
                let qualifying = match trusted.is_empty() {
                    true => Some(newest),
                    false => self.newest_trusted(&newest.key, trusted).await?,
                };
                candidates.extend(qualifying);
            }
            if let Some(best) = candidates.into_iter().max_by_key(|s| (s.created_unix_ms, s.generation)) {
                return Ok(Some(best));
            }
        }
        Ok(None)
    }

    /// A key's newest snapshot written by one of `trusted` (any writer when empty).
    async fn newest_trusted(&self, key: &str, trusted: &[String]) -> Result<Option<SnapshotRecord>> {
        // Records are read newest first, up to the first that qualifies.
        for location in self.record_locations(key).await?.iter().rev() {
            let s = self.read_record(location).await?;
            if trusted.is_empty() || trusted.contains(&s.writer) {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }
}
