//! Manifest diffs: the entries a target adds or changes and the paths it
//! removes, against a base manifest the receiver already holds, in a compact
//! encoding that travels instead of the whole target.
//!
//! A diff from the network is not trusted: [`ManifestDiff::decode`] bounds
//! and orders it, [`ManifestDiff::apply`] validates the result like any
//! manifest, and the caller still checks the result's id against the one it
//! asked for (the sender may have diffed against another base). This module
//! does not decide when a diff is sent (see `rpc`).

use std::cmp::Ordering;

use super::{Entry, Manifest, ManifestError, check_path, decode_entry, encode_entry, utf8};
use crate::codec::{Dec, Enc};
use crate::hash::Hash;

const DIFF_MAGIC: &[u8; 4] = b"CSD1";

/// What changed from a base manifest to a target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestDiff {
    /// Entries of the target that the base lacks or holds differently, sorted by path.
    upserts: Vec<Entry>,
    /// Paths of the base that the target lacks, sorted.
    removals: Vec<String>,
}

/// True when `bytes` hold an encoded diff rather than a whole manifest.
pub fn is_diff(bytes: &[u8]) -> bool {
    bytes.starts_with(DIFF_MAGIC)
}

/// The encoded diff between two stored manifests, each given as its bytes
/// and id (see [`Manifest::decode_stored`]).
///
/// # Errors
///
/// Either manifest failing to decode or to match its id.
pub fn between_stored(base: (&[u8], Hash), target: (&[u8], Hash)) -> Result<Vec<u8>, ManifestError> {
    let decode = |(bytes, id): (&[u8], Hash)| Manifest::decode_stored(bytes, &id);
    Ok(ManifestDiff::between(&decode(base)?, &decode(target)?).encode())
}

