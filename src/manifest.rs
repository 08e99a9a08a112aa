//! Manifests: the sorted entries of one root at one moment.
//!
//! Owns [`Entry`], [`Manifest`], their canonical binary encoding (whose blake3
//! is the manifest id) and the validation every manifest from the network
//! passes before anything acts on it: safe relative paths, every parent a
//! directory entry, symlinks that stay inside the root, bounded sizes. It does
//! not read the file system (see `scan`) nor decide what to transfer (see
//! `sync::plan`).

pub mod diff;

use std::collections::HashSet;
use std::sync::Arc;

use crate::codec::{Dec, Enc};
use crate::hash::Hash;

const MAGIC: &[u8; 4] = b"CSM1";
/// Longest relative path accepted, in bytes.
pub const MAX_PATH: usize = 4096;
const MAX_COMPONENT: usize = 255;
/// Largest file size accepted (1 PiB): sums of sizes can never overflow.
pub const MAX_FILE_SIZE: u64 = 1 << 50;
/// Mode bits carried: permissions only (no setuid, setgid or sticky bits from the network).
pub const MODE_MASK: u32 = 0o777;

/// What an entry is, with what only that kind has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A regular file and the blake3 of its bytes.
    File(Hash),
    /// A directory.
    Dir,
    /// A symbolic link and its target, relative and inside the root.
    Symlink(String),
}

/// One file, directory or symlink of a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path, `/`-separated, validated by [`check_path`].
    pub path: String,
    /// Size in bytes (0 for directories and symlinks).
    pub size: u64,
    /// Permission bits (`mode & 0o777`).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Kind-specific content.
    pub content: Content,
}

impl Entry {
    /// The blake3 of a regular file's content.
    pub fn file_hash(&self) -> Option<Hash> {
        match self.content {
            Content::File(h) => Some(h),
            _ => None,
        }
    }
}

/// Why a manifest or a path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// The bytes are not a manifest of this version.
    #[error("manifest is malformed: {0}")]
    Malformed(&'static str),
    /// A path that could escape the root or is otherwise unusable.
    #[error("unsafe path {path:?}: {why}")]
    UnsafePath {
        /// The offending path, as received.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Entries out of order or duplicated.
    #[error("manifest entries are not sorted and unique at {0:?}")]
    Unsorted(String),
    /// An entry whose parent is not a directory entry of the same manifest.
    #[error("{0:?} has no parent directory entry (a parent that is a file or symlink is refused)")]
    Orphan(String),
    /// A symlink pointing outside the root, or through another symlink.
    #[error("symlink {path:?} points outside the root or through something that is not a directory ({target:?})")]
    SymlinkEscapes {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
}

/// The sorted entries of one root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<Entry>,
}

impl Manifest {
    /// Builds a manifest from entries in any order, sorting them.
    ///
    /// # Errors
    ///
    /// Any [`ManifestError`] that [`Manifest::validate`] finds.
    pub fn new(mut entries: Vec<Entry>) -> Result<Manifest, ManifestError> {
        entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        let m = Manifest { entries };
        m.validate()?;
        Ok(m)
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Number of regular files.
    pub fn file_count(&self) -> u64 {
        self.entries.iter().filter(|e| e.file_hash().is_some()).count() as u64
    }

    /// Total size of the regular files.
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().fold(0u64, |total, e| total.saturating_add(e.size))
    }

    /// Looks an entry up by path.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.path.as_str().cmp(path)).ok().map(|i| &self.entries[i])
    }

    /// For each entry, the one at the same path in `other`: one walk of both
    /// sorted lists rather than a binary search per entry.
    pub fn paired_with<'o>(&self, other: &'o Manifest) -> Vec<Option<&'o Entry>> {
        let mut theirs = other.entries.iter().peekable();
        self.entries
            .iter()
            .map(|e| {
                while theirs.next_if(|o| o.path < e.path).is_some() {}
                theirs.next_if(|o| o.path == e.path)
            })
            .collect()
    }

    /// The canonical encoding; its blake3 is [`Manifest::id`].
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc(Vec::with_capacity(64 + self.entries.len() * 96));
        e.raw(MAGIC);
        e.u64(self.entries.len() as u64);
        for entry in &self.entries {
            encode_entry(&mut e, entry);
        }
        e.0
    }

    /// The manifest id: blake3 of the canonical encoding.
    pub fn id(&self) -> Hash {
        Hash::of(&self.encode())
    }

    /// Decodes and validates untrusted bytes.
    ///
    /// # Errors
    ///
    /// [`ManifestError::Malformed`] for bad framing; any validation error.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let m = Self::decode_entries(bytes)?;
        m.validate()?;
        Ok(m)
    }

    /// Decodes bytes this program stored under their id `id`, validated
    /// before they were: they are checked against the id (one blake3 of
    /// the bytes) instead of entry by entry.
    ///
    /// # Errors
    ///
    /// [`ManifestError::Malformed`] for bytes that are not those of `id`.
    pub fn decode_stored(bytes: &[u8], id: &Hash) -> Result<Manifest, ManifestError> {
        if Hash::of(bytes) != *id {
            return Err(ManifestError::Malformed("stored bytes do not match their manifest id"));
        }
        Self::decode_entries(bytes)
    }

    fn decode_entries(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let mut d = Dec(bytes);
        let truncated = |_| ManifestError::Malformed("truncated");
        if d.take(4).map_err(truncated)? != MAGIC {
            return Err(ManifestError::Malformed("unknown format (bad magic)"));
        }
        let count = d.u64().map_err(truncated)?;
        // Each entry takes at least 25 bytes: never trust the count for allocation.
        let mut entries = Vec::with_capacity(count.min(bytes.len() as u64 / 25) as usize);
        for _ in 0..count {
            entries.push(decode_entry(&mut d)?);
        }
        if !d.is_empty() {
            return Err(ManifestError::Malformed("trailing bytes"));
        }
        Ok(Manifest { entries })
    }

    /// Checks paths, order, parents, modes and symlink targets.
    ///
    /// # Errors
    ///
    /// The first problem found.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let mut dirs: HashSet<&str> = HashSet::new();
        for (i, entry) in self.entries.iter().enumerate() {
            check_path(&entry.path)?;
            if i > 0 && self.entries[i - 1].path >= entry.path {
                return Err(ManifestError::Unsorted(entry.path.clone()));
            }
            if entry.mode & !MODE_MASK != 0 {
                return Err(ManifestError::Malformed("mode has bits beyond 0o777"));
            }
            if let Content::Dir = entry.content {
                dirs.insert(&entry.path);
            }
        }
        for entry in &self.entries {
            if let Content::Symlink(target) = &entry.content {
                check_symlink_within(&entry.path, target, &dirs)?;
            }
            if let Some((parent, _)) = entry.path.rsplit_once('/')
                && !dirs.contains(parent)
            {
                return Err(ManifestError::Orphan(entry.path.clone()));
            }
        }
        Ok(())
    }
}

