//! Frame decoding (client -> server, masked) and encoding (server -> client, unmasked); and, for
//! wxchat's own clients (the `subscriber` CLI), the client side: unmasked frames in, masked out.

use super::deflate::Inflater;
use super::{Error, Event, Limits, OpCode};

/// The frame being received when its payload spans several reads.
#[derive(Clone, Copy, Debug)]
struct Partial {
    opcode: OpCode,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes still to come.
    remaining: u64,
    /// Payload bytes already received (the mask offset).
    received: u64,
    /// RSV1 on a message's first frame: its payload is compressed (permessage-deflate).
    compressed: bool,
}

/// The decoder's side of permessage-deflate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inflate {
    /// Not negotiated: RSV1 is a protocol error.
    Off,
    /// Every message inflates on its own, with the thread's shared inflater.
    Stateless,
    /// The client keeps its context: this connection's own inflater (made on first use, held
    /// in the cold state).
    Takeover,
}

/// Incremental server-side decoder. Complete single-frame messages are returned straight from the
/// caller's buffer (unmasked in place); fragmented or streamed messages are reassembled here.
/// Idle, it is 24 bytes and owns no heap memory: whatever only a message in progress needs is in
/// `cold`, allocated when such a message starts and freed by [`Decoder::shrink`] once it is over.
#[derive(Debug)]
pub struct Decoder {
    /// The limits (larger ones saturate: nothing of 4 GiB is ever accepted).
    max_frame: u32,
    max_message: u32,
    /// Server side: frames must be masked. Client side: frames must not be.
    expect_masked: bool,
    inflate: Inflate,
    cold: Option<Box<Cold>>,
}

/// What the decoder holds only mid-message, after an error, or with an inflater of its own.
#[derive(Default)]
struct Cold {
    poisoned: Option<Error>,
    partial: Option<Partial>,
    /// Opcode of the open fragmented message (Text or Binary).
    message: Option<OpCode>,
    /// Reassembled data message.
    data: Vec<u8>,
    /// Bytes of `data` known to be valid UTF-8 (text messages; always at a char boundary).
    validated: usize,
    /// `data` (or `inflated`) holds a message already handed out; cleared on the next call.
    data_done: bool,
    /// A control frame's payload when it spans reads (<= 125 bytes).
    control: Vec<u8>,
    /// The open message is compressed.
    compressed: bool,
    /// A compressed message, inflated (handed out from here).
    inflated: Vec<u8>,
    /// `Inflate::Takeover`'s context, kept between messages.
    inflater: Option<Box<Inflater>>,
}

impl std::fmt::Debug for Cold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cold")
            .field("poisoned", &self.poisoned)
            .field("partial", &self.partial)
            .field("message", &self.message)
            .field("data", &self.data.len())
            .field("control", &self.control.len())
            .field("inflated", &self.inflated.len())
            .field("inflater", &self.inflater.is_some())
            .finish()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Limits::default())
    }
}

