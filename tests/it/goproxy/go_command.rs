//! The real `go` command against the endpoint: a module cache filled by
//! `go` itself (from a file:// proxy the test writes, with zips in Go's
//! layout), pushed as a go-mod snapshot; then a build from an empty module
//! cache with `GOPROXY` pointing at the mirror, checked against the `go.sum`
//! of the first build, and `go mod verify`.

use std::path::{Path, PathBuf};
use std::process::Command;

use cachesync::profile::Profile;

use super::{goproxy_mirror, push_dir};
use crate::helpers::*;

/// Writes a directory into a zip under `<prefix>/`, as module zips are laid out.
const ZIPMOD: &str = r#"package main

import (
	"archive/zip"
	"io"
	"os"
	"path/filepath"
)

func main() {
	dir, prefix, out := os.Args[1], os.Args[2], os.Args[3]
	f, err := os.Create(out)
	check(err)
	w := zip.NewWriter(f)
	check(filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		entry, err := w.Create(prefix + "/" + filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		src, err := os.Open(path)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(entry, src)
		return err
	}))
	check(w.Close())
	check(f.Close())
}

func check(err error) {
	if err != nil {
		panic(err)
	}
}
"#;

const CONSUMER_MOD: &str = "module example.com/consumer\n\ngo 1.18\n\nrequire (\n\texample.com/Upper/mod v1.1.0\n\texample.com/lib v0.2.0\n)\n";
const CONSUMER_MAIN: &str = "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/Upper/mod\"\n\t\"example.com/lib\"\n)\n\nfunc main() { fmt.Println(mod.Version, lib.Version) }\n";

/// A sandbox for `go`: its own GOPATH, caches and home; nothing inherited
/// but PATH.
struct Go {
    root: PathBuf,
}

