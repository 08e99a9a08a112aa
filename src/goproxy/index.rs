//! The proxy's view of the store: which module versions the go-mod
//! snapshots hold, and the blobs of their `.info`, `.mod` and `.zip` files.
//!
//! The index is the union of the newest snapshot of every key (under the
//! configured prefix) whose newest snapshot has the `go-mod` profile; where
//! two snapshots hold the same file, the newer snapshot's copy is served.
//! It is rebuilt only when that set of snapshots changes, which is checked
//! at most once per [`CHECK_EVERY`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::semver::{self, Version};
use crate::hash::Hash;
use crate::manifest::{Content, Manifest};
use crate::profile::go::{FileKind, parse_download_path};
use crate::store::{SnapshotRecord, Store, StoreError};

/// How often the store is asked whether newer snapshots appeared: listing
/// keys costs a listing and one small read per key.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Whether a snapshot's profile holds a module cache (`go-mod`, `go-mod-trees`).
fn is_go_mod(profile: &str) -> bool {
    profile.parse::<crate::profile::Profile>().is_ok_and(|p| p.is_go_mod())
}

/// A file's content in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    /// Its blake3.
    pub hash: Hash,
    /// Its size in bytes.
    pub size: u64,
}

/// The files of one version that the proxy serves.
#[derive(Debug, Default)]
struct Files {
    info: Option<BlobRef>,
    module: Option<BlobRef>,
    zip: Option<BlobRef>,
}

impl Files {
    fn get(&self, kind: FileKind) -> Option<BlobRef> {
        match kind {
            FileKind::Info => self.info,
            FileKind::Mod => self.module,
            FileKind::Zip => self.zip,
            _ => None,
        }
    }
}

/// Module versions and their files: module path → version → files.
#[derive(Debug, Default)]
pub struct Index {
    modules: HashMap<String, BTreeMap<String, Files>>,
}

/// Decodes a module-cache path into (module, version, kind) for the files
/// the proxy serves (versions in canonical semver form); `None` for
/// anything else, including paths that do not decode.
fn download_file(path: &str) -> Option<(String, String, FileKind)> {
    let file = parse_download_path(path).ok()??;
    let version = file.version?;
    Version::parse(&version)?;
    matches!(file.kind, FileKind::Info | FileKind::Mod | FileKind::Zip).then_some((file.module, version, file.kind))
}

impl Index {
    /// Adds a manifest's files; later additions win over earlier ones.
    pub fn add(&mut self, manifest: &Manifest) {
        for entry in manifest.entries() {
            if let Content::File(hash) = entry.content {
                self.add_file(&entry.path, BlobRef { hash, size: entry.size });
            }
        }
    }

    /// Adds one file of a module cache, if it is one the proxy serves.
    fn add_file(&mut self, path: &str, blob: BlobRef) {
        let Some((module, version, kind)) = download_file(path) else { return };
        let files = self.modules.entry(module).or_default().entry(version).or_default();
        match kind {
            FileKind::Info => files.info = Some(blob),
            FileKind::Mod => files.module = Some(blob),
            _ => files.zip = Some(blob),
        }
    }

    /// A version's file.
    pub fn file(&self, module: &str, version: &str, kind: FileKind) -> Option<BlobRef> {
        self.modules.get(module)?.get(version)?.get(kind)
    }

    /// The body of `@v/list`: the versions that have a `.mod` (a version
    /// without one is unusable), pseudo-versions left out as the protocol
    /// asks, in semver order, one per line. `None` for an unknown module.
    pub fn list(&self, module: &str) -> Option<String> {
        let versions = self.modules.get(module)?;
        let mut listed: Vec<Version<'_>> = versions
            .iter()
            .filter(|(_, files)| files.module.is_some())
            .filter_map(|(v, _)| Version::parse(v))
            .filter(|v| !v.is_pseudo())
            .collect();
        listed.sort();
        Some(listed.iter().map(|v| format!("{}\n", v.as_str())).collect())
    }

    /// The version `@latest` names (among those with a `.info`) and its `.info`.
    pub fn latest(&self, module: &str) -> Option<(&str, BlobRef)> {
        let versions = self.modules.get(module)?;
        let with_info = versions.iter().filter(|(_, f)| f.info.is_some()).map(|(v, _)| v.as_str());
        let version = semver::latest(with_info)?;
        Some((version, versions[version].info?))
    }

    /// How many module versions it holds.
    pub fn versions(&self) -> usize {
        self.modules.values().map(BTreeMap::len).sum()
    }
}

/// Which snapshots an index was built from: (key, generation) of each.
type Sources = Vec<(String, u64)>;

struct Cached {
    index: Arc<Index>,
    sources: Sources,
    checked: Option<Instant>,
}

