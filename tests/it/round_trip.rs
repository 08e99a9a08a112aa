//! Push a tree, pull it elsewhere: everything a cache holds comes back exactly.

use std::os::unix::fs::symlink;

use cachesync::profile::Profile;
use cachesync::sync::{self, PullRequest, PushRequest};

use crate::helpers::*;

/// A tree with what caches hold: empty files, deep nesting, unicode names,
/// read-only files and directories (as Go's module cache has), symlinks.
fn cache_like_tree(root: &std::path::Path) {
    write(root, "empty", b"");
    write(root, "a/b/c/d/deep.txt", b"deep");
    write(root, "ünïcödé/日本語.txt", "名前".as_bytes());
    write(root, "bin/tool", b"#!/bin/sh\necho hi\n");
    set_mode(&root.join("bin/tool"), 0o755);
    write(root, ".hidden", b"dot");
    write(root, "big.bin", &random_bytes(1, 3 << 20));
    write(root, "mod/golang.org/x/text@v0.3.0/LICENSE", b"license");
    write(root, "mod/golang.org/x/text@v0.3.0/go.mod", b"module golang.org/x/text\n");
    symlink("b/c/d/deep.txt", root.join("a/link")).unwrap();
    symlink("a/b", root.join("dirlink")).unwrap();
    set_mtime(&root.join("a/b/c/d/deep.txt"), 1_500_000_000, 123_456_789);
    set_mtime(&root.join("a/link"), 1_400_000_000, 0);
    for f in ["LICENSE", "go.mod"] {
        set_mode(&root.join("mod/golang.org/x/text@v0.3.0").join(f), 0o444);
    }
    set_mode(&root.join("mod/golang.org/x/text@v0.3.0"), 0o555);
    set_mtime(&root.join("a/b"), 1_300_000_000, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_reproduces_the_pushed_tree_exactly() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = (t.path().join("src"), t.path().join("dst"), t.path().join("state"));
    cache_like_tree(&src);
    // Files changed in the last two seconds are never trusted to the hash cache.
    for e in walkdir::WalkDir::new(&src).into_iter().map(Result::unwrap).filter(|e| e.file_type().is_file()) {
        if e.metadata().unwrap().modified().unwrap().elapsed().is_ok_and(|age| age.as_secs() < 60) {
            set_mtime(e.path(), 1_600_000_000, 0);
        }
    }
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let mut client = connect(&mirror.url).await;
    let opts = options(&state);
    let push = PushRequest { root: src.clone(), key: "test/tree".into(), profile: Profile::Generic };
    let pushed = sync::push(&mut client, &push, &opts).await.unwrap();
    assert_eq!((pushed.generation, pushed.files), (1, 8));
    assert!(pushed.bytes_sent > 3 << 20, "the content crossed the wire");

    let pull = PullRequest {
        root: dst.clone(),
        key: "test/tree".into(),
        restore_prefixes: vec![],
        delete: false,
        trusted_writers: vec![],
    };
    let pulled = sync::pull(&mut client, &pull, &opts).await.unwrap();
    assert_same_tree(&src, &dst);
    assert_eq!(pulled.bytes, pushed.bytes);
    assert!(!dst.join(".cachesync.tmp").exists(), "staging is removed");

    // Nothing changed: a second push commits nothing, a second pull moves no content.
    let again = sync::push(&mut client, &push, &opts).await.unwrap();
    assert!(again.unchanged);
    assert_eq!(again.generation, 1);
    // ... and changes nothing on disk: no directory of the root, no hash cache.
    let before = (change_times(&dst), change_times(&state.join("hashcache")));
    std::thread::sleep(std::time::Duration::from_millis(50)); // past the clock tick of ctime
    let mut client = connect(&mirror.url).await;
    let repull = sync::pull(&mut client, &pull, &opts).await.unwrap();
    assert!(repull.bytes_received < 64 << 10, "received {}", repull.bytes_received);
    assert!(repull.unchanged && repull.files_hashed == 0, "{repull:?}");
    assert_same_tree(&src, &dst);
    assert_eq!(before, (change_times(&dst), change_times(&state.join("hashcache"))), "a no-op pull wrote");
    unlock(t.path());
}

/// A pull opens, and gives back their modes and mtimes, only the
/// directories it writes into or that differ: a read-only module tree it
/// does not touch keeps its status-change time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_leaves_directories_it_does_not_write_into_alone() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = (t.path().join("src"), t.path().join("dst"), t.path().join("state"));
    for m in ["a@v1", "b@v1"] {
        write(&src, &format!("mod/{m}/go.mod"), m.as_bytes());
        set_mode(&src.join("mod").join(m), 0o555);
        set_mtime(&src.join("mod").join(m), 1_300_000_000, 7);
    }
    set_mtime(&src.join("mod"), 1_300_000_000, 8);
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let (opts, mut client) = (options(&state), connect(&mirror.url).await);
    let push = PushRequest { root: src.clone(), key: "k".into(), profile: Profile::Generic };
    let pull = PullRequest::new(dst.clone(), "k");
    sync::push(&mut client, &push, &opts).await.unwrap();
    sync::pull(&mut client, &pull, &opts).await.unwrap();
    assert_same_tree(&src, &dst);

    // A new file in the read-only a@v1, a new module beside it.
    set_mode(&src.join("mod/a@v1"), 0o755);
    write(&src, "mod/a@v1/new.go", b"package a");
    set_mode(&src.join("mod/a@v1"), 0o555);
    set_mtime(&src.join("mod/a@v1"), 1_300_000_100, 9);
    write(&src, "mod/c@v1/go.mod", b"c");
    set_mtime(&src.join("mod"), 1_300_000_200, 0);
    sync::push(&mut client, &push, &opts).await.unwrap();
    let before = change_times(&dst.join("mod/b@v1"));
    let a_before = change_times(&dst.join("mod/a@v1"));
    std::thread::sleep(std::time::Duration::from_millis(50)); // past the clock tick of ctime
    sync::pull(&mut client, &pull, &opts).await.unwrap();
    assert_same_tree(&src, &dst);
    assert_eq!(change_times(&dst.join("mod/b@v1")), before, "an untouched module tree was written");
    assert_ne!(change_times(&dst.join("mod/a@v1"))[0], a_before[0], "a@v1 was written into");
    unlock(t.path());
}

