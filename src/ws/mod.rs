//! The server side of RFC 6455 WebSocket, written for this project: handshake, frame codec,
//! incremental UTF-8 validation and close codes. Pure: bytes in, values or errors out; it never
//! panics on input and reserves memory only after checking declared lengths against the limits.
//! See LIFECYCLE.md for the decoder states and the close handshake.
//!
//! Layer: the bottom; imports nothing from the crate (fuzzed on its own).

pub mod deflate;
mod frame;
pub mod handshake;

pub use frame::{
    apply_mask, close_frame, compressed_frame, encode_header, frame, masked_frame, payload_of,
    write_frame, Decoder,
};

use std::fmt;

/// Frame opcodes (RFC 6455 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    pub fn from_u8(b: u8) -> Option<OpCode> {
        match b {
            0 => Some(OpCode::Continuation),
            1 => Some(OpCode::Text),
            2 => Some(OpCode::Binary),
            8 => Some(OpCode::Close),
            9 => Some(OpCode::Ping),
            10 => Some(OpCode::Pong),
            _ => None,
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0,
            OpCode::Text => 1,
            OpCode::Binary => 2,
            OpCode::Close => 8,
            OpCode::Ping => 9,
            OpCode::Pong => 10,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Size limits of the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1 << 20,
            max_message_bytes: 1 << 20,
        }
    }
}

/// Why a peer's input was refused; each maps to the close code the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// 1002: a frame that breaks RFC 6455.
    Protocol(&'static str),
    /// 1007: a text message or close reason that is not UTF-8.
    InvalidUtf8,
    /// 1009: a frame or message over the configured limit.
    TooBig { limit: usize },
}

impl Error {
    pub fn close_code(&self) -> u16 {
        match self {
            Error::Protocol(_) => close_code::PROTOCOL,
            Error::InvalidUtf8 => close_code::INVALID_DATA,
            Error::TooBig { .. } => close_code::TOO_BIG,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Protocol(why) => write!(f, "protocol error: {why}"),
            Error::InvalidUtf8 => f.write_str("invalid UTF-8 in a text message"),
            Error::TooBig { limit } => write!(f, "frame or message over {limit} bytes"),
        }
    }
}

impl std::error::Error for Error {}

/// What the decoder yields. Text is valid UTF-8. Payloads borrow either the caller's buffer
/// (complete single-frame messages, zero copy) or the decoder's reassembly buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// `code` is None for an empty close payload.
    Close {
        code: Option<u16>,
        reason: &'a str,
    },
}

/// Close codes (RFC 6455 7.4) the server sends, and the rule for codes it accepts.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    /// The server is restarting (an upgrade hands over to its successor): reconnect.
    pub const SERVICE_RESTART: u16 = 1012;
    pub const TRY_AGAIN_LATER: u16 = 1013;

    /// Codes a peer may put in a close frame: the registered ones that are not reserved for
    /// local use (1004, 1005, 1006, 1015), and the application ranges 3000-4999.
    pub fn is_valid_received(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}
