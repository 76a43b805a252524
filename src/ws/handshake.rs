//! The opening handshake (RFC 6455 4.2): validating the upgrade request and building the 101.

use base64::Engine;
use sha1::{Digest, Sha1};

/// Appended to the client's key before hashing (RFC 6455 1.3).
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `base64(sha1(key + GUID))`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// What the server accepts.
pub struct HandshakeConfig<'a> {
    /// Accepted `Origin` values; empty = any.
    pub allowed_origins: &'a [String],
    /// Subprotocols spoken, in preference order; empty = none.
    pub subprotocols: &'a [String],
    /// What permessage-deflate offers are answered with.
    pub deflate: super::deflate::Mode,
}

/// A valid upgrade: the accept key and the chosen subprotocol.
#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    pub accept: String,
    pub protocol: Option<String>,
    /// permessage-deflate as agreed, and the `Sec-WebSocket-Extensions` value answering it.
    pub deflate: Option<(super::deflate::Params, String)>,
}

/// An invalid upgrade: the HTTP answer to give.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
    pub headers: Vec<(&'static str, String)>,
}

fn reject(status: u16, reason: &'static str) -> Rejection {
    Rejection {
        status,
        reason,
        headers: Vec::new(),
    }
}

/// All values of a header (names case-insensitive).
fn values<'h, N: AsRef<str>, V: AsRef<[u8]>>(
    headers: &'h [(N, V)],
    name: &'h str,
) -> impl Iterator<Item = &'h [u8]> + 'h {
    headers
        .iter()
        .filter(move |(n, _)| n.as_ref().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_ref())
}

/// The comma-separated tokens of every instance of a header, trimmed.
fn tokens<'h, N: AsRef<str>, V: AsRef<[u8]>>(
    headers: &'h [(N, V)],
    name: &'h str,
) -> impl Iterator<Item = &'h [u8]> + 'h {
    values(headers, name)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Validates an upgrade request.
pub fn negotiate<N: AsRef<str>, V: AsRef<[u8]>>(
    method: &str,
    http_minor: u8,
    headers: &[(N, V)],
    cfg: &HandshakeConfig,
) -> Result<Accepted, Rejection> {
    if method != "GET" {
        let mut r = reject(405, "a WebSocket upgrade must be a GET");
        r.headers.push(("Allow", "GET".into()));
        return Err(r);
    }
    if http_minor < 1 {
        return Err(reject(400, "a WebSocket upgrade needs HTTP/1.1"));
    }
    let upgrade = tokens(headers, "upgrade").any(|t| t.eq_ignore_ascii_case(b"websocket"));
    let connection = tokens(headers, "connection").any(|t| t.eq_ignore_ascii_case(b"upgrade"));
    if !upgrade || !connection {
        return Err(reject(400, "not a WebSocket upgrade request"));
    }
    let version_ok = values(headers, "sec-websocket-version").any(|v| v.trim_ascii() == b"13");
    if !version_ok {
        let mut r = reject(426, "only WebSocket version 13 is supported");
        r.headers.push(("Sec-WebSocket-Version", "13".into()));
        return Err(r);
    }
    let mut keys = values(headers, "sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k.trim_ascii(),
        _ => return Err(reject(400, "exactly one Sec-WebSocket-Key is required")),
    };
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if !matches!(decoded, Ok(ref d) if d.len() == 16) {
        return Err(reject(400, "Sec-WebSocket-Key must be base64 of 16 bytes"));
    }
    if !cfg.allowed_origins.is_empty() {
        let origin = values(headers, "origin").next().map(|o| o.trim_ascii());
        let allowed = origin.is_some_and(|o| {
            cfg.allowed_origins
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(o))
        });
        if !allowed {
            return Err(reject(403, "origin not allowed"));
        }
    }
    let offered: Vec<&[u8]> = tokens(headers, "sec-websocket-protocol").collect();
    let protocol = cfg
        .subprotocols
        .iter()
        .find(|p| offered.contains(&p.as_bytes()))
        .cloned();
    let deflate =
        super::deflate::negotiate(values(headers, "sec-websocket-extensions"), cfg.deflate);
    Ok(Accepted {
        accept: accept_key(key),
        protocol,
        deflate,
    })
}

