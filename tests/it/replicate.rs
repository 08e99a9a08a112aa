//! Replication between mirrors: one-shot `cachesync replicate` moving only
//! missing blobs (counted at the socket), a mirror replicating on a schedule,
//! and a source that is down at first.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cachesync::config::{MirrorSettings, TransferSettings};
use cachesync::mirror::Mirror;
use cachesync::profile::Profile;
use cachesync::replicate::Source;
use cachesync::rpc::client::ConnectOptions;
use cachesync::schedule::Schedule;
use cachesync::store::SnapshotRecord;
use cachesync::sync::{self, PullRequest, PushRequest};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;
use crate::kill::Proc;

fn tree(root: &Path, v: u64) {
    write(root, "shared/a.bin", &random_bytes(1, 400 << 10));
    write(root, "shared/b.txt", b"the same in every version\n");
    write(root, "changing.bin", &random_bytes(100 + v, 200 << 10));
}

async fn push(url: &str, key: &str, src: &Path, state: &Path) {
    let req = PushRequest { root: src.to_path_buf(), key: key.into(), profile: Profile::Generic };
    sync::push(&mut connect(url).await, &req, &options(state)).await.unwrap();
}

async fn newest(url: &str, key: &str) -> Option<SnapshotRecord> {
    connect(url).await.resolve(key, &[]).await.unwrap()
}

/// `cachesync replicate --json`: its report.
async fn replicate_cli(from: &str, store: &Path, state: &Path) -> serde_json::Value {
    replicate_cli_env(from, store.as_ref(), state, &[]).await
}

/// `cachesync replicate --json` into `store` (a directory or URL) with more environment.
pub(crate) async fn replicate_cli_env(
    from: &str,
    store: &OsStr,
    state: &Path,
    env: &[(String, String)],
) -> serde_json::Value {
    let args: Vec<&OsStr> =
        vec!["replicate".as_ref(), "--from".as_ref(), from.as_ref(), "--store".as_ref(), store, "--json".as_ref()];
    let (state, env) = (state.to_path_buf(), env.to_vec());
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin()).args(&args).envs(env).env("XDG_STATE_HOME", state).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_copies_newest_snapshots_and_then_only_what_is_missing() {
    let t = tempfile::tempdir().unwrap();
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    let source = spawn_mirror(&t.path().join("source")).await;
    tree(&src, 1);
    push(&source.url, "go/mod/main", &src, &state).await;
    push(&source.url, "go/mod/dev", &src, &state).await;
    write(&src, "changing.bin", &random_bytes(7, 200 << 10));
    push(&source.url, "go/mod/dev", &src, &state).await; // dev#2: one blob more

    let replica_store = t.path().join("replica");
    let first = replicate_cli(&source.url, &replica_store, &state).await;
    assert_eq!(
        (first["keys"].as_u64(), first["snapshots"].as_u64(), first["blobs"].as_u64()),
        (Some(2), Some(2), Some(4))
    );
    assert!(first["bytes_received"].as_u64().unwrap() > 800 << 10, "{first}");

    let again = replicate_cli(&source.url, &replica_store, &state).await;
    assert_eq!((again["snapshots"].as_u64(), again["blobs"].as_u64()), (Some(0), Some(0)));
    assert!(again["bytes_received"].as_u64().unwrap() < 4096, "only the key list crossed: {again}");

    // One new file at the source: the next run fetches that blob alone.
    write(&src, "changing.bin", &random_bytes(8, 200 << 10));
    push(&source.url, "go/mod/main", &src, &state).await;
    let third = replicate_cli(&source.url, &replica_store, &state).await;
    assert_eq!((third["snapshots"].as_u64(), third["blobs"].as_u64()), (Some(1), Some(1)));
    let received = third["bytes_received"].as_u64().unwrap();
    assert!(received > 200 << 10 && received < 300 << 10, "one 200 KiB blob: {third}");

    let replica = spawn_mirror(&replica_store).await;
    for key in ["go/mod/main", "go/mod/dev"] {
        let (theirs, ours) = (newest(&source.url, key).await.unwrap(), newest(&replica.url, key).await.unwrap());
        assert_eq!(ours, theirs, "same record, provenance and generation");
        let dst = t.path().join(format!("dst-{}", key.replace('/', "-")));
        let mut client = connect(&replica.url).await;
        sync::pull(&mut client, &PullRequest::new(&dst, key), &options(&state)).await.unwrap();
    }
    assert_same_tree(&src, &t.path().join("dst-go-mod-main"));
}

