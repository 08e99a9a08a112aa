//! Blob framing: whole files and deltas as bounded, optionally zstd-compressed
//! [`pb::BlobFrame`]s, and the receiving state machine that writes them to
//! staging files and verifies every whole blob against its blake3.
//!
//! Both sides use it: the client to push and pull, the server to receive
//! pushes and serve pulls. Sending and receiving are blocking (file I/O);
//! callers run them on the blocking pool.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::MAX_CHUNK;
use super::pb;
use crate::fsutil;
pub(crate) use crate::hash::Check;
use crate::hash::{Hash, Hasher};

/// Why a blob stream failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer broke the framing rules.
    #[error("protocol error in blob stream: {0}")]
    Protocol(String),
    /// A whole blob whose bytes do not hash to its name; nothing was kept.
    /// A mirror sends its stored blobs without hashing them again, so this
    /// is also how a corrupt copy in its store shows.
    #[error(
        "blob {expected} arrived with blake3 {actual}: refused (the sender's copy is corrupt, or it was damaged on the way)"
    )]
    HashMismatch {
        /// The hash it was sent as.
        expected: Hash,
        /// The hash of what arrived.
        actual: Hash,
    },
    /// A local file changed while it was being sent.
    #[error("{} changed while it was being sent; run again", path.display())]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// The other side ended the stream with an error.
    #[error("transfer interrupted: {0}")]
    Interrupted(String),
    /// The receiving side went away.
    #[error("the receiving side closed the stream")]
    Gone,
    /// Local I/O.
    #[error("{}: {source}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        #[source]
        source: io::Error,
    },
    /// What the caller did with a received blob failed.
    #[error("{0}")]
    Handler(String),
}

/// Maps an I/O error on `path` to [`FrameError::Io`].
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FrameError + '_ {
    move |source| FrameError::Io { path: path.to_path_buf(), source }
}

/// Where frames go: returns `Err(Gone)` once the other side hung up.
pub(crate) type Send<'a> = dyn FnMut(pb::BlobFrame) -> Result<(), FrameError> + 'a;

/// Compresses a chunk with zstd when that pays. Large chunks are probed
/// first: if a 16 KiB sample does not shrink (already compressed data, like
/// Go's module zips), the chunk is sent as it is without spending the CPU.
pub(crate) fn compress(data: Vec<u8>, level: i32) -> (Vec<u8>, bool) {
    const SAMPLE: usize = 16 << 10;
    if level > 0 && data.len() > 4 * SAMPLE {
        let at = data.len() / 2 - SAMPLE / 2;
        let probe = zstd::bulk::compress(&data[at..at + SAMPLE], 1).map_or(SAMPLE, |c| c.len());
        // (level 1 on a small sample: a throwaway context is cheap here)
        if probe > SAMPLE - SAMPLE / 16 {
            return (data, false);
        }
    }
    if level > 0
        && data.len() >= 512
        && let Some(c) = with_compressor(level, |z| z.compress(&data).ok())
        && c.len() < data.len() - data.len() / 16
    {
        return (c, true);
    }
    (data, false)
}

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's zstd compressor for `level` (contexts are
/// costly to create, and every blocking thread compresses many chunks).
fn with_compressor<T>(level: i32, f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> Option<T>) -> Option<T> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        f(&mut slot.as_mut()?.1)
    })
}

/// Decompresses one chunk, refusing output beyond [`MAX_CHUNK`].
fn decompress(data: &[u8]) -> Result<Vec<u8>, FrameError> {
    let bad = |e: std::io::Error| FrameError::Protocol(format!("bad zstd chunk: {e}"));
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(bad)?);
        }
        slot.as_mut().expect("set above").decompress(data, MAX_CHUNK).map_err(bad)
    })
}

/// Sends `file` (read from `path`) as blob `hash` of `size` bytes.
///
/// # Errors
///
/// [`FrameError::Changed`] if the file is shorter than `size` or, with
/// [`Check::Hash`], no longer hashes to `hash`; I/O; `Gone`.
pub(crate) fn send_file(
    mut file: File,
    path: &Path,
    (hash, size): (Hash, u64),
    (level, check): (i32, Check),
    send: &mut Send<'_>,
    progress: &dyn Fn(u64),
) -> Result<(), FrameError> {
    let mut hasher = Hasher::new();
    let mut sent = 0u64;
    loop {
        let want = (size - sent).min(MAX_CHUNK as u64) as usize;
        let mut buf = Vec::with_capacity(want);
        let got = (&mut file).take(want as u64).read_to_end(&mut buf).map_err(io_err(path))?;
        if got < want {
            return Err(FrameError::Changed { path: path.to_path_buf() });
        }
        if check == Check::Hash {
            hasher.update(&buf);
        }
        sent += want as u64;
        let last = sent == size;
        if last && check == Check::Hash && hasher.finalize() != hash {
            return Err(FrameError::Changed { path: path.to_path_buf() });
        }
        let first = sent == want as u64;
        let (data, zstd) = compress(buf, level);
        send(pb::BlobFrame {
            hash: if first { hash.as_bytes().to_vec() } else { Vec::new() },
            size: if first { size } else { 0 },
            delta_base: Vec::new(),
            data: data.into(),
            zstd,
            last,
            following: Vec::new(),
        })?;
        progress(want as u64);
        if last {
            return Ok(());
        }
    }
}

