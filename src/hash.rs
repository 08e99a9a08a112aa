//! Content hashing: the only user of `blake3`.
//!
//! Owns the [`Hash`] type that names blobs and manifests, streaming hashing
//! ([`Hasher`]), and hashing whole files (in bounded chunks, on several cores
//! for large ones). It does not decide *which* files to hash; the scanner and its hash
//! cache do that.

pub mod cache;

use std::fmt;
use std::io;
use std::path::Path;

/// Files at least this large are hashed with blake3's multi-threaded mode.
const PARALLEL_HASH_MIN: u64 = 4 << 20;

/// A blake3 digest: the address of a blob, the id of a manifest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash([u8; 32]);

impl Hash {
    /// Length of a digest in bytes.
    pub const LEN: usize = 32;

    /// The digest as raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a hash from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Hash {
        Hash(bytes)
    }

    /// Builds a hash from a slice that must be exactly 32 bytes long.
    ///
    /// # Errors
    ///
    /// [`BadHash`] when the slice has another length.
    pub fn from_slice(bytes: &[u8]) -> Result<Hash, BadHash> {
        <[u8; 32]>::try_from(bytes).map(Hash).map_err(|_| BadHash)
    }

    /// Parses 64 lower- or upper-case hex digits.
    ///
    /// # Errors
    ///
    /// [`BadHash`] when the text is not 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Hash, BadHash> {
        blake3::Hash::from_hex(text).map(|h| Hash(*h.as_bytes())).map_err(|_| BadHash)
    }

    /// The blake3 of a byte slice.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// Lower-case hex, 64 digits.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..16])
    }
}

/// A value that is not a 32-byte blake3 digest.
#[derive(Debug, thiserror::Error)]
#[error("not a blake3 hash (expected 32 bytes / 64 hex digits)")]
pub struct BadHash;

/// Whether a file that is sent (or diffed) is hashed again as it is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// A file of a live tree, which may have changed since it was hashed:
    /// refuse to send it under a hash it no longer has.
    Hash,
    /// An immutable blob of a store, verified when it was stored. The
    /// receiver verifies every byte that lands, so hashing it again on the
    /// way out would only double the work.
    Trust,
}

/// Incremental hashing of a stream of bytes.
#[derive(Default, Clone)]
pub struct Hasher(blake3::Hasher);

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Hasher {
        Hasher(blake3::Hasher::new())
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything fed so far.
    pub fn finalize(&self) -> Hash {
        Hash(*self.0.finalize().as_bytes())
    }
}

/// A `Write` adapter that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W: io::Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Hasher::new(), written: 0 }
    }

    /// The digest and length of what was written, and the inner writer.
    pub fn finish(self) -> (Hash, u64, W) {
        (self.hasher.finalize(), self.written, self.inner)
    }
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Bytes read at once when hashing a large file.
const HASH_CHUNK: usize = 16 << 20;

/// Hashes a whole file, reading it in bounded chunks; large files are read
/// and hashed on several cores (reading from the page cache is as slow as
/// hashing: 55 ms for 256 MiB). Files are read, not memory-mapped: a cache
/// file that another process truncates while we hash it must give an error
/// or a stale hash, never a SIGBUS, and memory stays bounded whatever the
/// file's size.
///
/// # Errors
///
/// The I/O error of opening or reading the file.
pub fn hash_file(path: &Path) -> io::Result<(Hash, u64)> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; (len.min(HASH_CHUNK as u64) as usize).max(1)];
    let mut at = 0;
    loop {
        let n = read_at_full(&file, &mut buf, at)?;
        if n == 0 {
            break;
        }
        at += n as u64;
        if n as u64 >= PARALLEL_HASH_MIN {
            hasher.update_rayon(&buf[..n]);
        } else {
            hasher.update(&buf[..n]);
        }
    }
    Ok((Hash(*hasher.finalize().as_bytes()), hasher.count()))
}

/// Reads from `at` until `buf` is full or the file ends; a large `buf` is
/// read as two halves at once.
fn read_at_full(file: &std::fs::File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let read = |buf: &mut [u8], at: u64| {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], at + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    };
    if (buf.len() as u64) < PARALLEL_HASH_MIN {
        return read(buf, at);
    }
    let half = buf.len() / 2;
    let (first, second) = buf.split_at_mut(half);
    let (a, b) = rayon::join(|| read(first, at), || read(second, at + half as u64));
    let a = a?;
    // A short first half means the file ended there (or shrank while read).
    Ok(if a < half { a } else { a + b? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn hex_round_trip_and_known_value() {
        let h = Hash::of(b"");
        assert_eq!(h.to_hex(), "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
        assert_eq!(Hash::from_hex(&h.to_hex()).unwrap(), h);
        assert!(Hash::from_hex("xyz").is_err());
        assert!(Hash::from_slice(&[0u8; 31]).is_err());
    }

    #[test]
    fn file_and_stream_hashes_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // Read whole, in halves at once, and over chunk boundaries.
        for size in [0u32, 1, 4 << 20, (5 << 20) + 1, (HASH_CHUNK as u32) * 2 + 7] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            std::fs::write(&path, &data).unwrap();
            let (h, len) = hash_file(&path).unwrap();
            assert_eq!(len, data.len() as u64);
            let mut w = HashingWriter::new(Vec::new());
            w.write_all(&data).unwrap();
            let (h2, n, _) = w.finish();
            assert_eq!((h, len), (h2, n), "{size}");
            assert_eq!(h, Hash::of(&data), "{size}");
        }
    }
}