/// Reassembly buffers larger than this are freed after their message instead of kept.
const KEEP_CAPACITY: usize = 64 * 1024;

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            max_frame: saturate(limits.max_frame_bytes),
            max_message: saturate(limits.max_message_bytes),
            expect_masked: true,
            inflate: Inflate::Off,
            cold: None,
        }
    }

    /// permessage-deflate was negotiated: RSV1 marks a compressed message. `client_takeover`:
    /// the client keeps its compression context between messages, so this connection needs an
    /// inflater of its own.
    pub fn enable_deflate(&mut self, client_takeover: bool) {
        self.inflate = if client_takeover {
            Inflate::Takeover
        } else {
            Inflate::Stateless
        };
    }

    fn cold(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(Box::default)
    }

    /// Inflates `compressed` into the cold state's `inflated` and validates it as `kind`.
    fn inflate_message(&mut self, kind: OpCode, compressed: &[u8]) -> Result<(), Error> {
        let limit = self.max_message as usize;
        let takeover = self.inflate == Inflate::Takeover;
        let c = self.cold();
        let r = if takeover {
            c.inflater
                .get_or_insert_with(|| Box::new(Inflater::new(true)))
                .inflate(compressed, limit, &mut c.inflated)
        } else {
            super::deflate::inflate_stateless(compressed, limit, &mut c.inflated)
        };
        if let Err(e) = r {
            return Err(self.fail(e));
        }
        if kind == OpCode::Text && simdutf8::basic::from_utf8(&c.inflated).is_err() {
            return Err(self.fail(Error::InvalidUtf8));
        }
        Ok(())
    }

    /// A client-side decoder: the server's frames are unmasked, and a masked one is an error.
    pub fn client(limits: Limits) -> Decoder {
        Decoder {
            expect_masked: false,
            ..Decoder::new(limits)
        }
    }

    /// True while a fragmented message or a partial frame is held.
    pub fn is_mid_message(&self) -> bool {
        self.cold
            .as_ref()
            .is_some_and(|c| c.partial.is_some() || c.message.is_some())
    }

    /// Bytes held in the reassembly buffers.
    pub fn buffered_bytes(&self) -> usize {
        self.cold
            .as_ref()
            .map_or(0, |c| c.data.len() + c.control.len() + c.inflated.len())
    }

    /// True when the decoder holds heap memory (a message in progress, an error, or an
    /// inflater of its own); an idle decoder does not.
    pub fn holds_memory(&self) -> bool {
        self.cold.is_some()
    }

    /// Releases the cold state when nothing is held (call once what the last `decode`
    /// returned is used); an inflater of its own (context takeover) and an error are kept.
    pub fn shrink(&mut self) {
        if self.is_mid_message() {
            return;
        }
        let Some(c) = self.cold.as_deref_mut() else {
            return;
        };
        if c.poisoned.is_some() {
            return;
        }
        if c.inflater.is_none() {
            self.cold = None;
        } else {
            c.data = Vec::new();
            c.inflated = Vec::new();
            c.control = Vec::new();
            c.validated = 0;
            c.data_done = false;
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.cold().poisoned = Some(e.clone());
        e
    }

    /// Decodes from `input`, unmasking in place: returns the bytes consumed and at most one event.
    ///
    /// - An incomplete frame header consumes nothing: call again with more bytes appended.
    /// - A payload that is not all there yet is consumed into the decoder (the caller never holds
    ///   a large frame), and `(n, None)` is returned.
    /// - Call again on the rest of the input until it returns `(0, None)` or the input is used up.
    ///
    /// After an error the decoder is poisoned and keeps returning it.
    #[inline]
    pub fn decode<'a>(
        &'a mut self,
        input: &'a mut [u8],
    ) -> Result<(usize, Option<Event<'a>>), Error> {
        if self.expect_masked && self.between_messages() {
            if let Some(len) = self.small_frame_len(input) {
                return self.decode_small(input, len);
            }
        }
        self.decode_any(input)
    }

    /// No message or frame is open and nothing failed: the next frame starts a message. (A cold
    /// part left from a frame that spanned two reads stays until the end of the read; it does
    /// not stop the fast path.)
    #[inline]
    fn between_messages(&self) -> bool {
        self.cold
            .as_deref()
            .is_none_or(|c| c.poisoned.is_none() && c.partial.is_none() && c.message.is_none())
    }

    /// The payload length when `input` starts with the frame nearly every client sends: a whole
    /// masked, unfragmented, uncompressed text or binary frame under 126 bytes, within the
    /// limits, with no message open. Anything else, valid or not, takes [`Self::decode_any`],
    /// which would accept exactly this frame the same way (a unit test holds the two together).
    #[inline]
    fn small_frame_len(&self, input: &[u8]) -> Option<usize> {
        let (&b0, &b1) = (input.first()?, input.get(1)?);
        // FIN, no RSV bits, opcode 1 or 2; the mask bit and a 7-bit length.
        if (b0 != 0x81 && b0 != 0x82) || b1 & 0x80 == 0 || b1 & 0x7f >= 126 {
            return None;
        }
        let len = usize::from(b1 & 0x7f);
        let fits = len as u32 <= self.max_frame && len as u32 <= self.max_message;
        (fits && input.len() >= 6 + len).then_some(len)
    }

    /// Unmasks and hands out the frame [`Self::small_frame_len`] accepted.
    #[inline]
    fn decode_small<'a>(
        &'a mut self,
        input: &'a mut [u8],
        len: usize,
    ) -> Result<(usize, Option<Event<'a>>), Error> {
        let mask = [input[2], input[3], input[4], input[5]];
        let text = input[0] == 0x81;
        let payload = &mut input[6..6 + len];
        apply_mask(payload, mask, 0);
        if !text {
            return Ok((6 + len, Some(Event::Binary(payload))));
        }
        match simdutf8::basic::from_utf8(payload) {
            Ok(s) => Ok((6 + len, Some(Event::Text(s)))),
            Err(_) => Err(self.fail(Error::InvalidUtf8)),
        }
    }

    /// Any frame, whole or in part; see [`Self::decode`].
    fn decode_any<'a>(
        &'a mut self,
        input: &'a mut [u8],
    ) -> Result<(usize, Option<Event<'a>>), Error> {
        let mut streaming = false;
        if let Some(c) = self.cold.as_deref_mut() {
            if let Some(e) = &c.poisoned {
                return Err(e.clone());
            }
            if c.data_done {
                c.data_done = false;
                c.data.clear();
                c.inflated.clear();
                c.validated = 0;
                if c.data.capacity() > KEEP_CAPACITY {
                    c.data = Vec::new();
                }
                if c.inflated.capacity() > KEEP_CAPACITY {
                    c.inflated = Vec::new();
                }
            }
            streaming = c.partial.is_some();
        }
        let mut pos = 0;
        if !streaming {
            let Some((header_len, partial)) = self.parse_header(input)? else {
                return Ok((0, None));
            };
            pos = header_len;
            let len = partial.remaining as usize;
            let complete = input.len() - header_len >= len;
            if complete && partial.opcode.is_control() {
                let payload = &mut input[header_len..header_len + len];
                apply_mask(payload, partial.mask, 0);
                return match control_event(partial.opcode, payload) {
                    Ok(event) => Ok((header_len + len, Some(event))),
                    Err(e) => Err(self.fail(e)),
                };
            }
            if complete && partial.fin && partial.opcode != OpCode::Continuation {
                // Fast path: a whole unfragmented message in the caller's buffer, zero copy.
                let payload = &mut input[header_len..header_len + len];
                apply_mask(payload, partial.mask, 0);
                if partial.compressed {
                    self.inflate_message(partial.opcode, payload)?;
                    let c = self.cold();
                    c.data_done = true;
                    return Ok((header_len + len, Some(c.inflated_event(partial.opcode))));
                }
                let event = if partial.opcode == OpCode::Text {
                    match simdutf8::basic::from_utf8(payload) {
                        Ok(s) => Event::Text(s),
                        Err(_) => return Err(self.fail(Error::InvalidUtf8)),
                    }
                } else {
                    Event::Binary(payload)
                };
                return Ok((header_len + len, Some(event)));
            }
            let c = self.cold();
            if partial.opcode.is_control() {
                c.control.clear();
            } else if partial.opcode != OpCode::Continuation {
                c.message = Some(partial.opcode);
                c.compressed = partial.compressed;
            }
            c.partial = Some(partial);
        }
        // Streaming: take what payload is there.
        let c = self.cold();
        let Some(mut partial) = c.partial else {
            return Ok((pos, None));
        };
        let avail = ((input.len() - pos) as u64).min(partial.remaining) as usize;
        let chunk = &mut input[pos..pos + avail];
        apply_mask(chunk, partial.mask, partial.received as usize);
        pos += avail;
        partial.remaining -= avail as u64;
        partial.received += avail as u64;
        if partial.opcode.is_control() {
            c.control.extend_from_slice(chunk);
        } else {
            c.data.extend_from_slice(chunk);
            // A compressed text is validated once inflated.
            if c.message == Some(OpCode::Text) && !c.compressed && !c.check_utf8(false) {
                return Err(self.fail(Error::InvalidUtf8));
            }
        }
        let c = self.cold();
        if partial.remaining > 0 {
            c.partial = Some(partial);
            return Ok((pos, None));
        }
        c.partial = None;
        if partial.opcode.is_control() {
            // Validate first without holding the borrow the returned event needs.
            if let Some(e) = control_event(partial.opcode, &c.control).err() {
                return Err(self.fail(e));
            }
            let c = self.cold();
            return Ok((pos, Some(control_event(partial.opcode, &c.control)?)));
        }
        if !partial.fin {
            return Ok((pos, None));
        }
        // The last fragment: hand out the whole message.
        let kind = c.message.take().unwrap_or(OpCode::Binary);
        c.data_done = true;
        if std::mem::take(&mut c.compressed) {
            let compressed = std::mem::take(&mut c.data);
            let r = self.inflate_message(kind, &compressed);
            let c = self.cold();
            c.data = compressed;
            r?;
            return Ok((pos, Some(c.inflated_event(kind))));
        }
        if kind == OpCode::Text {
            if !c.check_utf8(true) {
                return Err(self.fail(Error::InvalidUtf8));
            }
            let c = self.cold();
            // SAFETY: check_utf8(true) has just validated all of `data` (piece by piece as the
            // fragments came); validating it again here doubled the cost of long messages.
            let text = unsafe { std::str::from_utf8_unchecked(&c.data) };
            Ok((pos, Some(Event::Text(text))))
        } else {
            let c = self.cold();
            Ok((pos, Some(Event::Binary(&c.data))))
        }
    }

    /// Parses and validates a frame header. Ok(None) when incomplete. Checks that need only the
    /// first two bytes run before the rest of the header arrives (fail fast).
    fn parse_header(&mut self, input: &[u8]) -> Result<Option<(usize, Partial)>, Error> {
        let (Some(&b0), Some(&b1)) = (input.first(), input.get(1)) else {
            return Ok(None);
        };
        let (message, assembled) = self
            .cold
            .as_ref()
            .map_or((None, 0), |c| (c.message, c.data.len()));
        let fin = b0 & 0x80 != 0;
        let Some(opcode) = OpCode::from_u8(b0 & 0x0f) else {
            return Err(self.fail(Error::Protocol("unknown opcode")));
        };
        // RSV1 is permessage-deflate's "compressed" bit, on a message's first frame only.
        let rsv1 = b0 & 0x40 != 0;
        let rsv1_ok =
            self.inflate != Inflate::Off && matches!(opcode, OpCode::Text | OpCode::Binary);
        if b0 & 0x30 != 0 || (rsv1 && !rsv1_ok) {
            return Err(self.fail(Error::Protocol("reserved bits set without an extension")));
        }
        let masked = b1 & 0x80 != 0;
        if masked != self.expect_masked {
            return Err(self.fail(Error::Protocol(if self.expect_masked {
                "client frames must be masked"
            } else {
                "server frames must not be masked"
            })));
        }
        let len7 = b1 & 0x7f;
        if opcode.is_control() {
            if !fin {
                return Err(self.fail(Error::Protocol("fragmented control frame")));
            }
            if len7 > 125 {
                return Err(self.fail(Error::Protocol("control frame over 125 bytes")));
            }
        } else if opcode == OpCode::Continuation {
            if message.is_none() {
                return Err(self.fail(Error::Protocol("continuation frame without a message")));
            }
        } else if message.is_some() {
            return Err(self.fail(Error::Protocol("new message inside a fragmented message")));
        }
        let (ext, len) = match len7 {
            126 => {
                let Some(b) = input.get(2..4) else {
                    return Ok(None);
                };
                (2, u64::from(u16::from_be_bytes([b[0], b[1]])))
            }
            127 => {
                let Some(b) = input.get(2..10) else {
                    return Ok(None);
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let len = u64::from_be_bytes(a);
                if len >> 63 != 0 {
                    return Err(self.fail(Error::Protocol("64-bit length with the top bit set")));
                }
                (8, len)
            }
            n => (0, u64::from(n)),
        };
        // Limits are checked on the declared length, before anything is buffered.
        if len > u64::from(self.max_frame) {
            return Err(self.fail(Error::TooBig {
                limit: self.max_frame as usize,
            }));
        }
        if !opcode.is_control() && assembled as u64 + len > u64::from(self.max_message) {
            return Err(self.fail(Error::TooBig {
                limit: self.max_message as usize,
            }));
        }
        let header_len = 2 + ext + if masked { 4 } else { 0 };
        let Some(m) = input.get(2 + ext..header_len) else {
            return Ok(None);
        };
        // Unmasked (client side): an all-zero mask, which unmasking leaves as it is.
        let mask = if masked {
            [m[0], m[1], m[2], m[3]]
        } else {
            [0; 4]
        };
        Ok(Some((
            header_len,
            Partial {
                opcode,
                fin,
                mask,
                remaining: len,
                received: 0,
                compressed: rsv1,
            },
        )))
    }
}

