//! Unit tests of the delta module.

use super::*;

/// Deterministic noise (xorshift64).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut step = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 32) as u8
    };
    (0..len).map(|_| step()).collect()
}

fn delta_of(base: &[u8], new: &[u8]) -> Vec<u8> {
    let mut delta = Vec::new();
    diff(&signature(base), new, &mut delta).unwrap();
    delta
}

/// Applies `delta` expecting `new`; returns the result and what was written.
fn rebuild(base: &[u8], delta: &[u8], new: &[u8]) -> (Result<(), DeltaError>, Vec<u8>) {
    let mut out = Vec::new();
    let result = apply_verified(base, delta, Hash::of(new), new.len() as u64, &mut out);
    (result, out)
}

/// Serialized signature length for a base of `len` bytes, by the format.
fn signature_len(len: u64) -> u64 {
    let block = block_size_for(len);
    12 + (4 + u64::from(crypto_hash_size_for(len, block))) * len.div_ceil(block.into())
}

#[test]
fn small_change_gives_small_delta_that_round_trips() {
    let base = noise(3 << 20, 1);
    let mut new = base.clone();
    for (i, patch) in noise(24 << 10, 2).chunks(1024).enumerate() {
        let at = 1000 + i * 131_071;
        new[at..at + 1024].copy_from_slice(patch);
    }
    new.splice(1 << 20..1 << 20, noise(8 << 10, 3));
    new.truncate(new.len() - (64 << 10));
    let delta = delta_of(&base, &new);
    assert!(delta.len() < new.len() / 10, "{} bytes", delta.len());
    let (result, out) = rebuild(&base, &delta, &new);
    result.unwrap();
    assert!(out == new);
}

#[test]
fn identical_and_empty_files() {
    let base = noise(100_000, 4);
    let delta = delta_of(&base, &base);
    // Only the last, partial block (100,000 % 512 bytes) travels as a literal.
    assert!(delta.len() < 32 + 100_000 % 512, "{} bytes", delta.len());
    rebuild(&base, &delta, &base).0.unwrap();
    for (base, new) in [(&b""[..], &b"hello"[..]), (b"hello", b""), (b"", b"")] {
        let (result, out) = rebuild(base, &delta_of(base, new), new);
        result.unwrap();
        assert_eq!(out, new);
    }
}

#[test]
fn block_size_grows_like_sqrt_and_bounds_the_signature() {
    assert_eq!(block_size_for(0), 512);
    assert_eq!(block_size_for(1 << 20), 1 << 10);
    assert_eq!(block_size_for(1 << 30), 32 << 10);
    let base = noise(3 << 20, 5);
    assert_eq!(signature(&base).len() as u64, signature_len(3 << 20));
    // The largest base whose block size still fits in a u32: about 341 TiB.
    let max = MAX_BLOCKS * (u64::from(u32::MAX) + 1 - BLOCK_ALIGN);
    let mut previous = 0;
    for len in [0, 1, 511, 3 << 20, 1 << 30, 8 << 30, 1 << 40, 100 << 40, max] {
        let size = block_size_for(len);
        assert!(size >= previous && size.is_multiple_of(64), "{len}: {size}");
        assert!(signature_len(len) <= MAX_SIGNATURE_BYTES as u64, "{len}");
        previous = size;
    }
    assert_eq!(block_size_for(u64::MAX / 2), u32::MAX);
    assert_eq!(block_size_for(u64::MAX), u32::MAX);
}

