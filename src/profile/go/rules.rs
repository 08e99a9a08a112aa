//! What the Go profiles sync: the skip and immutability rules for `go-mod`,
//! `go-mod-trees` and `go-build`, as pure functions of a root-relative path.
//!
//! - Module cache (`GOMODCACHE`). `go-mod` syncs `cache/download` only: the
//!   `list`, `.info`, `.mod`, `.zip` and `.ziphash` files Go builds from
//!   offline, and the checksum database's cache (`cache/download/sumdb`:
//!   small, and it lets a node check new `go.sum` lines without asking
//!   sum.golang.org). Not the extracted module trees, which Go re-creates from
//!   the zips on first use, nor `cache/vcs` (clones for direct fetches).
//!   `go-mod-trees` adds the extracted trees, except those Go is still
//!   extracting (its `.partial` marker exists): a push leaves them out.
//! - Build cache (`GOCACHE`). Only the 256 two-hex-digit directories of
//!   content-addressed entries and the static `README` travel. `trim.txt`
//!   records when *this* machine last trimmed its cache: carried, it would
//!   stop the receiver's own daily trim and make snapshots differ by a
//!   timestamp alone. Other top-level files (`log.txt`, `testexpand.txt`) and
//!   `fuzz/` (a fuzzing corpus, not build output) are per-machine state too.
//! - Never: `*.lock`, `*.partial`, Go's temporary files (`<name><digits>.tmp`
//!   from its atomic writes, `<module>@<version>.tmp-<digits>` extraction
//!   directories of Go before 1.16) and our own staging directory.

/// Locks, partial markers and temporary files, by name.
fn is_transient(name: &str) -> bool {
    name.ends_with(".lock") || name.ends_with(".partial") || name.ends_with(".tmp") || is_extraction_temp(name)
}

/// `example.com/m@v1.0.0.tmp-123456`: a module tree Go was extracting.
fn is_extraction_temp(name: &str) -> bool {
    name.rsplit_once('@').is_some_and(|(_, version)| version.contains(".tmp-"))
}

/// True when the module-cache profile skips `path`; `trees` keeps the
/// extracted module trees.
pub fn go_mod_skips(path: &str, trees: bool) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    if is_transient(name) {
        return true;
    }
    let mut parts = path.split('/');
    match (parts.next(), parts.next()) {
        // Module paths need a dot in their first element: "cache" is never one.
        (Some("cache"), None) => false,
        (Some("cache"), Some(second)) => second != "download",
        _ => !trees,
    }
}

/// In the module cache everything is immutable except the `list` files and
/// the checksum database's tiles and latest pointers, which grow in place.
pub fn go_mod_immutable(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    !(name == "list" || path.starts_with("cache/download/sumdb/"))
}

/// The family of a module-cache path: the same file in every version of one
/// module (`cache/download/<m>/@v/*.zip`, `<m>@*/<path in the tree>`), so
/// that a new version can travel as a delta against another one, as rsync's
/// `--fuzzy` does. `None` for the rest (`.info`, `.mod`, lists, sumdb).
pub fn go_mod_family(path: &str) -> Option<String> {
    if let Some(rest) = path.strip_prefix("cache/") {
        let (dir, name) = rest.strip_prefix("download/")?.rsplit_once("/@v/")?;
        return name.ends_with(".zip").then(|| format!("cache/download/{dir}/@v/*.zip"));
    }
    let at = path.find('@')?;
    let (module, version_and_rest) = path.split_at(at);
    let (_, rest) = version_and_rest.split_once('/')?;
    Some(format!("{module}@*/{rest}"))
}

/// Where a file of an extracted module tree comes from: the module's zip in
/// the download cache and the member it was extracted from, as Go extracts
/// it (`x.io/!m@v1.0.0/a/b.go` comes from member `x.io/M@v1.0.0/a/b.go` of
/// `cache/download/x.io/!m/@v/v1.0.0.zip`). `None` outside the trees.
pub fn go_mod_tree_source(path: &str) -> Option<(String, String)> {
    if path.starts_with("cache/") {
        return None;
    }
    let (module, version_and_rest) = path.split_once('@')?;
    let (version, rest) = version_and_rest.split_once('/')?;
    let member_module = super::unescape_path(module).ok()?;
    let member_version = super::unescape_version(version).ok()?;
    Some((
        format!("{}/{module}/@v/{version}.zip", super::DOWNLOAD_DIR),
        format!("{member_module}@{member_version}/{rest}"),
    ))
}

