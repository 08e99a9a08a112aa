//! Binary deltas between versions of a file: the only user of `fast_rsync`.
//!
//! Owns the rsync cycle (the receiver sends a [`signature_file`] of its old
//! copy, the sender answers with a [`diff_file`], the receiver rebuilds the
//! new file with [`apply_files`]), the rule that picks the block size, and
//! checking every rebuilt file against its blake3: MD4 block hashes can
//! collide and deltas arrive from the network, so a result is only trusted
//! once verified. Memory stays bounded whatever the file sizes: signatures and
//! diffs are computed over chunks read from disk, [`PARALLEL_CHUNKS`] at a
//! time on rayon's pool, and deltas are applied as a stream ([`apply`]). It
//! does not decide whether a delta is worth sending, move bytes over the
//! network or rename results into place.

mod apply;

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use fast_rsync::{DiffError, Signature, SignatureOptions};
use rayon::prelude::*;

use crate::fsutil;
use crate::hash::{Check, Hash, Hasher, HashingWriter};

/// Largest serialized signature we produce or accept (it travels in one message).
pub const MAX_SIGNATURE_BYTES: usize = 1 << 20;
/// Most bytes of MD4 kept per block in signatures (see [`crypto_hash_size_for`]).
pub const CRYPTO_HASH_SIZE: u32 = 8;
/// Fewest bytes of MD4 kept per block.
const MIN_CRYPTO_HASH_SIZE: u32 = 3;
/// Bits of margin against a false block match in a whole file: about one
/// delta in a million needs its whole file sent again (rsync uses 10).
const BLOCKSUM_BIAS: u32 = 20;

/// Signature header: magic, block size, crypto hash size (big-endian u32s).
const HEADER_BYTES: usize = 12;
/// Per block: a 4-byte rolling checksum and the truncated MD4.
const BLOCK_ENTRY_BYTES: usize = 4 + CRYPTO_HASH_SIZE as usize;
/// Most blocks a signature within [`MAX_SIGNATURE_BYTES`] can describe (87,380).
const MAX_BLOCKS: u64 = ((MAX_SIGNATURE_BYTES - HEADER_BYTES) / BLOCK_ENTRY_BYTES) as u64;
const MIN_BLOCK_SIZE: u64 = 512;
const BLOCK_ALIGN: u64 = 64;
const MD4_MAGIC: [u8; 4] = 0x7273_0136u32.to_be_bytes();
/// Stands in for a path in I/O errors of writers we only know as `impl Write`.
const OUTPUT: &str = "<delta output>";
const DELTA_MAGIC: [u8; 4] = 0x7273_0236u32.to_be_bytes();
/// Bytes of a file read at once to compute its signature.
const SIGNATURE_CHUNK: usize = 16 << 20;
/// Bytes of a new file diffed at once; each boundary costs at most about two
/// blocks of literal bytes.
const DIFF_CHUNK: usize = 32 << 20;
/// Chunks read and worked on at once, each on its own core: twice a chunk's
/// memory for (nearly) half the time on two cores.
const PARALLEL_CHUNKS: usize = 2;

/// What can go wrong computing or applying a delta.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The signature bytes are malformed, unsupported or too large.
    #[error("invalid delta signature: {0}")]
    BadSignature(String),
    /// The delta bytes are malformed or would build more than the expected size.
    #[error("invalid delta: {0}")]
    BadDelta(String),
    /// The delta applied, but its result is not the file we were promised.
    #[error(
        "delta result does not match: expected {expected_size} bytes with blake3 {expected}, got {actual_size} bytes with blake3 {actual}"
    )]
    HashMismatch {
        /// The blake3 the result should have had.
        expected: Hash,
        /// The length the result should have had.
        expected_size: u64,
        /// The blake3 of what was built.
        actual: Hash,
        /// The length of what was built.
        actual_size: u64,
    },
    /// The file being diffed is not the content it was announced as.
    #[error("{}: changed while its delta was being computed; run again", path.display())]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file, or `<delta output>` for a writer without a path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DeltaError + '_ {
    move |source| DeltaError::Io { path: path.to_path_buf(), source }
}