/// A manifest together with its id, both already checked: one a side holds
/// (restored, pushed, or fetched and verified) and can diff against.
#[derive(Debug, Clone)]
pub struct Known {
    /// The manifest id (blake3 of the canonical encoding).
    pub id: Hash,
    /// The manifest.
    pub manifest: Arc<Manifest>,
}

impl Known {
    /// Wraps a manifest, computing its id.
    pub fn new(manifest: Arc<Manifest>) -> Known {
        Known { id: manifest.id(), manifest }
    }
}

fn encode_entry(e: &mut Enc, entry: &Entry) {
    let kind = match entry.content {
        Content::File(_) => 0,
        Content::Dir => 1,
        Content::Symlink(_) => 2,
    };
    e.u8(kind);
    e.bytes(entry.path.as_bytes());
    e.u64(entry.size);
    e.u32(entry.mode);
    e.i64(entry.mtime_ns);
    match &entry.content {
        Content::File(h) => e.raw(h.as_bytes()),
        Content::Dir => {}
        Content::Symlink(t) => e.bytes(t.as_bytes()),
    }
}

fn decode_entry(d: &mut Dec<'_>) -> Result<Entry, ManifestError> {
    let t = |_| ManifestError::Malformed("truncated entry");
    let kind = d.u8().map_err(t)?;
    let path = utf8(d.bytes().map_err(t)?)?;
    let size = d.u64().map_err(t)?;
    let mode = d.u32().map_err(t)?;
    let mtime_ns = d.i64().map_err(t)?;
    let content = match kind {
        0 => Content::File(
            Hash::from_slice(d.take(Hash::LEN).map_err(t)?).map_err(|_| ManifestError::Malformed("bad hash"))?,
        ),
        1 => Content::Dir,
        2 => Content::Symlink(utf8(d.bytes().map_err(t)?)?),
        _ => return Err(ManifestError::Malformed("unknown entry kind")),
    };
    if size > MAX_FILE_SIZE {
        return Err(ManifestError::Malformed("file larger than 1 PiB"));
    }
    if !matches!(content, Content::File(_)) && size != 0 {
        return Err(ManifestError::Malformed("directory or symlink with a size"));
    }
    Ok(Entry { path, size, mode, mtime_ns, content })
}

