//! Planning a sync: from two manifests to a list of actions. Pure; no I/O.
//!
//! A pull compares the snapshot with the destination's own manifest: content
//! already present (at the path or anywhere else in the root) is reused,
//! files that change in place get a delta against the local version when the
//! profile says deltas pay there, new versions of a file the profile knows
//! the kin of (see [`Profile::family`]) a delta against a local kin or one
//! fetched whole first, everything else is fetched whole, once per distinct
//! blob. A push decides, per blob the mirror lacks, between a delta
//! against the previous snapshot's version of the same path and the whole file.

use std::collections::{BTreeMap, HashMap};

use crate::hash::Hash;
use crate::manifest::{Content, Entry, Manifest};
use crate::profile::Profile;

/// Thresholds that shape a plan.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    /// Files smaller than this are never delta-encoded.
    pub delta_min_size: u64,
    /// What the root is.
    pub profile: Profile,
    /// Whether new files may be delta-encoded against their kin.
    pub kin: bool,
}

/// A blob a pull fetches as a delta against a local file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDelta {
    /// The blob.
    pub hash: Hash,
    /// The snapshot entries that hold it.
    pub targets: Vec<usize>,
    /// The local file it is made against.
    pub base: String,
    /// What that file holds, by the scan: the mirror may have its signature.
    pub base_hash: Hash,
}

/// What a pull will do. Entry indices refer to the snapshot manifest.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PullPlan {
    /// Local paths to remove first, deepest first (only with `--delete`).
    pub removals: Vec<String>,
    /// Files whose content is right but whose mode or mtime is not.
    pub metadata: Vec<usize>,
    /// Files to copy from another local path that has the same content.
    pub local_copies: Vec<(usize, String)>,
    /// Blobs to fetch as deltas against local files.
    pub deltas: Vec<PlannedDelta>,
    /// Blobs to fetch whole, each with the entries it fills.
    pub whole: Vec<(Hash, Vec<usize>)>,
    /// Symlinks to create or replace.
    pub symlinks: Vec<usize>,
    /// Bytes that will come from the mirror (before delta savings).
    pub fetch_bytes: u64,
    /// Directories to make (or make writable) first and give their mode
    /// and mtime last: those missing or with another mode or mtime, and
    /// those something is written into or removed from. Sorted.
    pub dirs: Vec<usize>,
}

impl PullPlan {
    /// Nothing on disk needs to change.
    pub fn is_idle(&self) -> bool {
        let PullPlan { removals, metadata, local_copies, deltas, whole, symlinks, fetch_bytes: _, dirs } = self;
        removals.is_empty()
            && metadata.is_empty()
            && local_copies.is_empty()
            && deltas.is_empty()
            && whole.is_empty()
            && symlinks.is_empty()
            && dirs.is_empty()
    }
}

/// A local entry that stands in the way of the snapshot and is not removed
/// without `--delete`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} exists locally as another kind of entry than in the snapshot; pull with --delete to replace it")]
pub struct Conflict(pub String);

fn kind(e: &Entry) -> u8 {
    match e.content {
        Content::File(_) => 0,
        Content::Dir => 1,
        Content::Symlink(_) => 2,
    }
}

