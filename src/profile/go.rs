//! Go's module-cache layout: how module paths and versions are escaped on disk
//! and in GOPROXY URLs, and what a path under `cache/download` names.
//!
//! Go stores `github.com/Azure/sdk@v1.0.0` under
//! `cache/download/github.com/!azure/sdk/@v/v1.0.0.zip`: every upper-case
//! letter becomes `!` and its lower-case form, so that module paths differing
//! only in case stay distinct on case-insensitive file systems. The same
//! escaping is used in GOPROXY URLs. This module owns that encoding and the
//! checks Go applies before it (golang.org/x/mod/module `CheckPath`,
//! `EscapePath`, `EscapeVersion`); it does not read or write files.

/// Where, inside `GOMODCACHE`, the download cache lives.
pub const DOWNLOAD_DIR: &str = "cache/download";

/// A module path or version that Go would refuse, or an escaped form that does
/// not decode.
#[derive(Debug, thiserror::Error)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct EscapeError {
    what: &'static str,
    input: String,
    reason: &'static str,
}

fn invalid(what: &'static str, input: &str, reason: &'static str) -> EscapeError {
    EscapeError { what, input: input.to_string(), reason }
}

/// Escapes a module path for the file system and GOPROXY URLs.
///
/// # Errors
/// When `module` is not a valid module path.
pub fn escape_path(module: &str) -> Result<String, EscapeError> {
    check_module_path(module).map_err(|reason| invalid("module path", module, reason))?;
    Ok(escape(module))
}

/// Decodes an escaped module path and checks the result.
///
/// # Errors
/// When `escaped` holds an upper-case letter, a `!` not followed by a
/// lower-case letter, or decodes to an invalid module path.
pub fn unescape_path(escaped: &str) -> Result<String, EscapeError> {
    let module = unescape(escaped).map_err(|reason| invalid("escaped module path", escaped, reason))?;
    check_module_path(&module).map_err(|reason| invalid("module path", &module, reason))?;
    Ok(module)
}

/// Escapes a version (`v1.2.3`, `v0.0.0-2024...-abcdef`) for the file system.
///
/// # Errors
/// When `version` is not usable as one file-name element.
pub fn escape_version(version: &str) -> Result<String, EscapeError> {
    check_version(version).map_err(|reason| invalid("version", version, reason))?;
    Ok(escape(version))
}

/// Decodes an escaped version and checks the result.
///
/// # Errors
/// As [`unescape_path`], for one file-name element.
pub fn unescape_version(escaped: &str) -> Result<String, EscapeError> {
    let version = unescape(escaped).map_err(|reason| invalid("escaped version", escaped, reason))?;
    check_version(&version).map_err(|reason| invalid("version", &version, reason))?;
    Ok(version)
}

/// What one file under `cache/download/<module>/@v/` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `list`: the versions this cache knows, one per line.
    List,
    /// `<version>.info`: JSON with the version and its time.
    Info,
    /// `<version>.mod`: the version's go.mod.
    Mod,
    /// `<version>.zip`: the module's files.
    Zip,
    /// `<version>.ziphash`: the zip's `h1:` hash.
    ZipHash,
    /// `<version>.lock`: Go's lock file while it downloads.
    Lock,
    /// `<version>.partial`: Go's marker while it extracts.
    Partial,
}

/// A file of the download cache, decoded from its relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// The module path, unescaped (`github.com/Azure/sdk`).
    pub module: String,
    /// The version, unescaped; `None` for the `list` file.
    pub version: Option<String>,
    /// Which of the files it is.
    pub kind: FileKind,
}

const SUFFIXES: [(&str, FileKind); 6] = [
    (".info", FileKind::Info),
    (".mod", FileKind::Mod),
    (".ziphash", FileKind::ZipHash),
    (".zip", FileKind::Zip),
    (".lock", FileKind::Lock),
    (".partial", FileKind::Partial),
];

/// Decodes `cache/download/<escaped module>/@v/<file>` (a root-relative,
/// `/`-separated path). `Ok(None)` for any other path, including other files
/// under `@v/` such as Go's temporary downloads.
///
/// # Errors
/// When the path has the layout but its module or version does not decode.
pub fn parse_download_path(path: &str) -> Result<Option<ModuleFile>, EscapeError> {
    let Some(rest) = path.strip_prefix(DOWNLOAD_DIR).and_then(|r| r.strip_prefix('/')) else {
        return Ok(None);
    };
    let Some((escaped_module, file)) = rest.rsplit_once("/@v/") else {
        return Ok(None);
    };
    if file.contains('/') || escaped_module.starts_with("sumdb/") {
        return Ok(None);
    }
    let (version, kind) = if file == "list" {
        (None, FileKind::List)
    } else {
        let Some((stem, kind)) =
            SUFFIXES.iter().find_map(|(suffix, kind)| file.strip_suffix(suffix).map(|stem| (stem, *kind)))
        else {
            return Ok(None);
        };
        (Some(unescape_version(stem)?), kind)
    };
    Ok(Some(ModuleFile { module: unescape_path(escaped_module)?, version, kind }))
}