/// A `Write` that turns a delta into frames of blob `hash` against `base`.
pub(crate) struct DeltaWriter<'a, 'b> {
    hash: Hash,
    size: u64,
    base: Hash,
    level: i32,
    buf: Vec<u8>,
    started: bool,
    gone: bool,
    send: &'a mut Send<'b>,
}

impl<'a, 'b> DeltaWriter<'a, 'b> {
    pub(crate) fn new(hash: Hash, size: u64, base: Hash, level: i32, send: &'a mut Send<'b>) -> Self {
        DeltaWriter { hash, size, base, level, buf: Vec::with_capacity(MAX_CHUNK), started: false, gone: false, send }
    }

    fn emit(&mut self, last: bool) -> Result<(), FrameError> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(if last { 0 } else { MAX_CHUNK }));
        let (data, zstd) = compress(data, self.level);
        let first = !self.started;
        self.started = true;
        let sent = (self.send)(pb::BlobFrame {
            hash: if first { self.hash.as_bytes().to_vec() } else { Vec::new() },
            size: if first { self.size } else { 0 },
            delta_base: if first { self.base.as_bytes().to_vec() } else { Vec::new() },
            data: data.into(),
            zstd,
            last,
            following: Vec::new(),
        });
        self.gone = matches!(sent, Err(FrameError::Gone));
        sent
    }

    /// True once the receiving side hung up: the error to report is theirs.
    pub(crate) fn is_gone(&self) -> bool {
        self.gone
    }

    /// Sends the final frame.
    pub(crate) fn finish(mut self) -> Result<(), FrameError> {
        self.emit(true)
    }
}

