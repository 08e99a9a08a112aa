//! Mirrors over an S3 bucket: a real S3-compatible server (moto, started by
//! the test), real `cachesync mirror` processes configured by the usual
//! `AWS_*` environment, pushes and pulls through them.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use cachesync::hash::Hash;
use cachesync::manifest::Manifest;
use cachesync::profile::Profile;
use cachesync::store::SnapshotRecord;
use cachesync::sync::{self, PullRequest, PushRequest, Report};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::helpers::*;
use crate::kill::{Proc, mirror_proc_env};

/// moto's S3 server on a free port, stopped when dropped.
pub(crate) struct S3Server {
    child: Child,
    pub(crate) port: u16,
}

impl S3Server {
    /// Starts it; with `auth`, every request must carry known credentials
    /// (and none are known, so all are refused).
    pub(crate) fn start(auth: bool) -> S3Server {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/s3_server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        if auth {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let mut child = cmd.spawn().expect("python3 runs (scripts/test installs moto)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("listening on ").and_then(|p| p.parse().ok());
        let port = port.unwrap_or_else(|| panic!("moto did not start (pip install 'moto[server]'): {line:?}"));
        S3Server { child, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto takes an unsigned request when auth is off).
    pub(crate) fn create_bucket(&self, name: &str) {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let req = format!("PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        conn.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "create bucket {name}: {resp}");
    }

    /// The environment a `cachesync` process needs to use this server.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", &self.endpoint()),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// A bucket as the test sees it, to inspect what the mirrors wrote.
    fn bucket(&self, name: &str) -> Arc<dyn ObjectStore> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let s3 = AmazonS3Builder::new()
            .with_bucket_name(name)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .unwrap();
        Arc::new(s3)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tree(root: &Path, v: u64) {
    write(root, "small/readme.txt", b"the same in every version\n");
    write(root, "version.txt", format!("v{v}\n").as_bytes());
    write(root, "data/mid.bin", &random_bytes(v, 300 << 10));
}

async fn push(url: &str, key: &str, src: &Path, state: &Path) -> Report {
    let req = PushRequest { root: src.to_path_buf(), key: key.into(), profile: Profile::Generic };
    sync::push(&mut connect(url).await, &req, &options(state)).await.unwrap()
}

async fn pull(url: &str, key: &str, dst: &Path, state: &Path) -> Report {
    let req = PullRequest::new(dst, key);
    sync::pull(&mut connect(url).await, &req, &options(state)).await.unwrap()
}

/// Every snapshot record of `key` under `prefix`, each checked complete: its
/// manifest is stored and hashes to its id, and every blob it names is there.
async fn checked_records(bucket: &Arc<dyn ObjectStore>, prefix: &str, key: &str) -> Vec<SnapshotRecord> {
    let dir = ObjPath::from(format!("{prefix}/keys/{key}/@snap"));
    let metas: Vec<_> = bucket.list(Some(&dir)).try_collect().await.unwrap();
    let mut records = Vec::new();
    for m in metas {
        let bytes = bucket.get(&m.location).await.unwrap().bytes().await.unwrap();
        let record: SnapshotRecord = serde_json::from_slice(&bytes).unwrap();
        assert!(m.location.as_ref().ends_with(&format!("{:020}", record.generation)), "{record:?}");
        let id = record.manifest_id().unwrap();
        let location = ObjPath::from(format!("{prefix}/manifests/{id}"));
        let manifest = bucket.get(&location).await.unwrap().bytes().await.unwrap();
        assert_eq!(Hash::of(&manifest), id, "manifest of {record:?}");
        for h in Manifest::decode(&manifest).unwrap().entries().iter().filter_map(|e| e.file_hash()) {
            let hex = h.to_hex();
            let blob = ObjPath::from(format!("{prefix}/blobs/{}/{hex}", &hex[..2]));
            let size = bucket.head(&blob).await.unwrap_or_else(|e| panic!("{record:?} names {h}: {e}")).size;
            let content = bucket.get(&blob).await.unwrap().bytes().await.unwrap();
            assert_eq!((Hash::of(&content), content.len() as u64), (h, size), "blob {h} intact");
        }
        records.push(record);
    }
    records.sort_by_key(|r| r.generation);
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_over_s3_round_trips_a_tree() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = (t.path().join("src"), t.path().join("dst"), t.path().join("state"));
    let s3 = S3Server::start(false);
    s3.create_bucket("caches");
    tree(&src, 1);
    // Bigger than one upload buffer: stored by a multipart upload.
    write(&src, "big.bin", &random_bytes(7, 20 << 20));
    let (_mirror, url) = mirror_proc_env(&state, OsStr::new("s3://caches/team/a"), &s3.env()).await;

    let pushed = push(&url, "s3/tree", &src, &state).await;
    assert_eq!((pushed.generation, pushed.files), (1, 4));
    pull(&url, "s3/tree", &dst, &state).await;
    assert_same_tree(&src, &dst);
    assert!(push(&url, "s3/tree", &src, &state).await.unchanged);

    let records = checked_records(&s3.bucket("caches"), "team/a", "s3/tree").await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].files, 4);

    // Replication into another prefix of the bucket: the same record, complete.
    let into = OsStr::new("s3://caches/replica");
    let done = crate::replicate::replicate_cli_env(&url, into, &state, &s3.env()).await;
    assert_eq!((done["snapshots"].as_u64(), done["blobs"].as_u64()), (Some(1), Some(4)), "{done}");
    let copied = checked_records(&s3.bucket("caches"), "replica", "s3/tree").await;
    assert_eq!(copied, records);
    let again = crate::replicate::replicate_cli_env(&url, into, &state, &s3.env()).await;
    assert_eq!((again["snapshots"].as_u64(), again["blobs"].as_u64()), (Some(0), Some(0)), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mirrors_on_one_bucket_never_share_a_generation() {
    const WRITERS: u64 = 6;
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let s3 = S3Server::start(false);
    s3.create_bucket("shared");
    let (_a, url_a) = mirror_proc_env(&state, OsStr::new("s3://shared/m"), &s3.env()).await;
    let (_b, url_b) = mirror_proc_env(&state, OsStr::new("s3://shared/m"), &s3.env()).await;
    for v in 1..=WRITERS {
        tree(&t.path().join(format!("src{v}")), v);
    }
    let jobs = (1..=WRITERS).map(|v| {
        let url = if v % 2 == 0 { url_a.clone() } else { url_b.clone() };
        let (src, state) = (t.path().join(format!("src{v}")), t.path().join(format!("state{v}")));
        tokio::spawn(async move { (v, push(&url, "shared/key", &src, &state).await.generation) })
    });
    let mut generations: Vec<(u64, u64)> = futures::future::try_join_all(jobs).await.unwrap();
    generations.sort_by_key(|&(_, generation)| generation);
    let taken: Vec<u64> = generations.iter().map(|&(_, g)| g).collect();
    assert_eq!(taken, (1..=WRITERS).collect::<Vec<_>>(), "every push took its own generation");

    let records = checked_records(&s3.bucket("shared"), "m", "shared/key").await;
    assert_eq!(records.iter().map(|r| r.generation).collect::<Vec<_>>(), taken);
    let (newest_tree, newest) = *generations.last().unwrap();
    for url in [&url_a, &url_b] {
        let dst = t.path().join(format!("dst-{}", url.rsplit(':').next().unwrap()));
        let pulled = pull(url, "shared/key", &dst, &state).await;
        assert_eq!(pulled.generation, newest, "{url} serves the newest snapshot");
        assert_same_tree(&t.path().join(format!("src{newest_tree}")), &dst);
    }
}

/// `cachesync mirror` over an unusable bucket: exit 1, one line saying why.
async fn refused(s3: &S3Server, store: &str) -> String {
    let state = tempfile::tempdir().unwrap();
    let args: [&OsStr; 5] =
        ["mirror".as_ref(), "--listen".as_ref(), "127.0.0.1:0".as_ref(), "--store".as_ref(), store.as_ref()];
    let mut mirror = Proc::start_env(state.path(), &args, &s3.env());
    let status = mirror.exit().await;
    assert_eq!(status.code(), Some(1), "{}", mirror.output());
    let stderr = mirror.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("cachesync: ")).collect();
    assert_eq!(lines.len(), 1, "one error line: {}", mirror.output());
    lines[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_or_bad_credentials_is_one_clear_error() {
    let open = S3Server::start(false);
    let line = refused(&open, "s3://no-such-bucket/x").await;
    assert!(line.contains("s3://no-such-bucket/x") && line.contains("bucket does not exist"), "{line}");
    let locked = S3Server::start(true);
    let line = refused(&locked, "s3://caches").await;
    assert!(line.contains("s3://caches") && line.contains("access denied"), "{line}");
    let line = refused(&open, "s3:///x").await;
    assert!(line.contains("no bucket"), "{line}");
}