/// The root-relative path of one file of `module@version` in the download
/// cache; `version` is ignored for [`FileKind::List`].
///
/// # Errors
/// When the module path or version is invalid.
pub fn download_path(module: &str, version: &str, kind: FileKind) -> Result<String, EscapeError> {
    let dir = format!("{DOWNLOAD_DIR}/{}/@v", escape_path(module)?);
    if kind == FileKind::List {
        return Ok(format!("{dir}/list"));
    }
    let suffix = SUFFIXES.iter().find(|(_, k)| *k == kind).map_or("", |(s, _)| s);
    Ok(format!("{dir}/{}{suffix}", escape_version(version)?))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape(escaped: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        match c {
            '!' => match chars.next() {
                Some(l) if l.is_ascii_lowercase() => out.push(l.to_ascii_uppercase()),
                _ => return Err("'!' must be followed by a lower-case letter"),
            },
            c if c.is_ascii_uppercase() => return Err("upper-case letters must be escaped as '!' + lower case"),
            c if !c.is_ascii() => return Err("non-ASCII character"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Go's `CheckPath`: ASCII letters, digits and `-._~` in `/`-separated
/// elements; the first element holds a dot, is lower case and does not start
/// with `-`.
fn check_module_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty");
    }
    let mut elements = path.split('/');
    let first = elements.next().unwrap_or("");
    if !first.contains('.') {
        return Err("its first element has no dot");
    }
    if first.starts_with('-') {
        return Err("its first element starts with '-'");
    }
    if first.bytes().any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')) {
        return Err("its first element may hold only lower-case letters, digits, '.' and '-'");
    }
    for element in std::iter::once(first).chain(elements) {
        check_element(element, |b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))?;
    }
    Ok(())
}

/// A version is one file-name element without `!`.
fn check_version(version: &str) -> Result<(), &'static str> {
    check_element(version, |b| b.is_ascii_alphanumeric() || b"#$%&()+,-.=@[]^_{}~".contains(&b))
}

fn check_element(element: &str, allowed: impl Fn(u8) -> bool) -> Result<(), &'static str> {
    if element.is_empty() {
        return Err("empty path element");
    }
    if element.starts_with('.') || element.ends_with('.') {
        return Err("a path element starts or ends with '.'");
    }
    if !element.bytes().all(allowed) {
        return Err("disallowed character");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_case_round_trips_through_bangs() {
        let escaped = escape_path("github.com/Azure/azure-sdk-for-go").unwrap();
        assert_eq!(escaped, "github.com/!azure/azure-sdk-for-go");
        assert_eq!(unescape_path(&escaped).unwrap(), "github.com/Azure/azure-sdk-for-go");
        assert_eq!(escape_version("v1.0.0-RC1").unwrap(), "v1.0.0-!r!c1");
        assert_eq!(unescape_version("v1.0.0-!r!c1").unwrap(), "v1.0.0-RC1");
    }

    #[test]
    fn go_refuses_what_we_refuse() {
        for bad in ["", "nodot/x", "Example.com/x", "example.com//x", "example.com/../x", "example.com/x/", "a.b/ü"] {
            assert!(escape_path(bad).is_err(), "{bad:?} accepted");
        }
        for bad in ["github.com/Azure/x", "github.com/!/x", "github.com/x!", "github.com/!1x"] {
            assert!(unescape_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(escape_version("v1/2").is_err());
        assert!(escape_version("v1!").is_err());
        assert!(escape_version("..").is_err());
    }

    #[test]
    fn download_paths_decode_and_encode() {
        let file =
            parse_download_path("cache/download/github.com/!burnt!sushi/toml/@v/v1.3.2.ziphash").unwrap().unwrap();
        assert_eq!(file.module, "github.com/BurntSushi/toml");
        assert_eq!(file.version.as_deref(), Some("v1.3.2"));
        assert_eq!(file.kind, FileKind::ZipHash);
        let list = parse_download_path("cache/download/golang.org/x/mod/@v/list").unwrap().unwrap();
        assert_eq!((list.version, list.kind), (None, FileKind::List));
        assert_eq!(
            download_path("github.com/BurntSushi/toml", "v1.3.2", FileKind::Zip).unwrap(),
            "cache/download/github.com/!burnt!sushi/toml/@v/v1.3.2.zip"
        );
        for other in [
            "golang.org/x/mod@v0.1.0/go.mod",
            "cache/download/sumdb/sum.golang.org/lookup/x/@v/v1",
            "cache/download/golang.org/x/mod/@v/v0.1.0.zip123.tmp",
        ] {
            assert_eq!(parse_download_path(other).unwrap(), None, "{other}");
        }
        assert!(parse_download_path("cache/download/github.com/Bad/x/@v/v1.0.0.zip").is_err());
    }
}

pub mod dirhash;
pub mod gc;
pub mod gosum;
pub mod rules;
pub mod select;
pub mod verify;