fn utf8(bytes: &[u8]) -> Result<String, ManifestError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ManifestError::Malformed("path is not UTF-8"))
}

/// Checks that `path` is a safe relative path: not empty or absolute, no `.`
/// or `..` or empty components, no NUL, bounded lengths.
///
/// # Errors
///
/// [`ManifestError::UnsafePath`] naming the problem.
pub fn check_path(path: &str) -> Result<(), ManifestError> {
    let bad = |why| ManifestError::UnsafePath { path: path.to_string(), why };
    if path.is_empty() {
        return Err(bad("empty"));
    }
    if path.len() > MAX_PATH {
        return Err(bad("too long"));
    }
    if path.starts_with('/') {
        return Err(bad("absolute"));
    }
    // Components are walked once: this runs for every entry of every manifest decoded.
    for (i, component) in path.split('/').enumerate() {
        match component.as_bytes() {
            [] => return Err(bad("empty component")),
            b"." | b".." => return Err(bad("contains . or ..")),
            c if c.len() > MAX_COMPONENT => return Err(bad("component too long")),
            c if c.contains(&0) => return Err(bad("contains NUL")),
            _ if i == 0 && component == crate::profile::STAGING_DIR => return Err(bad("reserved for staging")),
            _ => {}
        }
    }
    Ok(())
}

/// Checks that a symlink at `path` pointing at `target` stays inside the root,
/// resolving `..` lexically from the link's directory.
///
/// # Errors
///
/// [`ManifestError::SymlinkEscapes`] or [`ManifestError::UnsafePath`].
pub fn check_symlink_target(path: &str, target: &str) -> Result<(), ManifestError> {
    let escapes = || ManifestError::SymlinkEscapes { path: path.into(), target: target.into() };
    if target.is_empty() || target.contains('\0') || target.len() > MAX_PATH {
        return Err(ManifestError::UnsafePath { path: path.into(), why: "bad symlink target" });
    }
    if target.starts_with('/') {
        return Err(escapes());
    }
    let mut depth = path.matches('/').count() as i64;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            return Err(escapes());
        }
    }
    Ok(())
}