impl Go {
    fn command(&self, dir: &Path, modcache: &Path, proxy: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("go");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.root.join("home"))
            .env("GOPATH", self.root.join("gopath"))
            .env("GOCACHE", self.root.join("gocache"))
            .env("GOMODCACHE", modcache)
            .env("GOPROXY", proxy)
            .env("GOSUMDB", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("GOENV", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOTELEMETRY", "off")
            .env("GO111MODULE", "on")
            .env("CGO_ENABLED", "0")
            .current_dir(dir)
            .args(args);
        cmd
    }

    /// Runs `go args` and returns its stdout; panics with stderr on failure.
    async fn run(&self, dir: &Path, modcache: &Path, proxy: &str, args: &[&str]) -> String {
        let mut cmd = self.command(dir, modcache, proxy, args);
        let what = format!("go {args:?} in {} with GOPROXY={proxy}", dir.display());
        let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("`go` runs (golang-go)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what} failed: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    }
}

/// One version of a module in a file:// proxy tree: list, .info, .mod, .zip.
async fn publish(go: &Go, proxy: &Path, escaped: &str, module: &str, version: &str, files: &[(&str, String)]) {
    let src = go.root.join("src").join(format!("{escaped}@{version}"));
    for (name, text) in files {
        write(&src, name, text.as_bytes());
    }
    let dir = proxy.join(escaped).join("@v");
    write(
        &dir,
        &format!("{version}.info"),
        format!("{{\"Version\":\"{version}\",\"Time\":\"2024-01-01T00:00:00Z\"}}").as_bytes(),
    );
    std::fs::copy(src.join("go.mod"), dir.join(format!("{version}.mod"))).unwrap();
    let zip = dir.join(format!("{version}.zip"));
    let prefix = format!("{module}@{version}");
    let zipmod = go.root.join("zipmod");
    let args = [src.to_str().unwrap(), &prefix, zip.to_str().unwrap()];
    let out = std::process::Command::new(&zipmod).args(args).output().unwrap();
    assert!(out.status.success(), "zipmod: {}", String::from_utf8_lossy(&out.stderr));
    let list = dir.join("list");
    let mut versions = std::fs::read_to_string(&list).unwrap_or_default();
    versions.push_str(&format!("{version}\n"));
    std::fs::write(list, versions).unwrap();
}

/// A file:// proxy with example.com/Upper/mod v1.0.0 and v1.1.0, and
/// example.com/lib v0.1.0 and v0.2.0 (which requires Upper/mod v1.0.0).
async fn file_proxy(go: &Go, proxy: &Path) {
    write(&go.root, "zipmod.go", ZIPMOD.as_bytes());
    let zipmod = go.root.join("zipmod");
    go.run(&go.root, &go.root.join("unused-modcache"), "off", &["build", "-o", zipmod.to_str().unwrap(), "zipmod.go"])
        .await;
    let upper = |v: &str| {
        vec![
            ("go.mod", "module example.com/Upper/mod\n\ngo 1.18\n".to_string()),
            ("mod.go", format!("package mod\n\n// Version is this module's version.\nconst Version = \"upper {v}\"\n")),
        ]
    };
    for v in ["v1.0.0", "v1.1.0"] {
        publish(go, proxy, "example.com/!upper/mod", "example.com/Upper/mod", v, &upper(v)).await;
    }
    for v in ["v0.1.0", "v0.2.0"] {
        let files = vec![
            ("go.mod", "module example.com/lib\n\ngo 1.18\n\nrequire example.com/Upper/mod v1.0.0\n".to_string()),
            ("lib.go", format!("package lib\n\n// Version is this module's version.\nconst Version = \"lib {v}\"\n")),
        ];
        publish(go, proxy, "example.com/lib", "example.com/lib", v, &files).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_builds_and_verifies_from_the_mirror_alone() {
    let t = tempfile::tempdir().unwrap();
    let go = Go { root: t.path().to_path_buf() };
    let (proxy, filled, empty) = (t.path().join("fileproxy"), t.path().join("modcache-a"), t.path().join("modcache-b"));
    file_proxy(&go, &proxy).await;
    let file_url = format!("file://{}", proxy.display());

    // A first build fills a module cache from the file proxy, and a go.sum.
    let (a, b) = (t.path().join("consumer-a"), t.path().join("consumer-b"));
    for dir in [&a, &b] {
        write(dir, "go.mod", CONSUMER_MOD.as_bytes());
        write(dir, "main.go", CONSUMER_MAIN.as_bytes());
    }
    go.run(&a, &filled, &file_url, &["build", "-o", "consumer", "."]).await;
    let all = [
        "example.com/Upper/mod@v1.0.0",
        "example.com/Upper/mod@v1.1.0",
        "example.com/lib@v0.1.0",
        "example.com/lib@v0.2.0",
    ];
    go.run(&a, &filled, &file_url, &[&["mod", "download"][..], &all].concat()).await;
    std::fs::copy(a.join("go.sum"), b.join("go.sum")).unwrap();

    // The mirror gets that cache as a go-mod snapshot, and is the only proxy.
    let (mirror, base) = goproxy_mirror(&t.path().join("store"), "", "").await;
    push_dir(&mirror, &filled, "gomod/linux-amd64/main", Profile::GoMod, &t.path().join("state")).await;
    go.run(&b, &empty, &base, &["build", "-o", "consumer", "."]).await;
    let printed = std::process::Command::new(b.join("consumer")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&printed.stdout), "upper v1.1.0 lib v0.2.0\n");
    assert_eq!(std::fs::read_to_string(b.join("go.sum")).unwrap(), std::fs::read_to_string(a.join("go.sum")).unwrap());
    assert_eq!(go.run(&b, &empty, &base, &["mod", "verify"]).await, "all modules verified\n");
    let versions = go.run(&b, &empty, &base, &["list", "-m", "-versions", "example.com/Upper/mod"]).await;
    assert_eq!(versions, "example.com/Upper/mod v1.0.0 v1.1.0\n");
    let latest = go.run(&b, &empty, &base, &["list", "-m", "example.com/lib@latest"]).await;
    assert_eq!(latest, "example.com/lib v0.2.0\n");
    mirror.stop().await;
    unlock(&filled);
    unlock(&empty);
}