impl Cold {
    /// The event of a message inflated into `inflated` (validated by `inflate_message`).
    fn inflated_event(&self, kind: OpCode) -> Event<'_> {
        if kind == OpCode::Text {
            // SAFETY: inflate_message validated all of `inflated` as UTF-8 for a text message.
            Event::Text(unsafe { std::str::from_utf8_unchecked(&self.inflated) })
        } else {
            Event::Binary(&self.inflated)
        }
    }

    /// Validates the unvalidated part of a text message, failing (false) as soon as the bytes
    /// so far cannot begin valid UTF-8. `end`: the message is complete, so an unfinished
    /// sequence fails.
    fn check_utf8(&mut self, end: bool) -> bool {
        let rest = &self.data[self.validated..];
        // SIMD validation: Chinese text (3-byte sequences) validates ~11x faster than with std
        // (benches/micro.rs).
        match simdutf8::compat::from_utf8(rest) {
            Ok(_) => {
                self.validated = self.data.len();
                true
            }
            Err(e) if e.error_len().is_none() && !end => {
                self.validated += e.valid_up_to();
                true
            }
            Err(_) => false,
        }
    }
}

/// Builds the event for a complete control frame.
fn control_event(opcode: OpCode, payload: &[u8]) -> Result<Event<'_>, Error> {
    match opcode {
        OpCode::Ping => Ok(Event::Ping(payload)),
        OpCode::Pong => Ok(Event::Pong(payload)),
        _ => parse_close(payload),
    }
}

