//! Manifests cross the wire as diffs against the last snapshot each side
//! holds: bytes counted on the socket show what travelled.

use std::path::Path;

use cachesync::hash::Hash;
use cachesync::profile::Profile;
use cachesync::sync::{self, PullRequest, PushRequest, Report};

use crate::helpers::*;

/// A tree whose manifest (~1,200 entries, over 100 KiB) dwarfs its content.
fn wide_tree(root: &Path) {
    for d in 0..12 {
        for f in 0..100 {
            let rel = format!("cache/download/example.com/module-{d:02}/@v/v1.{f:03}.0-a-long-version-suffix.info");
            write(root, &rel, format!("{d}/{f}").as_bytes());
        }
    }
}

/// The encoded size of the manifest a report names, as the mirror holds it.
async fn manifest_size(url: &str, report: &Report) -> usize {
    let id = Hash::from_hex(&report.manifest).unwrap();
    connect(url).await.manifest(id).await.unwrap().encode().len()
}

async fn push(url: &str, root: &Path, key: &str, state: &Path) -> Report {
    let req = PushRequest { root: root.to_path_buf(), key: key.into(), profile: Profile::Generic };
    sync::push(&mut connect(url).await, &req, &options(state)).await.unwrap()
}

async fn pull(url: &str, root: &Path, key: &str, state: &Path) -> Report {
    let req = PullRequest { delete: true, ..PullRequest::new(root, key) };
    sync::pull(&mut connect(url).await, &req, &options(state)).await.unwrap()
}

fn wire(r: &Report) -> u64 {
    r.bytes_sent + r.bytes_received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_after_a_change_receive_a_diff_and_no_op_pulls_no_manifest() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, ci, node) = (t.path().join("src"), t.path().join("dst"), t.path().join("ci"), t.path().join("node"));
    wide_tree(&src);
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let first = push(&mirror.url, &src, "k", &ci).await;
    let size = manifest_size(&mirror.url, &first).await as u64;
    assert!(size > 100_000, "{size}");
    let pulled = pull(&mirror.url, &dst, "k", &node).await;
    assert!(pulled.bytes_received > size, "the first pull has nothing to diff against");

    write(&src, "cache/download/example.com/module-03/@v/v1.007.0-a-long-version-suffix.info", b"changed");
    write(&src, "new/file", b"added");
    std::fs::remove_file(src.join("cache/download/example.com/module-05/@v/v1.001.0-a-long-version-suffix.info"))
        .unwrap();
    let second = push(&mirror.url, &src, "k", &ci).await;
    assert_eq!(second.generation, 2);
    assert!(wire(&second) < size / 10, "the push moved {} bytes, the manifest is {size}", wire(&second));
    let again = pull(&mirror.url, &dst, "k", &node).await;
    assert_same_tree(&src, &dst);
    assert_eq!(again.generation, 2);
    assert!(wire(&again) < size / 10, "the pull moved {} bytes, the manifest is {size}", wire(&again));

    // The manifest is not asked for at all: the pull works without it.
    std::fs::remove_file(t.path().join("store/manifests").join(&again.manifest)).unwrap();
    let noop = pull(&mirror.url, &dst, "k", &node).await;
    assert!(noop.unchanged);
    assert!(wire(&noop) < 2048, "a no-op pull moved {} bytes", wire(&noop));
    assert_same_tree(&src, &dst);
}

