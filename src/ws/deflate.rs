//! permessage-deflate (RFC 7692): negotiating the extension in the handshake, and compressing
//! and inflating message payloads. Pure computation on zlib-rs (through flate2): no I/O.
//!
//! Without context takeover (the default, `[ws] permessage_deflate = "on"`) every message is
//! compressed and inflated on its own, so a connection holds no compression state between
//! messages: the work is done with one compressor and one inflater per thread, reset after each
//! message. With context takeover each connection keeps its own pair (about 300 KiB at the
//! 15-bit window), which compresses a conversation's repetitive JSON better.

use super::Error;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;

/// The bytes every compressed message ends with, removed by the sender and put back by the
/// receiver (RFC 7692 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What the server agrees to (`[ws] permessage_deflate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Decline every offer.
    Off,
    /// Accept, without context takeover on either side.
    On,
    /// Accept with context takeover where the client allows it.
    ContextTakeover,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "off" => Some(Mode::Off),
            "on" => Some(Mode::On),
            "context_takeover" => Some(Mode::ContextTakeover),
            _ => None,
        }
    }
}

/// What was agreed for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// The server starts every message with a fresh compressor.
    pub server_no_context_takeover: bool,
    /// The client does too, so every message inflates on its own.
    pub client_no_context_takeover: bool,
    /// The window the server compresses with (9-15).
    pub server_max_window_bits: u8,
}

impl Params {
    /// Messages compressed for one connection can be shared with every connection whose
    /// parameters are the default stateless ones (the compressed bytes depend on nothing else).
    pub fn shares_compressed_frames(&self) -> bool {
        self.server_no_context_takeover && self.server_max_window_bits == 15
    }
}

/// One offer's parameters as sent (RFC 7692 7.1).
#[derive(Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    client_max_window_bits: Option<Option<u8>>,
}

/// Parses one `permessage-deflate; a; b=c` offer; None when it is another extension or breaks
/// the rules (unknown or repeated parameters, bad values), which declines it.
fn parse_offer(text: &str) -> Option<Offer> {
    let mut parts = text.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut offer = Offer::default();
    let mut seen: Vec<String> = Vec::new();
    for part in parts.filter(|p| !p.is_empty()) {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (part, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        let bits = |v: Option<&str>| -> Option<u8> {
            let v = v?;
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.starts_with('0') {
                return None;
            }
            v.parse().ok().filter(|b| (8..=15).contains(b))
        };
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) => offer.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => offer.client_no_context_takeover = true,
            ("server_max_window_bits", v) => offer.server_max_window_bits = Some(bits(v)?),
            ("client_max_window_bits", None) => offer.client_max_window_bits = Some(None),
            ("client_max_window_bits", v) => offer.client_max_window_bits = Some(Some(bits(v)?)),
            _ => return None,
        }
        seen.push(name);
    }
    Some(offer)
}

/// Picks the first acceptable offer of the `Sec-WebSocket-Extensions` values: the parameters
/// agreed and the response header's value. None: no compression.
pub fn negotiate<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    mode: Mode,
) -> Option<(Params, String)> {
    if mode == Mode::Off {
        return None;
    }
    for value in values {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        for text in value.split(',') {
            let Some(offer) = parse_offer(text) else {
                continue;
            };
            // zlib cannot compress with an 8-bit window (it silently uses 9): a client that
            // demands one is declined rather than sent what it cannot inflate.
            let server_bits = offer.server_max_window_bits.unwrap_or(15);
            if server_bits < 9 {
                continue;
            }
            let stateless = mode == Mode::On;
            let params = Params {
                server_no_context_takeover: stateless || offer.server_no_context_takeover,
                client_no_context_takeover: stateless || offer.client_no_context_takeover,
                server_max_window_bits: server_bits,
            };
            let mut response = String::from("permessage-deflate");
            if params.server_no_context_takeover {
                response.push_str("; server_no_context_takeover");
            }
            if params.client_no_context_takeover {
                response.push_str("; client_no_context_takeover");
            }
            if offer.server_max_window_bits.is_some() {
                response.push_str(&format!("; server_max_window_bits={server_bits}"));
            }
            return Some((params, response));
        }
    }
    None
}

/// A raw-deflate compressor producing RFC 7692 message payloads.
pub struct Deflater {
    c: Compress,
    takeover: bool,
}