/// Block size for a base of `len` bytes.
///
/// The rule: the largest of 512 bytes, the square root of `len` (as rsync
/// does: 1 MiB → 1 KiB blocks, 1 GiB → 32 KiB) and `len / 87,380` (so the
/// signature never exceeds [`MAX_SIGNATURE_BYTES`]; this term wins above about
/// 7 GiB), rounded up to a multiple of 64. It never returns 0. Block sizes are
/// `u32`, so beyond about 341 TiB it saturates at `u32::MAX` and the
/// signature outgrows the limit (and [`diff`] rejects it).
pub fn block_size_for(len: u64) -> u32 {
    let size = len.isqrt().max(len.div_ceil(MAX_BLOCKS)).max(MIN_BLOCK_SIZE);
    u32::try_from(size.next_multiple_of(BLOCK_ALIGN)).unwrap_or(u32::MAX)
}

/// Bytes of MD4 kept per block for a base of `len` bytes in blocks of
/// `block_size`: rsync's rule (enough bits that a false match of a block
/// anywhere in the file stays unlikely, beyond the 32 of the rolling
/// checksum) with a wider margin, between 3 and [`CRYPTO_HASH_SIZE`]. A
/// false match is caught by the blake3 check all the same.
pub fn crypto_hash_size_for(len: u64, block_size: u32) -> u32 {
    let bits = BLOCKSUM_BIAS + 2 * len.max(1).ilog2() - block_size.max(1).ilog2();
    (bits + 1).saturating_sub(32).div_ceil(8).clamp(MIN_CRYPTO_HASH_SIZE, CRYPTO_HASH_SIZE)
}

/// Serialized signature of `base`, with the block size of [`block_size_for`].
pub fn signature(base: &[u8]) -> Vec<u8> {
    signature_of(base, base.len() as u64, SIGNATURE_CHUNK).expect("reading a slice cannot fail")
}

/// Serialized signature of the file at `path`, read in bounded chunks.
///
/// # Errors
///
/// [`DeltaError::Io`] with the path.
pub fn signature_file(path: &Path) -> Result<Vec<u8>, DeltaError> {
    let file = File::open(path).map_err(io_error(path))?;
    let len = file.metadata().map_err(io_error(path))?.len();
    signature_of(BufReader::new(file), len, SIGNATURE_CHUNK).map_err(io_error(path))
}

/// Whether `sig` has the header and length [`signature_file`] gives a file
/// of `len` bytes. A stored signature is checked so before it is used; a
/// wrong entry in it is caught by the blake3 of the file a delta rebuilds.
pub fn is_signature_for(sig: &[u8], len: u64) -> bool {
    let block_size = block_size_for(len);
    let hash_size = crypto_hash_size_for(len, block_size);
    let header = [MD4_MAGIC, block_size.to_be_bytes(), hash_size.to_be_bytes()].concat();
    let entries = len.div_ceil(u64::from(block_size));
    sig.starts_with(&header) && sig.len() as u64 == HEADER_BYTES as u64 + entries * (4 + u64::from(hash_size))
}

/// The signature of `len` bytes from `input`, computed `chunk` bytes (rounded
/// to whole blocks) at a time: the blocks' entries do not depend on chunking.
fn signature_of(mut input: impl Read, len: u64, chunk: usize) -> io::Result<Vec<u8>> {
    let block_size = block_size_for(len);
    let options = SignatureOptions { block_size, crypto_hash_size: crypto_hash_size_for(len, block_size) };
    let per = whole_blocks(chunk, block_size as usize);
    let mut out = Signature::calculate(&[], options).into_serialized();
    let mut chunks = Chunks::new(len, per);
    while let Some(group) = chunks.read(&mut input)? {
        let parts: Vec<_> = group.par_iter().map(|c| Signature::calculate(c, options).into_serialized()).collect();
        for part in parts {
            out.extend_from_slice(&part[HEADER_BYTES..]);
        }
    }
    Ok(out)
}

/// Checks untrusted signature bytes, including what `fast_rsync::diff`
/// would panic on (a block size of 0).
fn parse_signature(bytes: &[u8]) -> Result<Signature, DeltaError> {
    let len = bytes.len();
    let word = |at: usize| bytes[at..at + 4].try_into().map_or(0, u32::from_be_bytes);
    let problem = if len > MAX_SIGNATURE_BYTES {
        format!("{len} bytes, over the limit of {MAX_SIGNATURE_BYTES}")
    } else if len < HEADER_BYTES {
        format!("{len} bytes, shorter than a header")
    } else if bytes[..4] != MD4_MAGIC {
        format!("not an MD4 signature (magic {:#010x})", word(0))
    } else if word(4) == 0 {
        "block size 0".to_owned()
    } else if !(1..=16).contains(&word(8)) {
        format!("{} hash bytes per block, not 1 to 16 (MD4)", word(8))
    } else {
        let parsed = Signature::deserialize(bytes.to_vec());
        return parsed.map_err(|e| DeltaError::BadSignature(e.to_string()));
    };
    Err(DeltaError::BadSignature(problem))
}

