//! [`pb::BlobFrame`] messages written by hand, as gRPC messages ready for
//! the wire, with each blob's bytes read from its file straight into the
//! message. Through tonic's encoder a mirror read every byte it served into
//! a buffer and then copied it into tonic's: a quarter of its CPU on a
//! restore. Compressed data is still compressed into a buffer of its own and
//! copied once (the copy is small next to the compression).
//!
//! The messages decode to exactly what [`frames::send_file`]'s frames made
//! through tonic, small blobs batched as before (the tests check it):
//! receivers cannot tell.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use prost::encoding::{encode_varint, encoded_len_varint};

use super::MAX_CHUNK;
use super::frames::{self, FrameError, io_err};
use crate::hash::Hash;

/// The path of GetBlobs, the call whose messages are written here.
pub(crate) const GET_BLOBS: &str = "/cachesync.v1.CacheSync/GetBlobs";
/// The gRPC prefix of every message: a compression flag and the length.
pub(crate) const PREFIX: usize = 5;
/// Room for a frame's fields besides its data, and its tag and length in a batch.
const OVERHEAD: usize = 64;

/// Whole messages, in order, as they fill.
pub(crate) type Sink<'a> = dyn FnMut(Bytes) -> Result<(), FrameError> + 'a;

/// Builds messages of blob frames, several small blobs to a message when
/// the receiver asked for batches.
pub(crate) struct Messages {
    buf: Vec<u8>,
    /// Frames in `buf`.
    frames: usize,
    /// Their encoded lengths, each with room for its tag and length.
    len: usize,
    batch: bool,
    level: i32,
}

/// A frame's fields besides its data.
struct Head {
    first: Option<(Hash, u64)>,
    zstd: bool,
    last: bool,
}

impl Head {
    fn len(&self, data: usize) -> usize {
        let first = self.first.map_or(0, |(_, size)| 2 + 32 + if size > 0 { 1 + encoded_len_varint(size) } else { 0 });
        let data = if data > 0 { 1 + encoded_len_varint(data as u64) + data } else { 0 };
        first + data + 2 * usize::from(self.zstd) + 2 * usize::from(self.last)
    }
}

impl Messages {
    /// Messages compressing blob data at zstd `level` (0: none).
    pub(crate) fn new(batch: bool, level: i32) -> Self {
        Messages { buf: Vec::new(), frames: 0, len: 0, batch, level }
    }

    /// Adds blob `hash` of `size` bytes, read from `file` (at `path`).
    ///
    /// # Errors
    ///
    /// [`FrameError::Changed`] if the file is shorter than `size`; I/O; the
    /// sink's. After an error the message being filled is incomplete: the
    /// stream ends there.
    pub(crate) fn add_file(
        &mut self,
        mut file: File,
        path: &Path,
        (hash, size): (Hash, u64),
        sink: &mut Sink<'_>,
    ) -> Result<(), FrameError> {
        let mut sent = 0u64;
        loop {
            let want = (size - sent).min(MAX_CHUNK as u64) as usize;
            let first = (sent == 0).then_some((hash, size));
            let last = sent + want as u64 == size;
            if self.level > 0 {
                let mut data = Vec::with_capacity(want);
                read(&mut file, path, want, &mut data)?;
                let (data, zstd) = frames::compress(data, self.level);
                let head = Head { first, zstd, last };
                self.open_frame(&head, data.len(), sink)?;
                self.buf.extend_from_slice(&data);
            } else {
                let head = Head { first, zstd: false, last };
                self.open_frame(&head, want, sink)?;
                read(&mut file, path, want, &mut self.buf)?;
            }
            sent += want as u64;
            if !self.batch {
                self.finish(sink)?; // a message per frame, sent as soon as it is whole
            }
            if last {
                return Ok(());
            }
        }
    }

    /// Sends the message being filled, if any.
    ///
    /// # Errors
    ///
    /// The sink's.
    pub(crate) fn finish(&mut self, sink: &mut Sink<'_>) -> Result<(), FrameError> {
        if self.frames == 0 {
            return Ok(());
        }
        set_prefix(&mut self.buf);
        (self.frames, self.len) = (0, 0);
        if self.buf.capacity() > 2 * self.buf.len() {
            // Room for a batch that did not come: a message holds its allocation until sent.
            self.buf.shrink_to_fit();
        }
        sink(Bytes::from(std::mem::take(&mut self.buf)))
    }

    /// Writes `head` and the tag and length of `data` bytes of data, in a
    /// new message if this one has no room; the data follows.
    fn open_frame(&mut self, head: &Head, data: usize, sink: &mut Sink<'_>) -> Result<(), FrameError> {
        let len = head.len(data);
        if self.frames > 0 && (!self.batch || self.len + len + 8 > MAX_CHUNK) {
            self.finish(sink)?;
        }
        self.len += len + 8;
        if self.frames == 0 {
            let room = if self.batch { MAX_CHUNK.max(len) } else { len };
            self.buf.reserve_exact(PREFIX + room + OVERHEAD);
            self.buf.extend_from_slice(&[0; PREFIX]);
        } else {
            // A frame after the first is a `following` entry (field 7).
            self.buf.push(7 << 3 | 2);
            encode_varint(len as u64, &mut self.buf);
        }
        self.frames += 1;
        if let Some((hash, size)) = head.first {
            self.buf.push(1 << 3 | 2);
            self.buf.push(32);
            self.buf.extend_from_slice(hash.as_bytes());
            if size > 0 {
                self.buf.push(2 << 3);
                encode_varint(size, &mut self.buf);
            }
        }
        for (field, set) in [(5, head.zstd), (6, head.last)] {
            if set {
                self.buf.extend_from_slice(&[field << 3, 1]);
            }
        }
        if data > 0 {
            self.buf.push(4 << 3 | 2);
            encode_varint(data as u64, &mut self.buf);
        }
        Ok(())
    }
}

