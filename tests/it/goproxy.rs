//! The Go module proxy endpoint over HTTP, with a raw HTTP/1.1 client:
//! what it serves from go-mod snapshots, status codes, entity tags, ranges,
//! key prefixes, mount paths, tokens, a failing store. The real `go`
//! command against it is in `goproxy/go_command.rs`.

mod go_command;

use std::path::Path;

use cachesync::config::MirrorSettings;
use cachesync::profile::Profile;
use cachesync::sync::{self, PushRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const UPPER: &str = "cache/download/example.com/!upper/mod/@v";
const ZIP_BYTES: usize = 300_000;

/// An HTTP response as it came off the wire.
pub struct Reply {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// One request on its own connection (`Connection: close`, so the body ends
/// where the stream does; its length is checked against `Content-Length`).
pub async fn http(base: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines.map(|l| l.split_once(": ").unwrap()).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let reply = Reply { status, headers, body: raw[end + 4..].to_vec() };
    assert!(reply.header("transfer-encoding").is_none(), "bodies have a length");
    if method != "HEAD" && status != 304 {
        let length: usize = reply.header("content-length").expect("content-length").parse().unwrap();
        assert_eq!(reply.body.len(), length, "{method} {path}: body as long as announced");
    }
    reply
}

/// What a module cache holds for `version` of a module (escaped `dir`
/// below `cache/download`): `.info`, `.mod`, `.zip` and `.ziphash`.
pub fn add_version(root: &Path, dir: &str, module: &str, version: &str, seed: u64) {
    let base = format!("cache/download/{dir}/@v/{version}");
    let info = format!("{{\"Version\":\"{version}\",\"Time\":\"2024-01-0{seed}T00:00:00Z\"}}");
    write(root, &format!("{base}.info"), info.as_bytes());
    write(root, &format!("{base}.mod"), format!("module {module}\n").as_bytes());
    let zip = module_zip(module, version, seed);
    write(root, &format!("{base}.zip"), &zip);
    let prefix = format!("{module}@{version}/");
    let h1 = cachesync::profile::go::dirhash::hash_zip(std::io::Cursor::new(zip), &prefix).unwrap();
    write(root, &format!("{base}.ziphash"), h1.as_bytes());
}

/// A valid module zip of exactly `ZIP_BYTES` bytes (the mirror refuses
/// go-mod snapshots whose zips do not match their `.ziphash`): one stored
/// file of pseudo-random bytes.
pub fn module_zip(module: &str, version: &str, seed: u64) -> Vec<u8> {
    use std::io::Write;
    let build = |len: usize| {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file(format!("{module}@{version}/data.bin"), opts).unwrap();
        zip.write_all(&random_bytes(seed, len)).unwrap();
        zip.finish().unwrap().into_inner()
    };
    let overhead = build(0).len();
    let zip = build(ZIP_BYTES - overhead);
    assert_eq!(zip.len(), ZIP_BYTES);
    zip
}

/// A module cache with example.com/Upper/mod v1.0.0 and v1.1.0-rc.1, a
/// stale `list` that names only v1.0.0, a lock file, and a version that has
/// only a `.info` (so it is not listed).
fn upper_cache(root: &Path) {
    add_version(root, "example.com/!upper/mod", "example.com/Upper/mod", "v1.0.0", 1);
    add_version(root, "example.com/!upper/mod", "example.com/Upper/mod", "v1.1.0-rc.1", 2);
    write(root, &format!("{UPPER}/list"), b"v1.0.0\n");
    write(root, &format!("{UPPER}/v1.0.0.lock"), b"");
    write(root, &format!("{UPPER}/v0.9.0.info"), b"{\"Version\":\"v0.9.0\"}");
}

pub async fn push_dir(mirror: &TestMirror, dir: &Path, key: &str, profile: Profile, state: &Path) {
    let mut client = connect(&mirror.url).await;
    let req = PushRequest { root: dir.to_path_buf(), key: key.into(), profile };
    sync::push(&mut client, &req, &options(state)).await.unwrap();
}

/// A mirror over `store` with the endpoint on an ephemeral port.
pub async fn goproxy_mirror(store: &Path, prefix: &str, keys: &str) -> (TestMirror, String) {
    let settings = MirrorSettings {
        listen: "127.0.0.1:0".into(),
        store: store.to_string_lossy().into(),
        goproxy_listen: "127.0.0.1:0".into(),
        goproxy_prefix: prefix.into(),
        goproxy_keys: keys.into(),
        ..MirrorSettings::default()
    };
    let mirror = spawn_mirror_with(settings).await;
    let base = mirror.goproxy.clone().expect("the endpoint is on");
    (mirror, base)
}

/// A mirror whose store holds `upper_cache` under `gomod/a`.
async fn upper_mirror(t: &Path) -> (TestMirror, String) {
    upper_cache(&t.join("cache"));
    let (mirror, base) = goproxy_mirror(&t.join("store"), "", "").await;
    push_dir(&mirror, &t.join("cache"), "gomod/a", Profile::GoMod, &t.join("state")).await;
    (mirror, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_lists_files_and_latest_from_go_mod_snapshots() {
    let t = tempfile::tempdir().unwrap();
    let (mirror, base) = upper_mirror(t.path()).await;
    let m = "/example.com/!upper/mod";

    let list = http(&base, "GET", &format!("{m}/@v/list"), &[]).await;
    assert_eq!((list.status, list.text()), (200, "v1.0.0\nv1.1.0-rc.1\n"), "every version with a .mod, in order");
    assert_eq!(list.header("content-type"), Some("text/plain; charset=utf-8"));

    let info = http(&base, "GET", &format!("{m}/@v/v1.1.0-rc.1.info"), &[]).await;
    assert_eq!((info.status, info.header("content-type")), (200, Some("application/json")));
    assert!(info.text().contains("\"v1.1.0-rc.1\""), "{}", info.text());
    let module = http(&base, "GET", &format!("{m}/@v/v1.0.0.mod"), &[]).await;
    assert_eq!((module.status, module.text()), (200, "module example.com/Upper/mod\n"));
    assert_eq!(module.header("content-type"), Some("text/plain; charset=utf-8"));
    let zip = http(&base, "GET", &format!("{m}/@v/v1.0.0.zip"), &[]).await;
    assert_eq!((zip.status, zip.header("content-type")), (200, Some("application/zip")));
    assert!(zip.body == module_zip("example.com/Upper/mod", "v1.0.0", 1), "the zip's bytes");
    let head = http(&base, "HEAD", &format!("{m}/@v/v1.0.0.zip"), &[]).await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.header("content-length"), Some(ZIP_BYTES.to_string().as_str()));

    let latest = http(&base, "GET", &format!("{m}/@latest"), &[]).await;
    assert_eq!((latest.status, latest.header("content-type")), (200, Some("application/json")));
    assert!(latest.text().contains("\"v1.0.0\""), "the highest release beats a higher prerelease: {}", latest.text());

    // A newer go-mod snapshot under another key joins the union.
    let newer = t.path().join("newer");
    add_version(&newer, "example.com/!upper/mod", "example.com/Upper/mod", "v1.2.0", 3);
    push_dir(&mirror, &newer, "gomod/b", Profile::GoMod, &t.path().join("state")).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let list = http(&base, "GET", &format!("{m}/@v/list"), &[]).await;
        if list.text() == "v1.0.0\nv1.1.0-rc.1\nv1.2.0\n" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "v1.2.0 never listed: {:?}", list.text());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let latest = http(&base, "GET", &format!("{m}/@latest"), &[]).await;
    assert!(latest.text().contains("\"v1.2.0\""), "{}", latest.text());
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_malformed_ones_400() {
    let t = tempfile::tempdir().unwrap();
    let (mirror, base) = upper_mirror(t.path()).await;
    for path in [
        "/example.com/nothing/@v/list",
        "/example.com/nothing/@latest",
        "/example.com/!upper/mod/@v/v9.9.9.zip",
        "/example.com/!upper/mod/@v/v0.9.0.mod",
        "/example.com/!upper/mod/@v/v1.0.0.ziphash",
        "/example.com/!upper/mod/@v/list/extra",
        "/example.com/!upper/mod/@v/x/v1.0.0.zip",
        "/sumdb/sum.golang.org/supported",
        "/",
    ] {
        assert_eq!(http(&base, "GET", path, &[]).await.status, 404, "{path}");
    }
    for path in [
        "/example.com/Upper/mod/@v/list",
        "/example.com/!!upper/mod/@v/list",
        "/example.com/../etc/@v/list",
        "/example.com/%2E%2E/etc/@v/list",
        "/example.com/!upper/mod/@v/V1.0.0.zip",
    ] {
        let reply = http(&base, "GET", path, &[]).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text());
    }
    assert_eq!(http(&base, "POST", "/example.com/!upper/mod/@v/list", &[]).await.status, 405);
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_tags_and_ranges() {
    let t = tempfile::tempdir().unwrap();
    let (mirror, base) = upper_mirror(t.path()).await;
    let zip = "/example.com/!upper/mod/@v/v1.1.0-rc.1.zip";
    let content = module_zip("example.com/Upper/mod", "v1.1.0-rc.1", 2);
    let etag = format!("\"{}\"", blake3_hex(&content));

    let whole = http(&base, "GET", zip, &[]).await;
    assert_eq!(whole.header("etag"), Some(etag.as_str()));
    let current = http(&base, "GET", zip, &[("If-None-Match", &etag)]).await;
    assert_eq!((current.status, current.body.len()), (304, 0));
    assert_eq!(http(&base, "GET", zip, &[("If-None-Match", "\"other\"")]).await.status, 200);
    let list = http(&base, "GET", "/example.com/!upper/mod/@v/list", &[]).await;
    let list_tag = list.header("etag").unwrap().to_string();
    assert_eq!(
        http(&base, "GET", "/example.com/!upper/mod/@v/list", &[("If-None-Match", &list_tag)]).await.status,
        304
    );

    let size = ZIP_BYTES;
    for (range, from, to) in
        [("bytes=1000-1999", 1000, 2000), ("bytes=299990-", size - 10, size), ("bytes=-7", size - 7, size)]
    {
        let part = http(&base, "GET", zip, &[("Range", range)]).await;
        assert_eq!(part.status, 206, "{range}");
        assert_eq!(part.header("content-range"), Some(format!("bytes {}-{}/{size}", from, to - 1).as_str()));
        assert!(part.body == content[from..to], "{range}: the right bytes");
    }
    let beyond = http(&base, "GET", zip, &[("Range", &format!("bytes={size}-"))]).await;
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), Some(format!("bytes */{size}").as_str()));
    let stale = http(&base, "GET", zip, &[("Range", "bytes=0-9"), ("If-Range", "\"old\"")]).await;
    assert_eq!((stale.status, stale.body.len()), (200, size), "a stale If-Range gets the whole file");
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefix_and_mount_path_narrow_what_is_served() {
    let t = tempfile::tempdir().unwrap();
    let (state, store) = (t.path().join("state"), t.path().join("store"));
    upper_cache(&t.path().join("upper"));
    add_version(&t.path().join("narrow"), "example.com/narrow", "example.com/narrow", "v0.1.0", 4);
    add_version(&t.path().join("generic"), "example.com/generic", "example.com/generic", "v0.1.0", 5);
    let (mirror, all) = goproxy_mirror(&store, "", "").await;
    push_dir(&mirror, &t.path().join("upper"), "gomod/a", Profile::GoMod, &state).await;
    push_dir(&mirror, &t.path().join("narrow"), "other/b", Profile::GoMod, &state).await;
    push_dir(&mirror, &t.path().join("generic"), "gomod/c", Profile::Generic, &state).await;
    let (narrowed, base) = goproxy_mirror(&store, "/go/proxy", "gomod/").await;

    let status = |base: String, path: &'static str| async move { http(&base, "GET", path, &[]).await.status };
    assert_eq!(status(all.clone(), "/example.com/narrow/@v/list").await, 200);
    assert_eq!(status(all.clone(), "/example.com/generic/@v/list").await, 404, "only go-mod snapshots");
    assert_eq!(status(base.clone(), "/go/proxy/example.com/!upper/mod/@v/list").await, 200);
    assert_eq!(status(base.clone(), "/go/proxy/example.com/narrow/@v/list").await, 404, "outside the key prefix");
    assert_eq!(status(base.clone(), "/example.com/!upper/mod/@v/list").await, 404, "outside the mount path");
    assert_eq!(status(base.clone(), "/go/proxyexample.com/!upper/mod/@v/list").await, 404);
    narrowed.stop().await;
    mirror.stop().await;
}

/// Replaces a store directory by a file (reads below it fail with ENOTDIR,
/// an I/O error, not "not found"); returns a closure that puts it back.
fn break_dir(store: &Path, name: &str) -> impl FnOnce() + use<> {
    let (dir, aside) = (store.join(name), store.with_extension(format!("{name}-aside")));
    std::fs::rename(&dir, &aside).unwrap();
    write(store, name, b"not a directory");
    move || {
        std::fs::remove_file(&dir).unwrap();
        std::fs::rename(&aside, &dir).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_gets_503_and_the_endpoint_recovers() {
    let t = tempfile::tempdir().unwrap();
    let (mirror, base) = upper_mirror(t.path()).await;
    let (zip, list) = ("/example.com/!upper/mod/@v/v1.0.0.zip", "/example.com/!upper/mod/@v/list");
    assert_eq!(http(&base, "GET", zip, &[]).await.status, 200);
    let repair = break_dir(&mirror.store, "blobs");
    let failed = http(&base, "GET", zip, &[]).await;
    assert_eq!(failed.status, 503, "{}", failed.text());
    repair();
    assert_eq!(http(&base, "GET", zip, &[]).await.status, 200);

    // A second mirror over the same store builds its index while manifests cannot be read.
    let repair = break_dir(&mirror.store, "manifests");
    let (second, second_base) = goproxy_mirror(&mirror.store, "", "").await;
    let failed = http(&second_base, "GET", list, &[]).await;
    assert_eq!(failed.status, 503, "{}", failed.text());
    repair();
    assert_eq!(http(&second_base, "GET", list, &[]).await.status, 200);
    second.stop().await;
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_with_tokens_asks_for_one() {
    let t = tempfile::tempdir().unwrap();
    let tokens = t.path().join("tokens.toml");
    let file = "[[token]]\nname = \"ci\"\nsecret = \"read-secret-0123456789\"\nrole = \"read-write\"\nkeys = [\"\"]\n";
    std::fs::write(&tokens, file).unwrap();
    upper_cache(&t.path().join("cache"));
    let settings = MirrorSettings {
        listen: "127.0.0.1:0".into(),
        store: t.path().join("store").to_string_lossy().into(),
        tokens_file: tokens.to_string_lossy().into(),
        goproxy_listen: "127.0.0.1:0".into(),
        ..MirrorSettings::default()
    };
    let mirror = spawn_mirror_with(settings).await;
    let base = mirror.goproxy.clone().unwrap();
    let list = "/example.com/!upper/mod/@v/list";
    let refused = http(&base, "GET", list, &[]).await;
    assert_eq!(refused.status, 401);
    assert!(refused.header("www-authenticate").is_some_and(|v| v.starts_with("Basic")));
    // base64("go:wrong") and base64("go:read-secret-0123456789")
    assert_eq!(http(&base, "GET", list, &[("Authorization", "Basic Z286d3Jvbmc=")]).await.status, 401);
    let basic = "Basic Z286cmVhZC1zZWNyZXQtMDEyMzQ1Njc4OQ==";
    assert_eq!(http(&base, "GET", list, &[("Authorization", basic)]).await.status, 404, "let in; nothing pushed yet");
    mirror.stop().await;
}

/// The binary with a clean environment and a private data directory.
fn mirror_command(t: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("XDG_DATA_HOME", t.join("data"))
        .env("XDG_STATE_HOME", t.join("state"))
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1")
        .args(["mirror", "--listen", "127.0.0.1:0", "--store"])
        .arg(t.join("store"))
        .args(args)
        .stdin(std::process::Stdio::null());
    cmd
}

#[test]
fn a_goproxy_address_in_use_is_one_line_and_exit_1() {
    let t = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = mirror_command(t.path(), &["--goproxy-listen", &addr]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("cachesync: cannot listen on") && last.contains(&addr), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = mirror_command(t.path(), &["--goproxy-prefix", "no-slash"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!((out.status.code(), stderr.lines().count()), (Some(2), 1), "{stderr}");
    assert!(stderr.contains("mirror.goproxy_prefix"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_its_goproxy_address_and_stops_on_sigterm() {
    use std::io::BufRead;
    let t = tempfile::tempdir().unwrap();
    let mut cmd = mirror_command(t.path(), &["--goproxy-listen", "127.0.0.1:0", "--goproxy-prefix", "/go"]);
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (stderr, line) = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        while !line.contains("goproxy listening") {
            line.clear();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "the mirror ended without listening");
        }
        (stderr, line)
    })
    .await
    .unwrap();
    let addr = line.split("addr=").nth(1).and_then(|s| s.split_whitespace().next()).expect("addr=… in the log line");
    let base = format!("http://{addr}");
    let reply = http(&base, "GET", "/go/example.com/none/@v/list", &[]).await;
    assert_eq!(reply.status, 404);
    // SAFETY: our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    let rest = std::io::read_to_string(stderr.into_inner()).unwrap();
    assert!(rest.contains("goproxy stopped") && rest.contains("mirror stopped"), "{rest}");
}
