//! Files unpacked on the receiving side from an archive that the same
//! snapshot holds, instead of sent: the extracted trees of `go-mod-trees`
//! are the members of their modules' zips (see
//! [`Profile::unpacked_from`]). A pull fetches the zips, then unpacks the
//! tree files it lacks from them, on every core.
//!
//! Nothing is trusted: every unpacked file goes through the same
//! [`FrameReceiver`] as fetched content and is placed only if it hashes to
//! what the manifest says. A member that is missing, larger than the entry,
//! or different (a zip that does not match its tree) is fetched whole
//! afterwards, as is everything of an archive that cannot be read.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tracing::debug;

use super::pull::{Placed, place_all};
use super::tree::Tree;
use crate::hash::Hash;
use crate::manifest::{Content, Entry, Manifest};
use crate::profile::Profile;
use crate::progress::Progress;
use crate::rpc::frames::{FrameError, FrameReceiver};

/// The blobs to unpack from one archive.
pub(super) struct Archive {
    /// Its root-relative path.
    path: String,
    /// Member name, blob, the entries it fills.
    members: Vec<(String, Hash, Vec<usize>)>,
}

/// Where `path` can be unpacked from: an archive that is a file of
/// `manifest` (on the receiver once the transfer is done) and the member.
fn source<'m>(profile: Profile, manifest: &'m Manifest, path: &str) -> Option<(&'m Entry, String)> {
    let (archive, member) = profile.unpacked_from(path)?;
    let archive = manifest.get(&archive).filter(|a| matches!(a.content, Content::File(_)))?;
    Some((archive, member))
}

/// Of the blobs `wanted`, those a receiver can unpack from an archive of
/// `manifest`: blob -> (archive blob, member name, size). What a push asks
/// the mirror to unpack rather than sending it.
pub(super) fn sources(
    profile: Profile,
    manifest: &Manifest,
    wanted: &HashSet<Hash>,
) -> HashMap<Hash, (Hash, String, u64)> {
    let mut out = HashMap::new();
    for e in manifest.entries() {
        let Some(hash) = e.file_hash().filter(|h| wanted.contains(h) && !out.contains_key(h)) else { continue };
        if let Some((archive, member)) = source(profile, manifest, &e.path) {
            out.insert(hash, (archive.file_hash().expect("a file"), member, e.size));
        }
    }
    out
}

/// Splits the blobs a pull needs into those still to fetch and those to
/// unpack from an archive the snapshot holds (fetched first, with the rest);
/// planned deltas that can be unpacked leave `deltas`.
pub(super) fn split(
    profile: Profile,
    manifest: &Manifest,
    whole: Vec<(Hash, Vec<usize>)>,
    deltas: &mut Vec<super::plan::PlannedDelta>,
) -> (Vec<(Hash, Vec<usize>)>, Vec<Archive>) {
    // Any of the blob's paths will do.
    let source = |targets: &[usize]| {
        let from = |i: &usize| source(profile, manifest, &manifest.entries()[*i].path);
        targets.iter().find_map(from).map(|(archive, member)| (archive.path.clone(), member))
    };
    let mut fetch = Vec::with_capacity(whole.len());
    let mut archives: HashMap<String, Vec<(String, Hash, Vec<usize>)>> = HashMap::new();
    let mut add = |(archive, member): (String, String), hash, targets| {
        archives.entry(archive).or_default().push((member, hash, targets));
    };
    for (hash, targets) in whole {
        match source(&targets) {
            Some(from) => add(from, hash, targets),
            None => fetch.push((hash, targets)),
        }
    }
    for d in std::mem::take(deltas) {
        match source(&d.targets) {
            Some(from) => add(from, d.hash, d.targets),
            None => deltas.push(d),
        }
    }
    let archives = archives.into_iter().map(|(path, members)| Archive { path, members }).collect();
    (fetch, archives)
}

/// Unpacks `archives` into `tree` on every core; returns how many blobs
/// landed and those to fetch whole instead.
pub(super) fn unpack(
    tree: &Arc<Tree>,
    manifest: &Manifest,
    placed: &Placed,
    progress: &Progress,
    archives: Vec<Archive>,
) -> (u64, Vec<(Hash, Vec<usize>)>) {
    let init = || Unpacker::new(tree, manifest, placed);
    let done = crate::parallel::map(&archives, usize::MAX, init, |u, archive| u.archive(archive, progress));
    let landed = done.iter().map(|(n, _)| *n as u64).sum();
    (landed, done.into_iter().flat_map(|(_, failed)| failed).collect())
}

/// One thread's receiver: members go through it as frames, one at a time.
struct Unpacker<'a> {
    tree: &'a Arc<Tree>,
    manifest: &'a Manifest,
    placed: &'a Placed,
    /// The paths the member being received goes to (read by the factory).
    paths: Arc<Mutex<Vec<String>>>,
    receiver: FrameReceiver,
}

impl<'a> Unpacker<'a> {
    fn new(tree: &'a Arc<Tree>, manifest: &'a Manifest, placed: &'a Placed) -> Self {
        let paths: Arc<Mutex<Vec<String>>> = Arc::default();
        let (t, p) = (tree.clone(), paths.clone());
        let receiver = FrameReceiver::new(
            Box::new(move |_: &Hash| {
                let paths = p.lock().expect("paths lock");
                t.new_file(&paths[0], paths[1..].iter().map(String::as_str))
            }),
            u64::MAX,
        );
        Unpacker { tree, manifest, placed, paths, receiver }
    }

    /// Unpacks one archive's members; returns how many landed and the rest.
    fn archive(&mut self, archive: &Archive, progress: &Progress) -> (usize, Vec<(Hash, Vec<usize>)>) {
        let all = || (0, archive.members.iter().map(|(_, h, t)| (*h, t.clone())).collect());
        let path = self.tree.path(&archive.path);
        let mut zip =
            match std::fs::File::open(&path).map_err(zip::result::ZipError::from).and_then(zip::ZipArchive::new) {
                Ok(zip) => zip,
                Err(e) => {
                    debug!(archive = %archive.path, error = %e, "cannot unpack; fetching its files");
                    return all();
                }
            };
        let (mut landed, mut failed) = (0, Vec::new());
        for (member, hash, targets) in &archive.members {
            let size = self.manifest.entries()[targets[0]].size;
            match self.member(&mut zip, member, *hash, size, targets) {
                Ok(()) => {
                    landed += 1;
                    progress.inc(size);
                }
                Err(e) => {
                    debug!(archive = %archive.path, member, error = %e, "cannot unpack; fetching it");
                    failed.push((*hash, targets.clone()));
                }
            }
        }
        (landed, failed)
    }

    /// Unpacks one member into place.
    fn member(
        &mut self,
        zip: &mut zip::ZipArchive<std::fs::File>,
        name: &str,
        hash: Hash,
        size: u64,
        targets: &[usize],
    ) -> Result<(), FrameError> {
        let entries: Vec<_> = targets.iter().map(|i| self.manifest.entries()[*i].clone()).collect();
        *self.paths.lock().expect("paths lock") = entries.iter().map(|e| e.path.clone()).collect();
        let incoming = self.receiver.accept_zip_member(zip, name, hash, size)?;
        place_all(self.tree, incoming, &entries, self.placed)
    }
}
