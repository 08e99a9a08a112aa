//! A server-streaming call whose response is read off the wire without
//! tonic's decoder. tonic copies every received byte into one buffer of its
//! own before decoding; on a restore that copy, and the fresh memory it
//! writes into, cost the client about a tenth of its CPU. Here each gRPC
//! message is decoded straight from the HTTP/2 frame that holds it (the
//! mirror's encoder never splits a message between the chunks it hands to
//! HTTP/2, and the client accepts frames as large as a chunk), so the blob
//! bytes in a [`pb::BlobFrame`] keep pointing into the received frame. Only
//! a message that does span frames (flow control may split one) is copied.
//!
//! The request side stays tonic's: the call goes through the same channel
//! and interceptor as every other call.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use prost::Message;
use tonic::codegen::http;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::ServiceExt;

use super::Outgoing;
use crate::rpc::frames::FrameSource;
use crate::rpc::wire::{PREFIX, prefix_len, set_prefix};
use crate::rpc::{MAX_MESSAGE, pb};

/// The service every call goes through.
pub(super) type Service = InterceptedService<Channel, Outgoing>;

/// Starts the server-streaming call `path` with `request`.
///
/// # Errors
///
/// The transport's error, or the status the mirror answered with at once.
pub(super) async fn call<M: Message>(svc: &Service, path: &'static str, request: &M) -> Result<Messages, Status> {
    let mut body = BytesMut::with_capacity(PREFIX + request.encoded_len());
    body.extend_from_slice(&[0; PREFIX]);
    request.encode(&mut body).map_err(|e| Status::internal(e.to_string()))?;
    set_prefix(&mut body);
    let request = http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(body.freeze())))
        .map_err(|e| Status::internal(e.to_string()))?;
    let response = svc.clone().oneshot(request).await.map_err(|e| Status::from_error(e.into()))?;
    // A refusal comes as headers only.
    if let Some(status) = Status::from_header_map(response.headers()) {
        return match status.code() {
            Code::Ok => Ok(Messages { body: None, rope: Rope::default(), pending: None }),
            _ => Err(status),
        };
    }
    if response.status() != http::StatusCode::OK {
        return Err(http_status(response.status()));
    }
    Ok(Messages { body: Some(tonic::body::Body::new(response.into_body())), rope: Rope::default(), pending: None })
}

/// An answer that is not gRPC (a proxy's, say), as tonic maps it.
fn http_status(status: http::StatusCode) -> Status {
    use http::StatusCode as S;
    let code = match status {
        S::BAD_REQUEST => Code::Internal,
        S::UNAUTHORIZED => Code::Unauthenticated,
        S::FORBIDDEN => Code::PermissionDenied,
        S::NOT_FOUND => Code::Unimplemented,
        S::TOO_MANY_REQUESTS | S::BAD_GATEWAY | S::SERVICE_UNAVAILABLE | S::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("the mirror answered HTTP {status}"))
}

/// The messages of a response, decoded as they complete.
pub(super) struct Messages {
    /// None once the trailers said the call succeeded.
    body: Option<tonic::body::Body>,
    rope: Rope,
    /// The length of the message whose prefix was read.
    pending: Option<usize>,
}

impl Messages {
    /// The next message, `None` after the last.
    ///
    /// # Errors
    ///
    /// The status the mirror ended the call with; a broken connection; a
    /// message that breaks the framing or does not decode.
    pub(super) async fn next<M: Message + Default>(&mut self) -> Result<Option<M>, Status> {
        loop {
            if let Some(message) = self.take()? {
                return M::decode(message).map(Some).map_err(|e| Status::internal(format!("undecodable message: {e}")));
            }
            let Some(body) = &mut self.body else {
                return match (self.rope.len, self.pending) {
                    (0, None) => Ok(None),
                    _ => Err(Status::internal("the stream ended inside a message")),
                };
            };
            match body.frame().await {
                None => return Err(Status::unknown("the stream ended without a status")),
                Some(Err(e)) => return Err(Status::from_error(e.into())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.rope.push(data),
                    Err(frame) => {
                        let status = frame.trailers_ref().and_then(Status::from_header_map);
                        match status {
                            Some(s) if s.code() == Code::Ok => self.body = None,
                            Some(s) => return Err(s),
                            None => return Err(Status::unknown("the stream ended without a status")),
                        }
                    }
                },
            }
        }
    }

    /// The next whole message's bytes, if they have arrived.
    fn take(&mut self) -> Result<Option<Bytes>, Status> {
        if self.pending.is_none() && self.rope.len >= PREFIX {
            let prefix = self.rope.take(PREFIX)[..].try_into().expect("PREFIX bytes");
            let len =
                prefix_len(prefix).ok_or_else(|| Status::internal("a compressed message, which was not asked for"))?;
            if len > MAX_MESSAGE {
                return Err(Status::out_of_range(format!("a message of {len} bytes, over the limit of {MAX_MESSAGE}")));
            }
            self.pending = Some(len);
        }
        match self.pending {
            Some(len) if self.rope.len >= len => {
                self.pending = None;
                Ok(Some(self.rope.take(len)))
            }
            _ => Ok(None),
        }
    }
}

