//! The mirror's Prometheus endpoint: scraped over HTTP after real pushes and pulls.

use std::io::{Read, Write};
use std::net::SocketAddr;

use cachesync::config::{MirrorSettings, TransferSettings};
use cachesync::mirror::Mirror;
use cachesync::profile::Profile;
use cachesync::sync::{self, PullRequest, PushRequest};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// `GET /metrics` with a plain HTTP/1.1 request: the status line and the body.
pub(crate) async fn scrape(addr: SocketAddr) -> (String, String) {
    tokio::task::spawn_blocking(move || {
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut resp = String::new();
        conn.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_string(), body.to_string())
    })
    .await
    .unwrap()
}

pub(crate) fn value(text: &str, name: &str) -> u64 {
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(name));
    let line = line.unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_pushes_and_pulls() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = (t.path().join("src"), t.path().join("dst"), t.path().join("state"));
    let settings = MirrorSettings {
        listen: "127.0.0.1:0".into(),
        store: t.path().join("store").to_string_lossy().into(),
        metrics_listen: "127.0.0.1:0".into(),
        ..MirrorSettings::default()
    };
    let mirror = Mirror::bind(&settings, &TransferSettings::default()).await.unwrap();
    let (url, addr) = (format!("http://{}", mirror.local_addr().unwrap()), mirror.metrics_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(mirror.run(shutdown.clone()));

    let (status, before) = scrape(addr).await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(value(&before, "cachesync_mirror_commits_total"), 0);

    write(&src, "a.bin", &random_bytes(1, 100_000));
    write(&src, "b.bin", &random_bytes(2, 50_000));
    let push = PushRequest { root: src.clone(), key: "m/k".into(), profile: Profile::Generic };
    let mut client = connect(&url).await;
    sync::push(&mut client, &push, &options(&state)).await.unwrap();
    let (_, after) = scrape(addr).await;
    assert_eq!(value(&after, "cachesync_mirror_blobs_received_total"), 2);
    assert_eq!(value(&after, "cachesync_mirror_blob_bytes_received_total"), 150_000);
    assert_eq!(value(&after, "cachesync_mirror_commits_total"), 1);

    // The same push under another key: both blobs deduplicated, nothing received.
    let other = PushRequest { key: "m/other".into(), ..push };
    sync::push(&mut client, &other, &options(&state)).await.unwrap();
    sync::pull(&mut client, &PullRequest::new(&dst, "m/k"), &options(&state)).await.unwrap();
    let (_, last) = scrape(addr).await;
    assert_eq!(value(&last, "cachesync_mirror_blobs_received_total"), 2);
    assert_eq!(value(&last, "cachesync_mirror_dedupe_blobs_total"), 2);
    assert_eq!(value(&last, "cachesync_mirror_dedupe_bytes_total"), 150_000);
    assert_eq!(value(&last, "cachesync_mirror_commits_total"), 2);
    assert_eq!(value(&last, "cachesync_mirror_blobs_sent_total"), 2);
    assert_eq!(value(&last, "cachesync_mirror_blob_bytes_sent_total"), 150_000);
    assert_eq!(value(&last, "cachesync_mirror_errors_total"), 0);
    assert!(last.contains("# TYPE cachesync_mirror_commits_total counter"), "{last}");
    shutdown.cancel();
}