/// The one file of `state` that holds a root's base manifest.
fn stored_base(state: &Path) -> std::path::PathBuf {
    let dir = std::fs::read_dir(state.join("bases")).unwrap();
    let found: Vec<_> =
        dir.map(|e| e.unwrap().path()).filter(|p| p.to_string_lossy().ends_with(".manifest.bin")).collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_base_on_either_side_falls_back_to_the_whole_manifest() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, ci, node) = (t.path().join("src"), t.path().join("dst"), t.path().join("ci"), t.path().join("node"));
    let store = t.path().join("store");
    wide_tree(&src);
    let mirror = spawn_mirror(&store).await;
    let first = push(&mirror.url, &src, "k", &ci).await;
    let size = manifest_size(&mirror.url, &first).await as u64;
    pull(&mirror.url, &dst, "k", &node).await;

    // The client's stored copy no longer matches its record: not used,
    // whether the snapshot changed or not.
    let tamper = || {
        let held = stored_base(&node);
        let mut bytes = std::fs::read(&held).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1; // a file's hash
        std::fs::write(&held, bytes).unwrap();
    };
    write(&src, "new/one", b"1");
    push(&mirror.url, &src, "k", &ci).await;
    tamper();
    let pulled = pull(&mirror.url, &dst, "k", &node).await;
    assert_same_tree(&src, &dst);
    assert!(pulled.bytes_received > size, "whole: {} of {size}", pulled.bytes_received);
    tamper();
    let pulled = pull(&mirror.url, &dst, "k", &node).await;
    assert_same_tree(&src, &dst);
    assert!(pulled.unchanged && pulled.bytes_received > size, "whole: {} of {size}", pulled.bytes_received);

    // The mirror's copy of the client's base is another manifest (the
    // target itself): the diff it sends is empty and rebuilds the base here,
    // which does not match the target, so the client asks again.
    let base = pulled.manifest.clone();
    write(&src, "new/two", b"2");
    let target = push(&mirror.url, &src, "k", &ci).await;
    let manifests = store.join("manifests");
    std::fs::write(manifests.join(&base), std::fs::read(manifests.join(&target.manifest)).unwrap()).unwrap();
    let pulled = pull(&mirror.url, &dst, "k", &node).await;
    assert_same_tree(&src, &dst);
    assert!(pulled.bytes_received > size, "whole: {} of {size}", pulled.bytes_received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_as_a_diff_commits_what_a_whole_push_commits() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    wide_tree(&src);
    let (a, b) = (spawn_mirror(&t.path().join("a")).await, spawn_mirror(&t.path().join("b")).await);
    let first = push(&a.url, &src, "k", &t.path().join("sa")).await;
    let size = manifest_size(&a.url, &first).await as u64;
    write(&src, "cache/download/example.com/module-00/@v/v1.000.0-a-long-version-suffix.info", b"new");
    let diffed = push(&a.url, &src, "k", &t.path().join("sa")).await;
    let whole = push(&b.url, &src, "k", &t.path().join("sb")).await;
    assert_eq!(diffed.manifest, whole.manifest);
    assert!(wire(&diffed) < size / 10, "diff push: {} bytes, manifest {size}", wire(&diffed));
    assert!(whole.bytes_sent > size, "a first push sends the whole manifest");
    let stored = |m: &str| std::fs::read(t.path().join(m).join("manifests").join(&diffed.manifest)).unwrap();
    assert_eq!(stored("a"), stored("b"), "the mirror rebuilt the manifest byte for byte");
    let dst = t.path().join("dst");
    pull(&a.url, &dst, "k", &t.path().join("node")).await;
    assert_same_tree(&src, &dst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_base_the_mirror_lacks_sends_the_whole_manifest() {
    let t = tempfile::tempdir().unwrap();
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    wide_tree(&src);
    let old = spawn_mirror(&t.path().join("old")).await;
    let first = push(&old.url, &src, "k", &state).await;
    let size = manifest_size(&old.url, &first).await as u64;
    write(&src, "new/file", b"changed since");
    let fresh = spawn_mirror(&t.path().join("fresh")).await;
    let pushed = push(&fresh.url, &src, "k", &state).await;
    assert_eq!(pushed.generation, 1);
    assert!(pushed.bytes_sent > size, "the diff was refused and the whole manifest sent");
    let dst = t.path().join("dst");
    pull(&fresh.url, &dst, "k", &t.path().join("node")).await;
    assert_same_tree(&src, &dst);
}
