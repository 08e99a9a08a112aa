//! What a GOPROXY request asks for: the path below the base, decoded and
//! checked. Below the base, a request names a file of Go's download cache
//! (`<escaped module>/@v/<file>`), so `profile::go` decodes it; escaping is
//! never re-implemented here.

use crate::profile::go::{DOWNLOAD_DIR, FileKind, parse_download_path, unescape_path};

/// What a request asks for, about a module (its path unescaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `<module>/@v/list`.
    List,
    /// `<module>/@latest`.
    Latest,
    /// `<module>/@v/<version>.info`, `.mod` or `.zip`, the version unescaped.
    File(String, FileKind),
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The module path, unescaped.
    pub module: String,
    /// What about it.
    pub query: Query,
}

/// Why a path is not a GOPROXY request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not a path of the protocol at all (answered 404, like any unknown path).
    #[error("not a module proxy path")]
    Unknown,
    /// A protocol path with a malformed part (answered 400).
    #[error("{0}")]
    Malformed(String),
}

/// Decodes `%XX` sequences; `None` for a bad sequence or bytes that are not UTF-8.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses the path below the proxy's base (without its leading `/`), raw
/// from the request line.
///
/// # Errors
///
/// [`RequestError::Unknown`] for paths the protocol does not have;
/// [`RequestError::Malformed`] for bad escaping, `..` and the like.
pub fn parse(raw: &str) -> Result<Request, RequestError> {
    let malformed = |e: &dyn std::fmt::Display| RequestError::Malformed(e.to_string());
    let path = percent_decode(raw).ok_or_else(|| malformed(&"bad percent-encoding"))?;
    if path.starts_with("sumdb/") {
        // Go asks proxies for checksum databases here; this one has none.
        return Err(RequestError::Unknown);
    }
    if let Some(escaped) = path.strip_suffix("/@latest") {
        let module = unescape_path(escaped).map_err(|e| malformed(&e))?;
        return Ok(Request { module, query: Query::Latest });
    }
    let file = parse_download_path(&format!("{DOWNLOAD_DIR}/{path}")).map_err(|e| malformed(&e))?;
    let Some(file) = file else { return Err(RequestError::Unknown) };
    let query = match (file.kind, file.version) {
        (FileKind::List, _) => Query::List,
        (kind @ (FileKind::Info | FileKind::Mod | FileKind::Zip), Some(version)) => Query::File(version, kind),
        _ => return Err(RequestError::Unknown),
    };
    Ok(Request { module: file.module, query })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> Request {
        parse(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn protocol_paths_parse() {
        assert_eq!(
            ok("example.com/!upper/mod/@v/list"),
            Request { module: "example.com/Upper/mod".into(), query: Query::List }
        );
        assert_eq!(ok("example.com/a/@latest").query, Query::Latest);
        assert_eq!(ok("example.com/a/@v/v1.0.0.info").query, Query::File("v1.0.0".into(), FileKind::Info));
        assert_eq!(ok("example.com/a/@v/v1.0.0.mod").query, Query::File("v1.0.0".into(), FileKind::Mod));
        assert_eq!(
            ok("example.com/a/@v/v2.0.0+incompatible.zip").query,
            Query::File("v2.0.0+incompatible".into(), FileKind::Zip)
        );
        assert_eq!(ok("example.com/a/@v/v1.0.0-!r!c.1.zip").query, Query::File("v1.0.0-RC.1".into(), FileKind::Zip));
        assert_eq!(ok("example.com/%61/@v/list").module, "example.com/a");
    }

    #[test]
    fn other_paths_are_unknown() {
        for p in [
            "",
            "example.com/a",
            "example.com/a/@v/v1.0.0.ziphash",
            "example.com/a/@v/v1.0.0.lock",
            "example.com/a/@v/x/y.zip",
            "sumdb/sum.golang.org/supported",
            "@v/",
        ] {
            assert_eq!(parse(p), Err(RequestError::Unknown), "{p}");
        }
    }

    #[test]
    fn malformed_paths_are_refused() {
        for p in [
            "example.com/Upper/@v/list",
            "example.com/!!x/@v/list",
            "example.com/a!/@v/list",
            "example.com/../etc/@v/list",
            "example.com/%2e%2e/x/@v/list",
            "example.com//a/@v/list",
            "/@v/list",
            "example.com/a/@v/.zip",
            "example.com/a/@v/V1.0.0.zip",
            "example.com/a/@v/v1.0.0.zip%zz",
            "example.com/a/@latest%ff",
            "example.com/A/@latest",
        ] {
            assert!(matches!(parse(p), Err(RequestError::Malformed(_))), "{p}: {:?}", parse(p));
        }
    }
}