/// Writes to `out` a delta that turns the base described by `signature`
/// (untrusted bytes from the network) into `new`.
///
/// # Errors
///
/// [`DeltaError::BadSignature`] when the signature is malformed, unsupported
/// or larger than [`MAX_SIGNATURE_BYTES`]; [`DeltaError::Io`] (path
/// `<delta output>`) when writing to `out` fails.
pub fn diff(signature: &[u8], new: &[u8], out: impl Write) -> Result<(), DeltaError> {
    diff_in_chunks(signature, new, out, DIFF_CHUNK)
}

fn diff_in_chunks(signature: &[u8], new: &[u8], out: impl Write, chunk: usize) -> Result<(), DeltaError> {
    let read_error = |e| io_error(Path::new("<new>"))(e); // a slice reads whole
    diff_chunks(signature, new, new.len() as u64, chunk, None, out, read_error)?.end()
}

/// Diffs `len` bytes of `input` against the base described by `signature`,
/// in chunks of whole blocks (about `chunk` bytes) [`PARALLEL_CHUNKS`] at a
/// time, feeding what it reads to `hasher`, when given, beside the diffs.
/// Returns the delta without its end command, for the caller to end it.
fn diff_chunks<W: Write>(
    signature: &[u8],
    mut input: impl Read,
    len: u64,
    chunk: usize,
    mut hasher: Option<&mut Hasher>,
    out: W,
    read_error: impl Fn(io::Error) -> DeltaError,
) -> Result<Splice<W>, DeltaError> {
    let parsed = parse_signature(signature)?;
    let base = Base { signature, index: parsed.index() };
    let mut splice = Splice::new(out)?;
    // Whole blocks per chunk, so that every chunk starts on the base's grid.
    let per = whole_blocks(chunk, base.block_size());
    let mut chunks = Chunks::new(len, per);
    let mut at = 0u64;
    while let Some(group) = chunks.read(&mut input).map_err(&read_error)? {
        let hash = || {
            if let Some(h) = hasher.as_deref_mut() {
                group.iter().for_each(|c| h.update(c));
            }
        };
        let diffs = || group.par_iter().enumerate().map(|(i, c)| base.diff(at + (i * per) as u64, c)).collect();
        let (_, commands): (_, Vec<_>) = rayon::join(hash, diffs);
        for c in commands {
            splice.append(&c?)?;
        }
        at += group.iter().map(|c| c.len() as u64).sum::<u64>();
    }
    Ok(splice)
}

/// `chunk` bytes rounded down to whole blocks, at least one.
fn whole_blocks(chunk: usize, block: usize) -> usize {
    (chunk / block).max(1) * block
}

/// A base, by its signature: the bytes and their index.
struct Base<'a> {
    signature: &'a [u8],
    index: fast_rsync::IndexedSignature<'a>,
}

