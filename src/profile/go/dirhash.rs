//! Go's `h1:` hashes, exactly as `golang.org/x/mod/sumdb/dirhash.Hash1`
//! computes them, and the checks Go's module zip reader
//! (`golang.org/x/mod/zip.CheckZip`) applies before it trusts a zip.
//!
//! `Hash1` sorts the file names (byte order), writes one line
//! `"<sha256 hex>  <name>\n"` per file, and returns `"h1:"` followed by the
//! standard base64 of the SHA-256 of those lines. For a module zip the names
//! are the zip's entry names (`module@version/` prefix included); for a
//! `go.mod` file (`/go.mod h1:` lines of go.sum) it is one file named
//! `go.mod`. The only user of `zip`, `sha2` and `base64` in the crate; it
//! reads what it is given and never writes.

use std::collections::HashSet;
use std::io::{self, Read, Seek};

use base64::Engine;
use sha2::{Digest, Sha256};

/// Go's limit on a module zip's size, and on the total uncompressed size of
/// its files (`modzip.MaxZipFile`): the bound on what one check reads.
pub const MAX_ZIP_BYTES: u64 = 500 << 20;

/// Why a module zip could not be hashed, or would be refused by Go.
#[derive(Debug, thiserror::Error)]
pub enum ZipCheckError {
    /// Reading failed.
    #[error("cannot read the zip: {0}")]
    Io(#[from] io::Error),
    /// The zip file is over Go's limit.
    #[error("the zip is {0} bytes, over Go's 500 MiB limit for module zips")]
    TooLarge(u64),
    /// Its files hold more than Go's limit once uncompressed (a zip bomb, or a broken zip).
    #[error("its files hold more than 500 MiB uncompressed, over Go's limit")]
    TooLargeUnzipped,
    /// Not a readable zip archive (bad structure, bad checksum, bad compressed data).
    #[error("not a valid zip: {0}")]
    Invalid(String),
    /// An entry Go would refuse to extract.
    #[error("its entry {name:?} {why}")]
    BadEntry {
        /// The entry's name.
        name: String,
        /// What is wrong.
        why: String,
    },
}

/// `Hash1` over `(name, sha256 of content)` pairs, in any order.
pub fn hash1(mut files: Vec<(String, [u8; 32])>) -> String {
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut summary = Sha256::new();
    for (name, digest) in &files {
        summary.update(format!("{}  {name}\n", hex(digest)));
    }
    format!("h1:{}", base64::engine::general_purpose::STANDARD.encode(summary.finalize()))
}

/// The `h1:` hash of a `go.mod` file, as in go.sum's `/go.mod` lines.
pub fn hash_go_mod(content: &[u8]) -> String {
    hash1(vec![("go.mod".to_string(), Sha256::digest(content).into())])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `h1:` hash of the module zip `reader`, whose entries must all lie
/// under `prefix` (`module@version/`). Reads at most [`MAX_ZIP_BYTES`] of
/// uncompressed content, whatever the zip claims.
///
/// # Errors
///
/// Any [`ZipCheckError`]: an unreadable or oversized zip, or an entry Go
/// would refuse (outside the prefix, not a clean path, colliding names).
pub fn hash_zip<R: Read + Seek>(mut reader: R, prefix: &str) -> Result<String, ZipCheckError> {
    let size = reader.seek(io::SeekFrom::End(0))?;
    if size > MAX_ZIP_BYTES {
        return Err(ZipCheckError::TooLarge(size));
    }
    reader.seek(io::SeekFrom::Start(0))?;
    let invalid = |e: zip::result::ZipError| ZipCheckError::Invalid(e.to_string());
    let mut archive = zip::ZipArchive::new(reader).map_err(invalid)?;
    let mut budget = MAX_ZIP_BYTES;
    let mut seen = HashSet::new();
    let mut files = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let entry = archive.by_index(i).map_err(invalid)?;
        let name = String::from_utf8(entry.name_raw().to_vec()).map_err(|e| ZipCheckError::BadEntry {
            name: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            why: "is not UTF-8".into(),
        })?;
        check_entry(&name, prefix, &mut seen)?;
        let mut digest = Sha256::new();
        let mut limited = entry.take(budget + 1);
        let n = io::copy(&mut limited, &mut DigestWriter(&mut digest))
            .map_err(|e| ZipCheckError::Invalid(e.to_string()))?;
        if n > budget {
            return Err(ZipCheckError::TooLargeUnzipped);
        }
        budget -= n;
        files.push((name, digest.finalize().into()));
    }
    Ok(hash1(files))
}

/// Go's `CheckZip` rules for one entry name.
fn check_entry(name: &str, prefix: &str, seen: &mut HashSet<String>) -> Result<(), ZipCheckError> {
    let bad = |why: &str| ZipCheckError::BadEntry { name: name.to_string(), why: why.to_string() };
    let Some(rel) = name.strip_prefix(prefix) else {
        return Err(bad(&format!("is not under {prefix:?}")));
    };
    if name.contains('\n') {
        return Err(bad("holds a newline"));
    }
    let rel = rel.strip_suffix('/').unwrap_or(rel);
    if rel.is_empty() {
        return Ok(());
    }
    if rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") || rel.contains('\\') {
        return Err(bad("is not a clean relative path"));
    }
    if !seen.insert(rel.to_lowercase()) {
        return Err(bad("collides with another entry (names differ only in case, or repeat)"));
    }
    Ok(())
}

struct DigestWriter<'a>(&'a mut Sha256);

impl io::Write for DigestWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_mod_hash_matches_go_sum() {
        // golang.org/x/text v0.3.0 has no go.mod: Go synthesizes this one, and
        // every go.sum that needs it says so.
        assert_eq!(hash_go_mod(b"module golang.org/x/text\n"), "h1:NqM8EUOU14njkJ3fqMW+pc6Ldnwhi/IjpwHt7yyuwOQ=");
    }

    #[test]
    fn hash1_sorts_by_bytes() {
        let a = hash1(vec![("b".into(), [1; 32]), ("a".into(), [2; 32])]);
        let b = hash1(vec![("a".into(), [2; 32]), ("b".into(), [1; 32])]);
        assert_eq!(a, b);
        assert!(a.starts_with("h1:") && a.len() == 3 + 44);
    }

    #[test]
    fn entry_names_follow_go_rules() {
        let mut seen = HashSet::new();
        let p = "example.com/a@v1.0.0/";
        assert!(check_entry("example.com/a@v1.0.0/go.mod", p, &mut seen).is_ok());
        assert!(check_entry("example.com/a@v1.0.0/GO.MOD", p, &mut seen).is_err(), "case collision");
        assert!(check_entry("example.com/b@v1.0.0/x.go", p, &mut seen).is_err());
        assert!(check_entry("example.com/a@v1.0.0/../x.go", p, &mut seen).is_err());
        assert!(check_entry("example.com/a@v1.0.0/d/", p, &mut seen).is_ok());
    }

    #[test]
    fn garbage_and_oversized_zips_are_errors() {
        assert!(matches!(hash_zip(io::Cursor::new(b"not a zip".to_vec()), "x@v1/"), Err(ZipCheckError::Invalid(_))));
    }
}