/// The 101 response for an accepted handshake.
pub fn response(accepted: &Accepted) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accepted.accept
    );
    if let Some(p) = &accepted.protocol {
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    if let Some((_, ext)) = &accepted.deflate {
        out.push_str("Sec-WebSocket-Extensions: ");
        out.push_str(ext);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Host", "server.example.com"),
            ("Upgrade", "websocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13"),
        ]
    }

    fn cfg<'a>(origins: &'a [String], protos: &'a [String]) -> HandshakeConfig<'a> {
        HandshakeConfig {
            allowed_origins: origins,
            deflate: crate::ws::deflate::Mode::On,
            subprotocols: protos,
        }
    }

    #[test]
    fn rfc6455_accept_key() {
        assert_eq!(accept_key(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn accepts_a_valid_request() {
        let a = negotiate("GET", 1, &base(), &cfg(&[], &[])).unwrap();
        assert_eq!(a.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(a.protocol, None);
        let r = String::from_utf8(response(&a)).unwrap();
        assert!(r.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn rejections() {
        let c = cfg(&[], &[]);
        assert_eq!(negotiate("POST", 1, &base(), &c).unwrap_err().status, 405);
        assert_eq!(negotiate("GET", 0, &base(), &c).unwrap_err().status, 400);
        let mut h = base();
        h.retain(|(n, _)| *n != "Upgrade");
        assert_eq!(negotiate("GET", 1, &h, &c).unwrap_err().status, 400);
        let mut h = base();
        h[4].1 = "8";
        let r = negotiate("GET", 1, &h, &c).unwrap_err();
        assert_eq!(r.status, 426);
        assert_eq!(r.headers, vec![("Sec-WebSocket-Version", "13".to_string())]);
        let mut h = base();
        h.retain(|(n, _)| *n != "Sec-WebSocket-Version");
        assert_eq!(negotiate("GET", 1, &h, &c).unwrap_err().status, 426);
        let mut h = base();
        h[3].1 = "c2hvcnQ=";
        assert_eq!(negotiate("GET", 1, &h, &c).unwrap_err().status, 400);
        let mut h = base();
        h.retain(|(n, _)| *n != "Sec-WebSocket-Key");
        assert_eq!(negotiate("GET", 1, &h, &c).unwrap_err().status, 400);
    }

    #[test]
    fn origin_allow_list() {
        let origins = vec!["https://ok.example".to_string()];
        let c = cfg(&origins, &[]);
        assert_eq!(negotiate("GET", 1, &base(), &c).unwrap_err().status, 403);
        let mut h = base();
        h.push(("Origin", "https://OK.example"));
        assert!(negotiate("GET", 1, &h, &c).is_ok());
        let mut h = base();
        h.push(("Origin", "https://evil.example"));
        assert_eq!(negotiate("GET", 1, &h, &c).unwrap_err().status, 403);
    }

    #[test]
    fn subprotocol_choice_follows_server_preference() {
        let protos = vec!["wxchat.v2".to_string(), "wxchat.v1".to_string()];
        let c = cfg(&[], &protos);
        let mut h = base();
        h.push(("Sec-WebSocket-Protocol", "wxchat.v1, wxchat.v2"));
        assert_eq!(
            negotiate("GET", 1, &h, &c).unwrap().protocol.as_deref(),
            Some("wxchat.v2")
        );
        let mut h = base();
        h.push(("Sec-WebSocket-Protocol", "mqtt"));
        assert_eq!(negotiate("GET", 1, &h, &c).unwrap().protocol, None);
        let a = Accepted {
            accept: "x".into(),
            protocol: Some("wxchat.v2".into()),
            deflate: None,
        };
        assert!(String::from_utf8(response(&a))
            .unwrap()
            .contains("Sec-WebSocket-Protocol: wxchat.v2\r\n"));
    }

    #[test]
    fn permessage_deflate_is_answered_when_offered() {
        let c = cfg(&[], &[]);
        let mut h = base();
        h.push((
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        ));
        let a = negotiate("GET", 1, &h, &c).unwrap();
        let text = String::from_utf8(response(&a)).unwrap();
        assert!(
            text.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"),
            "{text}"
        );
        assert!(
            !String::from_utf8(response(&negotiate("GET", 1, &base(), &c).unwrap()))
                .unwrap()
                .contains("Extensions")
        );
        let off = HandshakeConfig {
            deflate: crate::ws::deflate::Mode::Off,
            ..cfg(&[], &[])
        };
        assert_eq!(negotiate("GET", 1, &h, &off).unwrap().deflate, None);
    }
}
