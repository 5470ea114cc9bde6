//! The wire format: framing of messages made of bytes plus sockets.
//!
//! Pure code, no I/O and no `unsafe`: the transport feeds it bytes and out-of-band handles
//! (descriptors received with `SCM_RIGHTS`) in the order they arrived, and it hands back whole
//! messages. Every field is checked before anything is trusted or allocated, so any byte string
//! yields either a message or a [`DecodeError`], never a panic (see the proptest below and the
//! `fuzz/` target).
//!
//! ```text
//! offset size field
//!      0    4 magic          b"HNDV"
//!      4    1 version        1
//!      5    1 kind           1 = message, 2 = abort
//!      6    2 flags          bit 0 = MORE (another frame of this message follows); others 0
//!      8    4 payload_len    u32 little-endian, bytes of payload after the header
//!     12    4 handle_count   u32 little-endian, sockets attached to this frame
//! ```
//!
//! A frame is the 16-byte header, `payload_len` payload bytes, then `handle_count *
//! inline_handle_bytes` bytes of inline handle data (zero on Unix, where descriptors travel out
//! of band). A message is one frame, or several when it carries more sockets than fit in one
//! frame: every frame but the last has `MORE` set. An abort frame (no payload, no handles) tells
//! the receiver to drop a partly received message; a sender emits it when a send was cancelled
//! between frames.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

/// Size of the fixed header.
pub(crate) const HEADER_LEN: usize = 16;
/// The magic that opens every frame.
pub(crate) const MAGIC: [u8; 4] = *b"HNDV";
/// The only version this build speaks.
pub(crate) const VERSION: u8 = 1;
/// Frame kind: (part of) a message.
pub(crate) const KIND_MESSAGE: u8 = 1;
/// Frame kind: drop the partly received message.
pub(crate) const KIND_ABORT: u8 = 2;
/// Flag: more frames of this message follow.
pub(crate) const FLAG_MORE: u16 = 1;

/// Hard ceiling on one message's payload, whatever the configured limit.
pub(crate) const MAX_PAYLOAD: usize = 16 << 20;
/// Hard ceiling on the sockets in one message, whatever the configured limit.
pub(crate) const MAX_HANDLES: usize = 1 << 16;

/// What a decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Largest payload of one message.
    pub(crate) max_payload: usize,
    /// Most sockets in one message.
    pub(crate) max_handles: usize,
    /// Most sockets in one frame (the transport's batch size).
    pub(crate) max_handles_per_frame: usize,
    /// Bytes of inline data per handle (0 when handles travel out of band).
    pub(crate) inline_handle_bytes: usize,
}

/// Why bytes could not be decoded. Every variant is final for the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    BadMagic,
    UnsupportedVersion(u8),
    UnknownKind(u8),
    ReservedFlags(u16),
    /// A length field over the limit.
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// The frame declares more handles than arrived with it.
    MissingHandles {
        expected: usize,
        received: usize,
    },
    /// Handles arrived that no frame claims.
    UnexpectedHandles,
    /// An abort frame that carries data.
    MalformedAbort,
    /// The stream ended inside a frame or a multi-frame message.
    EndOfStream,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::BadMagic => f.write_str("frame does not start with the handover magic"),
            DecodeError::UnsupportedVersion(v) => {
                write!(f, "wire version {v} is not supported (this build speaks {VERSION})")
            }
            DecodeError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            DecodeError::ReservedFlags(x) => write!(f, "reserved frame flags set: {x:#06x}"),
            DecodeError::TooLarge { what, len, max } => write!(f, "{what} {len} over limit {max}"),
            DecodeError::MissingHandles { expected, received } => {
                write!(f, "frame declares {expected} sockets but {received} arrived")
            }
            DecodeError::UnexpectedHandles => f.write_str("sockets arrived that no frame declares"),
            DecodeError::MalformedAbort => f.write_str("abort frame carries data"),
            DecodeError::EndOfStream => f.write_str("stream ended inside a message"),
        }
    }
}

/// A parsed, validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: u8,
    pub(crate) flags: u16,
    pub(crate) payload_len: u32,
    pub(crate) handle_count: u32,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind;
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.payload_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.handle_count.to_le_bytes());
        b
    }

    /// Parses and checks the fields that need no context.
    pub(crate) fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, DecodeError> {
        if b[0..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if b[4] != VERSION {
            return Err(DecodeError::UnsupportedVersion(b[4]));
        }
        let kind = b[5];
        if kind != KIND_MESSAGE && kind != KIND_ABORT {
            return Err(DecodeError::UnknownKind(kind));
        }
        let flags = u16::from_le_bytes([b[6], b[7]]);
        if flags & !FLAG_MORE != 0 {
            return Err(DecodeError::ReservedFlags(flags));
        }
        let payload_len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        let handle_count = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        Ok(Header { kind, flags, payload_len, handle_count })
    }
}

