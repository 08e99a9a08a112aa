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
    /// Go's module cache (`GOMODCACHE`, `$GOPATH/pkg/mod`): its download
    /// cache only (`cache/download`), from which Go builds offline.
    GoMod,
    /// Go's module cache with the extracted, read-only module trees too
    /// (`go-mod-trees`): bigger, but a node needs no unzipping.
    GoModTrees,
    /// Go's build cache (`GOCACHE`).
    GoBuild,
}

/// A profile name that is not known.
#[derive(Debug, thiserror::Error)]
#[error("unknown profile {0:?} (known: generic, go-mod, go-mod-trees, go-build)")]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Profile, UnknownProfile> {
        match s {
            "generic" | "" => Ok(Profile::Generic),
            "go-mod" => Ok(Profile::GoMod),
            "go-mod-trees" => Ok(Profile::GoModTrees),
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
            Profile::GoModTrees => "go-mod-trees",
            Profile::GoBuild => "go-build",
        })
    }
}

impl Profile {
    /// True for the module-cache profiles (`go-mod`, `go-mod-trees`): their
    /// roots hold `cache/download`, which `verify` checks and the mirror
    /// checks on every commit.
    pub fn is_go_mod(&self) -> bool {
        matches!(self, Profile::GoMod | Profile::GoModTrees)
    }

    /// True when `path` (relative, `/`-separated) must never be synced. For
    /// a directory, nothing under it is synced either.
    pub fn skips(&self, path: &str) -> bool {
        if path == STAGING_DIR || path.starts_with(".cachesync.tmp/") {
            return true;
        }
        match self {
            Profile::Generic => false,
            Profile::GoMod => go::rules::go_mod_skips(path, false),
            Profile::GoModTrees => go::rules::go_mod_skips(path, true),
            Profile::GoBuild => go::rules::go_build_skips(path),
        }
    }

    /// The family of `path`: other versions of the same file (see
    /// [`go::rules::go_mod_family`]), which make good delta bases for it
    /// although it never changes in place. `None`: no such kin.
    pub fn family(&self, path: &str) -> Option<String> {
        match self {
            Profile::GoMod | Profile::GoModTrees => go::rules::go_mod_family(path),
            Profile::Generic | Profile::GoBuild => None,
        }
    }

    /// Where `path`'s content can be unpacked from instead of sent: the
    /// archive (a root-relative path) and the member name in it. Only the
    /// trees of `go-mod-trees`, each extracted from its module's zip (see
    /// [`go::rules::go_mod_tree_source`]).
    pub fn unpacked_from(&self, path: &str) -> Option<(String, String)> {
        match self {
            Profile::GoModTrees => go::rules::go_mod_tree_source(path),
            Profile::Generic | Profile::GoMod | Profile::GoBuild => None,
        }
    }

    /// True when `path` is an immutable, content-addressed entry: deduplicated,
    /// never changed in place (so never delta-encoded against its own old
    /// version; a new one may travel as a delta against its [`family`](Self::family)).
    pub fn is_immutable(&self, path: &str) -> bool {
        match self {
            Profile::Generic => false,
            Profile::GoMod | Profile::GoModTrees => go::rules::go_mod_immutable(path),
            Profile::GoBuild => go::rules::go_build_immutable(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_an_error() {
        for p in [Profile::Generic, Profile::GoMod, Profile::GoModTrees, Profile::GoBuild] {
            assert_eq!(p.to_string().parse::<Profile>().unwrap(), p);
        }
        assert!("cargo-ish".parse::<Profile>().is_err());
    }

    #[test]
    fn go_profiles_skip_locks_and_partials_generic_only_staging() {
        assert!(Profile::GoMod.skips("cache/download/x/@v/v1.0.0.lock"));
        assert!(Profile::GoMod.skips("cache/download/x/@v/v0.1.0.partial"));
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