impl Deflater {
    /// Level 1: chat messages are short JSON, where higher levels gain a few bytes for several
    /// times the CPU (BENCHMARKS.md).
    pub fn new(window_bits: u8, takeover: bool) -> Deflater {
        Deflater {
            c: Compress::new_with_window_bits(Compression::new(1), false, window_bits.clamp(9, 15)),
            takeover,
        }
    }

    /// Appends `payload` compressed (sync-flushed, the tail removed) to `out`.
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let consumed_before = self.c.total_in();
        out.reserve(payload.len() / 2 + 64);
        loop {
            let done = (self.c.total_in() - consumed_before) as usize;
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            // Never fails on a valid stream (only on a corrupt state, which cannot happen here).
            let _ = self
                .c
                .compress_vec(&payload[done..], out, FlushCompress::Sync);
            let all_in = (self.c.total_in() - consumed_before) as usize == payload.len();
            if all_in && out.len() < out.capacity() && out[start..].ends_with(&TAIL) {
                break;
            }
        }
        out.truncate(out.len() - TAIL.len());
        if !self.takeover {
            self.c.reset();
        }
    }
}

/// A raw-deflate decompressor for RFC 7692 message payloads.
pub struct Inflater {
    d: Decompress,
    takeover: bool,
}

impl Inflater {
    /// Always the largest window: it inflates what smaller windows made too.
    pub fn new(takeover: bool) -> Inflater {
        Inflater {
            d: Decompress::new_with_window_bits(false, 15),
            takeover,
        }
    }

    /// Inflates one message's payload into `out` (cleared first). More than `limit` bytes is
    /// `TooBig` (a small frame cannot expand without bound: 1009), bad data `Protocol` (1007 is
    /// for UTF-8; RFC 7692 leaves it to the endpoint, and a corrupt stream is a protocol error).
    pub fn inflate(
        &mut self,
        payload: &[u8],
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        out.clear();
        let result = self.run(payload, limit, out);
        if result.is_err() || !self.takeover {
            self.d.reset(false);
        }
        result
    }

    fn run(&mut self, payload: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), Error> {
        for input in [payload, &TAIL[..]] {
            let start = self.d.total_in();
            loop {
                let done = (self.d.total_in() - start) as usize;
                if out.len() == out.capacity() {
                    if out.len() > limit {
                        return Err(Error::TooBig { limit });
                    }
                    // Grow towards the limit (plus one byte to tell "exactly at" from "over").
                    let room = (out.capacity().max(256)).min(limit + 1 - out.len());
                    out.reserve_exact(room.max(1));
                }
                let before_out = out.len();
                let status = self
                    .d
                    .decompress_vec(&input[done..], out, FlushDecompress::Sync)
                    .map_err(|_| Error::Protocol("invalid compressed data"))?;
                if out.len() > limit {
                    return Err(Error::TooBig { limit });
                }
                let all_in = (self.d.total_in() - start) as usize == input.len();
                let progressed = out.len() > before_out || !all_in;
                if status == Status::StreamEnd {
                    // A final block ends the stream: fine for this message, and the next one
                    // (with context takeover) cannot continue it.
                    if self.takeover {
                        self.d.reset(false);
                    }
                    return Ok(());
                }
                if all_in && out.len() < out.capacity() {
                    break;
                }
                if !progressed && all_in {
                    break;
                }
            }
        }
        Ok(())
    }
}

thread_local! {
    /// The stateless compressor and inflater of this thread (the reactor's), reset after each
    /// message: connections without context takeover hold none of their own.
    static SHARED: RefCell<(Deflater, Inflater)> =
        RefCell::new((Deflater::new(15, false), Inflater::new(false)));
}

/// Compresses with this thread's stateless compressor (15-bit window).
pub fn compress_stateless(payload: &[u8], out: &mut Vec<u8>) {
    SHARED.with(|s| s.borrow_mut().0.compress(payload, out));
}