impl FrameSource for Messages {
    async fn message(&mut self) -> Result<Option<pb::BlobFrame>, Status> {
        self.next().await
    }
}

/// Received bytes as the frames they came in.
#[derive(Default)]
struct Rope {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Rope {
    fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// The first `n` bytes (at most `len`): a slice of the first chunk if it
    /// holds them all, else a copy.
    fn take(&mut self, n: usize) -> Bytes {
        debug_assert!(n <= self.len);
        self.len -= n;
        let Some(front) = self.chunks.front_mut() else { return Bytes::new() };
        if front.len() >= n {
            let out = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return out;
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let front = self.chunks.front_mut().expect("len counts the chunks");
            let k = (n - out.len()).min(front.len());
            out.extend_from_slice(&front.split_to(k));
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;

    fn encoded(frames: &[pb::BlobFrame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.push(0);
            out.extend_from_slice(&(f.encoded_len() as u32).to_be_bytes());
            f.encode(&mut out).unwrap();
        }
        out
    }

    fn trailers(code: i32, message: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", code.to_string().parse().unwrap());
        h.insert("grpc-message", message.parse().unwrap());
        h
    }

    /// A response body of `chunks` (as HTTP/2 would hand them over), then `end`.
    fn messages(chunks: Vec<Bytes>, end: Option<http::HeaderMap>) -> Messages {
        let frames = chunks.into_iter().map(Frame::data).chain(end.map(Frame::trailers));
        let stream = futures::stream::iter(frames.map(Ok::<_, std::convert::Infallible>));
        let body = tonic::body::Body::new(http_body_util::StreamBody::new(stream));
        Messages { body: Some(body), rope: Rope::default(), pending: None }
    }

    async fn all(mut m: Messages) -> Result<Vec<pb::BlobFrame>, Status> {
        let mut out = Vec::new();
        while let Some(f) = m.next::<pb::BlobFrame>().await? {
            out.push(f);
        }
        Ok(out)
    }

    fn two() -> Vec<pb::BlobFrame> {
        let frame = |n: u8, len| pb::BlobFrame {
            hash: vec![n; 32],
            size: len as u64,
            data: vec![n; len].into(),
            last: true,
            ..Default::default()
        };
        vec![frame(1, 3000), frame(2, 10)]
    }

    #[tokio::test]
    async fn messages_decode_in_place_from_one_frame_and_whole_across_many() {
        let wire = Bytes::from(encoded(&two()));
        let got = all(messages(vec![wire.clone()], Some(trailers(0, "")))).await.unwrap();
        assert_eq!(got, two());
        let inside = wire.as_ptr_range();
        assert!(inside.contains(&got[0].data.as_ptr()), "the data points into the received frame");
        for size in [1, 3, 4, 5, 6, 1000] {
            let pieces = wire.chunks(size).map(Bytes::copy_from_slice).collect();
            assert_eq!(all(messages(pieces, Some(trailers(0, "")))).await.unwrap(), two(), "{size}-byte frames");
        }
    }

    #[tokio::test]
    async fn a_bad_end_or_bad_framing_is_an_error_not_a_short_stream() {
        let wire = encoded(&two());
        let whole = || vec![Bytes::from(wire.clone())];
        let err = all(messages(whole(), None)).await.unwrap_err();
        assert!(err.message().contains("without a status"), "{err:?}");
        let err = all(messages(whole(), Some(trailers(5, "blob gone")))).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::NotFound, "blob gone"));
        // Cut inside the last message, and right after its prefix.
        let last = PREFIX + two()[1].encoded_len();
        for cut in [wire.len() - 3, wire.len() - last + PREFIX] {
            let cut = vec![Bytes::from(wire[..cut].to_vec())];
            let err = all(messages(cut, Some(trailers(0, "")))).await.unwrap_err();
            assert!(err.message().contains("inside a message"), "{err:?}");
        }
        let mut compressed = wire.clone();
        compressed[0] = 1;
        let err = all(messages(vec![compressed.into()], Some(trailers(0, "")))).await.unwrap_err();
        assert!(err.message().contains("compressed"), "{err:?}");
        let mut huge = wire.clone();
        huge[1..5].copy_from_slice(&(MAX_MESSAGE as u32 + 1).to_be_bytes());
        let err = all(messages(vec![huge.into()], Some(trailers(0, "")))).await.unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
        let garbage = vec![Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff])];
        let err = all(messages(garbage, Some(trailers(0, "")))).await.unwrap_err();
        assert!(err.message().contains("undecodable"), "{err:?}");
    }

    #[test]
    fn a_rope_slices_within_a_chunk_and_copies_across_chunks() {
        let mut rope = Rope::default();
        let first = Bytes::from_static(b"hello world");
        rope.push(first.clone());
        rope.push(Bytes::new());
        rope.push(Bytes::from_static(b"!!"));
        assert_eq!(rope.len, 13);
        let hello = rope.take(5);
        assert_eq!(&hello[..], b"hello");
        assert_eq!(hello.as_ptr(), first.as_ptr(), "a slice of the chunk, not a copy");
        assert_eq!(&rope.take(8)[..], b" world!!");
        assert_eq!(rope.len, 0);
        assert!(rope.chunks.is_empty());
    }
}