/// Plans a pull of `snapshot` into a root whose current manifest is `local`;
/// `unknown` are paths of the snapshot where something the scan skipped (a
/// special file, a symlink leaving the root) stands locally.
///
/// # Errors
///
/// [`Conflict`] when, without `delete`, a local entry of another kind is in the way.
pub fn plan_pull(
    snapshot: &Manifest,
    local: &Manifest,
    opts: PlanOptions,
    delete: bool,
    unknown: &[String],
) -> Result<PullPlan, Conflict> {
    let mut plan = PullPlan::default();
    // Local entries the scan could not describe, standing where the snapshot has one.
    if let Some(first) = unknown.first() {
        if !delete {
            return Err(Conflict(first.clone()));
        }
        plan.removals.extend(unknown.iter().cloned());
    }
    let by_hash: HashMap<Hash, &str> =
        local.entries().iter().filter_map(|e| Some((e.file_hash()?, e.path.as_str()))).collect();
    let (wanted_at, here_at) = (local.paired_with(snapshot), snapshot.paired_with(local));
    // Other versions of a file that stay in place: delta bases for new ones.
    let staying = local.entries().iter().zip(&wanted_at).filter(|(l, w)| !delete || **w == Some(*l));
    let mut kin = Kin::of(staying.map(|(l, _)| l), opts);
    for (l, &wanted) in local.entries().iter().zip(&wanted_at).rev() {
        let in_the_way = wanted.is_some_and(|w| kind(w) != kind(l));
        if wanted.is_none() && !delete {
            continue;
        }
        if in_the_way && !delete {
            return Err(Conflict(l.path.clone()));
        }
        if wanted.is_none() || in_the_way {
            plan.removals.push(l.path.clone());
        }
    }
    // Removing a directory removes what is under it: drop the redundant children.
    let set: std::collections::HashSet<String> = plan.removals.iter().cloned().collect();
    plan.removals.retain(|p| !plan_has_parent(&set, p));
    let mut whole: BTreeMap<Hash, Vec<usize>> = BTreeMap::new();
    let mut delta_at: HashMap<Hash, usize> = HashMap::new();
    let mut order = Vec::new();
    let mut dirs = Vec::new(); // missing or with another mode or mtime
    let mut new_dirs = Vec::new();
    for (i, (e, here)) in snapshot.entries().iter().zip(here_at).enumerate() {
        let here = here.filter(|l| kind(l) == kind(e));
        match &e.content {
            Content::Dir => {
                if here.is_none() {
                    new_dirs.push(i);
                }
                if here.is_none_or(|l| l.mode != e.mode || l.mtime_ns != e.mtime_ns) {
                    dirs.push(i);
                }
            }
            Content::Symlink(_) => {
                if here.is_none_or(|l| l.content != e.content || l.mtime_ns != e.mtime_ns) {
                    plan.symlinks.push(i);
                }
            }
            Content::File(h) => {
                if let Some(l) = here.filter(|l| l.content == e.content) {
                    if l.mode != e.mode || l.mtime_ns != e.mtime_ns {
                        plan.metadata.push(i);
                    }
                } else if let Some(src) = by_hash.get(h) {
                    plan.local_copies.push((i, src.to_string()));
                } else {
                    let delta_base = here
                        .filter(|l| {
                            !opts.profile.is_immutable(&e.path)
                                && l.size >= opts.delta_min_size
                                && e.size >= opts.delta_min_size
                        })
                        .or_else(|| kin.base_for(e, opts).filter(|_| !whole.contains_key(h)));
                    if let Some(&at) = delta_at.get(h) {
                        plan.deltas[at].targets.push(i); // the same content again: one delta fills both
                    } else if let Some(base) = delta_base {
                        delta_at.insert(*h, plan.deltas.len());
                        let base_hash = base.file_hash().expect("delta bases are files");
                        plan.deltas.push(PlannedDelta {
                            hash: *h,
                            targets: vec![i],
                            base: base.path.clone(),
                            base_hash,
                        });
                        plan.fetch_bytes = plan.fetch_bytes.saturating_add(e.size);
                    } else {
                        let targets = whole.entry(*h).or_default();
                        if targets.is_empty() {
                            order.push(*h);
                            plan.fetch_bytes = plan.fetch_bytes.saturating_add(e.size);
                            kin.add(e, opts); // fetched before the deltas
                        }
                        targets.push(i);
                    }
                }
            }
        }
    }
    plan.whole = order.into_iter().map(|h| (h, whole.remove(&h).unwrap_or_default())).collect();
    plan.dirs = dirs_to_prepare(snapshot, &plan, dirs, &new_dirs);
    Ok(plan)
}

