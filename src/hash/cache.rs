//! The persistent hash cache: blake3 digests keyed by (path, size, mtime, inode).
//!
//! A re-scan reads only files whose key changed. The cache file is rewritten
//! atomically after each scan with exactly the files that scan saw, so it
//! never grows beyond the root it describes. A missing, truncated or foreign
//! cache file is treated as empty: the worst case is hashing again.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::Hash;
use crate::codec::{Dec, Enc};

const MAGIC: &[u8; 4] = b"CSH1";

/// What identifies an unchanged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKey {
    /// Size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Inode number.
    pub ino: u64,
}

/// Digests of the files of one root, by relative path. The paths are this
/// machine's own: they are hashed with a fast seeded hash (foldhash), not
/// SipHash (6 of the 68 ms of user CPU of a no-op push of 21,500 entries).
#[derive(Debug, Default)]
pub struct HashCache {
    entries: HashMap<String, (FileKey, Hash), foldhash::fast::RandomState>,
    /// Differs from the file it was loaded from (see [`HashCache::changed`]).
    changed: bool,
}

impl HashCache {
    /// Loads a cache file; anything unreadable gives an empty cache.
    pub fn load(path: &Path) -> HashCache {
        match std::fs::read(path) {
            Ok(bytes) => Self::decode(&bytes).unwrap_or_default(),
            Err(_) => HashCache::default(),
        }
    }

    fn decode(bytes: &[u8]) -> Option<HashCache> {
        let mut d = Dec(bytes);
        if d.take(4).ok()? != MAGIC {
            return None;
        }
        let count = d.u64().ok()?;
        let capacity = count.min(bytes.len() as u64 / 60) as usize;
        let mut entries = HashMap::with_capacity_and_hasher(capacity, Default::default());
        for _ in 0..count {
            let path = String::from_utf8(d.bytes().ok()?.to_vec()).ok()?;
            let key = FileKey { size: d.u64().ok()?, mtime_ns: d.i64().ok()?, ino: d.u64().ok()? };
            let hash = Hash::from_slice(d.take(Hash::LEN).ok()?).ok()?;
            entries.insert(path, (key, hash));
        }
        Some(HashCache { entries, changed: false })
    }

    /// The cached digest of `path` if its key is unchanged.
    pub fn get(&self, path: &str, key: &FileKey) -> Option<Hash> {
        match self.entries.get(path) {
            Some((k, h)) if k == key => Some(*h),
            _ => None,
        }
    }

    /// Records a digest.
    pub fn insert(&mut self, path: String, key: FileKey, hash: Hash) {
        self.entries.insert(path, (key, hash));
        self.changed = true;
    }

    /// Whether anything was inserted since the cache was loaded (or since
    /// [`HashCache::mark_saved`]): an unchanged cache needs no writing.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Declares the cache equal to what its file holds.
    pub fn mark_saved(&mut self) {
        self.changed = false;
    }

    /// Number of cached files.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the cache atomically (temp file, fsync, rename).
    ///
    /// # Errors
    ///
    /// The I/O error, with the path it concerns.
    pub fn save(&self, path: &Path) -> Result<(), (PathBuf, std::io::Error)> {
        let mut e = Enc::default();
        e.raw(MAGIC);
        e.u64(self.entries.len() as u64);
        for (p, (key, hash)) in &self.entries {
            e.bytes(p.as_bytes());
            e.u64(key.size);
            e.i64(key.mtime_ns);
            e.u64(key.ino);
            e.raw(hash.as_bytes());
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| (dir.to_path_buf(), e))?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&e.0)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|err| {
            let _ = std::fs::remove_file(&tmp);
            (path.to_path_buf(), err)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_key_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/cache.bin");
        let key = FileKey { size: 3, mtime_ns: 42, ino: 7 };
        let mut c = HashCache::default();
        c.insert("a/ü".into(), key, Hash::of(b"abc"));
        c.save(&file).unwrap();
        let back = HashCache::load(&file);
        assert_eq!(back.get("a/ü", &key), Some(Hash::of(b"abc")));
        assert_eq!(back.get("a/ü", &FileKey { ino: 8, ..key }), None);
        assert_eq!(back.get("other", &key), None);
    }

    #[test]
    fn corrupt_cache_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c");
        std::fs::write(&file, b"CSH1\xff\xff\xff\xff\xff\xff\xff\xffgarbage").unwrap();
        assert!(HashCache::load(&file).is_empty());
        assert!(HashCache::load(&dir.path().join("missing")).is_empty());
    }
}