impl Base<'_> {
    fn block_size(&self) -> usize {
        u32::from_be_bytes(self.signature[4..8].try_into().expect("a checked header")) as usize
    }

    fn hash_size(&self) -> usize {
        u32::from_be_bytes(self.signature[8..12].try_into().expect("a checked header")) as usize
    }

    /// The commands that build the chunk of the new file at offset `at` (a
    /// delta without its magic and end command). Blocks still where the
    /// base had them (an edit in place leaves all but a few) are found by
    /// comparing the chunk's own signature, computed on 8 lanes, with the
    /// base's entry by entry; only the runs between them go through
    /// `fast_rsync`'s rolling search, which hashes each candidate block alone.
    fn diff(&self, at: u64, chunk: &[u8]) -> Result<Vec<u8>, DeltaError> {
        let (b, entry) = (self.block_size(), 4 + self.hash_size());
        let mut out = Vec::new();
        let blocks = chunk.len().div_ceil(b);
        let aligned = at.is_multiple_of(b as u64);
        let ours = match aligned {
            true => {
                let options = SignatureOptions { block_size: b as u32, crypto_hash_size: self.hash_size() as u32 };
                Signature::calculate(chunk, options).into_serialized()
            }
            false => Vec::new(),
        };
        let first = (at / b as u64) as usize;
        // The base's last block may be short: never copied from here.
        let base_blocks = (self.signature.len() - HEADER_BYTES) / entry;
        fn entry_of(sig: &[u8], entry: usize, i: usize) -> Option<&[u8]> {
            sig.get(HEADER_BYTES + i * entry..HEADER_BYTES + (i + 1) * entry)
        }
        let in_place = |i: usize| {
            aligned
                && (i + 1) * b <= chunk.len()
                && first + i + 1 < base_blocks
                && entry_of(&ours, entry, i).is_some_and(|e| Some(e) == entry_of(self.signature, entry, first + i))
        };
        let mut i = 0;
        while i < blocks {
            let (start, same) = (i, in_place(i));
            while i < blocks && in_place(i) == same {
                i += 1;
            }
            if same {
                copy_command(&mut out, ((first + start) * b) as u64, ((i - start) * b) as u64);
            } else {
                let mut part = Vec::new();
                fast_rsync::diff(&self.index, &chunk[start * b..(i * b).min(chunk.len())], &mut part).map_err(|e| {
                    match e {
                        DiffError::InvalidSignature => DeltaError::BadSignature(e.to_string()),
                        DiffError::Io(source) => io_error(Path::new(OUTPUT))(source),
                    }
                })?;
                match part.split_last() {
                    Some((0, commands)) if commands.len() >= DELTA_MAGIC.len() => {
                        out.extend_from_slice(&commands[DELTA_MAGIC.len()..]);
                    }
                    _ => return Err(DeltaError::BadDelta("a chunk's delta did not end with the end command".into())),
                }
            }
        }
        Ok(out)
    }
}

/// Appends librsync's copy command: `len` bytes of the base from `offset`.
fn copy_command(out: &mut Vec<u8>, offset: u64, len: u64) {
    let width = |n: u64| match n {
        0..=0xff => 0u8,
        0x100..=0xffff => 1,
        0x1_0000..=0xffff_ffff => 2,
        _ => 3,
    };
    let (o, l) = (width(offset), width(len));
    out.push(0x45 + 4 * o + l);
    out.extend_from_slice(&offset.to_be_bytes()[8 - (1 << o)..]);
    out.extend_from_slice(&len.to_be_bytes()[8 - (1 << l)..]);
}

/// Up to [`PARALLEL_CHUNKS`] consecutive chunks of `len` bytes of input at a
/// time, in buffers reused from one group to the next.
struct Chunks {
    left: u64,
    chunk: usize,
    bufs: Vec<Vec<u8>>,
}

impl Chunks {
    fn new(len: u64, chunk: usize) -> Chunks {
        Chunks { left: len, chunk, bufs: Vec::new() }
    }

    /// Reads the next group (`None` after the last), each chunk whole.
    fn read(&mut self, input: &mut impl Read) -> io::Result<Option<&[Vec<u8>]>> {
        if self.left == 0 {
            return Ok(None);
        }
        let mut used = 0;
        while used < PARALLEL_CHUNKS && self.left > 0 {
            let n = (self.chunk as u64).min(self.left) as usize;
            if self.bufs.len() == used {
                self.bufs.push(Vec::new());
            }
            let buf = &mut self.bufs[used];
            buf.resize(n, 0);
            input.read_exact(buf)?;
            self.left -= n as u64;
            used += 1;
        }
        Ok(Some(&self.bufs[..used]))
    }
}

/// Writes to `out` a delta that turns the base described by `signature` into
/// the file at `path`, which must be `expected_size` bytes hashing to
/// `expected` (with [`Check::Hash`], checked as it is read). The file is
/// read and diffed in bounded chunks; the delta is complete only if the
/// content matched (the end command is written last).
///
/// # Errors
///
/// [`DeltaError::Changed`] when the file is not the announced content; those of [`diff`].
pub fn diff_file(
    signature: &[u8],
    path: &Path,
    (expected, expected_size): (Hash, u64),
    check: Check,
    out: impl Write,
) -> Result<(), DeltaError> {
    let file = File::open(path).map_err(io_error(path))?;
    let changed = || DeltaError::Changed { path: path.to_path_buf() };
    if file.metadata().map_err(io_error(path))?.len() != expected_size {
        return Err(changed());
    }
    let read_error = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => changed(),
        _ => io_error(path)(e),
    };
    let mut hasher = Hasher::new();
    let hashing = (check == Check::Hash).then_some(&mut hasher);
    let splice = diff_chunks(signature, file, expected_size, DIFF_CHUNK, hashing, out, read_error)?;
    if check == Check::Hash && hasher.finalize() != expected {
        return Err(changed());
    }
    splice.end()
}

