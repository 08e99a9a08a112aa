//! `cachesync gc`: a node's Go caches (the real go command fills them and
//! still works afterwards) and a mirror's store (retention, unreferenced blobs).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cachesync::hash::Hash;
use cachesync::profile::Profile;
use cachesync::store::{Retention, Store};
use cachesync::sync::{self, PullRequest, PushRequest};

use crate::go::{Node, fill_node_a, make_proxy};
use crate::helpers::{bin, connect, options, random_bytes, spawn_mirror, unlock, write};

/// Makes everything under `path` look unused for `days` days.
fn age(path: &Path, days: u64) {
    let t = std::time::SystemTime::now() - Duration::from_secs(days * 86_400);
    let ft = filetime::FileTime::from_system_time(t);
    for e in walkdir::WalkDir::new(path).into_iter().flatten() {
        filetime::set_symlink_file_times(e.path(), ft, ft).unwrap();
    }
}

fn gc(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin()).arg("gc").args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn node_gc_removes_unused_module_versions_and_keeps_what_go_sum_needs() {
    let t = tempfile::tempdir().unwrap();
    let proxy = t.path().join("proxy");
    make_proxy(&proxy);
    let (a, app) = fill_node_a(t.path(), &proxy);
    let dl = a.modcache.join("cache/download/example.com");
    for old in ["util/@v", "other/@v"] {
        for e in std::fs::read_dir(dl.join(old)).unwrap() {
            age(&e.unwrap().path(), 40);
        }
    }
    age(&a.modcache.join("example.com/util@v0.2.0"), 40);
    age(&a.modcache.join("example.com/other@v1.0.0"), 40);
    let root = a.modcache.to_str().unwrap();
    let sum = app.join("go.sum");
    let (ok, out) = gc(&["--profile", "go-mod", "--older-than", "30d", "--dry-run", root]);
    assert!(ok, "{out}");
    assert!(
        out.contains("would remove example.com/util@v0.2.0") && out.contains("would remove example.com/other@v1.0.0"),
        "{out}"
    );
    assert!(dl.join("util/@v/v0.2.0.zip").exists(), "a dry run removes nothing");

    let (ok, out) = gc(&["--profile", "go-mod", "--older-than", "30d", "--keep-go-sum", sum.to_str().unwrap(), root]);
    assert!(ok, "{out}");
    assert!(out.contains("removed example.com/other@v1.0.0") && !out.contains("util"), "{out}");
    assert!(!dl.join("other/@v/v1.0.0.zip").exists() && !dl.join("other/@v/list").exists());
    assert!(dl.join("util/@v/v0.2.0.zip").exists(), "go.sum needs util");

    let (ok, out) = gc(&["--profile", "go-mod", "--older-than", "30d", root]);
    assert!(ok, "{out}");
    assert!(!a.modcache.join("example.com/util@v0.2.0").exists(), "the read-only tree went too");
    assert!(!dl.join("util/@v/v0.2.0.mod").exists());
    assert!(dl.join("!greet/@v/v1.0.0.zip").exists(), "recently used");
    // Go finds a consistent cache and fetches util again.
    a.go(&app, &["build", "-o", "app-bin", "."]);
    a.go(&app, &["mod", "verify"]);

    // The build cache: over budget, everything but the README goes, and go rebuilds.
    let gocache = a.home.join("gocache");
    let (ok, out) = gc(&["--profile", "go-build", "--max-size", "0", gocache.to_str().unwrap()]);
    assert!(ok, "{out}");
    let left: Vec<_> = walkdir::WalkDir::new(&gocache)
        .min_depth(2)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(gocache.join("README").exists());
    Node::new(&a.home, "off").go(&app, &["build", "-o", "app-bin", "."]);

    let (ok, out) = gc(&["--profile", "go-mod", root]);
    assert!(!ok && out.contains("--older-than"), "{out}");
    unlock(t.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_gc_keeps_the_newest_snapshots_and_drops_blobs_nothing_names() {
    let t = tempfile::tempdir().unwrap();
    let store_dir = t.path().join("store");
    let mirror = spawn_mirror(&store_dir).await;
    let src = t.path().join("src");
    let state = t.path().join("state");
    for generation in 0..3u64 {
        write(&src, "data.bin", &random_bytes(generation, 100_000));
        let push = PushRequest { root: src.clone(), key: "k/main".into(), profile: Profile::Generic };
        sync::push(&mut connect(&mirror.url).await, &push, &options(&state)).await.unwrap();
    }
    let blobs = || {
        walkdir::WalkDir::new(store_dir.join("blobs")).into_iter().flatten().filter(|e| e.file_type().is_file()).count()
    };
    assert_eq!(blobs(), 3);

    // From the command line the grace period (an hour) protects blobs this young.
    let (ok, out) = gc(&["--store", store_dir.to_str().unwrap(), "--keep-last", "1", "--dry-run"]);
    assert!(ok && out.contains("would drop snapshot k/main#1") && out.contains("k/main#2"), "{out}");
    assert!(!out.contains("k/main#3"), "{out}");
    assert_eq!(connect(&mirror.url).await.list_keys("").await.unwrap()[0].generation, 3);

    let store = Store::open(store_dir.to_str().unwrap()).unwrap();
    for generation in 0..3u64 {
        store.signature(&Hash::of(&random_bytes(generation, 100_000))).await.unwrap();
    }
    let sigs = || {
        walkdir::WalkDir::new(store_dir.join("sigs")).into_iter().flatten().filter(|e| e.file_type().is_file()).count()
    };
    assert_eq!(sigs(), 3);
    let policy = Retention { keep_last: Some(1), max_age: None, grace: Duration::ZERO, dry_run: false };
    let swept = store.sweep(&policy).await.unwrap();
    assert_eq!(swept.snapshots, ["k/main#1", "k/main#2"]);
    assert_eq!((swept.blobs, swept.manifests), (2, 2));
    assert_eq!(blobs(), 1);
    assert_eq!(sigs(), 1, "signatures go with their blobs");
    let snaps = store.snapshots("k/main").await.unwrap();
    assert_eq!(snaps.iter().map(|s| s.generation).collect::<Vec<_>>(), [3]);

    // The newest snapshot still restores, whatever the policy.
    let policy = Retention { keep_last: None, max_age: Some(Duration::ZERO), ..policy };
    assert!(store.sweep(&policy).await.unwrap().snapshots.is_empty(), "a key's newest always stays");
    let dest = t.path().join("dest");
    sync::pull(&mut connect(&mirror.url).await, &PullRequest::new(&dest, "k/main"), &options(&t.path().join("s2")))
        .await
        .unwrap();
    assert_eq!(std::fs::read(dest.join("data.bin")).unwrap(), random_bytes(2, 100_000));
}
