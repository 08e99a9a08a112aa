//! What a hostile or broken peer can send: every message is refused with a
//! clear status, and nothing it names becomes visible on either side.

use std::os::unix::fs::symlink;
use std::path::Path;

use cachesync::hash::Hash;
use cachesync::profile::Profile;
use cachesync::rpc::pb::{self, cache_sync_client::CacheSyncClient};
use cachesync::sync::{self, PullRequest, PushRequest};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::helpers::*;

type Intercept = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
pub(crate) type Raw = CacheSyncClient<InterceptedService<Channel, Intercept>>;

pub(crate) async fn raw(url: &str, version: Option<&'static str>) -> Raw {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string()).unwrap().connect().await.unwrap();
    let intercept: Intercept = Box::new(move |mut req| {
        if let Some(v) = version {
            req.metadata_mut().insert("cachesync-protocol", v.parse().unwrap());
        }
        Ok(req)
    });
    CacheSyncClient::with_interceptor(channel, intercept)
}

/// One raw manifest entry: (kind 0 file / 1 dir / 2 symlink, path, target).
fn raw_manifest(entries: &[(u8, &str, &str)]) -> Vec<u8> {
    let mut out = b"CSM1".to_vec();
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (kind, path, target) in entries {
        out.push(*kind);
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path.as_bytes());
        let size: u64 = if *kind == 0 { 5 } else { 0 };
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&0o644u32.to_le_bytes());
        out.extend_from_slice(&1_600_000_000_000_000_000i64.to_le_bytes());
        match kind {
            0 => out.extend_from_slice(Hash::of(b"hello").as_bytes()),
            2 => {
                out.extend_from_slice(&(target.len() as u32).to_le_bytes());
                out.extend_from_slice(target.as_bytes());
            }
            _ => {}
        }
    }
    out
}

const UNSAFE: &[&[(u8, &str, &str)]] = &[
    &[(0, "/etc/passwd", "")],
    &[(0, "../escape", "")],
    &[(1, "a", ""), (0, "a/../../b", "")],
    &[(2, "l", "."), (0, "l/x", "")],
    &[(2, "l", "../../etc")],
    &[(2, "l", "/etc")],
    // A chain: d/up -> .. is inside, but esc -> d/up/.. resolves above the root.
    &[(1, "d", ""), (2, "d/up", ".."), (2, "esc", "d/up/..")],
    // Through an entry the manifest does not describe (a local link to /etc, say).
    &[(2, "l", "x/passwd")],
    // The receiver's staging directory is reserved.
    &[(0, ".cachesync.tmp/s5", "")],
];

async fn commit_raw(client: &mut Raw, key: &str, bytes: &[u8]) -> Result<pb::CommitResponse, Status> {
    use pb::commit_frame::Frame;
    let header = pb::CommitHeader {
        key: key.into(),
        manifest_id: Hash::of(bytes).as_bytes().to_vec(),
        manifest_size: bytes.len() as u64,
        profile: "generic".into(),
        base: String::new(),
        base_manifest_id: Vec::new(),
    };
    let frames = vec![
        pb::CommitFrame { frame: Some(Frame::Header(header)) },
        pb::CommitFrame { frame: Some(Frame::ManifestChunk(bytes.to_vec())) },
    ];
    client.commit(futures::stream::iter(frames)).await.map(|r| r.into_inner())
}