/// Checks a symlink against the directories of its manifest: resolved
/// lexically from the link's directory, its target must stay inside the root
/// and pass only through directory entries (never through another link, or
/// a local entry the manifest does not describe); only its last component
/// may be a file, a link or missing.
///
/// # Errors
///
/// [`ManifestError::SymlinkEscapes`] or [`ManifestError::UnsafePath`].
pub fn check_symlink_within(path: &str, target: &str, dirs: &HashSet<&str>) -> Result<(), ManifestError> {
    check_symlink_target(path, target)?;
    let mut at: Vec<&str> = path.split('/').collect();
    at.pop();
    let parts: Vec<&str> = target.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    for (i, part) in parts.iter().enumerate() {
        if *part == ".." {
            at.pop(); // never above the root: check_symlink_target saw to that
            continue;
        }
        at.push(part);
        if i + 1 < parts.len() && !dirs.contains(at.join("/").as_str()) {
            return Err(ManifestError::SymlinkEscapes { path: path.into(), target: target.into() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, byte: u8) -> Entry {
        Entry {
            path: path.into(),
            size: 1,
            mode: 0o644,
            mtime_ns: 1_700_000_000_000_000_000,
            content: Content::File(Hash::of(&[byte])),
        }
    }

    fn dir(path: &str) -> Entry {
        Entry { path: path.into(), size: 0, mode: 0o555, mtime_ns: 0, content: Content::Dir }
    }

    fn sample() -> Manifest {
        let link = Entry {
            path: "d/link".into(),
            size: 0,
            mode: 0o777,
            mtime_ns: 5,
            content: Content::Symlink("../ü.txt".into()),
        };
        Manifest::new(vec![file("ü.txt", 1), dir("d"), file("d/x", 2), link, file("d-e", 3)]).unwrap()
    }

    #[test]
    fn encode_decode_round_trip_is_canonical() {
        let m = sample();
        let bytes = m.encode();
        let back = Manifest::decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.id(), Hash::of(&bytes));
        assert_eq!(m.file_count(), 3);
        assert_eq!(m.get("d/x").unwrap().size, 1);
        assert!(m.get("nope").is_none());
        // Stored bytes are checked against their id instead of entry by entry.
        assert_eq!(Manifest::decode_stored(&bytes, &m.id()).unwrap(), m);
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(Manifest::decode_stored(&flipped, &m.id()), Err(ManifestError::Malformed(_))));
    }

    #[test]
    fn pairing_finds_what_get_finds() {
        let ours = sample();
        let theirs =
            Manifest::new(vec![dir("d"), file("d/a", 1), file("d/x", 9), file("d-e", 3), file("zz", 4)]).unwrap();
        for (a, b) in [(&ours, &theirs), (&theirs, &ours), (&ours, &Manifest::default()), (&ours, &ours)] {
            let expected: Vec<_> = a.entries().iter().map(|e| b.get(&e.path)).collect();
            assert_eq!(a.paired_with(b), expected);
        }
        assert_eq!(ours.paired_with(&theirs).iter().flatten().count(), 3, "d, d/x and d-e");
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error_not_a_panic() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Manifest::decode(&extra).is_err());
        let mut huge = b"CSM1".to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Manifest::decode(&huge).is_err());
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for p in ["", "/etc/passwd", "a/../../b", "..", "a//b", "./a", "a/", "a\0b"] {
            assert!(check_path(p).is_err(), "{p:?} accepted");
        }
        for p in ["a", "a/b c/ü", ".hidden", "a..b", "x/...", "a\\b"] {
            assert!(check_path(p).is_ok(), "{p:?} refused");
        }
        let long = "x".repeat(300);
        assert!(check_path(&long).is_err());
    }

    #[test]
    fn entries_under_files_or_symlinks_or_missing_parents_are_refused() {
        let link = Entry { path: "l".into(), size: 0, mode: 0o777, mtime_ns: 0, content: Content::Symlink("d".into()) };
        assert!(matches!(Manifest::new(vec![link, file("l/evil", 1)]), Err(ManifestError::Orphan(_))));
        assert!(Manifest::new(vec![file("f", 1), file("f/g", 2)]).is_err());
        assert!(Manifest::new(vec![file("a/b", 1)]).is_err());
        assert!(Manifest::new(vec![file("a", 1), file("a", 2)]).is_err());
    }

    #[test]
    fn symlinks_must_stay_inside_the_root() {
        assert!(check_symlink_target("a/l", "../b").is_ok());
        assert!(check_symlink_target("a/l", "b/../../c").is_ok());
        assert!(check_symlink_target("a/l", "../../b").is_err());
        assert!(check_symlink_target("l", "/etc/passwd").is_err());
        assert!(check_symlink_target("l", "..").is_err());
    }

    #[test]
    fn symlink_chains_and_links_through_unknown_entries_are_refused() {
        let link = |path: &str, target: &str| Entry {
            path: path.into(),
            size: 0,
            mode: 0o777,
            mtime_ns: 0,
            content: Content::Symlink(target.into()),
        };
        // d/up -> .. is fine on its own; esc -> d/up/.. would leave the root through it.
        assert!(Manifest::new(vec![dir("d"), link("d/up", "..")]).is_ok());
        let chain = Manifest::new(vec![dir("d"), link("d/up", ".."), link("esc", "d/up/..")]);
        assert!(matches!(chain, Err(ManifestError::SymlinkEscapes { .. })), "{chain:?}");
        // x is not in the manifest (a local link to /etc, say): nothing may resolve through it.
        assert!(Manifest::new(vec![link("l", "x/passwd")]).is_err());
        assert!(Manifest::new(vec![dir("x"), link("l", "x/passwd")]).is_ok());
        assert!(Manifest::new(vec![dir("a"), dir("b"), link("a/l", "../b/./f")]).is_ok());
        assert!(Manifest::new(vec![file("f", 1), link("l", "f/../g")]).is_err(), "through a file");
    }

    #[test]
    fn the_staging_directory_is_never_an_entry() {
        assert!(check_path(".cachesync.tmp").is_err());
        assert!(check_path(".cachesync.tmp/s5").is_err());
        assert!(check_path("a/.cachesync.tmp").is_ok());
        let mut big = file("f", 1);
        big.size = MAX_FILE_SIZE + 1;
        assert!(Manifest::decode(&Manifest { entries: vec![big] }.encode()).is_err());
    }

    #[test]
    fn setuid_bits_are_refused() {
        let mut f = file("f", 1);
        f.mode = 0o4755;
        assert!(Manifest::new(vec![f]).is_err());
    }
}
