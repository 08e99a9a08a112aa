//! Go's module cache with the real `go` command as the judge: a GOPROXY tree
//! of the test's own modules (zips it makes), `go` filling node A's cache,
//! push, pull into an empty node B, and an offline build and `go mod verify`
//! there; tampered zips caught by `verify` and refused by the mirror;
//! partial restores from a go.sum.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cachesync::profile::Profile;
use cachesync::profile::go::escape_path;
use cachesync::sync::{self, PullRequest, PushRequest};

use crate::helpers::{bin, connect, options, spawn_mirror, unlock};

/// Adds one module version to a file:// GOPROXY tree: list, .info, .mod, .zip.
pub fn add_module(proxy: &Path, module: &str, version: &str, files: &[(&str, &str)]) {
    let dir = proxy.join(escape_path(module).unwrap()).join("@v");
    std::fs::create_dir_all(&dir).unwrap();
    let go_mod = files.iter().find(|(n, _)| *n == "go.mod").map_or(format!("module {module}\n"), |f| f.1.to_string());
    std::fs::write(dir.join(format!("{version}.mod")), go_mod).unwrap();
    let info = format!("{{\"Version\":\"{version}\",\"Time\":\"2024-01-02T03:04:05Z\"}}");
    std::fs::write(dir.join(format!("{version}.info")), info).unwrap();
    let mut zip = zip::ZipWriter::new(std::fs::File::create(dir.join(format!("{version}.zip"))).unwrap());
    for (i, (name, content)) in files.iter().enumerate() {
        let method = if i % 2 == 0 { zip::CompressionMethod::Stored } else { zip::CompressionMethod::Deflated };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        zip.start_file(format!("{module}@{version}/{name}"), opts).unwrap();
        zip.write_all(content.as_bytes()).unwrap();
    }
    zip.finish().unwrap();
    let mut list = std::fs::OpenOptions::new().append(true).create(true).open(dir.join("list")).unwrap();
    writeln!(list, "{version}").unwrap();
}

/// The modules of these tests: Greet (upper case: escaped as !greet) and
/// util are built from; util (go 1.16: an unpruned module graph) requires
/// extra, whose go.mod alone a build needs;
/// other is in node A's cache but no consumer needs it.
pub fn make_proxy(proxy: &Path) {
    add_module(
        proxy,
        "example.com/Greet",
        "v1.0.0",
        &[
            ("go.mod", "module example.com/Greet\n\ngo 1.18\n"),
            ("greet.go", "package greet\n\nfunc Hello() string { return \"hello\" }\n"),
            ("LICENSE", "Public domain.\n"),
        ],
    );
    add_module(
        proxy,
        "example.com/util",
        "v0.2.0",
        &[
            ("go.mod", "module example.com/util\n\ngo 1.16\n\nrequire example.com/extra v1.0.0\n"),
            ("util.go", "package util\n\n// Twice repeats s.\nfunc Twice(s string) string { return s + s }\n"),
            ("sub/sub.go", "package sub\n\nconst X = 1\n"),
            ("doc.go", long_doc().as_str()),
        ],
    );
    add_module(proxy, "example.com/extra", "v1.0.0", &[("extra.go", "package extra\n")]);
    add_module(proxy, "example.com/other", "v1.0.0", &[("other.go", "package other\n")]);
}

/// A package comment of 200 KB: it compresses well in its zip (deflated).
fn long_doc() -> String {
    let lines: String = (0..4000).map(|i| format!("// Line {i} of a long comment that compresses well.\n")).collect();
    format!("{lines}package util\n")
}

/// A consumer module importing Greet and util.
pub fn make_app(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let go_mod =
        "module example.com/app\n\ngo 1.18\n\nrequire (\n\texample.com/Greet v1.0.0\n\texample.com/util v0.2.0\n)\n";
    std::fs::write(dir.join("go.mod"), go_mod).unwrap();
    let main = "package main\n\nimport (\n\t\"fmt\"\n\n\tgreet \"example.com/Greet\"\n\t\"example.com/util\"\n)\n\nfunc main() { fmt.Println(util.Twice(greet.Hello())) }\n";
    std::fs::write(dir.join("main.go"), main).unwrap();
}

