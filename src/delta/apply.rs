//! Applying a delta as a stream: the delta is read sequentially, the base is
//! read at offsets (`pread`), the result is written as it is built. Memory
//! stays bounded by one buffer, whatever the sizes of base, delta and result.
//!
//! The format is librsync's, as `fast_rsync` writes it: a big-endian magic,
//! then commands: `0` ends; `1..=64` is a literal of that many bytes;
//! `0x41..=0x44` a literal whose length follows in 1, 2, 4 or 8 bytes;
//! `0x45..=0x54` a copy from the base whose offset and length follow, each in
//! 1, 2, 4 or 8 bytes. Every byte of it is untrusted.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use super::DeltaError;

const DELTA_MAGIC: u32 = 0x7273_0236;
const BUF: usize = 256 << 10;

/// A base that can be read at any offset.
pub(super) trait ReadAt {
    /// Its length.
    fn len(&self) -> u64;
    /// Fills `buf` from `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = offset as usize;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }
}

/// A base file and its length, taken once.
pub(super) struct BaseFile {
    pub(super) file: File,
    pub(super) len: u64,
}

impl ReadAt for BaseFile {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }
}

fn bad(why: impl Into<String>) -> DeltaError {
    DeltaError::BadDelta(why.into())
}

/// Reads exactly `buf.len()` bytes of the delta; running out is a bad delta.
fn take(delta: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), DeltaError> {
    delta.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => bad(format!("truncated while reading {what}")),
        _ => DeltaError::Io { path: "<delta>".into(), source: e },
    })
}

fn number(delta: &mut impl Read, width: usize, what: &str) -> Result<u64, DeltaError> {
    let mut b = [0u8; 8];
    take(delta, &mut b[8 - width..], what)?;
    Ok(u64::from_be_bytes(b))
}

fn output(what: &str) -> impl FnOnce(io::Error) -> DeltaError + '_ {
    move |source| DeltaError::Io { path: what.into(), source }
}

/// Applies `delta` to `base`, writing to `out` and never more than `limit`
/// bytes. Returns the number of bytes written.
pub(super) fn apply<B: ReadAt + ?Sized>(
    base: &B,
    mut delta: impl Read,
    out: &mut impl Write,
    limit: u64,
) -> Result<u64, DeltaError> {
    if number(&mut delta, 4, "magic")? != u64::from(DELTA_MAGIC) {
        return Err(bad("not an rsync delta (bad magic)"));
    }
    let mut buf = vec![0u8; BUF];
    let mut written = 0u64;
    loop {
        let cmd = number(&mut delta, 1, "command")? as u8;
        let (len, copy_from) = match cmd {
            0 => break,
            1..=0x40 => (u64::from(cmd), None),
            0x41..=0x44 => (number(&mut delta, 1 << (cmd - 0x41), "literal length")?, None),
            0x45..=0x54 => {
                let mode = cmd - 0x45;
                let offset = number(&mut delta, 1 << (mode / 4), "copy offset")?;
                let len = number(&mut delta, 1 << (mode % 4), "copy length")?;
                if len == 0 || offset.checked_add(len).is_none_or(|end| end > base.len()) {
                    return Err(bad(format!("copy of {len} bytes at {offset} outside a {}-byte base", base.len())));
                }
                (len, Some(offset))
            }
            other => return Err(bad(format!("unknown command {other:#04x}"))),
        };
        if written.checked_add(len).is_none_or(|total| total > limit) {
            return Err(bad(format!("builds more than the expected {limit} bytes")));
        }
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(BUF as u64) as usize;
            match copy_from {
                Some(offset) => base.read_exact_at(&mut buf[..n], offset + done).map_err(output("<delta base>"))?,
                None => take(&mut delta, &mut buf[..n], "literal")?,
            }
            out.write_all(&buf[..n]).map_err(output("<delta output>"))?;
            done += n as u64;
        }
        written += len;
    }
    let mut extra = [0u8; 1];
    match delta.read(&mut extra) {
        Ok(0) => Ok(written),
        Ok(_) => Err(bad("data after the end command")),
        Err(e) => Err(DeltaError::Io { path: "<delta>".into(), source: e }),
    }
}