#[test]
fn corrupt_deltas_fail_without_overrunning() {
    let base = noise(64 << 10, 6);
    let mut new = base.clone();
    new[5000..5100].fill(7);
    new.extend_from_slice(b"tail");
    let delta = delta_of(&base, &new);
    let flipped = (0..delta.len()).map(|i| {
        let mut d = delta.clone();
        d[i] ^= 0x5a;
        d
    });
    let truncated = (0..delta.len()).map(|n| delta[..n].to_vec());
    let mut failures = 0;
    for bad in flipped.chain(truncated).chain([noise(300, 7)]) {
        let (result, out) = rebuild(&base, &bad, &new);
        assert!(out.len() <= new.len());
        match result {
            Ok(()) => assert!(out == new),
            Err(DeltaError::BadDelta(_) | DeltaError::HashMismatch { .. }) => failures += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(failures >= 2 * delta.len(), "{failures} failures");
    // Hand-made: magic, copies with 8-byte offset and length (0x54), end.
    let copy = |at: u64, len: u64| [[0x54].as_slice(), &at.to_be_bytes(), &len.to_be_bytes()].concat();
    let magic = 0x7273_0236u32.to_be_bytes();
    let out_of_bounds = [&magic[..], &copy(u64::MAX - 8, 16), &[0]].concat();
    let whole = copy(0, base.len() as u64);
    let twice = [&magic[..], &whole, &whole, &[0]].concat();
    for bad in [out_of_bounds, twice] {
        let (result, out) = rebuild(&base, &bad, &base);
        assert!(matches!(result, Err(DeltaError::BadDelta(_))), "{result:?}");
        assert!(out.len() <= base.len());
    }
}

#[test]
fn wrong_expected_hash_or_size_is_a_mismatch() {
    let base = noise(10_000, 8);
    let delta = delta_of(&base, &base);
    for (hash, size) in [(Hash::of(b"other"), 10_000), (Hash::of(&base), 10_001)] {
        let result = apply_verified(&base, &delta, hash, size, io::sink());
        let Err(DeltaError::HashMismatch { actual, actual_size, .. }) = result else {
            panic!("{result:?}");
        };
        assert_eq!((actual, actual_size), (Hash::of(&base), 10_000));
    }
}

#[test]
fn malformed_signatures_are_rejected() {
    let good = signature(&noise(10_000, 9));
    let with = |at: usize, bytes: &[u8]| {
        let mut sig = good.clone();
        sig[at..at + bytes.len()].copy_from_slice(bytes);
        sig
    };
    let mut oversized = good[..12].to_vec();
    oversized.resize(12 + 12 * (MAX_BLOCKS as usize + 1), 0);
    let cases = [
        vec![],
        good[..11].to_vec(),
        good[..good.len() - 1].to_vec(),
        noise(1000, 10),
        with(3, &[0x37]), // BLAKE2 magic: unsupported by diff
        with(4, &[0; 4]),
        with(8, &[0; 4]),
        with(8, &17u32.to_be_bytes()),
        oversized,
    ];
    for sig in cases {
        let result = diff(&sig, b"some new data", io::sink());
        assert!(matches!(result, Err(DeltaError::BadSignature(_))));
    }
}

#[test]
fn apply_files_writes_verified_files_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let base = noise(200_000, 11);
    let mut new = base.clone();
    new[100..200].fill(1);
    fs::write(path("base"), &base).unwrap();
    fs::write(path("delta"), delta_of(&base, &new)).unwrap();
    fs::write(path("empty"), b"").unwrap();
    assert_eq!(signature_file(&path("empty")).unwrap(), signature(b""));
    let missing = signature_file(&path("missing"));
    assert!(matches!(missing, Err(DeltaError::Io { path: p, .. }) if p == path("missing")));
    let (base, delta, size) = (path("base"), path("delta"), new.len() as u64);
    let apply = |out: &str, hash| apply_files(&base, &delta, &path(out), hash, size, true);
    let mismatch = apply("bad", Hash::of(b"x"));
    assert!(matches!(mismatch, Err(DeltaError::HashMismatch { .. })));
    assert!(!path("bad").exists());
    apply("out", Hash::of(&new)).unwrap();
    assert!(fs::read(path("out")).unwrap() == new);
    let exists = apply("out", Hash::of(&new));
    assert!(matches!(exists, Err(DeltaError::Io { path: p, .. }) if p == path("out")));
    assert!(fs::read(path("out")).unwrap() == new, "existing file untouched");
}

#[test]
fn chunked_signatures_and_diffs_equal_whole_ones() {
    let base = noise(700_000, 12);
    let whole = signature(&base);
    for chunk in [1, 4096, 10_000, 699_999, 1 << 20] {
        assert_eq!(signature_of(&base[..], base.len() as u64, chunk).unwrap(), whole, "chunk {chunk}");
    }
    let mut new = base.clone();
    new[300_000..300_100].fill(9);
    new.splice(500_000..500_000, noise(3000, 13));
    for chunk in [1000, 65_536, 333_333, 1 << 22] {
        let mut delta = Vec::new();
        diff_in_chunks(&whole, &new, &mut delta, chunk).unwrap();
        let (result, out) = rebuild(&base, &delta, &new);
        result.unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
        assert!(out == new);
        if chunk >= 65_536 {
            assert!(delta.len() < new.len() / 20, "chunk {chunk}: {} bytes", delta.len());
        }
    }
}

#[test]
fn diff_file_checks_the_content_it_diffs() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, new_path) = (dir.path().join("base"), dir.path().join("new"));
    let base = noise(300_000, 14);
    let mut new = base.clone();
    new[1000..2000].fill(3);
    fs::write(&base_path, &base).unwrap();
    fs::write(&new_path, &new).unwrap();
    let sig = signature_file(&base_path).unwrap();
    let mut delta = Vec::new();
    let len = new.len() as u64;
    diff_file(&sig, &new_path, (Hash::of(&new), len), Check::Hash, &mut delta).unwrap();
    rebuild(&base, &delta, &new).0.unwrap();
    let stale = diff_file(&sig, &new_path, (Hash::of(&base), len), Check::Hash, io::sink());
    assert!(matches!(stale, Err(DeltaError::Changed { .. })), "{stale:?}");
    let resized = diff_file(&sig, &new_path, (Hash::of(&new), 5), Check::Hash, io::sink());
    assert!(matches!(resized, Err(DeltaError::Changed { .. })));
    // A stored blob is trusted as it is read: only its size is checked.
    diff_file(&sig, &new_path, (Hash::of(&base), len), Check::Trust, io::sink()).unwrap();
    let resized = diff_file(&sig, &new_path, (Hash::of(&new), 5), Check::Trust, io::sink());
    assert!(matches!(resized, Err(DeltaError::Changed { .. })));
}