/// `differ` and the directories of `snapshot` the plan writes into: where
/// it creates, replaces or removes an entry (a directory's mtime changes
/// then, and a read-only one must be opened first). Directories nothing
/// is written into and that already match are left alone.
fn dirs_to_prepare(snapshot: &Manifest, plan: &PullPlan, mut differ: Vec<usize>, new_dirs: &[usize]) -> Vec<usize> {
    let at = |i: &usize| snapshot.entries()[*i].path.as_str();
    let written = (plan.whole.iter().flat_map(|(_, t)| t.iter()))
        .chain(plan.deltas.iter().flat_map(|d| d.targets.iter()))
        .chain(plan.local_copies.iter().map(|(i, _)| i))
        .chain(&plan.symlinks)
        .chain(new_dirs)
        .map(at)
        .chain(plan.removals.iter().map(String::as_str));
    let parents: std::collections::HashSet<&str> =
        written.filter_map(|path| path.rsplit_once('/').map(|(parent, _)| parent)).collect();
    if parents.is_empty() {
        return differ;
    }
    let into = snapshot.entries().iter().enumerate();
    differ.extend(into.filter(|(_, e)| e.content == Content::Dir && parents.contains(e.path.as_str())).map(|(i, _)| i));
    differ.sort_unstable();
    differ.dedup();
    differ
}

/// Files by family (see [`Profile::family`]) large enough to be delta bases
/// for the other versions of themselves.
struct Kin<'a>(HashMap<String, Vec<&'a Entry>>);

impl<'a> Kin<'a> {
    fn of(entries: impl Iterator<Item = &'a Entry>, opts: PlanOptions) -> Kin<'a> {
        let mut kin = Kin(HashMap::new());
        for e in entries {
            kin.add(e, opts);
        }
        kin
    }

    fn add(&mut self, e: &'a Entry, opts: PlanOptions) {
        if opts.kin
            && e.size >= opts.delta_min_size
            && e.file_hash().is_some()
            && let Some(family) = opts.profile.family(&e.path)
        {
            self.0.entry(family).or_default().push(e);
        }
    }

    /// The version of `e` closest to it in size, if `e` is large enough.
    fn base_for(&self, e: &Entry, opts: PlanOptions) -> Option<&'a Entry> {
        if !opts.kin || e.size < opts.delta_min_size {
            return None;
        }
        let kin = self.0.get(&opts.profile.family(&e.path)?)?;
        kin.iter().copied().filter(|k| k.content != e.content).min_by_key(|k| k.size.abs_diff(e.size))
    }
}

fn plan_has_parent(set: &std::collections::HashSet<String>, path: &str) -> bool {
    let mut p = path;
    while let Some((parent, _)) = p.rsplit_once('/') {
        if set.contains(parent) {
            return true;
        }
        p = parent;
    }
    false
}

/// One blob to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upload {
    /// The whole file at `path`.
    Whole {
        /// Blob.
        hash: Hash,
        /// A local path with that content.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A delta of the file at `path` against blob `base`, which the mirror has.
    Delta {
        /// Blob.
        hash: Hash,
        /// A local path with that content.
        path: String,
        /// Its size.
        size: u64,
        /// The previous snapshot's blob at the same path.
        base: Hash,
    },
}