/// The status-change time of every directory and file under `root` (and of `root`).
fn change_times(root: &std::path::Path) -> Vec<(std::path::PathBuf, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let all = walkdir::WalkDir::new(root).follow_links(false).into_iter().map(|e| e.unwrap());
    let stat = |e: walkdir::DirEntry| {
        let m = e.metadata().unwrap();
        (e.into_path(), m.ctime(), m.ctime_nsec())
    };
    all.filter(|e| !e.file_type().is_symlink()).map(stat).collect()
}

/// The record of a root's last push skips a second push of the same tree to
/// the same mirror only: another mirror gets the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_root_is_still_pushed_to_another_mirror() {
    let t = tempfile::tempdir().unwrap();
    let (src, opts) = (t.path().join("src"), options(&t.path().join("state")));
    write(&src, "a.txt", b"hello");
    let push = PushRequest { root: src.clone(), key: "k".into(), profile: Profile::Generic };
    let (a, b) = (spawn_mirror(&t.path().join("store-a")).await, spawn_mirror(&t.path().join("store-b")).await);
    assert!(!sync::push(&mut connect(&a.url).await, &push, &opts).await.unwrap().unchanged);
    assert!(sync::push(&mut connect(&a.url).await, &push, &opts).await.unwrap().unchanged);
    let to_b = sync::push(&mut connect(&b.url).await, &push, &opts).await.unwrap();
    assert!(!to_b.unchanged && to_b.generation == 1, "{to_b:?}");
    assert_eq!(connect(&b.url).await.list_keys("").await.unwrap().len(), 1);
}

