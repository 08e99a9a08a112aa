//! Watching real `cachesync agent` processes from outside: `cachesync status
//! --agent` (a root's last success after a sync, a peer backing off while it
//! is down, the agent's tokens, a plain mirror refused in one line) and the
//! agents' Prometheus endpoints after a sync in a mesh (and a mirror's count
//! of what deltas saved).

use serde_json::Value;

use crate::agent::{CONVERGE_SECS, Node, free_port, holds, stop};
use crate::cli::{FAILURE, assert_fails, one_json_object, run_async};
use crate::helpers::*;
use crate::metrics::{scrape, value};

/// `cachesync --config <node's> status --agent [ARGS]`: the agent's URL comes from its configuration.
async fn status(node: &Node, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let config = node.dir.join("agent.toml");
    let mut all = vec!["--config", config.to_str().unwrap(), "status", "--agent"];
    all.extend_from_slice(args);
    run_async(&all, env).await
}

/// The one root of `--json` output, after checking the command succeeded.
fn root_of(outcome: &(i32, String, String)) -> Value {
    let (code, stdout, stderr) = outcome;
    assert_eq!(*code, 0, "status failed: {stderr}");
    let v = one_json_object(stdout);
    let roots = v["roots"].as_array().unwrap_or_else(|| panic!("no roots in {v}"));
    assert_eq!(roots.len(), 1, "{v}");
    roots[0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_a_roots_last_success_after_a_sync() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (Node::new(t.path(), "a"), Node::new(t.path(), "b"));
    a.configure(&[&b], "");
    b.configure(&[&a], "");
    let (pa, pb) = (a.start().await, b.start().await);
    write(&a.root(), "one.txt", b"synced");
    wait_for(CONVERGE_SECS, "b to get one.txt", || holds(&b.root(), "one.txt", b"synced")).await;
    // The push landed; a's status publishes it after the cycle.
    let done = |r: &Value| r["pushes"].as_u64() >= Some(1) && r["destinations"][0]["up_to_date"] == true;
    let root = poll_status(&a, &[], done).await;
    assert_eq!(root["name"], "tree");
    assert_eq!(root["key"], crate::agent::KEY);
    assert_eq!(root["path"], a.root().to_str().unwrap());
    assert_eq!((root["profile"].as_str(), root["direction"].as_str()), (Some("generic"), Some("both")));
    assert!(root["last_success_unix_ms"].as_i64() > Some(0), "{root}");
    assert!(root["next_run_unix_ms"].as_i64() > Some(0), "{root}");
    assert_eq!(root["files"], 1);
    assert_eq!(root["last_push_files"], 1, "{root}");
    assert!(root["last_push_bytes"].as_u64() > Some(0), "{root}");
    let dest = &root["destinations"][0];
    assert_eq!((dest["url"].as_str(), dest["kind"].as_str()), (Some(b.url().as_str()), Some("peer")));
    assert_eq!(dest["backing_off"], false);
    // People read one line per root, destinations indented below it.
    let (code, text, stderr) = status(&a, &[], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("tree: idle  ") && lines[0].contains("1 files"), "{text}");
    assert!(!lines[0].contains("last success never"), "{text}");
    assert!(lines[1].starts_with(&format!("  peer {}: up to date, holds ", b.url())), "{text}");
    stop(pa).await;
    stop(pb).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_a_peer_backing_off_and_needs_the_agents_token() {
    let t = tempfile::tempdir().unwrap();
    let (a, down) = (Node::new(t.path(), "a"), Node::new(t.path(), "down"));
    let tokens = t.path().join("tokens.toml");
    std::fs::write(&tokens, "[[token]]\nname = \"ops\"\nsecret = \"ops-read-secret-0001\"\nrole = \"read\"\n").unwrap();
    a.configure(&[&down], &format!("tokens_file = {tokens:?}"));
    write(&a.root(), "waiting.txt", b"for a peer that is down");
    let pa = a.start().await;
    let token = [("CACHESYNC_CLIENT__TOKEN", "ops-read-secret-0001")];
    let root = poll_status(&a, &token, |r| r["state"] == "backing off").await;
    let dest = &root["destinations"][0];
    assert_eq!(dest["url"], down.url());
    assert_eq!((dest["backing_off"].as_bool(), dest["up_to_date"].as_bool()), (Some(true), Some(false)));
    assert!(dest["failures"].as_u64() >= Some(1), "{root}");
    assert!(dest["retry_unix_ms"].as_i64() > Some(0), "{root}");
    assert!(dest["last_error"].as_str().is_some_and(|e| e.contains(&down.url())), "{root}");
    assert!(root["last_error"].as_str().is_some(), "{root}");
    // The same in words (polled: for a moment while each retry runs, the peer is not backing off).
    let line = format!("  peer {}: behind", down.url());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(CONVERGE_SECS);
    loop {
        let (code, text, stderr) = status(&a, &[], &token).await;
        assert_eq!(code, 0, "{stderr}");
        if text.lines().any(|l| l.starts_with(&line) && l.contains("backing off after")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
    }
    // Like every other read, status needs one of the agent's tokens.
    assert_fails(&status(&a, &[], &[]).await, FAILURE, &["needs a token"]);
    stop(pa).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_of_a_plain_mirror_says_it_is_not_an_agent() {
    let t = tempfile::tempdir().unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    for json in [&[][..], &["--json"][..]] {
        let mut args = vec!["status", "--agent", mirror.url.as_str()];
        args.extend_from_slice(json);
        assert_fails(&run_async(&args, &[]).await, FAILURE, &[&mirror.url, "is not a cachesync agent"]);
    }
}

/// The node's root as `status --agent --json` shows it, once `cond` holds;
/// panics after [`CONVERGE_SECS`].
async fn poll_status(node: &Node, env: &[(&str, &str)], cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(CONVERGE_SECS);
    loop {
        let root = root_of(&status(node, &["--json"], env).await);
        if cond(&root) {
            return root;
        }
        assert!(std::time::Instant::now() < deadline, "timed out; the status is {root}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A sample of the agent's `root="tree"` series.
fn tree(text: &str, name: &str) -> u64 {
    value(text, &format!("cachesync_agent_{name}{{root=\"tree\"}}"))
}

async fn scrape_node(port: u16) -> String {
    let (status, body) = scrape(([127, 0, 0, 1], port).into()).await;
    assert!(status.contains("200"), "{status}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_of_agents_in_a_mesh_move_with_a_sync() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (Node::new(t.path(), "a"), Node::new(t.path(), "b"));
    let (ma, mb) = (free_port(), free_port());
    a.configure(&[&b], &format!("metrics_listen = \"127.0.0.1:{ma}\""));
    b.configure(&[&a], "");
    // b's endpoint from the flag instead of the file.
    let (pa, pb) = (a.start().await, b.start_with(&["--metrics-listen", &format!("127.0.0.1:{mb}")]).await);
    let before = scrape_node(ma).await;
    assert_eq!(tree(&before, "pushes_total"), 0);
    assert!(before.contains("# TYPE cachesync_agent_files_sent_total counter"), "{before}");

    let data = random_bytes(3, 100_000);
    write(&a.root(), "one.bin", &data);
    wait_for(CONVERGE_SECS, "b to get one.bin", || holds(&b.root(), "one.bin", &data)).await;
    // The same content under another name: b has it, nothing is uploaded.
    write(&a.root(), "same.bin", &data);
    wait_for(CONVERGE_SECS, "b to get same.bin", || holds(&b.root(), "same.bin", &data)).await;
    let sent = |text: &str| tree(text, "pushes_total") >= 2 && tree(text, "root_files") == 2;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(CONVERGE_SECS);
    let mut after = scrape_node(ma).await;
    while !sent(&after) {
        assert!(std::time::Instant::now() < deadline, "a's pushes were not counted:\n{after}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        after = scrape_node(ma).await;
    }
    assert_eq!(tree(&after, "files_sent_total"), 1, "{after}");
    assert!(tree(&after, "bytes_sent_total") > 100_000, "{after}");
    assert_eq!(tree(&after, "errors_total"), 0, "{after}");
    assert!(tree(&after, "cycles_total") >= 2, "{after}");
    assert_eq!(tree(&after, "root_bytes"), 200_000, "{after}");
    assert!(tree(&after, "last_success_timestamp_seconds") > 1_700_000_000, "{after}");
    let got = scrape_node(mb).await;
    assert_eq!(value(&got, "cachesync_mirror_blob_bytes_received_total"), 100_000, "{got}");
    assert_eq!(tree(&got, "files_received_total"), 1, "one file written, the other copied locally: {got}");
    stop(pa).await;
    stop(pb).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_counts_the_bytes_deltas_saved() {
    let t = tempfile::tempdir().unwrap();
    let settings = cachesync::config::MirrorSettings {
        listen: "127.0.0.1:0".into(),
        store: t.path().join("store").to_string_lossy().into(),
        metrics_listen: "127.0.0.1:0".into(),
        ..cachesync::config::MirrorSettings::default()
    };
    let mirror =
        cachesync::mirror::Mirror::bind(&settings, &cachesync::config::TransferSettings::default()).await.unwrap();
    let (url, addr) = (format!("http://{}", mirror.local_addr().unwrap()), mirror.metrics_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(mirror.run(shutdown.clone()));
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    let mut data = random_bytes(9, 1 << 20);
    write(&src, "big.bin", &data);
    let req = cachesync::sync::PushRequest {
        root: src.clone(),
        key: "d/k".into(),
        profile: cachesync::profile::Profile::Generic,
    };
    let mut client = connect(&url).await;
    cachesync::sync::push(&mut client, &req, &options(&state)).await.unwrap();
    data[1000..1010].copy_from_slice(b"changed!!!");
    write(&src, "big.bin", &data);
    let report = cachesync::sync::push(&mut client, &req, &options(&state)).await.unwrap();
    assert_eq!(report.blobs_delta, 1, "{report:?}");
    let (_, text) = scrape(addr).await;
    assert!(value(&text, "cachesync_mirror_delta_saved_bytes_total") > 900_000, "{text}");
    shutdown.cancel();
}