/// Where, in an encoded message, a batch of out-of-band handles must be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Offset of the frame's first byte in the encoded buffer.
    pub(crate) offset: usize,
    /// Index of the batch's first handle in the sender's list.
    pub(crate) first: usize,
    /// Number of handles in the batch.
    pub(crate) count: usize,
}

/// Appends the frames of one message to `out` and their handle batches to `batches`.
///
/// The payload goes in the first frame; each frame carries at most `per_frame` handles.
/// `inline` writes `count` handles' inline data (nothing on Unix).
pub(crate) fn encode_message<E>(
    out: &mut Vec<u8>,
    batches: &mut Vec<Batch>,
    payload: &[u8],
    handle_count: usize,
    per_frame: usize,
    mut inline: impl FnMut(&mut Vec<u8>, usize, usize) -> Result<(), E>,
) -> Result<(), E> {
    debug_assert!(per_frame > 0);
    let mut first = 0;
    loop {
        let count = (handle_count - first).min(per_frame);
        let last = first + count == handle_count;
        let body = if first == 0 { payload } else { &[][..] };
        let header = Header {
            kind: KIND_MESSAGE,
            flags: if last { 0 } else { FLAG_MORE },
            payload_len: body.len() as u32,
            handle_count: count as u32,
        };
        let offset = out.len();
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(body);
        inline(out, first, count)?;
        if count > 0 {
            batches.push(Batch { offset, first, count });
        }
        first += count;
        if last {
            return Ok(());
        }
    }
}

/// The frame that cancels a partly sent message.
pub(crate) fn abort_frame() -> [u8; HEADER_LEN] {
    Header { kind: KIND_ABORT, flags: 0, payload_len: 0, handle_count: 0 }.encode()
}

/// Incremental decoder: bytes and handles in, whole messages out.
#[derive(Debug)]
pub(crate) struct Decoder<H> {
    limits: Limits,
    buf: Vec<u8>,
    start: usize,
    queued: VecDeque<H>,
    /// Payload and handles of a multi-frame message received so far.
    partial: Option<(Vec<u8>, Vec<H>, Vec<u8>)>,
}

/// A decoded message.
#[derive(Debug)]
pub(crate) struct Decoded<H> {
    pub(crate) payload: Vec<u8>,
    pub(crate) handles: Vec<H>,
    /// Inline handle data, `inline_handle_bytes` per handle.
    pub(crate) inline: Vec<u8>,
}

impl<H> Default for Decoded<H> {
    fn default() -> Decoded<H> {
        Decoded { payload: Vec::new(), handles: Vec::new(), inline: Vec::new() }
    }
}

impl<H> Decoder<H> {
    pub(crate) fn new(limits: Limits) -> Decoder<H> {
        debug_assert!(limits.max_handles_per_frame > 0);
        Decoder { limits, buf: Vec::new(), start: 0, queued: VecDeque::new(), partial: None }
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// Replaces the limits; frames parsed from now on are checked against the new ones.
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        debug_assert!(limits.max_handles_per_frame > 0);
        self.limits = limits;
    }