/// Content held at more paths than one blob is written to at once (16
/// copies), in read-only directories, with its own mode and mtime at each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_held_at_many_paths_arrives_once_and_lands_at_every_one() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = (t.path().join("src"), t.path().join("dst"), t.path().join("state"));
    let (small, large) = (b"Apache License 2.0\n".to_vec(), random_bytes(3, (2 << 20) + 77));
    for i in 0..40 {
        let dir = format!("mod/example.com/m{}@v1.0.{i}", i % 7);
        for (name, data) in [("LICENSE", &small), ("testdata/blob.bin", &large)] {
            let path = format!("{dir}/{name}");
            write(&src, &path, data);
            set_mode(&src.join(&path), if i % 2 == 0 { 0o444 } else { 0o644 });
            set_mtime(&src.join(&path), 1_600_000_000 + i, i as u32);
        }
        set_mode(&src.join(&dir).join("testdata"), 0o555);
    }
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let mut client = connect(&mirror.url).await;
    let push = PushRequest { root: src.clone(), key: "k".into(), profile: Profile::Generic };
    sync::push(&mut client, &push, &options(&state)).await.unwrap();
    let pulled = sync::pull(&mut client, &PullRequest::new(&dst, "k"), &options(&t.path().join("s2"))).await.unwrap();
    assert_same_tree(&src, &dst);
    assert!(pulled.bytes_received < 3 << 20, "each content crossed once: {}", pulled.bytes_received);
    unlock(t.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_the_mirror_has_is_never_sent_again_whatever_the_key() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("node-a"), t.path().join("node-b"));
    for root in [&a, &b] {
        write(root, "shared.bin", &random_bytes(7, 4 << 20));
        write(root, "x/also-shared", &random_bytes(8, 1 << 20));
    }
    write(&b, "only-b", b"small and new");
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let mut client = connect(&mirror.url).await;
    let req = |root: &std::path::Path, key: &str| PushRequest {
        root: root.to_path_buf(),
        key: key.into(),
        profile: Profile::Generic,
    };
    sync::push(&mut client, &req(&a, "node/a"), &options(&t.path().join("sa"))).await.unwrap();
    let mut client = connect(&mirror.url).await;
    let second = sync::push(&mut client, &req(&b, "node/b"), &options(&t.path().join("sb"))).await.unwrap();
    assert_eq!(second.blobs_whole, 1, "only the new file is sent");
    assert!(second.bytes_sent < 64 << 10, "sent {} bytes", second.bytes_sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_replaces_changed_files_and_deletes_only_when_asked() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = (t.path().join("src"), t.path().join("dst"), t.path().join("state"));
    write(&src, "keep", b"v2");
    write(&src, "d/new", b"new");
    write(&dst, "keep", b"v1");
    write(&dst, "stray", b"local only");
    write(&dst, "d/stray-too", b"local only");
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let mut client = connect(&mirror.url).await;
    let opts = options(&state);
    sync::push(&mut client, &PushRequest { root: src.clone(), key: "k".into(), profile: Profile::Generic }, &opts)
        .await
        .unwrap();
    let mut pull = PullRequest {
        root: dst.clone(),
        key: "k".into(),
        restore_prefixes: vec![],
        delete: false,
        trusted_writers: vec![],
    };
    sync::pull(&mut client, &pull, &opts).await.unwrap();
    assert_eq!(std::fs::read(dst.join("keep")).unwrap(), b"v2");
    assert!(dst.join("stray").exists() && dst.join("d/stray-too").exists(), "kept without --delete");
    pull.delete = true;
    sync::pull(&mut client, &pull, &opts).await.unwrap();
    assert_same_tree(&src, &dst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_file_is_copied_locally_even_when_its_old_name_is_deleted() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = (t.path().join("src"), t.path().join("dst"), t.path().join("state"));
    let content = random_bytes(11, 1 << 20);
    write(&src, "new-name", &content);
    write(&dst, "old/name", &content);
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let mut client = connect(&mirror.url).await;
    let push = PushRequest { root: src.clone(), key: "k".into(), profile: Profile::Generic };
    sync::push(&mut client, &push, &options(&state)).await.unwrap();
    let mut client = connect(&mirror.url).await;
    let pull = PullRequest {
        root: dst.clone(),
        key: "k".into(),
        restore_prefixes: vec![],
        delete: true,
        trusted_writers: vec![],
    };
    let report = sync::pull(&mut client, &pull, &options(&t.path().join("state-dst"))).await.unwrap();
    assert_same_tree(&src, &dst);
    assert!(report.bytes_received < 64 << 10, "the content came from the local copy: {}", report.bytes_received);
}

/// Whether each frame of one blob, fetched raw with `level`, came compressed.
async fn frames_compressed(url: &str, hash: cachesync::hash::Hash, level: Option<i32>) -> Vec<bool> {
    let mut raw = crate::hostile::raw(url, Some("1")).await;
    let req = cachesync::rpc::pb::GetBlobsRequest {
        hashes: vec![hash.as_bytes().to_vec()],
        compression_level: level,
        batch: false,
    };
    let mut stream = raw.get_blobs(req).await.unwrap().into_inner();
    let mut compressed = Vec::new();
    while let Some(frame) = stream.message().await.unwrap() {
        compressed.push(frame.zstd);
    }
    compressed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_compressed_over_loopback() {
    let t = tempfile::tempdir().unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let text = b"func handler(w http.ResponseWriter, r *http.Request) error { return nil }\n".repeat(40_000);
    write(&t.path().join("src"), "index.txt", &text);
    let req = PushRequest { root: t.path().join("src"), key: "zstd/k".into(), profile: Profile::Generic };
    let pushed = sync::push(&mut connect(&mirror.url).await, &req, &options(&t.path().join("s1"))).await.unwrap();
    assert!(pushed.bytes_sent > text.len() as u64, "{} bytes sent", pushed.bytes_sent);

    let pull = PullRequest::new(t.path().join("dst"), "zstd/k");
    let mut client = connect(&mirror.url).await;
    assert!(client.is_loopback());
    let pulled = sync::pull(&mut client, &pull, &options(&t.path().join("s2"))).await.unwrap();
    assert!(pulled.bytes_received > text.len() as u64, "{} bytes received", pulled.bytes_received);
    assert_same_tree(&t.path().join("src"), &t.path().join("dst"));

    // The mirror compresses unless asked not to, and never above its own level.
    let hash = cachesync::hash::Hash::of(&text);
    for (level, expect) in [(None, true), (Some(0), false), (Some(3), true), (Some(99), true), (Some(-5), false)] {
        let frames = frames_compressed(&mirror.url, hash, level).await;
        assert!(!frames.is_empty() && frames.iter().all(|z| *z == expect), "level {level:?}: {frames:?}");
    }
}

/// Small answers (resolve, manifest diffs) are not held back by Nagle's
/// algorithm waiting for a delayed ACK: the mirror's accepted sockets, found
/// among this process's descriptors, have TCP_NODELAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_answers_on_sockets_without_nagle() {
    let t = tempfile::tempdir().unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let port: u16 = mirror.url.rsplit(':').next().unwrap().parse().unwrap();
    let mut client = connect(&mirror.url).await;
    assert_eq!(client.resolve("nothing/here", &[]).await.unwrap(), None);
    let mut accepted = Vec::new();
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = fd.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Some(nodelay) = accepted_tcp_nodelay(fd, port) {
            accepted.push(nodelay);
        }
    }
    assert!(!accepted.is_empty(), "no accepted socket on port {port}");
    assert!(accepted.iter().all(|on| *on), "TCP_NODELAY per accepted socket: {accepted:?}");
}

/// TCP_NODELAY of `fd` if it is a connected socket whose local port is `port`.
fn accepted_tcp_nodelay(fd: i32, port: u16) -> Option<bool> {
    // SAFETY: sockaddr_in is plain data; the calls only write within the sizes given.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = libc::getsockname(fd, (&raw mut addr).cast(), &raw mut len);
        if local != 0 || i32::from(addr.sin_family) != libc::AF_INET || u16::from_be(addr.sin_port) != port {
            return None;
        }
        let mut peer: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::getpeername(fd, (&raw mut peer).cast(), &raw mut len) != 0 {
            return None; // the listener
        }
        let mut on: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let rc = libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&raw mut on).cast(), &raw mut len);
        (rc == 0).then_some(on != 0)
    }
}