/// Inflates with this thread's stateless inflater.
pub fn inflate_stateless(payload: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), Error> {
    SHARED.with(|s| s.borrow_mut().1.inflate(payload, limit, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(h: &str, mode: Mode) -> Option<(Params, String)> {
        negotiate(std::iter::once(h.as_bytes()), mode)
    }

    #[test]
    fn negotiation() {
        // What browsers send.
        let (p, r) = offer("permessage-deflate; client_max_window_bits", Mode::On).unwrap();
        assert_eq!(
            r,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert!(p.shares_compressed_frames());
        // Context takeover when configured and the client allows it.
        let (p, r) = offer("permessage-deflate", Mode::ContextTakeover).unwrap();
        assert_eq!(r, "permessage-deflate");
        assert!(!p.server_no_context_takeover && !p.client_no_context_takeover);
        let (_, r) = offer(
            "permessage-deflate; server_no_context_takeover",
            Mode::ContextTakeover,
        )
        .unwrap();
        assert_eq!(r, "permessage-deflate; server_no_context_takeover");
        // A window limit is honoured and echoed; 8 bits cannot be honoured, so the next offer.
        let (p, r) = offer("permessage-deflate; server_max_window_bits=10", Mode::On).unwrap();
        assert_eq!(p.server_max_window_bits, 10);
        assert!(r.ends_with("server_max_window_bits=10"));
        assert!(!p.shares_compressed_frames());
        let (p, _) = offer(
            "permessage-deflate; server_max_window_bits=8, permessage-deflate",
            Mode::On,
        )
        .unwrap();
        assert_eq!(p.server_max_window_bits, 15);
        // Broken offers are declined; other extensions ignored; off declines everything.
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(offer(bad, Mode::On), None, "{bad}");
        }
        assert_eq!(offer("permessage-deflate", Mode::Off), None);
        let (p, _) = offer(
            "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=\"12\"",
            Mode::On,
        )
        .unwrap();
        assert!(p.client_no_context_takeover);
    }

    /// RFC 7692 7.2.3.1 and 7.2.3.2: "Hello" compressed, then again with the context kept.
    #[test]
    fn rfc_7692_vectors() {
        let mut inf = Inflater::new(false);
        let mut out = Vec::new();
        inf.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100, &mut out)
            .unwrap();
        assert_eq!(out, b"Hello");
        let mut kept = Inflater::new(true);
        kept.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100, &mut out)
            .unwrap();
        kept.inflate(&[0xf2, 0x00, 0x11, 0x00, 0x00], 100, &mut out)
            .unwrap();
        assert_eq!(out, b"Hello");
        // 7.2.3.3: a stored (uncompressed) block.
        inf.inflate(
            &[
                0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
            ],
            100,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn round_trips_with_and_without_context() {
        let msg = br#"{"cmd":"message","data":{"msg_id":1001,"conv_id":"p_7_42","seq":12,"msg":"hello hello hello"}}"#;
        for takeover in [false, true] {
            let mut d = Deflater::new(15, takeover);
            let mut i = Inflater::new(takeover);
            let mut sizes = Vec::new();
            for _ in 0..3 {
                let mut c = Vec::new();
                d.compress(msg, &mut c);
                assert!(!c.ends_with(&TAIL));
                sizes.push(c.len());
                let mut out = Vec::new();
                i.inflate(&c, 1 << 20, &mut out).unwrap();
                assert_eq!(out, msg);
            }
            assert!(sizes[0] < msg.len());
            // With the context kept, a repeated message costs a few bytes.
            assert_eq!(takeover, sizes[2] < sizes[0] / 2, "{sizes:?}");
        }
        let mut c = Vec::new();
        compress_stateless(msg, &mut c);
        let mut out = Vec::new();
        inflate_stateless(&c, 1 << 20, &mut out).unwrap();
        assert_eq!(out, msg);
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_is_refused() {
        let big = vec![b'a'; 10 << 20];
        let mut c = Vec::new();
        compress_stateless(&big, &mut c);
        assert!(c.len() < 100_000, "a 200:1 bomb: {}", c.len());
        let mut out = Vec::new();
        assert_eq!(
            inflate_stateless(&c, 1 << 20, &mut out),
            Err(Error::TooBig { limit: 1 << 20 })
        );
        assert!(out.capacity() <= (1 << 20) + 4096, "{}", out.capacity());
        // Exactly at the limit is fine.
        let exact = vec![b'b'; 1000];
        let mut c = Vec::new();
        compress_stateless(&exact, &mut c);
        inflate_stateless(&c, 1000, &mut out).unwrap();
        assert_eq!(out.len(), 1000);
        assert!(matches!(
            inflate_stateless(&[0xff, 0xff, 0xff], 100, &mut out),
            Err(Error::Protocol(_))
        ));
        // The shared inflater is usable after an error.
        inflate_stateless(&c, 1000, &mut out).unwrap();
    }
}
