//! CI jobs: restore keys, step outputs, and jobs that build on each other.

use cachesync::profile::Profile;
use cachesync::sync::{self, PullRequest, PushRequest};

use crate::helpers::*;

async fn push_tree(url: &str, root: &std::path::Path, key: &str, state: &std::path::Path) {
    let req = PushRequest { root: root.to_path_buf(), key: key.into(), profile: Profile::Generic };
    sync::push(&mut connect(url).await, &req, &options(state)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_keys_fall_back_in_order_newest_snapshot_first() {
    let t = tempfile::tempdir().unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    for (i, key) in ["gomod/linux/main", "gomod/linux/feature-x", "gomod/mac/main"].iter().enumerate() {
        let root = t.path().join(format!("src{i}"));
        write(&root, "which", key.as_bytes());
        push_tree(&mirror.url, &root, key, &t.path().join(format!("s{i}"))).await;
        // Snapshot times have millisecond resolution: let the clock move on.
        let pushed = std::time::SystemTime::now();
        wait_for(1, "the clock to tick", || pushed.elapsed().is_ok_and(|d| d.as_millis() >= 2)).await;
    }
    let restore = |key: &str, prefixes: &[&str]| {
        let dst = t.path().join(format!("dst-{}", prefixes.len()));
        let req = PullRequest {
            root: dst.join(key.replace('/', "_")),
            key: key.into(),
            restore_prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            delete: false,
            trusted_writers: vec![],
        };
        let state = t.path().join("state");
        let url = mirror.url.clone();
        async move {
            let report = sync::pull(&mut connect(&url).await, &req, &options(&state)).await;
            report.map(|r| (r.restored_key, r.cache_hit, std::fs::read_to_string(req.root.join("which")).unwrap()))
        }
    };
    // The exact key wins over every restore key.
    let (key, exact, which) = restore("gomod/linux/main", &["gomod/"]).await.unwrap();
    assert_eq!((key.as_str(), exact, which.as_str()), ("gomod/linux/main", true, "gomod/linux/main"));
    // Restore keys are tried in order: the first that matches anything wins.
    let (key, exact, _) = restore("gomod/linux/pr-1", &["gomod/linux/main", "gomod/"]).await.unwrap();
    assert_eq!((key.as_str(), exact), ("gomod/linux/main", false));
    // Within one prefix, the newest snapshot wins (feature-x was pushed after main).
    let (key, _, _) = restore("gomod/linux/pr-2", &["gomod/nothing/", "gomod/linux/"]).await.unwrap();
    assert_eq!(key, "gomod/linux/feature-x");
    // Nothing matches: a miss.
    assert!(matches!(restore("cargo/x", &["cargo/"]).await, Err(sync::SyncError::Miss(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_reads_the_newest_record_of_a_key_not_every_older_one() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let mirror = spawn_mirror(&store).await;
    let root = t.path().join("src");
    for i in 0..3 {
        write(&root, "which", format!("{i}").as_bytes());
        push_tree(&mirror.url, &root, "ci/many", &t.path().join("s")).await;
    }
    // An old record that no longer parses: only a listing of every snapshot needs it.
    let old = store.join("keys/ci/many/@snap").join(format!("{:020}", 1));
    assert!(old.is_file(), "{}", old.display());
    std::fs::write(&old, b"not json").unwrap();
    let mut client = connect(&mirror.url).await;
    let newest = client.resolve("ci/many", &[]).await.unwrap().unwrap();
    assert_eq!(newest.generation, 3);
    let trusted = client.resolve_trusted("ci/many", &[], std::slice::from_ref(&newest.writer)).await.unwrap().unwrap();
    assert_eq!(trusted.generation, 3);
    let fallback = client.resolve("ci/other", &["ci/".into()]).await.unwrap().unwrap();
    assert_eq!((fallback.key.as_str(), fallback.generation), ("ci/many", 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_restore_add_and_save_and_the_next_job_gets_the_union() {
    let t = tempfile::tempdir().unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let key = "gomod/linux/main";
    let mut expected = Vec::new();
    for job in 0..3 {
        // Each job runs on a fresh machine: its own cache directory and state.
        let (cache, state) = (t.path().join(format!("job{job}/cache")), t.path().join(format!("job{job}/state")));
        let req = PullRequest {
            root: cache.clone(),
            key: key.into(),
            restore_prefixes: vec!["gomod/".into()],
            delete: false,
            trusted_writers: vec![],
        };
        let pulled = sync::pull(&mut connect(&mirror.url).await, &req, &options(&state)).await;
        assert_eq!(pulled.is_ok(), job > 0, "job {job}: the first job misses, the others hit");
        for name in &expected {
            assert!(cache.join(name).exists(), "job {job} restored {name}");
        }
        let name = format!("mod{job}/v1.0.{job}.zip");
        write(&cache, &name, &random_bytes(job, 50_000));
        expected.push(name);
        let push = PushRequest { root: cache.clone(), key: key.into(), profile: Profile::Generic };
        let report = sync::push(&mut connect(&mirror.url).await, &push, &options(&state)).await.unwrap();
        assert_eq!(report.blobs_whole, 1, "job {job} sends only what it added");
        assert!(report.bytes_sent < 80_000, "job {job} sent {}", report.bytes_sent);
    }
    let last = t.path().join("last");
    let req = PullRequest {
        root: last.clone(),
        key: key.into(),
        restore_prefixes: vec![],
        delete: false,
        trusted_writers: vec![],
    };
    let report = sync::pull(&mut connect(&mirror.url).await, &req, &options(&t.path().join("s-last"))).await.unwrap();
    assert_eq!(report.files, 3);
    for name in &expected {
        assert!(last.join(name).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_sends_only_what_changed_since_the_restore() {
    let t = tempfile::tempdir().unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let mut data = random_bytes(21, 4 << 20);
    let main = t.path().join("main");
    write(&main, "index.db", &data);
    push_tree(&mirror.url, &main, "gomod/linux/main", &t.path().join("s-main")).await;

    // A job on a branch restores main's cache through a restore key.
    let (cache, state) = (t.path().join("job/cache"), t.path().join("job/state"));
    let req = PullRequest {
        root: cache.clone(),
        key: "gomod/linux/pr-7".into(),
        restore_prefixes: vec!["gomod/linux/main".into()],
        delete: false,
        trusted_writers: vec![],
    };
    let pulled = sync::pull(&mut connect(&mirror.url).await, &req, &options(&state)).await.unwrap();
    assert!(!pulled.cache_hit);
    // It changes 1% of the file and saves under its own key: a delta against what it restored.
    data[1_000_000..1_040_000].copy_from_slice(&random_bytes(22, 40_000));
    write(&cache, "index.db", &data);
    let push = PushRequest { root: cache.clone(), key: "gomod/linux/pr-7".into(), profile: Profile::Generic };
    let saved = sync::push(&mut connect(&mirror.url).await, &push, &options(&state)).await.unwrap();
    assert_eq!(saved.blobs_delta, 1);
    assert!(saved.bytes_sent < data.len() as u64 / 20, "sent {}", saved.bytes_sent);

    // The next job hits its exact key, changes nothing, and its save does nothing.
    let (cache2, state2) = (t.path().join("job2/cache"), t.path().join("job2/state"));
    let req = PullRequest {
        root: cache2.clone(),
        key: "gomod/linux/pr-7".into(),
        restore_prefixes: vec![],
        delete: false,
        trusted_writers: vec![],
    };
    assert!(sync::pull(&mut connect(&mirror.url).await, &req, &options(&state2)).await.unwrap().cache_hit);
    let push = PushRequest { root: cache2, key: "gomod/linux/pr-7".into(), profile: Profile::Generic };
    let noop = sync::push(&mut connect(&mirror.url).await, &push, &options(&state2)).await.unwrap();
    assert!(noop.unchanged && noop.generation == saved.generation);
    assert!(noop.bytes_sent < 2048, "a no-op save sent {}", noop.bytes_sent);
}

/// Rewrites the boot id in every unsynced-pull marker, as a restart would make it stale.
fn pretend_the_machine_restarted(state: &std::path::Path) -> usize {
    let markers: Vec<_> = std::fs::read_dir(state.join("unsynced")).map_or(vec![], |d| d.flatten().collect());
    for m in &markers {
        let text = std::fs::read_to_string(m.path()).unwrap();
        let mut marker: serde_json::Value = serde_json::from_str(&text).unwrap();
        marker["boot_id"] = "a-boot-before-the-crash".into();
        std::fs::write(m.path(), marker.to_string()).unwrap();
    }
    markers.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_cut_short_by_a_restart_is_rechecked_before_anything_is_pushed() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, xdg) = (t.path().join("src"), t.path().join("dst"), t.path().join("xdg"));
    let state = xdg.join("cachesync");
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let data = random_bytes(5, 300_000);
    write(&src, "mod/v1.zip", &data);
    write(&src, "mod/v1.mod", b"module example.com/m\n");
    push_tree(&mirror.url, &src, "ci/durable", &t.path().join("src-state")).await;

    // A pull does not wait for the disk; it leaves a marker naming this boot,
    // and the next push in the same boot syncs and drops it.
    let pull = |root: std::path::PathBuf| {
        let (url, state) = (mirror.url.clone(), state.clone());
        async move { sync::pull(&mut connect(&url).await, &PullRequest::new(root, "ci/durable"), &options(&state)).await }
    };
    pull(dst.clone()).await.unwrap();
    assert_eq!(std::fs::read_dir(state.join("unsynced")).unwrap().count(), 1, "the pull left a marker");
    push_tree(&mirror.url, &dst, "ci/durable", &state).await;
    assert!(
        std::fs::read_dir(state.join("unsynced")).unwrap().next().is_none(),
        "the push synced and dropped the marker"
    );

    // Another restore, then a crash before write-back: same size, same mtime, wrong bytes.
    let dst2 = t.path().join("dst2");
    pull(dst2.clone()).await.unwrap();
    assert_eq!(pretend_the_machine_restarted(&state), 1);
    let zip = dst2.join("mod/v1.zip");
    let mtime = std::fs::metadata(&zip).unwrap().modified().unwrap();
    set_mode(&zip, 0o644);
    std::fs::write(&zip, vec![0u8; data.len()]).unwrap();
    std::fs::File::options().write(true).open(&zip).unwrap().set_modified(mtime).unwrap();

    let out = std::process::Command::new(bin())
        .args(["push", "--mirror", &mirror.url, "--key", "ci/durable"])
        .arg(&dst2)
        .env("XDG_STATE_HOME", &xdg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("restarted") && stderr.contains("pull again"), "{stderr}");
    assert_eq!(resolve_generation(&mirror.url, "ci/durable").await, 1, "nothing was pushed");

    // The pull after the restart does not trust the hash cache: it finds and repairs the file.
    pull(dst2.clone()).await.unwrap();
    assert_eq!(std::fs::read(&zip).unwrap(), data);
    push_tree(&mirror.url, &dst2, "ci/durable", &state).await;
    assert_eq!(resolve_generation(&mirror.url, "ci/durable").await, 1, "the repaired tree is the snapshot");

    // The usual case: nothing was lost. The pull after the restart reads
    // every file, repairs nothing, and the push that follows goes through.
    let dst3 = t.path().join("dst3");
    pull(dst3.clone()).await.unwrap();
    assert_eq!(pretend_the_machine_restarted(&state), 1);
    let report = pull(dst3.clone()).await.unwrap();
    assert!(report.unchanged && report.files_hashed == 2, "{report:?}");
    assert!(std::fs::read_dir(state.join("unsynced")).unwrap().next().is_none(), "the re-check dropped the marker");
    push_tree(&mirror.url, &dst3, "ci/durable", &state).await;
    unlock(t.path());
}

async fn resolve_generation(url: &str, key: &str) -> u64 {
    connect(url).await.resolve(key, &[]).await.unwrap().map_or(0, |s| s.generation)
}