    /// Feeds bytes read from the stream.
    pub(crate) fn push_bytes(&mut self, bytes: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 4096 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Feeds out-of-band handles, in the order they arrived.
    pub(crate) fn push_handles(
        &mut self,
        handles: impl IntoIterator<Item = H>,
    ) -> Result<(), DecodeError> {
        self.queued.extend(handles);
        // Handles arrive with the first byte of their frame, so at most one frame's worth can
        // be ahead of the frame being read (plus the one in progress).
        if self.queued.len() > 2 * self.limits.max_handles_per_frame {
            return Err(DecodeError::UnexpectedHandles);
        }
        Ok(())
    }

    /// True when nothing is buffered: no partial frame, message or unclaimed handle.
    pub(crate) fn is_idle(&self) -> bool {
        self.start == self.buf.len() && self.queued.is_empty() && self.partial.is_none()
    }

    /// Checks the state at end of stream: `Ok` when it ended between messages.
    pub(crate) fn finish(&mut self) -> Result<(), DecodeError> {
        if self.is_idle() {
            Ok(())
        } else if self.start == self.buf.len() && self.partial.is_none() {
            Err(DecodeError::UnexpectedHandles)
        } else {
            Err(DecodeError::EndOfStream)
        }
    }

    /// Returns the next whole message, `Ok(false)` if more input is needed.
    ///
    /// The message's payload is appended to `out.payload`, its handles to `out.handles`.
    ///
    /// Out-of-band handles arrive with the first byte of the frame that declares them (the
    /// sender attaches them to the write that starts the frame), so handles still queued once
    /// every byte that came with them has been decoded belong to no frame: a sender that
    /// attached descriptors to a frame declaring none. That is an error at once, on the call
    /// after the message they came with, rather than at the end of the stream: the caller
    /// closes them (and the peer, if it likes) instead of holding them for the channel's life.
    pub(crate) fn next_into(&mut self, out: &mut Decoded<H>) -> Result<bool, DecodeError> {
        loop {
            let avail = &self.buf[self.start..];
            if avail.is_empty() && !self.queued.is_empty() {
                return Err(DecodeError::UnexpectedHandles);
            }
            let Some(head) = avail.get(..HEADER_LEN) else { return Ok(false) };
            let header = Header::decode(head.try_into().expect("slice of HEADER_LEN"))?;
            let payload_len = header.payload_len as usize;
            let count = header.handle_count as usize;
            if header.kind == KIND_ABORT {
                if payload_len != 0 || count != 0 || header.flags != 0 {
                    return Err(DecodeError::MalformedAbort);
                }
                self.start += HEADER_LEN;
                self.partial = None;
                continue;
            }
            let (done_payload, done_handles) =
                self.partial.as_ref().map_or((0, 0), |(p, h, _)| (p.len(), h.len()));
            let max_payload = self.limits.max_payload.min(MAX_PAYLOAD);
            if payload_len > max_payload - done_payload.min(max_payload) {
                let len = done_payload + payload_len;
                return Err(DecodeError::TooLarge { what: "payload bytes", len, max: max_payload });
            }
            if count > self.limits.max_handles_per_frame {
                let max = self.limits.max_handles_per_frame;
                return Err(DecodeError::TooLarge {
                    what: "sockets in one frame",
                    len: count,
                    max,
                });
            }
            let max_handles = self.limits.max_handles.min(MAX_HANDLES);
            if done_handles + count > max_handles {
                let len = done_handles + count;
                return Err(DecodeError::TooLarge { what: "sockets", len, max: max_handles });
            }
            let inline_len = count * self.limits.inline_handle_bytes;
            let frame_len = HEADER_LEN + payload_len + inline_len;
            if avail.len() < frame_len {
                return Ok(false);
            }
            if self.limits.inline_handle_bytes == 0 && self.queued.len() < count {
                return Err(DecodeError::MissingHandles {
                    expected: count,
                    received: self.queued.len(),
                });
            }
            let body = &avail[HEADER_LEN..HEADER_LEN + payload_len];
            let inline = &avail[HEADER_LEN + payload_len..frame_len];
            let (payload, handles, inline_out) = match self.partial.as_mut() {
                Some((p, h, i)) => (p, h, i),
                None => (&mut out.payload, &mut out.handles, &mut out.inline),
            };
            payload.extend_from_slice(body);
            inline_out.extend_from_slice(inline);
            if self.limits.inline_handle_bytes == 0 {
                handles.extend(self.queued.drain(..count));
            }
            self.start += frame_len;
            let more = header.flags & FLAG_MORE != 0;
            match (more, self.partial.take()) {
                (true, None) => {
                    let p = std::mem::take(&mut out.payload);
                    let h = std::mem::take(&mut out.handles);
                    let i = std::mem::take(&mut out.inline);
                    self.partial = Some((p, h, i));
                }
                (true, Some(partial)) => self.partial = Some(partial),
                (false, None) => return Ok(true),
                (false, Some((p, h, i))) => {
                    out.payload = p;
                    out.handles = h;
                    out.inline = i;
                    return Ok(true);
                }
            }
        }
    }
}

/// Decodes a whole byte string with handles delivered up front; used by tests and the fuzzer.
pub(crate) fn decode_all(bytes: &[u8], handles: usize) -> Result<usize, String> {
    let limits = Limits {
        max_payload: 1 << 20,
        max_handles: 4096,
        max_handles_per_frame: 253,
        inline_handle_bytes: 0,
    };
    let mut d = Decoder::<()>::new(limits);
    d.push_bytes(bytes);
    d.push_handles(std::iter::repeat_n((), handles)).map_err(|e| e.to_string())?;
    let mut n = 0;
    loop {
        let mut out = Decoded::default();
        match d.next_into(&mut out) {
            Ok(true) => n += 1,
            Ok(false) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    d.finish().map_err(|e| e.to_string())?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            max_payload: 1 << 20,
            max_handles: 4096,
            max_handles_per_frame: 253,
            inline_handle_bytes: 0,
        }
    }

    fn encode(payload: &[u8], handles: usize) -> (Vec<u8>, Vec<Batch>) {
        let (mut out, mut batches) = (Vec::new(), Vec::new());
        encode_message::<()>(&mut out, &mut batches, payload, handles, 253, |_, _, _| Ok(()))
            .unwrap();
        (out, batches)
    }

    #[test]
    fn handles_beside_a_frame_that_declares_none_are_refused_once_its_bytes_are_read() {
        let (bytes, _) = encode(b"ack", 0);
        let mut d = Decoder::new(limits());
        // As one recvmsg delivers them: the frame's bytes and 50 descriptors it never claims.
        d.push_handles(0..50).unwrap();
        d.push_bytes(&bytes);
        let mut out = Decoded::default();
        assert_eq!(d.next_into(&mut out), Ok(true), "the message itself is well formed");
        assert_eq!(out.payload, b"ack");
        assert!(out.handles.is_empty());
        assert_eq!(d.next_into(&mut out), Err(DecodeError::UnexpectedHandles));

        // Handles for a frame whose bytes have only partly arrived are waited for.
        let (bytes, _) = encode(b"hello", 2);
        let mut d = Decoder::new(limits());
        d.push_handles([1, 2]).unwrap();
        d.push_bytes(&bytes[..3]);
        let mut out = Decoded::default();
        assert_eq!(d.next_into(&mut out), Ok(false));
        d.push_bytes(&bytes[3..]);
        assert_eq!(d.next_into(&mut out), Ok(true));
        assert_eq!(out.handles, [1, 2]);
        assert_eq!(d.next_into(&mut out), Ok(false));
    }

    #[test]
    fn round_trip_one_frame() {
        let (bytes, batches) = encode(b"hello", 3);
        assert_eq!(batches, vec![Batch { offset: 0, first: 0, count: 3 }]);
        let mut d = Decoder::new(limits());
        d.push_handles([10, 11, 12]).unwrap();
        d.push_bytes(&bytes);
        let mut out = Decoded::default();
        assert!(d.next_into(&mut out).unwrap());
        assert_eq!(out.payload, b"hello");
        assert_eq!(out.handles, vec![10, 11, 12]);
        assert!(d.is_idle());
    }

    #[test]
    fn more_than_one_batch_is_split_and_reassembled_in_order() {
        let (bytes, batches) = encode(b"x", 600);
        assert_eq!(batches.len(), 3);
        assert_eq!(batches.iter().map(|b| b.count).collect::<Vec<_>>(), vec![253, 253, 94]);
        let mut d = Decoder::new(limits());
        let mut out = Decoded::default();
        // Feed frame by frame, each frame's handles with its first byte.
        for (i, b) in batches.iter().enumerate() {
            let end = batches.get(i + 1).map_or(bytes.len(), |n| n.offset);
            d.push_handles(b.first..b.first + b.count).unwrap();
            d.push_bytes(&bytes[b.offset..end]);
            let done = d.next_into(&mut out).unwrap();
            assert_eq!(done, i == batches.len() - 1);
        }
        assert_eq!(out.payload, b"x");
        assert_eq!(out.handles, (0..600).collect::<Vec<_>>());
    }

    #[test]
    fn byte_at_a_time() {
        let (a, _) = encode(b"first", 0);
        let (b, _) = encode(b"second", 1);
        let mut d = Decoder::new(limits());
        let mut got = Vec::new();
        let all = [a, b].concat();
        for (i, byte) in all.iter().enumerate() {
            if i == HEADER_LEN + 5 {
                d.push_handles([7]).unwrap();
            }
            d.push_bytes(&[*byte]);
            let mut out = Decoded::default();
            if d.next_into(&mut out).unwrap() {
                got.push((out.payload, out.handles));
            }
        }
        assert_eq!(got, vec![(b"first".to_vec(), vec![]), (b"second".to_vec(), vec![7])]);
    }

    #[test]
    fn missing_handles_is_an_error() {
        let (bytes, _) = encode(b"", 2);
        let mut d = Decoder::new(limits());
        d.push_handles([1]).unwrap();
        d.push_bytes(&bytes);
        let err = d.next_into(&mut Decoded::default()).unwrap_err();
        assert_eq!(err, DecodeError::MissingHandles { expected: 2, received: 1 });
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let h = Header { kind: KIND_MESSAGE, flags: 0, payload_len: u32::MAX, handle_count: 0 };
        let mut d = Decoder::<()>::new(limits());
        d.push_bytes(&h.encode());
        let err = d.next_into(&mut Decoded::default()).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { what: "payload bytes", .. }), "{err:?}");
    }

    #[test]
    fn abort_drops_the_partial_message() {
        let (bytes, batches) = encode(b"dropped", 300);
        let mut d = Decoder::new(limits());
        d.push_handles(0..253).unwrap();
        d.push_bytes(&bytes[..batches[1].offset]);
        assert!(!d.next_into(&mut Decoded::default()).unwrap());
        d.push_bytes(&abort_frame());
        let (next, _) = encode(b"kept", 1);
        d.push_handles([999]).unwrap();
        d.push_bytes(&next);
        let mut out = Decoded::default();
        assert!(d.next_into(&mut out).unwrap());
        assert_eq!((out.payload, out.handles), (b"kept".to_vec(), vec![999]));
    }

    #[test]
    fn bad_fields() {
        let good =
            Header { kind: KIND_MESSAGE, flags: 0, payload_len: 0, handle_count: 0 }.encode();
        let mut b = good;
        b[0] = b'X';
        assert_eq!(Header::decode(&b), Err(DecodeError::BadMagic));
        let mut b = good;
        b[4] = 2;
        assert_eq!(Header::decode(&b), Err(DecodeError::UnsupportedVersion(2)));
        let mut b = good;
        b[5] = 9;
        assert_eq!(Header::decode(&b), Err(DecodeError::UnknownKind(9)));
        let mut b = good;
        b[7] = 0x80;
        assert_eq!(Header::decode(&b), Err(DecodeError::ReservedFlags(0x8000)));
    }

    #[test]
    fn truncated_stream_is_reported_at_finish() {
        let (bytes, _) = encode(b"abc", 0);
        assert_eq!(
            decode_all(&bytes[..bytes.len() - 1], 0),
            Err(DecodeError::EndOfStream.to_string())
        );
        assert_eq!(decode_all(&bytes, 0), Ok(1));
        assert_eq!(decode_all(&bytes, 1), Err(DecodeError::UnexpectedHandles.to_string()));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), n in 0usize..600) {
            let _ = decode_all(&bytes, n);
        }

        #[test]
        fn corrupting_a_valid_stream_never_panics(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            handles in 0usize..600,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
        ) {
            let (mut bytes, _) = encode(&payload, handles);
            for (at, x) in flips {
                let i = at % bytes.len();
                bytes[i] ^= x;
            }
            let cut = cut % (bytes.len() + 1);
            let _ = decode_all(&bytes[..cut], handles);
        }

        #[test]
        fn valid_streams_round_trip(msgs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..100), 0usize..300), 1..5)) {
            // Feed frame by frame, each batch of handles just before its frame's bytes, as
            // the transport delivers them.
            let mut d = Decoder::new(limits());
            let mut seen = Vec::new();
            let mut base = 0;
            for (p, h) in &msgs {
                let (bytes, batches) = encode(p, *h);
                let mut cuts: Vec<usize> = batches.iter().map(|b| b.offset).collect();
                cuts.push(bytes.len());
                let mut from = 0;
                for (i, to) in cuts.iter().enumerate() {
                    d.push_bytes(&bytes[from..*to]);
                    if let Some(b) = batches.get(i) {
                        d.push_handles(base + b.first..base + b.first + b.count).unwrap();
                    }
                    from = *to;
                }
                base += h;
                let mut out = Decoded::default();
                while d.next_into(&mut out).unwrap() {
                    seen.push((std::mem::take(&mut out.payload), std::mem::take(&mut out.handles)));
                }
            }
            prop_assert!(d.is_idle());
            let mut expect_h = 0;
            prop_assert_eq!(seen.len(), msgs.len());
            for ((p, h), (sp, sh)) in msgs.iter().zip(seen) {
                prop_assert_eq!(p, &sp);
                prop_assert_eq!(sh, (expect_h..expect_h + h).collect::<Vec<_>>());
                expect_h += h;
            }
        }
    }
}