/// One node's Go environment, everything under `home`.
pub struct Node {
    pub home: PathBuf,
    pub modcache: PathBuf,
    proxy: String,
}

impl Node {
    pub fn new(home: &Path, proxy: &str) -> Node {
        Node { home: home.to_path_buf(), modcache: home.join("gopath/pkg/mod"), proxy: proxy.to_string() }
    }

    /// Runs `go` in `dir` with this node's caches; panics with its output on failure.
    pub fn go(&self, dir: &Path, args: &[&str]) -> Output {
        let out = self.go_unchecked(dir, args);
        assert!(out.status.success(), "go {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        out
    }

    pub fn go_unchecked(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new("go")
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("GOPATH", self.home.join("gopath"))
            .env("GOMODCACHE", &self.modcache)
            .env("GOCACHE", self.home.join("gocache"))
            .env("GOPROXY", &self.proxy)
            .env("GOFLAGS", "-mod=mod")
            .env("GOSUMDB", "off")
            .env("GONOSUMDB", "*")
            .env("GOENV", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOTELEMETRY", "off")
            .env("CGO_ENABLED", "0")
            .output()
            .expect("the go command is missing: scripts/test installs Debian's golang-go")
    }
}

/// Node A: `go build` and `go mod tidy` fill its module cache from the
/// proxy (and write go.sum); `other` is downloaded too. Returns (node, app directory).
pub fn fill_node_a(t: &Path, proxy: &Path) -> (Node, PathBuf) {
    let a = Node::new(&t.join("a"), &format!("file://{}", proxy.display()));
    let app = t.join("a/app");
    make_app(&app);
    a.go(&app, &["build", "-o", "app-bin", "."]);
    a.go(&app, &["mod", "tidy"]);
    a.go(&t.join("a"), &["mod", "download", "example.com/other@v1.0.0"]);
    (a, app)
}

fn files_under(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_cache_pushed_from_a_builds_offline_on_b() {
    let t = tempfile::tempdir().unwrap();
    let proxy = t.path().join("proxy");
    make_proxy(&proxy);
    let (a, app) = fill_node_a(t.path(), &proxy);
    // Go's own transient files, and a temporary download of ours: never synced.
    let at = a.modcache.join("cache/download/example.com/util/@v");
    std::fs::write(at.join("v0.2.0.zip4242.tmp"), b"half").unwrap();
    std::fs::write(at.join("v0.3.0.partial"), b"").unwrap();
    assert!(a.modcache.join("example.com/!greet@v1.0.0/greet.go").exists(), "go extracted the tree on A");

    let mirror = spawn_mirror(&t.path().join("store")).await;
    let push = PushRequest { root: a.modcache.clone(), key: "gomod/linux/main".into(), profile: Profile::GoMod };
    sync::push(&mut connect(&mirror.url).await, &push, &options(&t.path().join("a/state"))).await.unwrap();

    let b = Node::new(&t.path().join("b"), "off");
    let req = PullRequest::new(&b.modcache, "gomod/linux/main");
    let report = sync::pull(&mut connect(&mirror.url).await, &req, &options(&t.path().join("b/state"))).await.unwrap();
    let restored = files_under(&b.modcache);
    assert!(restored.iter().all(|p| p.starts_with("cache/download/")), "only the download cache: {restored:?}");
    assert!(restored.iter().any(|p| p.ends_with("!greet/@v/v1.0.0.ziphash")), "{restored:?}");
    assert!(!restored.iter().any(|p| p.ends_with(".lock") || p.ends_with(".tmp") || p.ends_with(".partial")));
    assert_eq!(report.files as usize, restored.len());

    // B builds with no network at all, and Go itself vouches for the cache.
    let app_b = t.path().join("b/app");
    make_app(&app_b);
    std::fs::copy(app.join("go.sum"), app_b.join("go.sum")).unwrap();
    b.go(&app_b, &["build", "-o", "app-bin", "."]);
    let run = Command::new(app_b.join("app-bin")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hellohello\n");
    let verified = b.go(&app_b, &["mod", "verify"]);
    assert!(String::from_utf8_lossy(&verified.stdout).contains("all modules verified"));

    // Restoring again over B's cache, whose read-only trees Go just extracted,
    // with --delete: the trees are not the profile's, so they stay.
    let tree = b.modcache.join("example.com/!greet@v1.0.0/greet.go");
    assert!(tree.exists());
    let mut again = PullRequest::new(&b.modcache, "gomod/linux/main");
    again.delete = true;
    sync::pull(&mut connect(&mirror.url).await, &again, &options(&t.path().join("b/state"))).await.unwrap();
    assert!(tree.exists(), "--delete left the extracted trees alone");
    b.go(&app_b, &["mod", "verify"]);
    unlock(t.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_with_one_byte_changed_is_caught_by_verify_and_refused_by_the_mirror() {
    let t = tempfile::tempdir().unwrap();
    let proxy = t.path().join("proxy");
    make_proxy(&proxy);
    let (a, app) = fill_node_a(t.path(), &proxy);
    let check = |extra: &[&str]| {
        let mut cmd = Command::new(bin());
        cmd.arg("verify").arg("--profile").arg("go-mod").args(extra).arg(&a.modcache);
        cmd.output().unwrap()
    };
    let sum = app.join("go.sum");
    let ok = check(&["--go-sum", sum.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&ok.stdout).into_owned();
    assert!(ok.status.success(), "{stdout}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains("4 module versions, 3 zips hashed") && stdout.contains("0 problems"), "{stdout}");

    let mirror = spawn_mirror(&t.path().join("store")).await;
    let push = PushRequest { root: a.modcache.clone(), key: "gomod/linux/main".into(), profile: Profile::GoMod };
    let state = t.path().join("a/state");
    sync::push(&mut connect(&mirror.url).await, &push, &options(&state)).await.unwrap();

    let zip = a.modcache.join("cache/download/example.com/util/@v/v0.2.0.zip");
    let mut bytes = std::fs::read(&zip).unwrap();
    let at = bytes.windows(7).position(|w| w == b"const X").unwrap(); // sub.go is stored, not deflated
    bytes[at] = b'X';
    std::fs::write(&zip, &bytes).unwrap();

    let bad = check(&[]);
    let stdout = String::from_utf8_lossy(&bad.stdout).into_owned();
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("example.com/util@v0.2.0: its .zip cannot be used"), "{stdout}");
    assert!(stdout.contains("go mod download example.com/util@v0.2.0"), "{stdout}");

    let err = sync::push(&mut connect(&mirror.url).await, &push, &options(&state)).await.unwrap_err().to_string();
    assert!(err.contains("refusing a go-mod snapshot") && err.contains("example.com/util@v0.2.0"), "{err}");
    let keys = connect(&mirror.url).await.list_keys("").await.unwrap();
    assert_eq!(keys[0].generation, 1, "nothing was committed");
    unlock(t.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_restore_brings_only_what_go_sum_names() {
    let t = tempfile::tempdir().unwrap();
    let proxy = t.path().join("proxy");
    make_proxy(&proxy);
    let (a, app) = fill_node_a(t.path(), &proxy);
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let push = PushRequest { root: a.modcache.clone(), key: "gomod/linux/main".into(), profile: Profile::GoMod };
    sync::push(&mut connect(&mirror.url).await, &push, &options(&t.path().join("a/state"))).await.unwrap();

    let b = Node::new(&t.path().join("b"), "off");
    let out = Command::new(bin())
        .args(["pull", "--mirror", &mirror.url, "--key", "gomod/linux/main", "--json", "--go-sum"])
        .arg(app.join("go.sum"))
        .arg(&b.modcache)
        .env("XDG_STATE_HOME", t.path().join("b/state"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored = files_under(&b.modcache);
    let modules: std::collections::BTreeSet<&str> =
        restored.iter().map(|p| p.trim_start_matches("cache/download/").split("/@v/").next().unwrap()).collect();
    let sum = std::fs::read_to_string(app.join("go.sum")).unwrap();
    let names = modules.into_iter().collect::<Vec<_>>();
    assert_eq!(names, ["example.com/!greet", "example.com/extra", "example.com/util"], "go.sum:\n{sum}");
    assert!(!restored.iter().any(|p| p.starts_with("cache/download/example.com/extra/@v/v1.0.0.zip")), "{restored:?}");

    let app_b = t.path().join("b/app");
    make_app(&app_b);
    std::fs::copy(app.join("go.sum"), app_b.join("go.sum")).unwrap();
    b.go(&app_b, &["build", "-o", "app-bin", "."]);
    b.go(&app_b, &["mod", "verify"]);
    unlock(t.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_mod_trees_restores_over_read_only_trees_and_skips_half_extracted_ones() {
    let t = tempfile::tempdir().unwrap();
    let proxy = t.path().join("proxy");
    make_proxy(&proxy);
    let (a, app) = fill_node_a(t.path(), &proxy);
    // Go is extracting util on A right now: its tree must not travel.
    std::fs::write(a.modcache.join("cache/download/example.com/util/@v/v0.2.0.partial"), b"").unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let push = PushRequest { root: a.modcache.clone(), key: "gomod/trees".into(), profile: Profile::GoModTrees };
    sync::push(&mut connect(&mirror.url).await, &push, &options(&t.path().join("a/state"))).await.unwrap();

    // B already has a module cache that Go filled itself: read-only trees.
    let b = Node::new(&t.path().join("b"), &format!("file://{}", proxy.display()));
    let app_b = t.path().join("b/app");
    make_app(&app_b);
    std::fs::copy(app.join("go.sum"), app_b.join("go.sum")).unwrap();
    b.go(&app_b, &["build", "-o", "app-bin", "."]);
    let greet = b.modcache.join("example.com/!greet@v1.0.0");
    let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777;
    assert_eq!(mode(&greet), 0o555, "Go's trees are read-only");

    let req = PullRequest::new(&b.modcache, "gomod/trees");
    let report = sync::pull(&mut connect(&mirror.url).await, &req, &options(&t.path().join("b/state"))).await.unwrap();
    assert!(report.files > 0);
    assert_eq!(mode(&greet), 0o555, "still read-only after the restore");
    assert!(greet.join("greet.go").exists());

    let b_off = Node::new(&t.path().join("b"), "off");
    b_off.go(&app_b, &["build", "-o", "app-bin", "."]);
    b_off.go(&app_b, &["mod", "verify"]);

    // An empty node C gets the trees A had finished extracting, not util's.
    let c = t.path().join("c/mod");
    sync::pull(
        &mut connect(&mirror.url).await,
        &PullRequest::new(&c, "gomod/trees"),
        &options(&t.path().join("c/state")),
    )
    .await
    .unwrap();
    assert!(c.join("example.com/!greet@v1.0.0/greet.go").exists());
    assert!(!c.join("example.com/util@v0.2.0").exists(), "a half-extracted tree never travels");
    unlock(t.path());
}

/// `go-mod-trees` tree files are unpacked from their module zips on the
/// receiving side instead of sent: by the mirror on a push, by the client on
/// a pull. The same tree as when they are sent, far fewer bytes. A tree file
/// that does not match its zip member (changed after Go extracted it) and
/// one the zip lacks are sent instead, and the real `go` builds offline
/// from the unpacked cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_mod_trees_push_and_pull_unpack_tree_files_from_the_zips() {
    let t = tempfile::tempdir().unwrap();
    let proxy = t.path().join("proxy");
    make_proxy(&proxy);
    let (a, app) = fill_node_a(t.path(), &proxy);
    let greet = a.modcache.join("example.com/!greet@v1.0.0");
    assert!(greet.join("greet.go").exists(), "go build extracted the tree");
    crate::helpers::set_mode(&greet, 0o755);
    crate::helpers::set_mode(&greet.join("LICENSE"), 0o644);
    std::fs::write(greet.join("LICENSE"), "Changed after extraction.\n").unwrap();
    std::fs::write(greet.join("NOT_IN_ZIP"), "only in the tree\n").unwrap();
    crate::helpers::set_mode(&greet, 0o555);

    // Pushed to a mirror that unpacks the same tree files from the zips it
    // gets, and to one that is sent them.
    let push = PushRequest { root: a.modcache.clone(), key: "gomod/trees".into(), profile: Profile::GoModTrees };
    let sent = spawn_mirror(&t.path().join("store-sent")).await;
    let opts = sync::SyncOptions { unpack: sync::When::Never, ..options(&t.path().join("a/state-sent")) };
    let sent = sync::push(&mut connect(&sent.url).await, &push, &opts).await.unwrap();
    let mirror = spawn_mirror(&t.path().join("store")).await;
    let pushed = sync::push(&mut connect(&mirror.url).await, &push, &options(&t.path().join("a/state"))).await.unwrap();
    assert_eq!((sent.blobs_unpacked, pushed.blobs_unpacked), (0, 7), "{pushed:?}");
    assert!(pushed.bytes_sent * 2 < sent.bytes_sent, "pushed {} bytes vs {}", pushed.bytes_sent, sent.bytes_sent);

    let pull = |dir: &str, unpack: sync::When| {
        let (root, state) = (t.path().join(dir).join("mod"), t.path().join(dir).join("state"));
        let url = mirror.url.clone();
        async move {
            let opts = sync::SyncOptions { unpack, ..options(&state) };
            let req = PullRequest::new(&root, "gomod/trees");
            (sync::pull(&mut connect(&url).await, &req, &opts).await.unwrap(), root)
        }
    };
    let (fetched, fetched_root) = pull("fetched", sync::When::Never).await;
    let (unpacked, unpacked_root) = pull("unpacked", sync::When::Always).await;
    assert_eq!(fetched.blobs_unpacked, 0);
    // greet.go, util.go, doc.go, sub/sub.go, other.go and the trees' two
    // go.mod files (the same blobs as the .mod files: unpacked for those
    // too). Not the changed LICENSE nor NOT_IN_ZIP: fetched after their
    // unpacking failed.
    assert_eq!(unpacked.blobs_unpacked, 7, "{unpacked:?}");
    assert!(
        unpacked.bytes_received * 2 < fetched.bytes_received,
        "unpacked {} bytes vs fetched {}",
        unpacked.bytes_received,
        fetched.bytes_received
    );
    // Locks never travel.
    let synced = |root: &Path| -> Vec<String> {
        crate::helpers::describe(root).into_iter().filter(|l| !l.split(':').next().unwrap().ends_with("lock")).collect()
    };
    assert_eq!(synced(&a.modcache), synced(&fetched_root));
    assert_eq!(synced(&a.modcache), synced(&unpacked_root));
    let license = std::fs::read_to_string(unpacked_root.join("example.com/!greet@v1.0.0/LICENSE")).unwrap();
    assert_eq!(license, "Changed after extraction.\n", "the tree's own version, not the zip's");

    // The unpacked cache is one Go builds and verifies from, offline.
    let c = Node { home: t.path().join("unpacked"), modcache: unpacked_root.clone(), proxy: "off".into() };
    let app_c = t.path().join("unpacked/app");
    make_app(&app_c);
    std::fs::copy(app.join("go.sum"), app_c.join("go.sum")).unwrap();
    c.go(&app_c, &["build", "-o", "app-bin", "."]);
    unlock(t.path());
}