/// Joins the commands of consecutive chunks (see [`Base::diff`]) into one
/// delta: the magic first, the end command last.
struct Splice<W> {
    inner: W,
}

impl<W: Write> Splice<W> {
    /// Starts a delta: writes the magic.
    fn new(mut inner: W) -> Result<Self, DeltaError> {
        inner.write_all(&DELTA_MAGIC).map_err(io_error(Path::new(OUTPUT)))?;
        Ok(Splice { inner })
    }

    /// Appends one chunk's commands.
    fn append(&mut self, commands: &[u8]) -> Result<(), DeltaError> {
        self.inner.write_all(commands).map_err(io_error(Path::new(OUTPUT)))
    }

    /// Ends the delta: writes the end command.
    fn end(mut self) -> Result<(), DeltaError> {
        self.inner.write_all(&[0]).map_err(io_error(Path::new(OUTPUT)))
    }
}

/// Applies `delta` (untrusted bytes) to `base`, writing at most
/// `expected_size` bytes to `out`, and checks that the result is exactly
/// `expected_size` bytes with blake3 `expected`. On error, `out` holds
/// partial or wrong data and must be discarded.
///
/// # Errors
///
/// [`DeltaError::BadDelta`] when the delta is malformed or would build more
/// than `expected_size` bytes; [`DeltaError::HashMismatch`] when the result is
/// not the expected file; [`DeltaError::Io`] (path `<delta output>`) when
/// writing to `out` fails.
pub fn apply_verified(
    base: &[u8],
    delta: &[u8],
    expected: Hash,
    expected_size: u64,
    out: impl Write,
) -> Result<(), DeltaError> {
    verified(base, delta, expected, expected_size, out)
}

fn verified<B: apply::ReadAt + ?Sized>(
    base: &B,
    delta: impl Read,
    expected: Hash,
    expected_size: u64,
    out: impl Write,
) -> Result<(), DeltaError> {
    let mut writer = HashingWriter::new(out);
    apply::apply(base, delta, &mut writer, expected_size)?;
    writer.flush().map_err(io_error(Path::new(OUTPUT)))?;
    let (actual, actual_size, _) = writer.finish();
    if (actual, actual_size) != (expected, expected_size) {
        return Err(DeltaError::HashMismatch { expected, expected_size, actual, actual_size });
    }
    Ok(())
}

/// Rebuilds a file for a receiver: applies the delta at `delta_path` to the
/// file at `base_path` as a stream, writing a new file at `out_path` (which
/// must not exist), verified against `expected`. With `writeback`, the disk
/// starts writing it as it is written (for a store that syncs at commit; see
/// [`fsutil::WritingBack`]). Syncing and renaming it into place is the caller's job.
///
/// # Errors
///
/// Those of [`apply_verified`], and [`DeltaError::Io`] with the path that
/// could not be read or written. On any error after `out_path` was created,
/// it is removed, so nothing half-written is left.
pub fn apply_files(
    base_path: &Path,
    delta_path: &Path,
    out_path: &Path,
    expected: Hash,
    expected_size: u64,
    writeback: bool,
) -> Result<(), DeltaError> {
    let file = File::open(base_path).map_err(io_error(base_path))?;
    let len = file.metadata().map_err(io_error(base_path))?.len();
    let base = apply::BaseFile { file, len };
    let delta = BufReader::with_capacity(256 << 10, File::open(delta_path).map_err(io_error(delta_path))?);
    let out = File::create_new(out_path).map_err(io_error(out_path))?;
    let mut writer = BufWriter::with_capacity(256 << 10, fsutil::WritingBack::new(out, writeback));
    let written = verified(&base, delta, expected, expected_size, &mut writer)
        .and_then(|()| writer.into_inner().map(|w| drop(w.finish())).map_err(|e| io_error(out_path)(e.into_error())))
        .map_err(|e| match e {
            DeltaError::Io { path, source } if path == Path::new(OUTPUT) => io_error(out_path)(source),
            DeltaError::Io { path, source } if path == Path::new("<delta base>") => io_error(base_path)(source),
            DeltaError::Io { path, source } if path == Path::new("<delta>") => io_error(delta_path)(source),
            other => other,
        });
    if written.is_err() {
        // Best effort: the error being returned matters more than this one.
        let _ = fs::remove_file(out_path);
    }
    written
}

#[cfg(test)]
mod tests;