/// A mirror over `store` that replicates from `from` on `schedule`.
async fn replica_mirror(store: &Path, from: &str, schedule: Schedule) -> (String, SocketAddr, CancellationToken) {
    let settings = MirrorSettings {
        listen: "127.0.0.1:0".into(),
        store: store.to_string_lossy().into(),
        metrics_listen: "127.0.0.1:0".into(),
        ..MirrorSettings::default()
    };
    let source = Source {
        url: from.into(),
        connect: ConnectOptions::new(Duration::from_secs(5)),
        keys: "nightly/".into(),
        max_blob_bytes: 1 << 30,
    };
    let mirror =
        Mirror::bind(&settings, &TransferSettings::default()).await.unwrap().with_replication(source, schedule);
    let (url, metrics) = (format!("http://{}", mirror.local_addr().unwrap()), mirror.metrics_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(mirror.run(shutdown.clone()));
    (url, metrics, shutdown)
}

async fn wait_replicated(replica: &str, source: &str, key: &str) {
    let want = newest(source, key).await.unwrap().manifest;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while newest(replica, key).await.is_none_or(|s| s.manifest != want) {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {key} to replicate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_replicates_on_its_schedule_only_the_keys_asked_for() {
    let t = tempfile::tempdir().unwrap();
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    let source = spawn_mirror(&t.path().join("source")).await;
    tree(&src, 1);
    push(&source.url, "nightly/linux", &src, &state).await;
    push(&source.url, "private/linux", &src, &state).await;
    let (replica, metrics, stop) =
        replica_mirror(&t.path().join("replica"), &source.url, Schedule::Every(Duration::from_millis(200))).await;
    wait_replicated(&replica, &source.url, "nightly/linux").await;
    assert!(newest(&replica, "private/linux").await.is_none(), "only keys under nightly/");

    tree(&src, 2);
    push(&source.url, "nightly/linux", &src, &state).await;
    wait_replicated(&replica, &source.url, "nightly/linux").await;
    let dst = t.path().join("dst");
    sync::pull(&mut connect(&replica).await, &PullRequest::new(&dst, "nightly/linux"), &options(&state)).await.unwrap();
    assert_same_tree(&src, &dst);
    let (_, text) = crate::metrics::scrape(metrics).await;
    assert!(crate::metrics::value(&text, "cachesync_replication_runs_total{result=\"ok\"}") >= 2, "{text}");
    assert!(crate::metrics::value(&text, "cachesync_replication_last_success_timestamp_seconds") > 1_700_000_000);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_is_down_is_retried_and_caught_up_with() {
    let t = tempfile::tempdir().unwrap();
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    let source_store = t.path().join("source");
    let first = spawn_mirror(&source_store).await;
    tree(&src, 1);
    push(&first.url, "nightly/x", &src, &state).await;
    first.stop().await;
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let from = format!("http://{addr}");
    let store = t.path().join("replica");
    let args: [&OsStr; 9] = [
        "mirror".as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--store".as_ref(),
        store.as_ref(),
        "--replicate-from".as_ref(),
        from.as_ref(),
        "--replicate-interval".as_ref(),
        "1h".as_ref(),
    ];
    let replica = Proc::start_env(&state, &args, &[]);
    let log = replica.stderr.clone();
    wait_for(60, "a failed attempt to be logged", || log.lock().unwrap().contains("replication failed; retrying"))
        .await;

    // The source comes up on that address: a retry of the same run catches up.
    let store_text = source_store.to_string_lossy().into();
    let settings = MirrorSettings { listen: addr.to_string(), store: store_text, ..MirrorSettings::default() };
    let source = spawn_mirror_with(settings).await;
    wait_for(60, "a retry to succeed", || log.lock().unwrap().contains("replication done")).await;
    let text = replica.stderr();
    assert!(text.contains("retry_in"), "backoff logged: {text}");
    drop(replica);
    let replica = spawn_mirror(&store).await;
    assert_eq!(
        newest(&replica.url, "nightly/x").await.unwrap().manifest,
        newest(&source.url, "nightly/x").await.unwrap().manifest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_killed_midway_leaves_no_snapshot_and_a_rerun_completes() {
    let t = tempfile::tempdir().unwrap();
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    let source = spawn_mirror(&t.path().join("source")).await;
    for i in 0..6 {
        write(&src, &format!("big/{i}.bin"), &random_bytes(50 + i, 32 << 20));
    }
    push(&source.url, "nightly/big", &src, &state).await;

    let replica = t.path().join("replica");
    let args: [&OsStr; 5] =
        ["replicate".as_ref(), "--from".as_ref(), source.url.as_ref(), "--store".as_ref(), replica.as_ref()];
    let mut job = Proc::start_env(&state, &args, &[]);
    job.wait_while_running("a first blob to land", || crate::kill::blob_count(&replica) >= 1).await;
    job.kill_mid_job();
    let landed = crate::kill::blob_count(&replica) as u64;
    assert!(!replica.join("keys").exists(), "no snapshot record after a kill");

    let done = replicate_cli(&source.url, &replica, &state).await;
    assert_eq!(done["snapshots"].as_u64(), Some(1));
    assert_eq!(done["blobs"].as_u64(), Some(6 - landed), "blobs that landed are not fetched again: {done}");
    let dst = t.path().join("dst");
    let mirror = spawn_mirror(&replica).await;
    let mut client = connect(&mirror.url).await;
    sync::pull(&mut client, &PullRequest::new(&dst, "nightly/big"), &options(&state)).await.unwrap();
    assert_same_tree(&src, &dst);
}