#[test]
fn strong_hashes_grow_with_the_file_and_stay_bounded() {
    let size = |len: u64| crypto_hash_size_for(len, block_size_for(len));
    assert_eq!([size(0), size(1 << 20), size(256 << 20), size(1 << 30), size(1 << 40)], [3, 3, 4, 5, 6]);
    assert_eq!(crypto_hash_size_for(u64::MAX, 1), CRYPTO_HASH_SIZE);
}

#[test]
fn blocks_edited_in_place_cost_their_blocks_and_no_more() {
    let base = noise(3_000_000, 21); // not a whole number of blocks
    let b = block_size_for(base.len() as u64) as usize;
    let mut new = base.clone();
    for at in [0, 5 * b + 100, 40 * b, 41 * b - 10, base.len() - 50] {
        new[at..at + 10].copy_from_slice(&noise(10, at as u64));
    }
    let whole = signature(&base);
    // Chunks of whole blocks, and one chunk for all.
    for chunk in [8 * b, 8 * b + 1, 1 << 22] {
        let mut delta = Vec::new();
        diff_in_chunks(&whole, &new, &mut delta, chunk).unwrap();
        let (result, out) = rebuild(&base, &delta, &new);
        result.unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
        assert!(out == new, "chunk {chunk}");
        // Six blocks are touched (one edit straddles two), and the short last one.
        assert!(delta.len() < 8 * b, "chunk {chunk}: {} bytes for blocks of {b}", delta.len());
    }
    // A shift defeats the in-place comparison; the rolling search still finds the rest.
    let mut shifted = base.clone();
    shifted.splice(10 * b + 7..10 * b + 7, noise(333, 22));
    let delta = delta_of(&base, &shifted);
    let (result, out) = rebuild(&base, &delta, &shifted);
    result.unwrap();
    assert!(out == shifted);
    assert!(delta.len() < 4 * b, "{} bytes", delta.len());
}

/// A base of any length that reads as zeros.
struct Zeros(u64);

impl apply::ReadAt for Zeros {
    fn len(&self) -> u64 {
        self.0
    }
    fn read_exact_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
}

#[test]
fn copy_commands_take_the_narrowest_widths_the_decoder_reads() {
    for (offset, len, command) in [(0, 1, 0x45), (255, 256, 0x46), (65_536, 70_000, 0x4f), (5 << 30, 3, 0x51)] {
        let mut delta = DELTA_MAGIC.to_vec();
        copy_command(&mut delta, offset, len);
        assert_eq!(delta[4], command, "copy of {len} at {offset}");
        delta.push(0);
        let mut out = Vec::new();
        let written = apply::apply(&Zeros(6 << 30), &delta[..], &mut out, len).unwrap();
        assert_eq!((written, out.len() as u64), (len, len), "copy of {len} at {offset}");
    }
}

#[test]
fn a_stored_signature_is_checked_against_the_size_of_its_blob() {
    for len in [0usize, 1, 4096, 3 << 20] {
        let base = noise(len, 9);
        let sig = signature(&base);
        assert!(is_signature_for(&sig, len as u64), "{len}");
        assert!(!is_signature_for(&sig[..sig.len() - 1], len as u64), "truncated, {len}");
        assert!(!is_signature_for(&sig, (2 * len as u64 + 1) << 20), "another size, {len}");
    }
    let mut sig = signature(&noise(4096, 9));
    sig[0] ^= 1;
    assert!(!is_signature_for(&sig, 4096), "another magic");
    assert!(!is_signature_for(b"", 0), "no header");
}