/// For an extracted module tree (`example.com/!x@v1.0.0`, escaped as on
/// disk), Go's marker that it is still being extracted
/// (`cache/download/example.com/!x/@v/v1.0.0.partial`); `None` for other paths.
pub fn partial_marker(tree: &str) -> Option<String> {
    let (module, version) = tree.rsplit_once('@')?;
    if module.contains('@') || version.contains('/') || module.is_empty() || version.is_empty() {
        return None;
    }
    Some(format!("{}/{module}/@v/{version}.partial", super::DOWNLOAD_DIR))
}

fn is_entry_dir(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// True when the build-cache profile skips `path`.
pub fn go_build_skips(path: &str) -> bool {
    match path.split_once('/') {
        None => !(is_entry_dir(path) || path == "README"),
        Some((dir, _)) => !is_entry_dir(dir) || is_transient(path.rsplit('/').next().unwrap_or(path)),
    }
}

/// Build-cache entries live in two-hex-digit directories and are named by
/// their content hash (`<hash>-a` action entries, `<hash>-d` outputs).
pub fn go_build_immutable(path: &str) -> bool {
    path.split_once('/').is_some_and(|(dir, _)| is_entry_dir(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_group_the_versions_of_one_file() {
        let fam = |p| super::go_mod_family(p);
        assert_eq!(fam("cache/download/x.io/!m/@v/v1.0.0.zip").as_deref(), Some("cache/download/x.io/!m/@v/*.zip"));
        assert_eq!(fam("cache/download/x.io/!m/@v/v1.0.0.mod"), None);
        assert_eq!(fam("cache/download/sumdb/sum.golang.org/lookup/x@v1"), None);
        assert_eq!(fam("x.io/!m@v1.0.0/a/b.go").as_deref(), Some("x.io/!m@*/a/b.go"));
        assert_eq!(fam("x.io/!m@v1.0.0"), None);
        assert_eq!(fam("README"), None);
    }

    #[test]
    fn tree_files_come_from_their_modules_zip() {
        assert_eq!(
            go_mod_tree_source("github.com/!burnt!sushi/toml@v1.3.2/internal/tz.go"),
            Some((
                "cache/download/github.com/!burnt!sushi/toml/@v/v1.3.2.zip".to_string(),
                "github.com/BurntSushi/toml@v1.3.2/internal/tz.go".to_string()
            ))
        );
        for none in ["cache/download/x.io/m/@v/v1.0.0.zip", "x.io/m@v1.0.0", "README", "x.io/M@v1.0.0/a.go"] {
            assert_eq!(go_mod_tree_source(none), None, "{none}");
        }
    }

    #[test]
    fn go_mod_syncs_the_download_cache_and_trees_only_on_request() {
        for kept in [
            "cache",
            "cache/download",
            "cache/download/github.com/!azure/x/@v/v1.0.0.zip",
            "cache/download/github.com/!azure/x/@v/list",
            "cache/download/sumdb/sum.golang.org/latest",
        ] {
            assert!(!go_mod_skips(kept, false), "{kept}");
        }
        for skipped in [
            "cache/vcs",
            "cache/lock",
            "cache/download/x.com/m/@v/v1.0.0.lock",
            "cache/download/x.com/m/@v/v1.0.0.partial",
            "cache/download/x.com/m/@v/v1.0.0.zip123456.tmp",
            "cache/download/x.com/m/@v/list12.tmp",
            "github.com",
            "github.com/x/y@v1.0.0/go.mod",
        ] {
            assert!(go_mod_skips(skipped, false), "{skipped}");
        }
        assert!(!go_mod_skips("github.com/x/y@v1.0.0/go.mod", true));
        assert!(go_mod_skips("github.com/x/y@v1.0.0.tmp-8812", true));
        assert!(go_mod_skips("cache/vcs/abc", true));
        assert_eq!(
            partial_marker("github.com/!x/y@v1.0.0").as_deref(),
            Some("cache/download/github.com/!x/y/@v/v1.0.0.partial")
        );
        assert_eq!(partial_marker("github.com/x/y@v1.0.0/sub@x"), None);
        assert_eq!(partial_marker("github.com/x"), None);
    }

    #[test]
    fn go_build_carries_entries_and_readme_only() {
        for kept in ["README", "0a", "0a/0a1b-d", "ff/ffee-a"] {
            assert!(!go_build_skips(kept), "{kept}");
        }
        for skipped in ["trim.txt", "log.txt", "testexpand.txt", "fuzz", "fuzz/x/corpus", "zz", "0a/x.tmp"] {
            assert!(go_build_skips(skipped), "{skipped}");
        }
        assert!(go_build_immutable("0a/0a1b-d"));
        assert!(!go_build_immutable("README"));
    }
}
