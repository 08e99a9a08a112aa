//! What an agent keeps about each root between runs, and reports about it.
//!
//! Under `<state_dir>/agent/<root name>/`: `state.json` (the manifest each
//! destination is known to hold, the snapshot last applied) and
//! `hashcache.bin` (digests by path, size, mtime and inode). Both are
//! written atomically; an unreadable file counts as empty (the worst case
//! is a push that finds nothing to send, or hashing again).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hash::cache::HashCache;

/// The persisted state of one root.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RootState {
    /// Destination URL → hex id of the manifest it holds for the root's key.
    pub known: BTreeMap<String, String>,
    /// Hex id of the snapshot last written to the root.
    pub applied: Option<String>,
    /// The digests (in their own file).
    #[serde(skip)]
    pub cache: HashCache,
}

fn dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("agent").join(name)
}

impl RootState {
    /// Loads the state of root `name`; missing or unreadable parts are empty.
    pub fn load(state_dir: &Path, name: &str) -> RootState {
        let d = dir(state_dir, name);
        let mut state: RootState =
            std::fs::read(d.join("state.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        state.cache = HashCache::load(&d.join("hashcache.bin"));
        state
    }

    /// Saves this state and `cache`, logging (not failing) on errors.
    pub fn save(&self, state_dir: &Path, name: &str, cache: &HashCache) {
        let d = dir(state_dir, name);
        let json = d.join("state.json");
        let bytes = serde_json::to_vec_pretty(self).expect("states serialize");
        if let Err(e) = crate::fsutil::write_atomic(&json, &bytes, false) {
            tracing::warn!(path = %json.display(), error = %e, "could not save the agent's state");
        }
        if let Err((path, e)) = cache.save(&d.join("hashcache.bin")) {
            tracing::warn!(path = %path.display(), error = %e, "could not save the hash cache; the next start hashes again");
        }
    }
}