/// The index, kept current with the store.
pub struct Catalog {
    store: Store,
    keys: String,
    cached: tokio::sync::Mutex<Cached>,
}

impl Catalog {
    /// A catalog of the go-mod snapshots under the key prefix `keys`.
    pub fn new(store: Store, keys: String) -> Catalog {
        let cached = Cached { index: Arc::default(), sources: Vec::new(), checked: None };
        Catalog { store, keys, cached: tokio::sync::Mutex::new(cached) }
    }

    /// The current index: checks the store for newer snapshots if the last
    /// check is older than [`CHECK_EVERY`], rebuilding when they changed.
    /// Concurrent callers wait for one check instead of each making their own.
    ///
    /// # Errors
    ///
    /// The store's errors listing keys or reading manifests.
    pub async fn current(&self) -> Result<Arc<Index>, StoreError> {
        let mut cached = self.cached.lock().await;
        if cached.checked.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
            return Ok(cached.index.clone());
        }
        let mut records: Vec<SnapshotRecord> =
            self.store.list_latest(&self.keys).await?.into_iter().filter(|r| is_go_mod(&r.profile)).collect();
        records.sort_by_key(|r| (r.created_unix_ms, r.generation));
        let sources: Sources = records.iter().map(|r| (r.key.clone(), r.generation)).collect();
        if sources != cached.sources || cached.checked.is_none() {
            let started = Instant::now();
            cached.index = Arc::new(self.build(&records).await?);
            cached.sources = sources;
            debug!(
                snapshots = records.len(),
                versions = cached.index.versions(),
                ms = started.elapsed().as_millis() as u64,
                "goproxy index rebuilt"
            );
        }
        cached.checked = Some(Instant::now());
        Ok(cached.index.clone())
    }

    /// Reads and decodes the snapshots' manifests, oldest first so newer
    /// copies of a file win; a corrupt manifest is left out with a warning.
    async fn build(&self, records: &[SnapshotRecord]) -> Result<Index, StoreError> {
        let mut manifests = Vec::with_capacity(records.len());
        for r in records {
            manifests.push((format!("{}#{}", r.key, r.generation), self.store.get_manifest(&r.manifest_id()?).await?));
        }
        let build = move || {
            let mut index = Index::default();
            for (snapshot, bytes) in manifests {
                match Manifest::decode(&bytes) {
                    Ok(m) => index.add(&m),
                    Err(e) => warn!(%snapshot, error = %e, "goproxy leaves out a snapshot whose manifest is corrupt"),
                }
            }
            index
        };
        Ok(tokio::task::spawn_blocking(build).await.expect("index build panicked"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8) -> BlobRef {
        BlobRef { hash: Hash::of(&[n]), size: u64::from(n) }
    }

    fn index(files: &[&str]) -> Index {
        let mut index = Index::default();
        for (n, f) in files.iter().enumerate() {
            index.add_file(&format!("cache/download/example.com/!m/@v/{f}"), blob(n as u8));
        }
        index
    }

    #[test]
    fn list_has_versions_with_a_mod_in_order_without_pseudo_versions() {
        let i = index(&[
            "v1.10.0.mod",
            "v1.2.0.mod",
            "v1.2.0-!r!c.1.mod",
            "v0.0.0-20240101000000-abcdefabcdef.mod",
            "v2.0.0.info",
            "v1.3.0.zip",
            "list",
            "v1.4.0.ziphash",
            "junk.mod",
        ]);
        assert_eq!(i.list("example.com/M").as_deref(), Some("v1.2.0-RC.1\nv1.2.0\nv1.10.0\n"));
        assert_eq!(i.list("example.com/m"), None, "module paths are case-sensitive");
        assert_eq!(i.versions(), 6);
    }

    #[test]
    fn latest_is_the_highest_release_with_an_info() {
        let i = index(&["v1.0.0.info", "v1.1.0-rc.1.info", "v1.5.0.mod"]);
        assert_eq!(i.latest("example.com/M"), Some(("v1.0.0", blob(0))));
        let i = index(&["v0.0.0-20240101000000-abcdefabcdef.info", "v0.1.0-rc.1.info"]);
        assert_eq!(i.latest("example.com/M").map(|(v, _)| v), Some("v0.1.0-rc.1"));
    }

    #[test]
    fn later_files_win() {
        let mut i = index(&["v1.0.0.zip"]);
        i.add_file("cache/download/example.com/!m/@v/v1.0.0.zip", blob(9));
        assert_eq!(i.file("example.com/M", "v1.0.0", FileKind::Zip), Some(blob(9)));
        assert_eq!(i.file("example.com/M", "v1.0.0", FileKind::Mod), None);
    }
}
