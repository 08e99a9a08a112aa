//! Partial restore: the part of a module-cache snapshot that go.sum files need.
//!
//! A zip line (`module version h1:…`) needs the version's `.info`, `.mod`,
//! `.zip` and `.ziphash`; a `/go.mod` line needs only its `.mod` (and its
//! `.info`, which Go reads when it has one, e.g. for `go list -m`). Each
//! module's `list` file comes along, with every directory above. Pure: it
//! filters a manifest.

use std::collections::BTreeSet;

use super::gosum::SumLine;
use super::{FileKind, download_path};
use crate::manifest::{Entry, Manifest, ManifestError};

/// What a go.sum selection kept, and what the snapshot lacked.
#[derive(Debug)]
pub struct Selection {
    /// The snapshot reduced to what the go.sum lines need.
    pub manifest: Manifest,
    /// `module@version` (or `module@version/go.mod`) the snapshot does not hold.
    pub missing: Vec<String>,
}

/// Keeps from `snapshot` the files `lines` need and their directories.
///
/// # Errors
///
/// Only if the reduced manifest does not validate, which cannot happen for
/// a valid snapshot (every kept entry keeps its parents).
pub fn select(snapshot: &Manifest, lines: &[SumLine]) -> Result<Selection, ManifestError> {
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut missing = Vec::new();
    for line in lines {
        let path = |kind| download_path(&line.module, &line.version, kind).ok();
        let (must, kinds): (FileKind, &[FileKind]) = if line.go_mod_only {
            (FileKind::Mod, &[FileKind::Mod, FileKind::Info, FileKind::List])
        } else {
            (FileKind::Zip, &[FileKind::Zip, FileKind::ZipHash, FileKind::Mod, FileKind::Info, FileKind::List])
        };
        if path(must).is_none_or(|p| snapshot.get(&p).is_none()) {
            let suffix = if line.go_mod_only { "/go.mod" } else { "" };
            missing.push(format!("{}{suffix}", line.name()));
        }
        for kind in kinds {
            if let Some(p) = path(*kind).filter(|p| snapshot.get(p).is_some()) {
                add_with_parents(&mut wanted, p);
            }
        }
    }
    let entries: Vec<Entry> = snapshot.entries().iter().filter(|e| wanted.contains(&e.path)).cloned().collect();
    missing.dedup();
    Ok(Selection { manifest: Manifest::new(entries)?, missing })
}

fn add_with_parents(set: &mut BTreeSet<String>, path: String) {
    let mut p = path.as_str();
    while let Some((parent, _)) = p.rsplit_once('/') {
        if !set.insert(parent.to_string()) {
            break;
        }
        p = parent;
    }
    set.insert(path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;
    use crate::manifest::Content;

    /// A manifest of these files and every directory above them.
    fn m(files: &[&str]) -> Manifest {
        let mut dirs = BTreeSet::new();
        for f in files {
            add_with_parents(&mut dirs, f.to_string());
            dirs.remove(*f);
        }
        let dir = |p: String| Entry { path: p, size: 0, mode: 0o755, mtime_ns: 0, content: Content::Dir };
        let file = |p: &&str| Entry {
            path: p.to_string(),
            size: 1,
            mode: 0o644,
            mtime_ns: 0,
            content: Content::File(Hash::of(p.as_bytes())),
        };
        Manifest::new(dirs.into_iter().map(dir).chain(files.iter().map(file)).collect()).unwrap()
    }

    #[test]
    fn only_the_versions_go_sum_names_are_kept() {
        let snapshot = m(&[
            "cache/download/example.com/a/@v/list",
            "cache/download/example.com/a/@v/v1.0.0.info",
            "cache/download/example.com/a/@v/v1.0.0.mod",
            "cache/download/example.com/a/@v/v1.0.0.zip",
            "cache/download/example.com/a/@v/v1.0.0.ziphash",
            "cache/download/example.com/a/@v/v1.1.0.mod",
            "cache/download/example.com/b/@v/v0.1.0.mod",
            "cache/download/example.com/b/@v/v0.1.0.zip",
        ]);
        let line = |module: &str, version: &str, go_mod_only| SumLine {
            module: module.into(),
            version: version.into(),
            go_mod_only,
            hash: "h1:x".into(),
        };
        let lines = [
            line("example.com/a", "v1.0.0", false),
            line("example.com/b", "v0.1.0", true),
            line("example.com/c", "v1.0.0", false),
        ];
        let s = select(&snapshot, &lines).unwrap();
        let kept: Vec<&str> = s.manifest.entries().iter().map(|e| e.path.as_str()).collect();
        assert!(kept.contains(&"cache/download/example.com/a/@v/v1.0.0.zip"));
        assert!(kept.contains(&"cache/download/example.com/a/@v/list"));
        assert!(!kept.contains(&"cache/download/example.com/a/@v/v1.1.0.mod"));
        assert!(kept.contains(&"cache/download/example.com/b/@v/v0.1.0.mod"));
        assert!(!kept.contains(&"cache/download/example.com/b/@v/v0.1.0.zip"), "a /go.mod line needs no zip");
        assert_eq!(s.missing, vec!["example.com/c@v1.0.0".to_string()]);
    }
}
