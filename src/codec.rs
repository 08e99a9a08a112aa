//! A tiny, bounds-checked binary encoding used for manifests and the hash cache.
//!
//! Little-endian integers and length-prefixed byte strings. The decoder never
//! panics and never allocates more than the input it was given.

/// Appends values to a byte vector.
#[derive(Default)]
pub(crate) struct Enc(pub(crate) Vec<u8>);

impl Enc {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn raw(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    /// A u32 length, then the bytes. Callers bound lengths well below 4 GiB.
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.raw(v);
    }
}

/// The input ended early or held an impossible length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Truncated;

/// Reads values from a byte slice, failing cleanly at its end.
pub(crate) struct Dec<'a>(pub(crate) &'a [u8]);

impl<'a> Dec<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if self.0.len() < n {
            return Err(Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32, Truncated> {
        self.array().map(u32::from_le_bytes)
    }
    pub(crate) fn u64(&mut self) -> Result<u64, Truncated> {
        self.array().map(u64::from_le_bytes)
    }
    pub(crate) fn i64(&mut self) -> Result<i64, Truncated> {
        self.array().map(i64::from_le_bytes)
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], Truncated> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut e = Enc::default();
        e.u8(7);
        e.u32(1 << 20);
        e.u64(u64::MAX);
        e.i64(-5);
        e.bytes(b"hello");
        let buf = e.0;
        let mut d = Dec(&buf);
        assert_eq!(d.u8(), Ok(7));
        assert_eq!(d.u32(), Ok(1 << 20));
        assert_eq!(d.u64(), Ok(u64::MAX));
        assert_eq!(d.i64(), Ok(-5));
        assert_eq!(d.bytes(), Ok(&b"hello"[..]));
        assert!(d.is_empty());
        for cut in 0..buf.len() {
            let mut d = Dec(&buf[..cut]);
            let r = (|| {
                d.u8()?;
                d.u32()?;
                d.u64()?;
                d.i64()?;
                d.bytes()
            })();
            assert_eq!(r, Err(Truncated));
        }
    }

    #[test]
    fn huge_length_prefix_is_refused_without_allocating() {
        let mut d = Dec(&[0xff, 0xff, 0xff, 0xff, 1, 2]);
        assert_eq!(d.bytes(), Err(Truncated));
    }
}
