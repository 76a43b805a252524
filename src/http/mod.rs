//! A small, pure HTTP/1.1 server-side layer on `httparse`: incremental request parsing with
//! limits, responses, form/query/JSON bodies and a routing table. No I/O here.
//!
//! Layer: the bottom; imports nothing from the crate (fuzzed on its own).

mod client_ip;
mod request;
mod response;
mod router;
mod user_agent;

pub use client_ip::{came_over_tls, client_ip};
pub use request::{parse_request, url_decode, url_encode, Limits, Request};
pub use response::{reason_phrase, Response};
pub use router::{RouteMatch, Router};
pub use user_agent::is_mobile;

use std::fmt;

/// A request that must be answered with [`Error::status`] and the connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// 400: request line or header syntax, conflicting Content-Length, non-UTF-8 path.
    Malformed(&'static str),
    /// 431: header section over the byte limit, or too many headers.
    HeadersTooLarge,
    /// 413: declared body over the limit (decided from the header, before the body arrives).
    BodyTooLarge { limit: usize },
    /// 411: `Transfer-Encoding` bodies (chunked) are not accepted.
    LengthRequired,
    /// 505: not HTTP/1.0 or 1.1.
    UnsupportedVersion,
}

impl Error {
    pub fn status(&self) -> u16 {
        match self {
            Error::Malformed(_) => 400,
            Error::HeadersTooLarge => 431,
            Error::BodyTooLarge { .. } => 413,
            Error::LengthRequired => 411,
            Error::UnsupportedVersion => 505,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed(why) => write!(f, "malformed request: {why}"),
            Error::HeadersTooLarge => f.write_str("request headers too large"),
            Error::BodyTooLarge { limit } => write!(f, "request body over {limit} bytes"),
            Error::LengthRequired => {
                f.write_str("Transfer-Encoding is not supported: send a Content-Length")
            }
            Error::UnsupportedVersion => f.write_str("HTTP version not supported"),
        }
    }
}

impl std::error::Error for Error {}
