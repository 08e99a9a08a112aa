//! Profiles: what the engine knows about one kind of cache.
//!
//! A profile says which paths are never synced (locks, partial downloads,
//! temporary files) and which are immutable, content-addressed entries that are
//! deduplicated by blake3 and sent whole, never delta-encoded (see DESIGN.md,
//! "where deltas pay"). It does not walk the file system or move bytes.

pub mod go;

use std::fmt;
use std::str::FromStr;

/// Name of the directory, at the top of a root, where receivers stage files
/// before renaming them into place. Never synced, never an entry.
pub const STAGING_DIR: &str = ".cachesync.tmp";

/// A kind of cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Any directory: nothing immutable, only our own staging skipped.
    #[default]
    Generic,
    /// Go's module cache (`GOMODCACHE`, `$GOPATH/pkg/mod`).
    GoMod,
    /// Go's build cache (`GOCACHE`).
    GoBuild,
}

/// A profile name that is not known.
#[derive(Debug, thiserror::Error)]
#[error("unknown profile {0:?} (known: generic, go-mod, go-build)")]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Profile, UnknownProfile> {
        match s {
            "generic" | "" => Ok(Profile::Generic),
            "go-mod" => Ok(Profile::GoMod),
            "go-build" => Ok(Profile::GoBuild),
            other => Err(UnknownProfile(other.to_string())),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Generic => "generic",
            Profile::GoMod => "go-mod",
            Profile::GoBuild => "go-build",
        })
    }
}

impl Profile {
    /// True when `path` (relative, `/`-separated) must never be synced.
    pub fn skips(&self, path: &str) -> bool {
        if path == STAGING_DIR || path.starts_with(".cachesync.tmp/") {
            return true;
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        match self {
            Profile::Generic => false,
            Profile::GoMod | Profile::GoBuild => {
                name.ends_with(".lock") || name.ends_with(".partial") || name.ends_with(".tmp")
            }
        }
    }

    /// True when `path` is an immutable, content-addressed entry: deduplicated
    /// and sent whole, never delta-encoded.
    pub fn is_immutable(&self, path: &str) -> bool {
        match self {
            Profile::Generic => false,
            Profile::GoMod => go_mod_immutable(path),
            Profile::GoBuild => go_build_immutable(path),
        }
    }
}

/// In the module cache everything is immutable except the `list` files and
/// the checksum database's tiles and latest pointers, which grow in place.
fn go_mod_immutable(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    !(name == "list" || path.starts_with("cache/download/sumdb/"))
}

/// Build-cache entries live in two-hex-digit directories and are named by
/// their content hash (`<hash>-a` action entries, `<hash>-d` outputs).
fn go_build_immutable(path: &str) -> bool {
    let mut parts = path.splitn(2, '/');
    let dir = parts.next().unwrap_or("");
    parts.next().is_some() && dir.len() == 2 && dir.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_an_error() {
        for p in [Profile::Generic, Profile::GoMod, Profile::GoBuild] {
            assert_eq!(p.to_string().parse::<Profile>().unwrap(), p);
        }
        assert!("cargo-ish".parse::<Profile>().is_err());
    }

    #[test]
    fn go_profiles_skip_locks_and_partials_generic_only_staging() {
        assert!(Profile::GoMod.skips("cache/download/x/@v/v1.0.0.lock"));
        assert!(Profile::GoMod.skips("golang.org/x/mod@v0.1.0.partial"));
        assert!(Profile::GoMod.skips("cache/download/x/@v/v1.0.0.zip123.tmp"));
        assert!(!Profile::GoMod.skips("cache/download/x/@v/v1.0.0.zip"));
        assert!(!Profile::Generic.skips("a.lock"));
        assert!(Profile::Generic.skips(".cachesync.tmp/x"));
    }

    #[test]
    fn immutability_follows_the_layout() {
        assert!(Profile::GoMod.is_immutable("cache/download/x/@v/v1.0.0.zip"));
        assert!(!Profile::GoMod.is_immutable("cache/download/x/@v/list"));
        assert!(Profile::GoBuild.is_immutable("ab/abcdef-d"));
        assert!(!Profile::GoBuild.is_immutable("trim.txt"));
        assert!(!Profile::Generic.is_immutable("ab/abcdef-d"));
    }
}