/// Writes the gRPC prefix of an uncompressed `message` into its first
/// [`PREFIX`] bytes, which the caller left for it.
///
/// # Panics
///
/// If the message is 4 GiB or more (callers bound theirs far below).
pub(crate) fn set_prefix(message: &mut [u8]) {
    let len = u32::try_from(message.len() - PREFIX).expect("messages stay small");
    message[0] = 0;
    message[1..PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// The length a gRPC prefix announces; `None` for a compressed message.
pub(crate) fn prefix_len(prefix: [u8; PREFIX]) -> Option<usize> {
    let [flag, len @ ..] = prefix;
    (flag == 0).then(|| u32::from_be_bytes(len) as usize)
}

/// Appends exactly `n` bytes of `file` to `buf`, read into its spare room.
fn read(file: &mut File, path: &Path, n: usize, buf: &mut Vec<u8>) -> Result<(), FrameError> {
    buf.reserve(n);
    let got = file.by_ref().take(n as u64).read_to_end(buf).map_err(io_err(path))?;
    if got < n {
        return Err(FrameError::Changed { path: path.to_path_buf() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::rpc::pb;

    /// Gathers frames into messages of at most about [MAX_CHUNK] bytes
    /// (`BlobFrame.following`), for a receiver that asked for batches: a
    /// message per small blob costs both sides more than the blob.
    #[derive(Default)]
    struct Batcher {
        message: Option<pb::BlobFrame>,
        len: usize,
    }

    impl Batcher {
        /// Adds `frame`; returns the message it closed, if it did not fit in it.
        fn add(&mut self, frame: pb::BlobFrame) -> Option<pb::BlobFrame> {
            use prost::Message;
            let len = frame.encoded_len() + 8; // and its tag and length inside the message
            let full = if self.len + len > MAX_CHUNK { self.finish() } else { None };
            self.len += len;
            match &mut self.message {
                Some(message) => message.following.push(frame),
                None => self.message = Some(frame),
            }
            full
        }

        /// The message being filled, if any.
        fn finish(&mut self) -> Option<pb::BlobFrame> {
            self.len = 0;
            self.message.take()
        }
    }

    /// What tonic would have carried: `send_file`'s frames, batched or not.
    fn through_prost(files: &[(&Path, Hash, u64)], batch: bool, level: i32) -> Vec<pb::BlobFrame> {
        let mut out = Vec::new();
        let mut batcher = Batcher::default();
        let mut push = |f: pb::BlobFrame, out: &mut Vec<pb::BlobFrame>| match batch {
            true => out.extend(batcher.add(f)),
            false => out.push(f),
        };
        let mut frames = Vec::new();
        for (path, hash, size) in files {
            let file = File::open(path).unwrap();
            let how = (level, frames::Check::Trust);
            frames::send_file(
                file,
                path,
                (*hash, *size),
                how,
                &mut |f| {
                    frames.push(f);
                    Ok(())
                },
                &|_| {},
            )
            .unwrap();
        }
        for f in frames {
            push(f, &mut out);
        }
        out.extend(batcher.finish());
        out
    }

    fn by_hand(files: &[(&Path, Hash, u64)], batch: bool, level: i32) -> Vec<pb::BlobFrame> {
        let mut wire = Vec::new();
        let mut messages = Messages::new(batch, level);
        let mut sink = |b: Bytes| {
            wire.push(b);
            Ok(())
        };
        for (path, hash, size) in files {
            messages.add_file(File::open(path).unwrap(), path, (*hash, *size), &mut sink).unwrap();
        }
        messages.finish(&mut sink).unwrap();
        wire.into_iter()
            .map(|m| {
                assert_eq!(prefix_len(m[..PREFIX].try_into().unwrap()), Some(m.len() - PREFIX), "the prefix");
                pb::BlobFrame::decode(m.slice(PREFIX..)).unwrap()
            })
            .collect()
    }

    #[test]
    fn messages_by_hand_decode_to_what_prost_would_have_sent() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [0, 1, 100, 5000, 300_000, MAX_CHUNK - 60, MAX_CHUNK, MAX_CHUNK + 1, 3 * MAX_CHUNK + 7, 20];
        let files: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                // Half text that compresses, half noise that does not.
                let data: Vec<u8> =
                    (0..n).map(|j| if j % 2 == 0 { b'a' + (j % 7) as u8 } else { (j * 31 + i) as u8 }).collect();
                let path = dir.path().join(format!("f{i}"));
                std::fs::write(&path, &data).unwrap();
                (path, Hash::of(&data), n as u64)
            })
            .collect();
        let files: Vec<_> = files.iter().map(|(p, h, n)| (p.as_path(), *h, *n)).collect();
        for (batch, level) in [(true, 0), (false, 0), (true, 3), (false, 3)] {
            let (hand, prost) = (by_hand(&files, batch, level), through_prost(&files, batch, level));
            assert_eq!(hand.len(), prost.len(), "messages, batch {batch} level {level}");
            assert!(hand == prost, "batch {batch} level {level}");
        }
    }

    #[test]
    fn a_file_shorter_than_its_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"short").unwrap();
        let mut messages = Messages::new(true, 0);
        let err = messages
            .add_file(File::open(&path).unwrap(), &path, (Hash::of(b"short"), 10), &mut |_| Ok(()))
            .unwrap_err();
        assert!(matches!(err, FrameError::Changed { .. }), "{err}");
    }
}
