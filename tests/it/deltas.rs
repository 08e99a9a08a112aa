//! Only the changed bytes cross the wire, measured at the socket.

use cachesync::hash::Hash;
use cachesync::profile::Profile;
use cachesync::store::{Store, StoreError};
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
    // A blob this large gets its signature in the background, before anyone asks.
    let hex = Hash::of(&data).to_hex();
    let sig = t.path().join("store/sigs").join(&hex[..2]).join(&hex);
    wait_for(20, "the signature of the first version", || sig.exists()).await;

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

/// A node pulls a new version as a delta against the mirror's signature of
/// the blob its file holds, and sends no signature. When its file is not
/// what the mirror has (changed here, or changed behind a stale hash cache),
/// it signs the file itself, and the result is exact either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_names_its_base_and_signs_it_only_when_the_mirror_cannot_use_it() {
    const SIZE: usize = 8 << 20;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let mut data = random_bytes(5, SIZE);
    write(&src, "big.bin", &data);
    set_mtime(&src.join("big.bin"), 1_600_000_000, 0); // old enough for hash caches to trust
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let push = PushRequest { root: src.clone(), key: "k".into(), profile: Profile::Generic };
    sync::push(&mut connect(&mirror.url).await, &push, &options(&t.path().join("s"))).await.unwrap();
    let nodes = ["a", "b", "c"].map(|n| (t.path().join(n), options(&t.path().join(format!("state-{n}")))));
    for (root, opts) in &nodes {
        sync::pull(&mut connect(&mirror.url).await, &PullRequest::new(root, "k"), opts).await.unwrap();
    }
    // b's file changes, c's changes behind its hash cache (same size, mtime and inode).
    let file = |n: usize| nodes[n].0.join("big.bin");
    let mut other = std::fs::read(file(1)).unwrap();
    other[SIZE / 2..SIZE / 2 + 4096].copy_from_slice(&random_bytes(6, 4096));
    std::fs::write(file(1), &other).unwrap();
    let c = std::fs::OpenOptions::new().write(true).open(file(2)).unwrap();
    // Where the new version keeps the old bytes: the delta copies them from the base.
    std::os::unix::fs::FileExt::write_all_at(&c, &random_bytes(7, 4096), SIZE as u64 / 2 + (64 << 10)).unwrap();
    set_mtime(&file(2), 1_600_000_000, 0);

    change_one_percent(&mut data);
    write(&src, "big.bin", &data);
    sync::push(&mut connect(&mirror.url).await, &push, &options(&t.path().join("s"))).await.unwrap();
    let signature = cachesync::delta::signature(&other).len() as u64;
    for (i, (root, opts)) in nodes.iter().enumerate() {
        let pulled = sync::pull(&mut connect(&mirror.url).await, &PullRequest::new(root, "k"), opts).await.unwrap();
        assert_eq!((pulled.blobs_delta, pulled.blobs_whole), (1, 0), "node {i}: {pulled:?}");
        assert!(pulled.bytes_received < SIZE as u64 / 5, "node {i} received {}", pulled.bytes_received);
        match i {
            0 => {
                assert!(pulled.bytes_sent < signature / 4, "a sent {} bytes, signing is {signature}", pulled.bytes_sent)
            }
            _ => assert!(pulled.bytes_sent > signature, "node {i} sent {} bytes, no signature", pulled.bytes_sent),
        }
        assert_eq!(std::fs::read(root.join("big.bin")).unwrap(), data, "node {i}");
    }
}

/// Signatures are kept beside their blobs and served from there; one that
/// does not fit its blob (a crash while it was written) is made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_keeps_signatures_and_makes_a_damaged_one_again() {
    use std::io::Write;
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path().to_str().unwrap()).unwrap();
    let data = random_bytes(8, 1 << 20);
    let h = Hash::of(&data);
    let (staged, mut file) = store.staging_file().unwrap();
    file.write_all(&data).unwrap();
    store.publish_blob(&h, &staged).await.unwrap();
    let want = cachesync::delta::signature(&data);
    assert_eq!(store.signature(&h).await.unwrap(), want);
    let hex = h.to_hex();
    let kept = t.path().join("sigs").join(&hex[..2]).join(&hex);
    assert_eq!(std::fs::read(&kept).unwrap(), want);

    // Served from the file: another well-formed signature there comes back as is.
    let mut other = want.clone();
    *other.last_mut().unwrap() ^= 1;
    std::fs::write(&kept, &other).unwrap();
    assert_eq!(store.signature(&h).await.unwrap(), other);
    // A delta against it that did not rebuild its file makes the mirror forget it.
    store.forget_signature(&h).await;
    assert!(!kept.exists());
    assert_eq!(store.signature(&h).await.unwrap(), want);
    // One that cannot describe the blob is made again, and replaced.
    std::fs::write(&kept, &want[..want.len() - 1]).unwrap();
    assert_eq!(store.signature(&h).await.unwrap(), want);
    assert_eq!(std::fs::read(&kept).unwrap(), want);
    let missing = store.signature(&Hash::of(b"absent")).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");
}
