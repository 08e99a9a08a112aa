//! Only the changed bytes cross the wire, measured at the socket.

use cachesync::profile::Profile;
use cachesync::sync::{self, PullRequest, PushRequest};

use crate::helpers::*;

const SIZE: usize = 64 << 20;

/// Changes about 1% of `data`: 64 scattered runs of 10 KiB.
fn change_one_percent(data: &mut [u8]) {
    let fresh = random_bytes(99, 10 << 10);
    for i in 0..64 {
        let at = i * (data.len() / 64) + 1234;
        data[at..at + fresh.len()].copy_from_slice(&fresh);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_push_of_a_one_percent_change_sends_under_five_percent() {
    let t = tempfile::tempdir().unwrap();
    let (src, old_copy, state) = (t.path().join("src"), t.path().join("old"), t.path().join("state"));
    let mut data = random_bytes(3, SIZE);
    write(&src, "db/big.bin", &data);
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let opts = options(&state);
    let req = PushRequest { root: src.clone(), key: "delta/k".into(), profile: Profile::Generic };
    let mut client = connect(&mirror.url).await;
    let first = sync::push(&mut client, &req, &opts).await.unwrap();
    assert!(first.bytes_sent > SIZE as u64, "first push sends it all: {}", first.bytes_sent);

    // Another node holds the old version.
    let pull_old = PullRequest {
        root: old_copy.clone(),
        key: "delta/k".into(),
        restore_prefixes: vec![],
        delete: false,
        trusted_writers: vec![],
    };
    sync::pull(&mut connect(&mirror.url).await, &pull_old, &options(&t.path().join("state-b"))).await.unwrap();

    change_one_percent(&mut data);
    write(&src, "db/big.bin", &data);
    let mut client = connect(&mirror.url).await;
    let second = sync::push(&mut client, &req, &opts).await.unwrap();
    assert_eq!((second.blobs_delta, second.blobs_whole), (1, 0));
    assert!(second.bytes_sent < SIZE as u64 / 20, "second push sent {} bytes of {SIZE}", second.bytes_sent);

    // The other node pulls the new version as a delta against its old one.
    let mut client = connect(&mirror.url).await;
    let pulled = sync::pull(&mut client, &pull_old, &options(&t.path().join("state-b"))).await.unwrap();
    assert_eq!(pulled.blobs_delta, 1);
    assert!(pulled.bytes_received < SIZE as u64 / 20, "pull received {} bytes of {SIZE}", pulled.bytes_received);
    assert_eq!(std::fs::read(old_copy.join("db/big.bin")).unwrap(), data);
}

/// A new version of a module carries files much like the old version's: each
/// travels as a delta against its kin (rsync's `--fuzzy`), both ways, and a
/// node that has the old version pulls only the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_module_version_travels_as_a_delta_against_the_previous_one() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    let v1 = random_bytes(41, 1 << 20);
    let mut v2 = v1.clone();
    for at in [1_000, 300_000, 700_000] {
        v2[at..at + 1000].copy_from_slice(&random_bytes(at as u64, 1000));
    }
    write(&src, "x.io/m@v1.0.0/testdata/corpus.bin", &v1);
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let push = PushRequest { root: src.clone(), key: "gomod".into(), profile: Profile::GoModTrees };
    let pull = PullRequest::new(&dst, "gomod");
    let (push_opts, pull_opts) = (options(&t.path().join("s1")), options(&t.path().join("s2")));
    sync::push(&mut connect(&mirror.url).await, &push, &push_opts).await.unwrap();
    sync::pull(&mut connect(&mirror.url).await, &pull, &pull_opts).await.unwrap();

    write(&src, "x.io/m@v1.1.0/testdata/corpus.bin", &v2);
    let pushed = sync::push(&mut connect(&mirror.url).await, &push, &push_opts).await.unwrap();
    assert_eq!((pushed.blobs_delta, pushed.blobs_whole), (1, 0), "{pushed:?}");
    assert!(pushed.bytes_sent < (v2.len() / 10) as u64, "sent {}", pushed.bytes_sent);
    let pulled = sync::pull(&mut connect(&mirror.url).await, &pull, &pull_opts).await.unwrap();
    assert_eq!((pulled.blobs_delta, pulled.blobs_whole), (1, 0), "{pulled:?}");
    assert!(pulled.bytes_received < (v2.len() / 10) as u64, "received {}", pulled.bytes_received);
    assert_same_tree(&src, &dst);

    // Into an empty root: one version whole, then the other against it.
    let fresh = t.path().join("fresh");
    let pull = PullRequest::new(&fresh, "gomod");
    let pulled = sync::pull(&mut connect(&mirror.url).await, &pull, &options(&t.path().join("s3"))).await.unwrap();
    assert_eq!((pulled.blobs_delta, pulled.blobs_whole), (1, 1), "{pulled:?}");
    assert!(pulled.bytes_received < (v1.len() + v1.len() / 10) as u64, "received {}", pulled.bytes_received);
    assert_same_tree(&src, &fresh);

    // By default nothing is delta-encoded against its kin over loopback.
    let opts = sync::SyncOptions { fuzzy: sync::When::Remote, ..options(&t.path().join("s4")) };
    let pull = PullRequest::new(t.path().join("local"), "gomod");
    let pulled = sync::pull(&mut connect(&mirror.url).await, &pull, &opts).await.unwrap();
    assert_eq!((pulled.blobs_delta, pulled.blobs_whole), (0, 2), "{pulled:?}");
}