fn parse_close(payload: &[u8]) -> Result<Event<'_>, Error> {
    match payload {
        [] => Ok(Event::Close {
            code: None,
            reason: "",
        }),
        [_] => Err(Error::Protocol("close payload of one byte")),
        [a, b, rest @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !super::close_code::is_valid_received(code) {
                return Err(Error::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(rest).map_err(|_| Error::InvalidUtf8)?;
            Ok(Event::Close {
                code: Some(code),
                reason,
            })
        }
    }
}

/// XORs `buf` with the mask, `offset` being the position of `buf[0]` within the payload. Works a
/// word at a time: this runs over every byte a client sends.
#[inline]
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    if mask == [0; 4] {
        return;
    }
    let r = offset % 4;
    let rotated = [
        mask[r],
        mask[(r + 1) % 4],
        mask[(r + 2) % 4],
        mask[(r + 3) % 4],
    ];
    let word = u64::from_ne_bytes([
        rotated[0], rotated[1], rotated[2], rotated[3], rotated[0], rotated[1], rotated[2],
        rotated[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(b) ^ word).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= rotated[i % 4];
    }
}

/// Writes the header of a FIN frame into `out`; returns its length (2, 4 or 10).
pub fn encode_header(opcode: OpCode, len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | opcode.to_u8();
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= 0xffff {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Appends a complete FIN frame.
pub fn write_frame(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let mut h = [0u8; 10];
    let n = encode_header(opcode, payload.len(), &mut h);
    out.reserve(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
}

/// A complete FIN frame whose payload is permessage-deflate compressed (RSV1 set).
pub fn compressed_frame(opcode: OpCode, compressed: &[u8]) -> Vec<u8> {
    let mut v = frame(opcode, compressed);
    v[0] |= 0x40;
    v
}

/// The opcode and payload of a complete, unmasked FIN frame this module encoded.
pub fn payload_of(frame: &[u8]) -> Option<(OpCode, &[u8])> {
    let (&b0, &b1) = (frame.first()?, frame.get(1)?);
    let opcode = OpCode::from_u8(b0 & 0x0f)?;
    let start = match b1 & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    Some((opcode, frame.get(start..)?))
}

/// A complete FIN frame, in a vector of exactly its length: pushes become boxed slices
/// (`Frame::from_vec`), which would otherwise reallocate to drop the spare capacity.
pub fn frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 10];
    let n = encode_header(opcode, payload.len(), &mut h);
    let mut v = Vec::with_capacity(n + payload.len());
    v.extend_from_slice(&h[..n]);
    v.extend_from_slice(payload);
    v
}

/// A complete, masked FIN frame, as a client sends it.
pub fn masked_frame(opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = frame(opcode, payload);
    let header = out.len() - payload.len();
    out[1] |= 0x80;
    let mut masked = out.split_off(header);
    apply_mask(&mut masked, mask, 0);
    out.extend_from_slice(&mask);
    out.extend_from_slice(&masked);
    out
}

/// A close frame; the reason is cut at a character boundary to keep the payload within 125 bytes.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(OpCode::Close, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_frame_bytes: 1 << 20,
        max_message_bytes: 1 << 20,
    };

    #[test]
    fn frames_are_allocated_at_their_length() {
        for len in [0, 1, 125, 126, 65_535, 65_536, 70_000] {
            let payload = vec![7u8; len];
            let f = frame(OpCode::Binary, &payload);
            assert_eq!(f.capacity(), f.len(), "{len}");
            let mut written = Vec::new();
            write_frame(OpCode::Binary, &payload, &mut written);
            assert_eq!(f, written, "{len}");
        }
    }

    #[test]
    fn client_side_reads_unmasked_frames_and_refuses_masked_ones() {
        let mut d = Decoder::client(LIMITS);
        let mut input = frame(OpCode::Text, b"hello");
        let (n, ev) = d.decode(&mut input).unwrap();
        assert_eq!((n, ev), (7, Some(Event::Text("hello"))));
        let mut masked = masked_frame(OpCode::Text, b"hello", [1, 2, 3, 4]);
        assert!(Decoder::client(LIMITS).decode(&mut masked.clone()).is_err());
        // What the client sends is what a server decodes.
        let mut server = Decoder::new(LIMITS);
        let (n, ev) = server.decode(&mut masked).unwrap();
        assert_eq!((n, ev), (11, Some(Event::Text("hello"))));
        assert!(Decoder::new(LIMITS)
            .decode(&mut frame(OpCode::Text, b"x"))
            .is_err());
    }

    /// An owned copy of an event, for comparing runs.
    #[derive(Debug, PartialEq, Eq, Clone)]
    pub(super) enum Ev {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    pub(super) fn own(e: Event<'_>) -> Ev {
        match e {
            Event::Text(s) => Ev::Text(s.to_string()),
            Event::Binary(b) => Ev::Binary(b.to_vec()),
            Event::Ping(b) => Ev::Ping(b.to_vec()),
            Event::Pong(b) => Ev::Pong(b.to_vec()),
            Event::Close { code, reason } => Ev::Close(code, reason.to_string()),
        }
    }

    /// Feeds `bytes` in pieces of `step`, buffering leftovers as the server does.
    fn run(bytes: &[u8], step: usize, limits: Limits) -> Result<Vec<Ev>, Error> {
        run_with(Decoder::new(limits), bytes, step)
    }

    fn run_with(mut d: Decoder, bytes: &[u8], step: usize) -> Result<Vec<Ev>, Error> {
        let mut out = Vec::new();
        let mut held: Vec<u8> = Vec::new();
        for piece in bytes.chunks(step.max(1)) {
            held.extend_from_slice(piece);
            let mut pos = 0;
            let len = held.len();
            loop {
                let (n, ev) = d.decode(&mut held[pos..])?;
                pos += n;
                match ev {
                    Some(e) => out.push(own(e)),
                    None if n == 0 || pos == len => break,
                    None => {}
                }
            }
            held.drain(..pos);
        }
        Ok(out)
    }

    fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let key = [0x37u8, 0xfa, 0x21, 0x3d];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    fn all_steps(bytes: &[u8]) -> Vec<Ev> {
        let whole = run(bytes, bytes.len(), LIMITS).unwrap();
        for step in [1, 2, 3, 5, 7, 13] {
            assert_eq!(run(bytes, step, LIMITS).unwrap(), whole, "step {step}");
        }
        whole
    }

    /// A compressed message as a client sends it: RSV1 on the first frame only, split into
    /// fragments of `frag` bytes.
    fn compressed(
        opcode: u8,
        payload: &[u8],
        frag: usize,
        takeover: &mut crate::ws::deflate::Deflater,
    ) -> Vec<u8> {
        let mut c = Vec::new();
        takeover.compress(payload, &mut c);
        let pieces: Vec<&[u8]> = c.chunks(frag.max(1)).collect();
        let mut out = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let mut f = masked(
                i + 1 == pieces.len(),
                if i == 0 { opcode } else { 0 },
                piece,
            );
            if i == 0 {
                f[0] |= 0x40;
            }
            out.extend(f);
        }
        out
    }

    #[test]
    fn rfc7692_compressed_messages_inflate_whole_or_fragmented() {
        use crate::ws::deflate::Deflater;
        let text = "你好，世界 hello hello hello hello".repeat(20);
        for takeover in [false, true] {
            let mut client = Deflater::new(15, takeover);
            let mut bytes = Vec::new();
            for frag in [10_000, 7, 1] {
                bytes.extend(compressed(1, text.as_bytes(), frag, &mut client));
            }
            bytes.extend(compressed(2, &[1, 2, 3, 1, 2, 3, 1, 2, 3], 4, &mut client));
            // A plain message between compressed ones.
            bytes.extend(masked(true, 1, b"plain"));
            for step in [bytes.len(), 1, 3, 64] {
                let mut d = Decoder::new(LIMITS);
                d.enable_deflate(takeover);
                let evs = run_with(d, &bytes, step).unwrap();
                assert_eq!(evs.len(), 5, "step {step}");
                for e in &evs[..3] {
                    assert_eq!(e, &Ev::Text(text.clone()));
                }
                assert_eq!(evs[3], Ev::Binary(vec![1, 2, 3, 1, 2, 3, 1, 2, 3]));
                assert_eq!(evs[4], Ev::Text("plain".into()));
            }
        }
    }

    #[test]
    fn rfc7692_rsv1_rules_bombs_and_bad_text() {
        use crate::ws::deflate::Deflater;
        let mut c = Deflater::new(15, false);
        let hello = compressed(1, b"Hello", 100, &mut c);
        // Not negotiated: RSV1 is a protocol error.
        assert!(matches!(
            run(&hello, hello.len(), LIMITS),
            Err(Error::Protocol(_))
        ));
        let negotiated = || {
            let mut d = Decoder::new(LIMITS);
            d.enable_deflate(false);
            d
        };
        assert_eq!(
            run_with(negotiated(), &hello, 100).unwrap(),
            vec![Ev::Text("Hello".into())]
        );
        // RSV1 on a control frame or a continuation frame is a protocol error.
        let mut ping = masked(true, 9, b"x");
        ping[0] |= 0x40;
        assert!(matches!(
            run_with(negotiated(), &ping, 100),
            Err(Error::Protocol(_))
        ));
        let mut cont = masked(false, 1, b"a");
        let mut second = masked(true, 0, b"b");
        second[0] |= 0x40;
        cont.extend(second);
        assert!(matches!(
            run_with(negotiated(), &cont, 100),
            Err(Error::Protocol(_))
        ));
        // A small frame that inflates past the message limit: 1009.
        let bomb = compressed(2, &vec![0u8; 2 << 20], 1 << 20, &mut c);
        assert!(bomb.len() < 10_000);
        assert!(matches!(
            run_with(negotiated(), &bomb, bomb.len()),
            Err(Error::TooBig { .. })
        ));
        // Compressed text that is not UTF-8: 1007.
        let bad = compressed(1, &[0xff, 0xfe, 0xfd], 100, &mut c);
        assert_eq!(run_with(negotiated(), &bad, 100), Err(Error::InvalidUtf8));
    }

    #[test]
    fn rfc6455_5_7_masked_hello() {
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(all_steps(&bytes), vec![Ev::Text("Hello".into())]);
    }

    #[test]
    fn rfc6455_5_7_unmasked_hello_is_rejected() {
        let mut bytes = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let mut d = Decoder::new(LIMITS);
        assert!(matches!(d.decode(&mut bytes), Err(Error::Protocol(_))));
        // Poisoned afterwards.
        assert!(d.decode(&mut [0x81, 0x80, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn rfc6455_5_7_fragments_and_ping() {
        let mut bytes = masked(false, 1, b"Hel");
        bytes.extend(masked(true, 9, b"Hello"));
        bytes.extend(masked(true, 0, b"lo"));
        assert_eq!(
            all_steps(&bytes),
            vec![Ev::Ping(b"Hello".to_vec()), Ev::Text("Hello".into())]
        );
    }

    #[test]
    fn rfc6455_5_7_ping_bytes() {
        // The masked ping of section 5.7: 0x89 0x85 + mask + "Hello" masked.
        let bytes = masked(true, 9, b"Hello");
        assert_eq!(&bytes[..2], &[0x89, 0x85]);
        assert_eq!(all_steps(&bytes), vec![Ev::Ping(b"Hello".to_vec())]);
    }

    #[test]
    fn large_lengths_stream() {
        let p256 = vec![7u8; 256];
        let p64k = vec![9u8; 65536];
        let mut bytes = masked(true, 2, &p256);
        bytes.extend(masked(true, 2, &p64k));
        assert_eq!(all_steps(&bytes), vec![Ev::Binary(p256), Ev::Binary(p64k)]);
    }

    #[test]
    fn encoder_length_forms() {
        let mut h = [0u8; 10];
        assert_eq!(encode_header(OpCode::Binary, 256, &mut h), 4);
        assert_eq!(&h[..4], &[0x82, 0x7e, 0x01, 0x00]);
        assert_eq!(encode_header(OpCode::Binary, 65536, &mut h), 10);
        assert_eq!(&h[..10], &[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(
            frame(OpCode::Text, b"Hello"),
            vec![0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
        let c = close_frame(1000, &"é".repeat(100));
        assert!(c.len() - 2 <= 125);
        assert!(std::str::from_utf8(&c[4..]).is_ok());
    }

    #[test]
    fn protocol_errors() {
        let cases: Vec<Vec<u8>> = vec![
            vec![0xc1, 0x80, 0, 0, 0, 0],                // RSV1
            vec![0x83, 0x80, 0, 0, 0, 0],                // opcode 3
            vec![0x8b, 0x80, 0, 0, 0, 0],                // opcode 11
            vec![0x09, 0x80, 0, 0, 0, 0],                // fragmented ping
            vec![0x89, 0xfe, 0, 126, 0, 0, 0, 0],        // 126-byte ping
            vec![0x80, 0x80, 0, 0, 0, 0],                // continuation without start
            vec![0x88, 0x81, 0, 0, 0, 0, 3],             // one-byte close
            vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0], // top bit of 64-bit length
        ];
        for c in cases {
            assert!(
                matches!(run(&c, c.len(), LIMITS), Err(Error::Protocol(_))),
                "{c:02x?}"
            );
        }
        let mut two_starts = masked(false, 1, b"a");
        two_starts.extend(masked(true, 1, b"b"));
        assert!(matches!(
            run(&two_starts, 100, LIMITS),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn close_codes() {
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            let f = masked(true, 8, &code.to_be_bytes());
            assert_eq!(
                run(&f, 100, LIMITS).unwrap(),
                vec![Ev::Close(Some(code), String::new())],
                "{code}"
            );
        }
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let f = masked(true, 8, &code.to_be_bytes());
            assert!(
                matches!(run(&f, 100, LIMITS), Err(Error::Protocol(_))),
                "{code}"
            );
        }
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(
            run(&masked(true, 8, &p), 100, LIMITS),
            Err(Error::InvalidUtf8)
        );
        assert_eq!(
            run(&masked(true, 8, b""), 100, LIMITS).unwrap(),
            vec![Ev::Close(None, String::new())]
        );
    }

    #[test]
    fn utf8_fails_fast_across_fragments() {
        // Invalid in the first fragment: error before the rest arrives.
        let bytes = masked(false, 1, &[b'a', 0xc0, 0x80]);
        assert_eq!(run(&bytes, 100, LIMITS), Err(Error::InvalidUtf8));
        // A sequence split across fragments is fine.
        let mut ok = masked(false, 1, &[0xe4, 0xbd]);
        ok.extend(masked(true, 0, &[0xa0]));
        assert_eq!(all_steps(&ok), vec![Ev::Text("你".into())]);
        // A truncated sequence at the end fails.
        let mut bad = masked(false, 1, &[0xe4, 0xbd]);
        bad.extend(masked(true, 0, b""));
        assert_eq!(run(&bad, 100, LIMITS), Err(Error::InvalidUtf8));
        // Invalid inside a single frame that arrives byte by byte fails before its end.
        let f = masked(true, 1, &[b'x', 0xff, b'y', b'z', b'z', b'z']);
        let mut d = Decoder::new(LIMITS);
        let mut held = f[..8].to_vec(); // header (6) + 2 payload bytes
        let r = d.decode(&mut held);
        assert_eq!(r.map(|(n, e)| (n, e.map(own))), Err(Error::InvalidUtf8));
        // Invalid single complete frame.
        assert_eq!(
            run(&masked(true, 1, &[0xce, 0xba, 0xff]), 100, LIMITS),
            Err(Error::InvalidUtf8)
        );
    }

    #[test]
    fn limits_are_checked_on_declared_length() {
        let small = Limits {
            max_frame_bytes: 1000,
            max_message_bytes: 2500,
        };
        // Only the header of a too-big frame: rejected without its payload.
        let f = masked(true, 2, &[0u8; 1001]);
        let mut d = Decoder::new(small);
        let mut head = f[..8].to_vec();
        assert_eq!(
            d.decode(&mut head).map(|(n, _)| n),
            Err(Error::TooBig { limit: 1000 })
        );
        let mut frag = masked(false, 2, &[0u8; 1000]);
        for _ in 0..2 {
            frag.extend(masked(false, 0, &[0u8; 1000]));
        }
        assert_eq!(
            run(&frag, 10_000, small),
            Err(Error::TooBig { limit: 2500 })
        );
    }

    #[test]
    fn mask_offsets() {
        let key = [1u8, 2, 3, 4];
        let data: Vec<u8> = (0..37).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        for split in 0..data.len() {
            let mut parts = data.clone();
            let (a, b) = parts.split_at_mut(split);
            apply_mask(a, key, 0);
            apply_mask(b, key, split);
            assert_eq!(parts, whole, "split {split}");
        }
        let expect: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(whole, expect);
    }

    #[test]
    fn idle_decoder_owns_no_memory() {
        let mut bytes = masked(false, 1, b"ab");
        bytes.extend(masked(true, 0, b"cd"));
        let mut d = Decoder::new(LIMITS);
        let mut pos = 0;
        while pos < bytes.len() {
            let (n, _) = d.decode(&mut bytes[pos..]).unwrap();
            pos += n;
        }
        assert!(!d.is_mid_message());
        assert!(
            d.holds_memory(),
            "the fragments were assembled in the cold state"
        );
        d.shrink();
        assert!(!d.holds_memory());
        assert_eq!(
            std::mem::size_of::<Decoder>(),
            24,
            "an idle decoder is 24 bytes"
        );
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    /// xorshift64*: deterministic, dependency-free noise for the no-panic sweep.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// Random bytes and mutated valid frames, fed in random pieces: the decoder may refuse them
    /// but must never panic, loop, or report consuming more than it was given.
    #[test]
    fn the_small_frame_path_decodes_as_the_general_one() {
        // Every first-two-byte combination, with 0..=130 payload bytes after a mask: the result
        // (consumed, event, error) is the same whether the fast path may take it or not.
        let limits = Limits {
            max_frame_bytes: 100,
            max_message_bytes: 100,
        };
        let mut frames = Vec::new();
        for b0 in [
            0x01u8, 0x02, 0x80, 0x81, 0x82, 0x88, 0x89, 0x8a, 0xc1, 0xa2, 0x92,
        ] {
            for len in [0usize, 1, 5, 64, 99, 100, 101, 125] {
                let mut f = vec![b0, 0x80 | len as u8, 1, 2, 3, 4];
                f.extend((0..len).map(|i| (i as u8 % 90 + 32) ^ [1, 2, 3, 4][i % 4]));
                frames.push(f.clone());
                f[1] &= 0x7f; // unmasked: refused either way
                frames.push(f.clone());
            }
        }
        // Invalid UTF-8 in a small text frame.
        let mut bad = vec![0x81u8, 0x82, 0, 0, 0, 0, 0xff, 0xfe];
        frames.push(bad.clone());
        bad.truncate(7);
        frames.push(bad);
        for f in frames {
            for cut in [f.len(), f.len().saturating_sub(1), 3] {
                let fast = {
                    let mut d = Decoder::new(limits);
                    let mut input = f[..cut.min(f.len())].to_vec();
                    d.decode(&mut input)
                        .map(|(n, e)| (n, e.map(super::tests::own)))
                };
                let general = {
                    let mut d = Decoder::new(limits);
                    let mut input = f[..cut.min(f.len())].to_vec();
                    d.decode_any(&mut input)
                        .map(|(n, e)| (n, e.map(super::tests::own)))
                };
                assert_eq!(
                    format!("{fast:?}"),
                    format!("{general:?}"),
                    "frame {:02x?}",
                    &f[..cut.min(f.len())]
                );
            }
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        let limits = Limits {
            max_frame_bytes: 4096,
            max_message_bytes: 16384,
        };
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let valid: Vec<u8> = {
            let mut v = vec![0x01, 0x83, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2, b'c' ^ 3];
            v.extend_from_slice(&[0x89, 0x80, 0, 0, 0, 0, 0x80, 0x81, 9, 9, 9, 9, b'd' ^ 9]);
            v.extend_from_slice(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
            v
        };
        for round in 0..20_000 {
            let mut input: Vec<u8> = if round % 2 == 0 {
                let len = (rng.next() % 64) as usize;
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                let mut v = valid.clone();
                for _ in 0..(1 + rng.next() % 4) {
                    let i = (rng.next() as usize) % v.len();
                    v[i] ^= 1 << (rng.next() % 8);
                }
                v
            };
            let mut d = Decoder::new(limits);
            let mut pos = 0;
            let mut steps = 0;
            while pos < input.len() && steps < 1000 {
                steps += 1;
                let piece = 1 + (rng.next() as usize) % 16;
                let end = (pos + piece).min(input.len());
                match d.decode(&mut input[pos..end]) {
                    Ok((n, _)) => {
                        assert!(n <= end - pos);
                        if n == 0 {
                            // Needs more: the caller would append; emulate by widening.
                            if end == input.len() {
                                break;
                            }
                            continue;
                        }
                        pos += n;
                    }
                    Err(_) => break,
                }
            }
        }
    }
}