impl ManifestDiff {
    /// The diff that turns `base` into `target`.
    pub fn between(base: &Manifest, target: &Manifest) -> ManifestDiff {
        let mut diff = ManifestDiff::default();
        let (mut b, mut t) = (base.entries().iter().peekable(), target.entries().iter().peekable());
        loop {
            let order = match (b.peek(), t.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(x), Some(y)) => x.path.cmp(&y.path),
            };
            match order {
                Ordering::Less => diff.removals.push(b.next().expect("peeked").path.clone()),
                Ordering::Greater => diff.upserts.push(t.next().expect("peeked").clone()),
                Ordering::Equal => {
                    let (x, y) = (b.next().expect("peeked"), t.next().expect("peeked"));
                    if x != y {
                        diff.upserts.push(y.clone());
                    }
                }
            }
        }
        diff
    }

    /// Entries added or changed.
    pub fn upserts(&self) -> &[Entry] {
        &self.upserts
    }

    /// Paths removed.
    pub fn removals(&self) -> &[String] {
        &self.removals
    }

    /// The compact encoding: magic, the upserted entries as a manifest
    /// encodes them, the removed paths.
    pub fn encode(&self) -> Vec<u8> {
        let paths: usize = self.removals.iter().map(|p| p.len() + 4).sum();
        let mut e = Enc(Vec::with_capacity(20 + self.upserts.len() * 96 + paths));
        e.raw(DIFF_MAGIC);
        e.u64(self.upserts.len() as u64);
        for entry in &self.upserts {
            encode_entry(&mut e, entry);
        }
        e.u64(self.removals.len() as u64);
        for path in &self.removals {
            e.bytes(path.as_bytes());
        }
        e.0
    }

    /// Decodes untrusted bytes: bounded, every path checked, both lists
    /// sorted and unique.
    ///
    /// # Errors
    ///
    /// [`ManifestError::Malformed`] for bad framing, [`ManifestError::Unsorted`],
    /// [`ManifestError::UnsafePath`].
    pub fn decode(bytes: &[u8]) -> Result<ManifestDiff, ManifestError> {
        let mut d = Dec(bytes);
        let truncated = |_| ManifestError::Malformed("truncated diff");
        if d.take(4).map_err(truncated)? != DIFF_MAGIC {
            return Err(ManifestError::Malformed("not a manifest diff (bad magic)"));
        }
        let count = d.u64().map_err(truncated)?;
        // An entry takes at least 25 bytes, a path 5: never trust a count for allocation.
        let mut upserts: Vec<Entry> = Vec::with_capacity(count.min(bytes.len() as u64 / 25) as usize);
        for _ in 0..count {
            let entry = decode_entry(&mut d)?;
            check_path(&entry.path)?;
            if upserts.last().is_some_and(|last| last.path >= entry.path) {
                return Err(ManifestError::Unsorted(entry.path));
            }
            upserts.push(entry);
        }
        let count = d.u64().map_err(truncated)?;
        let mut removals: Vec<String> = Vec::with_capacity(count.min(bytes.len() as u64 / 5) as usize);
        for _ in 0..count {
            let path = utf8(d.bytes().map_err(truncated)?)?;
            check_path(&path)?;
            if removals.last().is_some_and(|last| *last >= path) {
                return Err(ManifestError::Unsorted(path));
            }
            removals.push(path);
        }
        if !d.is_empty() {
            return Err(ManifestError::Malformed("trailing bytes after the diff"));
        }
        Ok(ManifestDiff { upserts, removals })
    }

    /// The manifest this diff makes of `base`, validated.
    ///
    /// # Errors
    ///
    /// [`ManifestError::Malformed`] when a removed path is not in `base` or
    /// is also upserted; any validation error of the result.
    pub fn apply(&self, base: &Manifest) -> Result<Manifest, ManifestError> {
        let stale = || ManifestError::Malformed("the diff removes a path the base lacks, or changes and removes one");
        let mut entries = Vec::with_capacity(base.entries().len() + self.upserts.len());
        let mut upserts = self.upserts.iter().peekable();
        let mut removals = self.removals.iter().peekable();
        for entry in base.entries() {
            while let Some(new) = upserts.next_if(|u| u.path < entry.path) {
                entries.push(new.clone());
            }
            if removals.peek().is_some_and(|r| **r < entry.path) {
                return Err(stale());
            }
            let changed = upserts.next_if(|u| u.path == entry.path);
            match (removals.next_if(|r| **r == entry.path), changed) {
                (Some(_), Some(_)) => return Err(stale()),
                (Some(_), None) => {}
                (None, Some(new)) => entries.push(new.clone()),
                (None, None) => entries.push(entry.clone()),
            }
        }
        if removals.next().is_some() {
            return Err(stale());
        }
        entries.extend(upserts.cloned());
        let manifest = Manifest { entries };
        manifest.validate()?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Content;

    fn file(path: &str, byte: u8) -> Entry {
        Entry { path: path.into(), size: 1, mode: 0o644, mtime_ns: 7, content: Content::File(Hash::of(&[byte])) }
    }

    fn dir(path: &str) -> Entry {
        Entry { path: path.into(), size: 0, mode: 0o755, mtime_ns: 0, content: Content::Dir }
    }

    fn tree(extra: &[Entry]) -> Manifest {
        let mut entries = vec![dir("a"), dir("b")];
        entries.extend((0..200u8).map(|i| file(&format!("a/f{i:03}"), i)));
        entries.extend(extra.iter().cloned());
        Manifest::new(entries).unwrap()
    }

    #[test]
    fn applying_the_diff_to_its_base_gives_the_target_exactly() {
        let base = tree(&[file("b/old", 1), file("z", 2)]);
        let mut changed = file("a/f005", 99);
        changed.mtime_ns = 8;
        let target = Manifest::new(
            base.entries()
                .iter()
                .filter(|e| e.path != "b/old" && e.path != "a/f010")
                .map(|e| if e.path == "a/f005" { changed.clone() } else { e.clone() })
                .chain([dir("b/new"), file("b/new/x", 3), file("0first", 4), file("zz", 5)])
                .collect(),
        )
        .unwrap();
        let diff = ManifestDiff::between(&base, &target);
        assert_eq!(diff.removals(), ["a/f010", "b/old"]);
        assert_eq!(diff.upserts().len(), 5);
        let decoded = ManifestDiff::decode(&diff.encode()).unwrap();
        assert_eq!(decoded, diff);
        let rebuilt = decoded.apply(&base).unwrap();
        assert_eq!(rebuilt, target);
        assert_eq!(rebuilt.id(), target.id());
        assert!(diff.encode().len() * 10 < target.encode().len(), "a few entries, not the manifest");
        let encoded = between_stored((&base.encode(), base.id()), (&target.encode(), target.id())).unwrap();
        assert_eq!(encoded, diff.encode());
        assert!(is_diff(&encoded) && !is_diff(&target.encode()));
    }

    #[test]
    fn identical_and_empty_manifests_round_trip() {
        let m = tree(&[]);
        let none = ManifestDiff::between(&m, &m);
        assert_eq!(none, ManifestDiff::default());
        assert_eq!(none.encode().len(), 20);
        assert_eq!(none.apply(&m).unwrap(), m);
        let from_empty = ManifestDiff::between(&Manifest::default(), &m);
        assert_eq!(from_empty.apply(&Manifest::default()).unwrap(), m);
        let to_empty = ManifestDiff::between(&m, &Manifest::default());
        assert_eq!(to_empty.apply(&m).unwrap(), Manifest::default());
    }

    #[test]
    fn a_diff_applied_to_another_base_is_refused_or_gives_another_id() {
        let base = tree(&[file("z", 2)]);
        let target = tree(&[file("z", 3)]);
        let other = tree(&[file("y", 1)]);
        let diff = ManifestDiff::between(&base, &target);
        match diff.apply(&other) {
            Ok(m) => assert_ne!(m.id(), target.id()),
            Err(e) => panic!("z is upserted onto a base without it: {e}"),
        }
        let removing = ManifestDiff::between(&target, &other);
        assert!(matches!(removing.apply(&tree(&[])), Err(ManifestError::Malformed(_))), "removes z, absent");
    }

    #[test]
    fn hostile_diffs_are_errors_not_panics() {
        let base = tree(&[file("z", 2)]);
        let bytes = ManifestDiff::between(&base, &tree(&[file("y", 1)])).encode();
        for cut in 0..bytes.len() {
            assert!(ManifestDiff::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(ManifestDiff::decode(&extra).is_err());
        let mut huge = DIFF_MAGIC.to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(ManifestDiff::decode(&huge).is_err());
        let unsorted = ManifestDiff { upserts: vec![file("b", 1), file("a", 2)], removals: vec![] };
        assert!(matches!(ManifestDiff::decode(&unsorted.encode()), Err(ManifestError::Unsorted(_))));
        let twice = ManifestDiff { upserts: vec![], removals: vec!["z".into(), "z".into()] };
        assert!(ManifestDiff::decode(&twice.encode()).is_err());
        let escape = ManifestDiff { upserts: vec![file("../x", 1)], removals: vec![] };
        assert!(matches!(ManifestDiff::decode(&escape.encode()), Err(ManifestError::UnsafePath { .. })));
        let both = ManifestDiff { upserts: vec![file("z", 9)], removals: vec!["z".into()] };
        assert!(both.apply(&base).is_err(), "changed and removed");
        let orphan = ManifestDiff { upserts: vec![file("nodir/x", 1)], removals: vec![] };
        assert!(matches!(orphan.apply(&base), Err(ManifestError::Orphan(_))), "the result is validated");
        let dir_gone = ManifestDiff { upserts: vec![], removals: vec!["a".into()] };
        assert!(dir_gone.apply(&base).is_err(), "entries left without their directory");
    }
}