impl Write for DeltaWriter<'_, '_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(MAX_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == MAX_CHUNK {
            self.emit(false).map_err(io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A blob received completely into a staging file.
#[derive(Debug)]
pub(crate) struct Incoming {
    /// Its name.
    pub hash: Hash,
    /// Its size (of the content, not of a delta).
    pub size: u64,
    /// For a delta: the base it applies to; the staged file holds the delta.
    pub delta_base: Option<Hash>,
    /// The staging file; verified against `hash` when this is whole content.
    /// Empty when the file has no name yet (see [`NewFile`]).
    pub staged: PathBuf,
    /// The open file, when it has no name (`O_TMPFILE`): the handler names it.
    pub unnamed: Option<File>,
    /// Unnamed files that received the same verified bytes, for the blob's
    /// other paths (see [`NewFile::copies`]).
    pub copies: Vec<File>,
}

/// A file a [`Staging`] factory made for one blob: named (a staging path, for
/// the handler to rename) or unnamed (linked into place by the handler).
pub(crate) struct NewFile {
    /// Where the content goes.
    pub file: File,
    /// Its name; `None` for an unnamed file.
    pub path: Option<PathBuf>,
    /// More unnamed files that receive the same bytes, as they arrive: a
    /// blob held at several paths is written to all of them at once, never
    /// read back and copied. Only next to an unnamed `file`.
    pub copies: Vec<File>,
}

impl NewFile {
    /// A named staging file.
    pub(crate) fn named((path, file): (PathBuf, File)) -> NewFile {
        NewFile { file, path: Some(path), copies: Vec::new() }
    }
}

struct Current {
    incoming: Incoming,
    /// Taken when the blob completes. Frames are written as they come (at
    /// most [`MAX_CHUNK`] each): a buffer would only copy them once more.
    file: Option<fsutil::WritingBack>,
    copies: Vec<File>,
    hasher: Hasher,
    written: u64,
    limit: u64,
    complete: bool,
}

impl Drop for Current {
    fn drop(&mut self) {
        // A blob that did not complete (or failed verification) is garbage.
        if !self.complete && !self.incoming.staged.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.incoming.staged);
        }
    }
}

/// A factory of new staging files, given the blob that goes into each.
pub(crate) type Staging = Box<dyn FnMut(&Hash) -> io::Result<NewFile> + std::marker::Send>;

/// Receives frames into staging files, one blob at a time.
pub(crate) struct FrameReceiver {
    staging: Staging,
    current: Option<Current>,
    /// Largest blob accepted.
    max_size: u64,
    /// Whether to start each file's writeback as it is written (see [`fsutil::WritingBack`]).
    writing_back: bool,
}

/// Most bytes a delta for a `size`-byte blob may take (literals plus framing).
fn max_delta_len(size: u64) -> u64 {
    size.saturating_add(size / 8).saturating_add(1 << 20)
}

impl FrameReceiver {
    pub(crate) fn new(staging: Staging, max_size: u64) -> Self {
        FrameReceiver { staging, current: None, max_size, writing_back: false }
    }

    /// With `on`, starts each file's writeback as it is written: for a
    /// store that makes what it received durable with one `syncfs` at commit.
    pub(crate) fn writing_back(self, on: bool) -> Self {
        FrameReceiver { writing_back: on, ..self }
    }

    /// Takes one frame; returns the blob it completed, if any.
    ///
    /// # Errors
    ///
    /// Protocol violations, hash mismatches, I/O.
    pub(crate) fn accept(&mut self, frame: pb::BlobFrame) -> Result<Option<Incoming>, FrameError> {
        let proto = |m: &str| Err(FrameError::Protocol(m.to_string()));
        if !frame.following.is_empty() {
            return proto("following frames nested in a following frame");
        }
        match (&self.current, frame.hash.is_empty()) {
            (None, true) => return proto("data frame without a blob header"),
            (Some(_), false) => return proto("new blob before the previous one ended"),
            (None, false) => self.start(&frame)?,
            (Some(_), true) => {}
        }
        let cur = self.current.as_mut().expect("started above");
        let data = if frame.zstd { decompress(&frame.data)?.into() } else { frame.data };
        if data.len() > MAX_CHUNK || cur.written + data.len() as u64 > cur.limit {
            return proto("blob larger than announced");
        }
        cur.written += data.len() as u64;
        cur.hasher.update(&data);
        let path = &cur.incoming.staged;
        cur.file.as_mut().expect("open until complete").write_all(&data).map_err(io_err(path))?;
        for copy in &mut cur.copies {
            copy.write_all(&data).map_err(io_err(path))?;
        }
        if !frame.last {
            return Ok(None);
        }
        let mut cur = self.current.take().expect("present");
        let file = cur.file.take().expect("open until complete").finish();
        if cur.incoming.delta_base.is_none() {
            let actual = cur.hasher.finalize();
            if actual != cur.incoming.hash || cur.written != cur.incoming.size {
                return Err(FrameError::HashMismatch { expected: cur.incoming.hash, actual });
            }
        }
        cur.complete = true;
        if cur.incoming.staged.as_os_str().is_empty() {
            cur.incoming.unnamed = Some(file);
            cur.incoming.copies = std::mem::take(&mut cur.copies);
        }
        let incoming = std::mem::replace(
            &mut cur.incoming,
            Incoming {
                hash: Hash::from_bytes([0; 32]),
                size: 0,
                delta_base: None,
                staged: PathBuf::new(),
                unnamed: None,
                copies: Vec::new(),
            },
        );
        Ok(Some(incoming))
    }

    fn start(&mut self, frame: &pb::BlobFrame) -> Result<(), FrameError> {
        let hash =
            Hash::from_slice(&frame.hash).map_err(|_| FrameError::Protocol("blob hash is not 32 bytes".into()))?;
        let delta_base = match frame.delta_base.len() {
            0 => None,
            _ => Some(
                Hash::from_slice(&frame.delta_base)
                    .map_err(|_| FrameError::Protocol("delta base is not 32 bytes".into()))?,
            ),
        };
        if frame.size > self.max_size {
            return Err(FrameError::Protocol(format!("blob of {} bytes exceeds the limit", frame.size)));
        }
        let new = (self.staging)(&hash).map_err(|e| FrameError::Io { path: "staging file".into(), source: e })?;
        let copies = if new.path.is_none() { new.copies } else { Vec::new() };
        let (file, staged) = (new.file, new.path.unwrap_or_default());
        let limit = if delta_base.is_some() { max_delta_len(frame.size) } else { frame.size };
        self.current = Some(Current {
            incoming: Incoming { hash, size: frame.size, delta_base, staged, unnamed: None, copies: Vec::new() },
            // A delta's staging file is read once and removed: only whole blobs are kept.
            file: Some(fsutil::WritingBack::new(file, self.writing_back && delta_base.is_none())),
            copies,
            hasher: Hasher::new(),
            written: 0,
            limit,
            complete: false,
        });
        Ok(())
    }

    /// Feeds member `name` of `zip` through this receiver as the frames of
    /// blob `hash` of `size` bytes: the blob comes back verified, in the
    /// staging file a [`Staging`] made, or the member is refused (absent,
    /// of another size or content, unreadable) and nothing of it is kept.
    ///
    /// # Errors
    ///
    /// [`FrameError::Handler`] for a missing or unreadable member, the
    /// receiver's errors for one that does not match.
    pub(crate) fn accept_zip_member(
        &mut self,
        zip: &mut zip::ZipArchive<File>,
        name: &str,
        hash: Hash,
        size: u64,
    ) -> Result<Incoming, FrameError> {
        let unreadable = |e: &dyn std::fmt::Display| FrameError::Handler(format!("zip member {name}: {e}"));
        let mut feed = || {
            let mut member = zip.by_name(name).map_err(|e| unreadable(&e))?;
            if member.size() != size {
                return Err(unreadable(&format_args!("{} bytes, not {size}", member.size())));
            }
            let mut frame = pb::BlobFrame { hash: hash.as_bytes().to_vec(), size, ..Default::default() };
            loop {
                let mut data = Vec::with_capacity(MAX_CHUNK.min(size as usize));
                (&mut member).take(MAX_CHUNK as u64).read_to_end(&mut data).map_err(|e| unreadable(&e))?;
                frame.last = data.len() < MAX_CHUNK;
                frame.data = data.into();
                let last = frame.last;
                if let Some(incoming) = self.accept(std::mem::take(&mut frame))? {
                    return Ok(incoming);
                }
                if last {
                    return Err(unreadable(&"ended early"));
                }
            }
        };
        let result = feed();
        if result.is_err() {
            self.current = None; // what was staged of it goes with it
        }
        result
    }

    /// Checks that the stream did not end inside a blob.
    ///
    /// # Errors
    ///
    /// [`FrameError::Protocol`] when a blob is incomplete.
    pub(crate) fn finish(&mut self) -> Result<(), FrameError> {
        match self.current.take() {
            None => Ok(()),
            Some(_) => Err(FrameError::Protocol("stream ended inside a blob".into())),
        }
    }
}

/// Where received frames come from: tonic's stream (a mirror receiving a
/// push) or a response read straight off the wire (a client pulling).
pub(crate) trait FrameSource: std::marker::Send {
    /// The next frame, `None` after the last.
    fn message(&mut self) -> impl Future<Output = Result<Option<pb::BlobFrame>, tonic::Status>> + std::marker::Send;
}

impl FrameSource for tonic::Streaming<pb::BlobFrame> {
    fn message(&mut self) -> impl Future<Output = Result<Option<pb::BlobFrame>, tonic::Status>> + std::marker::Send {
        tonic::Streaming::message(self)
    }
}

/// Feeds a gRPC stream of frames to `receiver` on the blocking pool, calling
/// `handle` (also on the blocking pool) for every completed blob.
///
/// # Errors
///
/// The first failure: of the transport, the framing, or `handle`.
pub(crate) async fn receive_blobs<H>(
    mut stream: impl FrameSource,
    mut receiver: FrameReceiver,
    mut handle: H,
) -> Result<(), FrameError>
where
    H: FnMut(Incoming) -> Result<(), FrameError> + std::marker::Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<pb::BlobFrame>>(8);
    let worker = tokio::task::spawn_blocking(move || -> Result<(), FrameError> {
        while let Some(messages) = rx.blocking_recv() {
            for mut message in messages {
                let following = std::mem::take(&mut message.following);
                for frame in std::iter::once(message).chain(following) {
                    if let Some(incoming) = receiver.accept(frame)? {
                        handle(incoming)?;
                    }
                }
            }
        }
        receiver.finish()
    });
    let mut broken = None;
    let mut open = true;
    while open {
        // Messages already received go to the writer together: one hand-off
        // per batch instead of one per message.
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut next = Some(stream.message().await);
        while let Some(got) = next {
            match got {
                Ok(Some(message)) => {
                    bytes += message.data.len() + message.following.iter().map(|f| f.data.len()).sum::<usize>();
                    batch.push(message);
                }
                Ok(None) => open = false,
                Err(status) => {
                    broken = Some(status);
                    open = false;
                }
            }
            next = if open && bytes < MAX_CHUNK { futures::FutureExt::now_or_never(stream.message()) } else { None };
        }
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            break; // the worker failed; its error is the one to report
        }
    }
    drop(tx);
    let result = worker.await.map_err(|e| FrameError::Handler(format!("receiver task failed: {e}")))?;
    match (result, broken) {
        (Err(e @ (FrameError::HashMismatch { .. } | FrameError::Handler(_) | FrameError::Io { .. })), _) => Err(e),
        (_, Some(status)) => Err(FrameError::Interrupted(status.message().to_string())),
        (result, None) => result,
    }
}