async fn key_count(url: &str) -> usize {
    connect(url).await.list_keys("").await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_with_unsafe_paths_are_refused_and_change_nothing() {
    let t = tempfile::tempdir().unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let mut client = raw(&mirror.url, Some("1")).await;
    for entries in UNSAFE {
        let err = commit_raw(&mut client, "evil", &raw_manifest(entries)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{entries:?}: {err:?}");
        assert!(
            err.message().contains("unsafe path")
                || err.message().contains("symlink")
                || err.message().contains("parent"),
            "{}",
            err.message()
        );
    }
    assert_eq!(key_count(&mirror.url).await, 0);
    assert!(!mirror.store.join("manifests").exists(), "no manifest was stored");
}

/// Plants a snapshot directly in a store, as a compromised or buggy mirror would serve it.
fn plant(store: &Path, key: &str, manifest: &[u8]) {
    let id = Hash::of(manifest).to_hex();
    write(store, &format!("manifests/{id}"), manifest);
    let record = serde_json::json!({"key": key, "generation": 1, "manifest": id, "files": 1, "bytes": 5, "created_unix_ms": 1, "profile": "generic"});
    write(store, &format!("keys/{key}/@snap/00000000000000000001"), record.to_string().as_bytes());
    write(store, &format!("blobs/{}/{}", &Hash::of(b"hello").to_hex()[..2], Hash::of(b"hello").to_hex()), b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_refuses_unsafe_manifests_and_leaves_the_tree_alone() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    for (i, entries) in UNSAFE.iter().enumerate() {
        plant(&store, &format!("evil{i}"), &raw_manifest(entries));
    }
    let mirror = spawn_mirror(&store).await;
    let dst = t.path().join("dst");
    write(&dst, "keep", b"mine");
    write(&dst, "ro/file", b"read-only");
    set_mode(&dst.join("ro"), 0o555);
    let before = describe(&dst);
    for i in 0..UNSAFE.len() {
        let mut client = connect(&mirror.url).await;
        let req = PullRequest {
            root: dst.clone(),
            key: format!("evil{i}"),
            restore_prefixes: vec![],
            delete: true,
            trusted_writers: vec![],
        };
        let err = sync::pull(&mut client, &req, &options(&t.path().join("state"))).await.unwrap_err().to_string();
        assert!(err.contains("invalid manifest"), "{err}");
        assert_eq!(describe(&dst), before, "the tree is unchanged after {err}");
        assert!(!dst.join(".cachesync.tmp").exists(), "no staging directory is left");
    }
    unlock(&dst);
    assert!(!t.path().join("escape").exists() && !t.path().join("b").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_symlink_is_never_written_through() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, outside) = (t.path().join("src"), t.path().join("dst"), t.path().join("outside"));
    write(&src, "a/x", b"payload");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    symlink(&outside, dst.join("a")).unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let opts = options(&t.path().join("state"));
    let mut client = connect(&mirror.url).await;
    sync::push(&mut client, &PushRequest { root: src.clone(), key: "k".into(), profile: Profile::Generic }, &opts)
        .await
        .unwrap();
    let mut req = PullRequest::new(&dst, "k");
    let err = sync::pull(&mut client, &req, &opts).await.unwrap_err().to_string();
    assert!(err.contains("--delete"), "{err}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written through the symlink");
    req.delete = true;
    sync::pull(&mut client, &req, &opts).await.unwrap();
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written through the symlink");
    assert!(std::fs::symlink_metadata(dst.join("a")).unwrap().is_dir());
    assert_same_tree(&src, &dst);
}

fn blob_path(store: &Path, data: &[u8]) -> std::path::PathBuf {
    let hex = Hash::of(data).to_hex();
    store.join("blobs").join(&hex[..2]).join(hex)
}

fn flip_byte(path: &Path, at: u64) {
    let mut data = std::fs::read(path).unwrap();
    data[at as usize] ^= 0x55;
    std::fs::write(path, data).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blobs_and_deltas_from_the_mirror_are_never_made_visible() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    let v1 = random_bytes(5, 2 << 20);
    let mut v2 = v1.clone();
    v2[1_000_000..1_010_000].copy_from_slice(&random_bytes(6, 10_000));
    write(&src, "big.bin", &v1);
    let mirror = spawn_mirror(&store).await;
    let opts = options(&t.path().join("state"));
    let push = PushRequest { root: src.clone(), key: "k".into(), profile: Profile::Generic };
    let pull = PullRequest::new(&dst, "k");
    sync::push(&mut connect(&mirror.url).await, &push, &opts).await.unwrap();
    sync::pull(&mut connect(&mirror.url).await, &pull, &options(&t.path().join("state-dst"))).await.unwrap();
    write(&src, "big.bin", &v2);
    write(&src, "new.bin", &random_bytes(7, 300_000));
    sync::push(&mut connect(&mirror.url).await, &push, &opts).await.unwrap();
    // Bit rot in the mirror's copies of both new blobs.
    flip_byte(&blob_path(&store, &v2), 1_500_000);
    flip_byte(&blob_path(&store, &random_bytes(7, 300_000)), 10);
    let err =
        sync::pull(&mut connect(&mirror.url).await, &pull, &options(&t.path().join("state-dst"))).await.unwrap_err();
    assert!(err.to_string().contains("corrupt") && err.to_string().contains("blake3"), "{err}");
    assert_eq!(std::fs::read(dst.join("big.bin")).unwrap(), v1, "the old content stays");
    assert!(!dst.join("new.bin").exists(), "a corrupt new file never appears");
}

fn frame(hash: &[u8], size: u64, base: &[u8], data: Vec<u8>, zstd: bool, last: bool) -> pb::BlobFrame {
    pb::BlobFrame {
        hash: hash.to_vec(),
        size,
        delta_base: base.to_vec(),
        data: data.into(),
        zstd,
        last,
        following: vec![],
    }
}

async fn missing(client: &mut Raw, h: Hash) -> bool {
    let req = pb::MissingBlobsRequest { hashes: vec![h.as_bytes().to_vec()] };
    !client.missing_blobs(req).await.unwrap().into_inner().missing.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_malformed_uploads_are_refused_and_nothing_is_stored() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let src = t.path().join("src");
    let base = random_bytes(9, 1 << 20);
    write(&src, "base.bin", &base);
    let mirror = spawn_mirror(&store).await;
    sync::push(
        &mut connect(&mirror.url).await,
        &PushRequest { root: src, key: "k".into(), profile: Profile::Generic },
        &options(&t.path().join("s")),
    )
    .await
    .unwrap();
    let mut client = raw(&mirror.url, Some("1")).await;
    let claimed = Hash::of(b"what the peer claims");
    let h = claimed.as_bytes();
    let cases: Vec<(&str, Vec<pb::BlobFrame>)> = vec![
        ("content that does not match its hash", vec![frame(h, 5, &[], b"lies!".to_vec(), false, true)]),
        ("more bytes than announced", vec![frame(h, 2, &[], b"lies!".to_vec(), false, true)]),
        ("data before any header", vec![frame(&[], 0, &[], b"x".to_vec(), false, true)]),
        ("a short hash", vec![frame(&h[..5], 1, &[], b"x".to_vec(), false, true)]),
        ("garbage marked as zstd", vec![frame(h, 5, &[], b"not zstd at all".to_vec(), true, true)]),
        ("a stream that ends inside a blob", vec![frame(h, 10, &[], b"12345".to_vec(), false, false)]),
    ];
    // Frames may follow a frame in its message, but only one level deep: an
    // honest blob carrying frames of its own is refused, not stored.
    let (first, second, third) = (b"first".to_vec(), b"second".to_vec(), b"third".to_vec());
    let whole = |c: &Vec<u8>| frame(Hash::of(c).as_bytes(), c.len() as u64, &[], c.clone(), false, true);
    let mut nested = whole(&second);
    nested.following.push(whole(&third));
    let mut outer = whole(&first);
    outer.following.push(nested);
    let err = client.put_blobs(futures::stream::iter([outer])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "nested following frames: {err:?}");
    assert!(missing(&mut client, Hash::of(&second)).await && missing(&mut client, Hash::of(&third)).await);
    for (what, frames) in cases {
        let err = client.put_blobs(futures::stream::iter(frames)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(missing(&mut client, claimed).await, "{what}: nothing stored");
    }
    // A delta that does not reproduce its hash is refused; the client then sends it whole.
    let garbage_delta = vec![frame(h, 5, Hash::of(&base).as_bytes(), b"rs\x026garbage".to_vec(), false, true)];
    let resp = client.put_blobs(futures::stream::iter(garbage_delta)).await.unwrap().into_inner();
    assert_eq!(resp.rejected_deltas, vec![h.to_vec()]);
    assert!(missing(&mut client, claimed).await);
    let leftovers = std::fs::read_dir(store.join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "no staging file is left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_blobs_share_messages_only_when_the_client_asks() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let mut contents: Vec<Vec<u8>> = (0..300).map(|i| random_bytes(100 + i, 10_000)).collect();
    contents.push(random_bytes(99, 3 << 20)); // three frames of its own
    for (i, c) in contents.iter().enumerate() {
        write(&src, &format!("f{i}"), c);
    }
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let push = PushRequest { root: src, key: "k".into(), profile: Profile::Generic };
    sync::push(&mut connect(&mirror.url).await, &push, &options(&t.path().join("s"))).await.unwrap();
    let mut client = raw(&mirror.url, Some("1")).await;
    for batch in [false, true] {
        let hashes = contents.iter().map(|c| Hash::of(c).as_bytes().to_vec()).collect();
        let req = pb::GetBlobsRequest { hashes, compression_level: Some(0), batch };
        let mut stream = client.get_blobs(req).await.unwrap().into_inner();
        let (mut messages, mut got) = (0, Vec::<Vec<u8>>::new());
        while let Some(mut message) = stream.message().await.unwrap() {
            use prost::Message;
            messages += 1;
            assert!(message.encoded_len() <= (1 << 20) + 200, "a message holds at most about 1 MiB");
            assert!(batch || message.following.is_empty(), "one frame per message unless asked");
            let following = std::mem::take(&mut message.following);
            for f in std::iter::once(message).chain(following) {
                assert!(f.following.is_empty(), "one level only");
                match f.hash.is_empty() {
                    true => got.last_mut().unwrap().extend_from_slice(&f.data),
                    false => got.push(f.data.to_vec()),
                }
            }
        }
        assert_eq!(got, contents, "every blob, whole and in order (batch: {batch})");
        if batch {
            assert!((4..=10).contains(&messages), "6 MiB in about 1 MiB messages, not {messages}");
        } else {
            assert_eq!(messages, 303, "one message per frame for a client that does not ask");
        }
    }
}

/// GetBlobs is answered outside the generated server (its messages are
/// written by hand): its refusals are the same clear statuses, behind the
/// same protocol check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_blobs_refusals_are_clear_statuses() {
    let t = tempfile::tempdir().unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let mut client = raw(&mirror.url, Some("1")).await;
    let ask = |hashes: Vec<Vec<u8>>| pb::GetBlobsRequest { hashes, compression_level: Some(0), batch: true };
    let mut stream = client.get_blobs(ask(vec![vec![7; 32]])).await.unwrap().into_inner();
    let err = stream.message().await.unwrap_err();
    assert!(err.code() == Code::NotFound && err.message().contains(&"07".repeat(32)), "{err:?}");
    let err = client.get_blobs(ask(vec![vec![0; 32]; 10_000])).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().contains("8192"), "{err:?}");
    let err = client.get_blobs(ask(vec![vec![0; 5]])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = raw(&mirror.url, Some("99")).await.get_blobs(ask(vec![])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // Bodies no gRPC client sends: a compressed flag, a length that lies, garbage.
    let channel = tonic::transport::Endpoint::from_shared(mirror.url.clone()).unwrap().connect().await.unwrap();
    for body in [&b"\x01\0\0\0\0"[..], b"\0\0\0\0\x09ab", b"\0\0\0\0\x03\xff\xff\xff"] {
        use tower::ServiceExt;
        let req = tonic::codegen::http::Request::post("/cachesync.v1.CacheSync/GetBlobs")
            .header("content-type", "application/grpc")
            .header("cachesync-protocol", "1")
            .body(tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from_static(body))))
            .unwrap();
        let response = channel.clone().oneshot(req).await.unwrap();
        let status = Status::from_header_map(response.headers()).expect("a status at once");
        assert_eq!(status.code(), Code::InvalidArgument, "{body:?}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_mismatch_unknown_blobs_and_oversized_requests_get_clear_statuses() {
    let t = tempfile::tempdir().unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    for (version, shown) in [(Some("99"), "99"), (None, "none")] {
        let mut client = raw(&mirror.url, version).await;
        let err = client.hello(pb::HelloRequest { protocol: 99 }).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(
            err.message().contains("protocol version mismatch") && err.message().contains(shown),
            "{}",
            err.message()
        );
    }
    let mut client = raw(&mirror.url, Some("1")).await;
    let err = commit_raw(&mut client, "k", &raw_manifest(&[(0, "f", "")])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("does not have"), "{}", err.message());
    assert_eq!(key_count(&mirror.url).await, 0);
    let too_many = pb::MissingBlobsRequest { hashes: vec![vec![0u8; 32]; 10_000] };
    let err = client.missing_blobs(too_many).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().contains("8192"), "{err:?}");
    let err = client
        .resolve(pb::ResolveRequest { key: "../x".into(), restore_prefixes: vec![], trusted_writers: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client.get_signature(pb::GetSignatureRequest { hash: vec![1; 32] }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get_delta(pb::GetDeltaRequest { hash: vec![1; 32], signature: vec![0; 8], base: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // A base named by hash: a hash of another length, then one the mirror lacks.
    let by_base = |base| pb::GetDeltaRequest { hash: vec![1; 32], signature: vec![], base };
    let err = client.get_delta(by_base(vec![2; 5])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = client.get_delta(by_base(vec![2; 32])).await.unwrap_err();
    assert!(err.code() == Code::NotFound && err.message().contains(&"02".repeat(32)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_pull_leaves_the_tree_exactly_as_it_was() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    write(&src, "a/x", b"payload");
    write(&src, "ro/f", b"new");
    write(&dst, "ro/f", b"old");
    set_mode(&dst.join("ro"), 0o555);
    // A FIFO where the snapshot has a directory: the scan skips special files,
    // so only a check before the first write can see it.
    let fifo = std::ffi::CString::new(dst.join("a").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let opts = options(&t.path().join("state"));
    let mut client = connect(&mirror.url).await;
    let push = PushRequest { root: src.clone(), key: "k".into(), profile: Profile::Generic };
    sync::push(&mut client, &push, &opts).await.unwrap();
    let before = describe(&dst);
    let mut req = PullRequest::new(&dst, "k");
    let err = sync::pull(&mut client, &req, &opts).await.unwrap_err().to_string();
    assert!(err.contains("\"a\"") && err.contains("--delete"), "{err}");
    assert_eq!(describe(&dst), before, "nothing was written, no mode loosened");
    assert!(!dst.join(".cachesync.tmp").exists());
    req.delete = true;
    sync::pull(&mut client, &req, &opts).await.unwrap();
    assert_same_tree(&src, &dst);
    unlock(&dst);
}

/// A mirror that serves everything honestly except that it silently leaves
/// the last requested blob out of every GetBlobs stream.
struct Omitting(cachesync::rpc::server::MirrorService);

type Resp<T> = Result<tonic::Response<T>, Status>;
type Inner = cachesync::rpc::server::MirrorService;

#[tonic::async_trait]
impl pb::cache_sync_server::CacheSync for Omitting {
    type GetManifestStream = <Inner as pb::cache_sync_server::CacheSync>::GetManifestStream;
    type GetBlobsStream = <Inner as pb::cache_sync_server::CacheSync>::GetBlobsStream;
    type GetSignatureStream = <Inner as pb::cache_sync_server::CacheSync>::GetSignatureStream;
    type GetDeltaStream = <Inner as pb::cache_sync_server::CacheSync>::GetDeltaStream;

    async fn hello(&self, r: Request<pb::HelloRequest>) -> Resp<pb::HelloResponse> {
        self.0.hello(r).await
    }
    async fn resolve(&self, r: Request<pb::ResolveRequest>) -> Resp<pb::ResolveResponse> {
        self.0.resolve(r).await
    }
    async fn list_keys(&self, r: Request<pb::ListKeysRequest>) -> Resp<pb::ListKeysResponse> {
        self.0.list_keys(r).await
    }
    async fn get_manifest(&self, r: Request<pb::GetManifestRequest>) -> Resp<Self::GetManifestStream> {
        self.0.get_manifest(r).await
    }
    async fn missing_blobs(&self, r: Request<pb::MissingBlobsRequest>) -> Resp<pb::MissingBlobsResponse> {
        self.0.missing_blobs(r).await
    }
    async fn put_blobs(&self, r: Request<tonic::Streaming<pb::BlobFrame>>) -> Resp<pb::PutBlobsResponse> {
        self.0.put_blobs(r).await
    }
    async fn unpack_blobs(&self, r: Request<pb::UnpackBlobsRequest>) -> Resp<pb::UnpackBlobsResponse> {
        self.0.unpack_blobs(r).await
    }
    async fn get_blobs(&self, r: Request<pb::GetBlobsRequest>) -> Resp<Self::GetBlobsStream> {
        let mut req = r.into_inner();
        req.hashes.pop();
        self.0.get_blobs(Request::new(req)).await
    }
    async fn get_signature(&self, r: Request<pb::GetSignatureRequest>) -> Resp<Self::GetSignatureStream> {
        self.0.get_signature(r).await
    }
    async fn get_delta(&self, r: Request<pb::GetDeltaRequest>) -> Resp<Self::GetDeltaStream> {
        self.0.get_delta(r).await
    }
    async fn commit(&self, r: Request<tonic::Streaming<pb::CommitFrame>>) -> Resp<pb::CommitResponse> {
        self.0.commit(r).await
    }
    async fn agent_status(&self, r: Request<pb::AgentStatusRequest>) -> Resp<pb::AgentStatusResponse> {
        self.0.agent_status(r).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_leaves_blobs_out_fails_the_pull() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    for i in 0..5 {
        write(&src, &format!("f{i}"), &random_bytes(i, 1000));
    }
    let honest = spawn_mirror(&t.path().join("store")).await;
    let push = PushRequest { root: src.clone(), key: "k".into(), profile: Profile::Generic };
    sync::push(&mut connect(&honest.url).await, &push, &options(&t.path().join("s"))).await.unwrap();
    let store = cachesync::store::Store::open(t.path().join("store").to_str().unwrap()).unwrap();
    let options_ = cachesync::rpc::server::ServiceOptions { compression_level: 3, max_blob_bytes: 1 << 30 };
    let service = Omitting(cachesync::rpc::server::MirrorService::new(store, options_));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::cache_sync_server::CacheSyncServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut opts = options(&t.path().join("s2"));
    opts.streams = 1;
    let pull = PullRequest::new(&dst, "k");
    let err = sync::pull(&mut connect(&url).await, &pull, &opts).await.unwrap_err().to_string();
    assert!(err.contains("1 of the 5 requested blobs missing"), "{err}");
    assert_eq!(describe(&dst).iter().filter(|l| l.contains("file")).count(), 4, "the four that came are complete");
}

/// UnpackBlobs stores a member only if it hashes to what the client said;
/// a request beyond its bounds, or naming what is not a zip, stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpack_requests_that_lie_or_overreach_store_nothing() {
    let t = tempfile::tempdir().unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    // A zip with one member, and a blob that is no zip, both on the mirror.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("m@v1.0.0/a.go", zip::write::SimpleFileOptions::default()).unwrap();
    std::io::Write::write_all(&mut zip, b"package a\n").unwrap();
    let zip = zip.finish().unwrap().into_inner();
    let src = t.path().join("src");
    write(&src, "m.zip", &zip);
    write(&src, "not.zip", b"not a zip at all");
    let push = PushRequest { root: src.clone(), key: "k".into(), profile: Profile::Generic };
    sync::push(&mut connect(&mirror.url).await, &push, &options(&t.path().join("s"))).await.unwrap();
    let (zip_hash, not_zip) = (cachesync::hash::Hash::of(&zip), cachesync::hash::Hash::of(b"not a zip at all"));

    let member = |name: &str, content: &[u8], size: u64| pb::UnpackMember {
        name: name.into(),
        hash: cachesync::hash::Hash::of(content).as_bytes().to_vec(),
        size,
    };
    let archive = |hash: cachesync::hash::Hash, members| pb::UnpackArchive { hash: hash.as_bytes().to_vec(), members };
    let mut client = raw(&mirror.url, Some("1")).await;
    let mut unpack = async |archives| client.unpack_blobs(pb::UnpackBlobsRequest { archives }).await;
    // The wrong content, the wrong size, a member that is absent, an archive that is no zip.
    let lies = vec![
        archive(zip_hash, vec![member("m@v1.0.0/a.go", b"package b\n", 10)]),
        archive(zip_hash, vec![member("m@v1.0.0/a.go", b"package a\n", 11)]),
        archive(zip_hash, vec![member("m@v1.0.0/b.go", b"package a\n", 10)]),
        archive(not_zip, vec![member("m@v1.0.0/a.go", b"package a\n", 10)]),
    ];
    assert_eq!(unpack(lies).await.unwrap().into_inner().stored, 0);
    let huge = vec![archive(zip_hash, vec![member("m@v1.0.0/a.go", b"package a\n", 5 << 30)])];
    assert_eq!(unpack(huge).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let store = cachesync::store::Store::open(t.path().join("store").to_str().unwrap()).unwrap();
    assert!(!store.has_blob(&cachesync::hash::Hash::of(b"package a\n")).await.unwrap());
    // The truth is stored.
    let truth = vec![archive(zip_hash, vec![member("m@v1.0.0/a.go", b"package a\n", 10)])];
    assert_eq!(unpack(truth).await.unwrap().into_inner().stored, 1);
    assert!(store.has_blob(&cachesync::hash::Hash::of(b"package a\n")).await.unwrap());
}

/// Commits `target` as a diff against `base`, raw.
async fn commit_raw_diff(
    client: &mut Raw,
    key: &str,
    base: &cachesync::manifest::Manifest,
    target: &cachesync::manifest::Manifest,
) -> Result<pb::CommitResponse, Status> {
    use cachesync::manifest::diff::ManifestDiff;
    use pb::commit_frame::Frame;
    let diff = ManifestDiff::between(base, target).encode();
    let header = pb::CommitHeader {
        key: key.into(),
        manifest_id: target.id().as_bytes().to_vec(),
        manifest_size: diff.len() as u64,
        profile: "generic".into(),
        base: String::new(),
        base_manifest_id: base.id().as_bytes().to_vec(),
    };
    let frames = vec![
        pb::CommitFrame { frame: Some(Frame::Header(header)) },
        pb::CommitFrame { frame: Some(Frame::ManifestChunk(diff)) },
    ];
    client.commit(futures::stream::iter(frames)).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diff_commit_is_refused_for_a_missing_blob_it_adds_or_one_its_old_base_lost() {
    use cachesync::manifest::{Content, Entry, Manifest};
    let t = tempfile::tempdir().unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let (root, state) = (t.path().join("src"), t.path().join("state"));
    let push = |root: std::path::PathBuf| {
        let (url, state) = (mirror.url.clone(), state.clone());
        async move {
            let req = PushRequest { root, key: "k".into(), profile: Profile::Generic };
            sync::push(&mut connect(&url).await, &req, &options(&state)).await.unwrap()
        }
    };
    write(&root, "a", b"kept");
    write(&root, "b", b"only in generation 1");
    let first = push(root.clone()).await;
    std::fs::remove_file(root.join("b")).unwrap();
    let second = push(root.clone()).await;
    let mut client = connect(&mirror.url).await;
    let old = client.manifest(Hash::from_hex(&first.manifest).unwrap()).await.unwrap();
    let newest = client.manifest(Hash::from_hex(&second.manifest).unwrap()).await.unwrap();
    // As a clean-up would once generation 1 expired.
    let b = Hash::of(b"only in generation 1").to_hex();
    std::fs::remove_file(mirror.store.join("blobs").join(&b[..2]).join(&b)).unwrap();
    let with = |m: &Manifest, path: &str, data: &[u8]| {
        let mut entries = m.entries().to_vec();
        let content = Content::File(Hash::of(data));
        entries.push(Entry { path: path.into(), size: data.len() as u64, mode: 0o644, mtime_ns: 1, content });
        Manifest::new(entries).unwrap()
    };
    let mut raw = raw(&mirror.url, Some("1")).await;
    // Against the newest snapshot: only what the diff adds is checked, and it is missing.
    let err = commit_raw_diff(&mut raw, "k", &newest, &with(&newest, "c", b"never sent")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("does not have"), "{}", err.message());
    // Against an older snapshot: every blob is checked, and b is gone.
    let err = commit_raw_diff(&mut raw, "k", &old, &with(&old, "c", b"kept")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("does not have"), "{}", err.message());
    assert_eq!(connect(&mirror.url).await.resolve("k", &[]).await.unwrap().unwrap().generation, 2);
    // Against the newest snapshot, adding a blob the mirror has: committed.
    let ok = commit_raw_diff(&mut raw, "k", &newest, &with(&newest, "c", b"kept")).await.unwrap();
    assert_eq!(ok.snapshot.unwrap().generation, 3);
}