/// Plans a push: every blob of `local` that the mirror lacks (`missing`),
/// as a delta where the previous snapshot (`previous`) has another version
/// of the same path that is worth it, or where the profile knows another
/// version of the file (its family) that the mirror has or that this push
/// sends whole; whole otherwise. Deltas must be sent after the whole files.
pub fn plan_push(local: &Manifest, previous: Option<&Manifest>, missing: &[Hash], opts: PlanOptions) -> Vec<Upload> {
    let missing: std::collections::HashSet<&Hash> = missing.iter().collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut kin = Kin::of(previous.into_iter().flat_map(Manifest::entries), opts);
    for e in local.entries() {
        let Some(hash) = e.file_hash() else { continue };
        if !missing.contains(&hash) || !seen.insert(hash) {
            continue;
        }
        let base = previous
            .and_then(|p| p.get(&e.path))
            .filter(|b| b.size >= opts.delta_min_size && e.size >= opts.delta_min_size)
            .filter(|_| !opts.profile.is_immutable(&e.path))
            .and_then(|b| b.file_hash())
            .filter(|b| !missing.contains(b) && *b != hash)
            .or_else(|| kin.base_for(e, opts).and_then(Entry::file_hash));
        let (path, size) = (e.path.clone(), e.size);
        out.push(match base {
            Some(base) => Upload::Delta { hash, path, size, base },
            None => {
                kin.add(e, opts); // on the mirror by the time deltas go
                Upload::Whole { hash, path, size }
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, content: &[u8], size: u64) -> Entry {
        Entry { path: path.into(), size, mode: 0o644, mtime_ns: 1, content: Content::File(Hash::of(content)) }
    }
    fn d(path: &str) -> Entry {
        Entry { path: path.into(), size: 0, mode: 0o755, mtime_ns: 1, content: Content::Dir }
    }
    fn m(entries: Vec<Entry>) -> Manifest {
        Manifest::new(entries).unwrap()
    }
    /// Like [`m`], with the parent directories of every entry.
    fn with_dirs(mut entries: Vec<Entry>) -> Manifest {
        let mut dirs = std::collections::BTreeSet::new();
        for e in &entries {
            let mut p = e.path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                dirs.insert(parent.to_string());
                p = parent;
            }
        }
        entries.extend(dirs.iter().map(|p| d(p)));
        m(entries)
    }
    const OPTS: PlanOptions = PlanOptions { delta_min_size: 100, profile: Profile::Generic, kin: true };

    #[test]
    fn pull_reuses_local_content_and_fetches_the_rest_once() {
        let snap = m(vec![
            d("a"),
            f("a/same", b"s", 1),
            f("a/moved", b"m", 1),
            f("big", b"new", 1000),
            f("x", b"n", 5),
            f("y", b"n", 5),
        ]);
        let mut meta_changed = f("a/same", b"s", 1);
        meta_changed.mode = 0o600;
        let local = m(vec![d("a"), meta_changed, f("old-name", b"m", 1), f("big", b"old", 900), f("stray", b"z", 1)]);
        let plan = plan_pull(&snap, &local, OPTS, false, &[]).unwrap();
        assert_eq!(plan.metadata, vec![2], "sorted: a, a/moved, a/same, big, x, y");
        assert_eq!(plan.local_copies, vec![(1, "old-name".to_string())]);
        let big =
            PlannedDelta { hash: Hash::of(b"new"), targets: vec![3], base: "big".into(), base_hash: Hash::of(b"old") };
        assert_eq!(plan.deltas, vec![big]);
        assert_eq!(plan.whole, vec![(Hash::of(b"n"), vec![4, 5])]);
        assert!(plan.removals.is_empty(), "nothing is deleted without --delete");
        assert_eq!(plan.fetch_bytes, 1005);
    }

    #[test]
    fn a_pull_into_an_identical_root_is_idle_and_a_directory_mode_is_not() {
        let snap = with_dirs(vec![f("a/b/file", b"x", 1), f("top", b"t", 1)]);
        assert!(plan_pull(&snap, &snap, OPTS, true, &[]).unwrap().is_idle());
        let mut entries = snap.entries().to_vec();
        entries.iter_mut().find(|e| e.path == "a/b").unwrap().mode = 0o555;
        let plan = plan_pull(&snap, &m(entries), OPTS, false, &[]).unwrap();
        assert!(!plan.dirs.is_empty() && !plan.is_idle(), "{plan:?}");
        let missing = m(snap.entries().iter().filter(|e| e.path != "top").cloned().collect());
        assert!(!plan_pull(&snap, &missing, OPTS, false, &[]).unwrap().is_idle());
    }

    #[test]
    fn only_directories_written_into_or_differing_are_prepared() {
        let local = with_dirs(vec![f("a/b/old", b"o", 1), f("c/d/same", b"s", 1), f("e/stray", b"z", 1)]);
        let mut snap = with_dirs(vec![
            f("a/b/old", b"o", 1),
            f("a/b/new", b"n", 1),
            f("c/d/same", b"s", 1),
            f("g/h/deep", b"h", 1),
            f("e/stray", b"z", 1),
        ])
        .entries()
        .to_vec();
        snap.iter_mut().find(|e| e.path == "c").unwrap().mode = 0o555;
        let snap = m(snap);
        let names = |snap: &Manifest, plan: &PullPlan| -> Vec<String> {
            plan.dirs.iter().map(|&i| snap.entries()[i].path.clone()).collect()
        };
        let plan = plan_pull(&snap, &local, OPTS, false, &[]).unwrap();
        // a/b gets a file; c has another mode; g and g/h are new, and g goes into the root.
        assert_eq!(names(&snap, &plan), ["a/b", "c", "g", "g/h"]);
        // With --delete, e loses its stray file.
        let snap = m(snap.entries().iter().filter(|e| e.path != "e/stray").cloned().collect());
        let plan = plan_pull(&snap, &local, OPTS, true, &[]).unwrap();
        assert_eq!(plan.removals, ["e/stray"]);
        assert_eq!(names(&snap, &plan), ["a/b", "c", "e", "g", "g/h"]);
    }

    #[test]
    fn delete_removes_strays_and_conflicts_need_it() {
        let snap = m(vec![f("a", b"file now", 8)]);
        let local = m(vec![d("a"), f("a/inner", b"i", 1), f("stray", b"z", 1)]);
        assert_eq!(plan_pull(&snap, &local, OPTS, false, &[]), Err(Conflict("a".into())));
        let plan = plan_pull(&snap, &local, OPTS, true, &[]).unwrap();
        assert_eq!(plan.removals, vec!["stray".to_string(), "a".to_string()]);
    }

    #[test]
    fn unknown_local_entries_in_the_way_need_delete() {
        let snap = m(vec![d("a"), f("a/x", b"x", 1)]);
        let unknown = vec!["a".to_string()];
        assert_eq!(plan_pull(&snap, &Manifest::default(), OPTS, false, &unknown), Err(Conflict("a".into())));
        let plan = plan_pull(&snap, &Manifest::default(), OPTS, true, &unknown).unwrap();
        assert_eq!(plan.removals, vec!["a".to_string()]);
    }

    #[test]
    fn immutable_paths_are_never_delta_encoded() {
        let opts = PlanOptions { profile: Profile::GoBuild, ..OPTS };
        let snap = m(vec![d("ab"), f("ab/x-d", b"new", 1000)]);
        let local = m(vec![d("ab"), f("ab/x-d", b"old", 1000)]);
        let plan = plan_pull(&snap, &local, opts, false, &[]).unwrap();
        assert!(plan.deltas.is_empty());
        assert_eq!(plan.whole.len(), 1);
        let prev = local.clone();
        let up = plan_push(&snap, Some(&prev), &[Hash::of(b"new")], opts);
        assert!(matches!(up[0], Upload::Whole { .. }));
    }

    #[test]
    fn new_module_versions_travel_as_deltas_against_their_kin() {
        let opts = PlanOptions { profile: Profile::GoModTrees, ..OPTS };
        let zip = |v: &str, c: &[u8], size| f(&format!("cache/download/x.io/m/@v/{v}.zip"), c, size);
        let tree = |v: &str, c: &[u8], size| f(&format!("x.io/m@{v}/big.go"), c, size);
        let prev =
            with_dirs(vec![zip("v1.0.0", b"z1", 5000), zip("v1.1.0", b"z11", 9000), tree("v1.0.0", b"t1", 4000)]);
        let local = with_dirs(vec![
            zip("v1.0.0", b"z1", 5000),
            zip("v1.1.0", b"z11", 9000),
            zip("v1.2.0", b"z12", 8000),
            tree("v1.0.0", b"t1", 4000),
            tree("v1.2.0", b"t12", 50),
            f("x.io/other@v1.0.0/big.go", b"o", 4000),
            f("x.io/other@v2.0.0/big.go", b"o2", 4000),
        ]);
        let missing = [&b"z12"[..], b"t12", b"o", b"o2"].map(Hash::of);
        let up = plan_push(&local, Some(&prev), &missing, opts);
        let (z12, o) = ("cache/download/x.io/m/@v/v1.2.0.zip", "x.io/other@v1.0.0/big.go");
        assert_eq!(
            up,
            vec![
                Upload::Delta { hash: missing[0], path: z12.into(), size: 8000, base: Hash::of(b"z11") },
                Upload::Whole { hash: missing[1], path: "x.io/m@v1.2.0/big.go".into(), size: 50 },
                Upload::Whole { hash: missing[2], path: o.into(), size: 4000 },
                Upload::Delta {
                    hash: missing[3],
                    path: "x.io/other@v2.0.0/big.go".into(),
                    size: 4000,
                    base: missing[2]
                },
            ],
            "the closest size of kin the mirror has or gets whole first; small files whole"
        );
        // A pull the other way: kin found locally; with --delete, only kin that stays.
        let plan = plan_pull(&local, &prev, opts, false, &[]).unwrap();
        let at = |p: &str| local.entries().iter().position(|e| e.path == p).unwrap();
        let delta = |hash, target: &str, base: &str, base_hash| PlannedDelta {
            hash,
            targets: vec![at(target)],
            base: base.into(),
            base_hash,
        };
        let zip_delta = delta(missing[0], z12, "cache/download/x.io/m/@v/v1.1.0.zip", Hash::of(b"z11"));
        let o_delta = delta(missing[3], "x.io/other@v2.0.0/big.go", o, missing[2]);
        assert_eq!(plan.deltas, vec![zip_delta, o_delta], "o is fetched first");
        let snap = with_dirs(vec![zip("v1.2.0", b"z12", 8000)]);
        assert!(plan_pull(&snap, &prev, opts, true, &[]).unwrap().deltas.is_empty());
        // Into an empty root: the first version whole, the others against it.
        let plan = plan_pull(&prev, &Manifest::default(), opts, false, &[]).unwrap();
        let bases: Vec<&str> = plan.deltas.iter().map(|d| d.base.as_str()).collect();
        assert_eq!(bases, vec!["cache/download/x.io/m/@v/v1.0.0.zip"]);
        assert_eq!(plan.whole.len(), 2, "v1.0.0.zip and the tree file");
        let generic = plan_push(&local, Some(&prev), &missing, OPTS);
        assert!(generic.iter().all(|u| matches!(u, Upload::Whole { .. })), "generic files have no kin");
    }

    #[test]
    fn push_deltas_against_the_previous_version_and_dedupes() {
        let local =
            m(vec![f("big", b"v2", 5000), f("copy", b"v2", 5000), f("small", b"s2", 10), f("there", b"t", 5000)]);
        let prev = m(vec![f("big", b"v1", 5000), f("small", b"s1", 10)]);
        let up = plan_push(&local, Some(&prev), &[Hash::of(b"v2"), Hash::of(b"s2")], OPTS);
        assert_eq!(
            up,
            vec![
                Upload::Delta { hash: Hash::of(b"v2"), path: "big".into(), size: 5000, base: Hash::of(b"v1") },
                Upload::Whole { hash: Hash::of(b"s2"), path: "small".into(), size: 10 },
            ]
        );
    }
}
