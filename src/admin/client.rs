//! A small blocking client for the admin listener, used by the `subscriber` CLI and by
//! `server status`: one HTTP GET, or a WebSocket subscription (client side of our own codec).

use crate::ws::{self, Event, OpCode};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest HTTP response head or body read, and largest event accepted.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 4 << 20;

#[derive(Debug)]
pub enum ClientError {
    /// Nothing answered at that address (refused, unreachable, timed out).
    Unreachable(String),
    /// The server answered with an HTTP error (wrong token, unknown path, too many subscribers).
    Refused { status: u16, body: String },
    /// The server said something that is not the protocol.
    Protocol(String),
    /// The connection ended (the server stopped or dropped us).
    Closed { code: Option<u16>, reason: String },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable(why) => f.write_str(why),
            ClientError::Refused { status, body } => write!(f, "HTTP {status}: {}", body.trim()),
            ClientError::Protocol(why) => write!(f, "protocol error: {why}"),
            ClientError::Closed { code, reason } => match code {
                Some(c) => write!(f, "closed by the server ({c} {reason})"),
                None => write!(f, "connection closed ({reason})"),
            },
        }
    }
}

/// Where the admin listener is: `host:port`; an unspecified address (`0.0.0.0`, `[::]`) means
/// this machine.
pub fn resolve(host: &str) -> Result<SocketAddr, ClientError> {
    let mut addrs = host
        .to_socket_addrs()
        .map_err(|e| ClientError::Unreachable(format!("bad address {host:?}: {e}")))?;
    let mut addr = addrs
        .next()
        .ok_or_else(|| ClientError::Unreachable(format!("{host:?} resolves to nothing")))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(addr)
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ClientError> {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| ClientError::Unreachable(format!("cannot connect to {addr}: {e}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| ClientError::Unreachable(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn request_head(method_path: &str, addr: SocketAddr, token: Option<&str>, extra: &str) -> String {
    let auth = token
        .filter(|t| !t.is_empty())
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("{method_path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{extra}\r\n")
}

/// A response head and the bytes read after it.
struct Head {
    status: u16,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    rest: Vec<u8>,
}

/// Reads a response head.
fn read_head(stream: &mut TcpStream) -> Result<Head, ClientError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .map_err(|e| ClientError::Unreachable(format!("reading the reply: {e}")))?;
        if n == 0 {
            return Err(ClientError::Closed {
                code: None,
                reason: "before the reply".into(),
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = resp.code.unwrap_or(0);
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                return Ok(Head {
                    status,
                    headers,
                    rest: buf[len..].to_vec(),
                });
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(ClientError::Protocol("response head too large".into()))
            }
            Err(e) => return Err(ClientError::Protocol(format!("bad response: {e}"))),
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim())
}

/// `GET path`: the status and body (any status; the caller decides).
pub fn get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    let mut stream = connect(addr, timeout)?;
    let head = request_head(&format!("GET {path}"), addr, token, "Connection: close\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| ClientError::Unreachable(e.to_string()))?;
    let Head {
        status,
        headers,
        rest: mut body,
    } = read_head(&mut stream)?;
    let want = header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    let mut chunk = [0u8; 8192];
    while want.is_none_or(|w| body.len() < w) && body.len() < MAX_BODY {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(ClientError::Unreachable(format!("reading the body: {e}"))),
        }
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An open subscription.
pub struct Subscriber {
    stream: TcpStream,
    decoder: ws::Decoder,
    buf: Vec<u8>,
    /// Bytes of `buf` not yet decoded start here.
    start: usize,
}

/// What [`Subscriber::receive`] yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// One text message (an event, a notice or a command reply).
    Text(String),
    /// Nothing arrived within the read timeout (lets the caller check for Ctrl-C).
    Idle,
}

impl Subscriber {
    /// Opens `/admin/subscribe`. `timeout` bounds the connect and the handshake; afterwards
    /// [`Subscriber::receive`] returns `Idle` after `poll` without input.
    pub fn connect(
        addr: SocketAddr,
        token: Option<&str>,
        timeout: Duration,
        poll: Duration,
    ) -> Result<Subscriber, ClientError> {
        let mut stream = connect(addr, timeout)?;
        let mut nonce = [0u8; 16];
        getrandom::getrandom(&mut nonce).map_err(|e| ClientError::Protocol(e.to_string()))?;
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode(nonce);
        let extra = format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        let head = request_head(
            &format!("GET {}", super::SUBSCRIBE_PATH),
            addr,
            token,
            &extra,
        );
        stream
            .write_all(head.as_bytes())
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        let Head {
            status,
            headers,
            rest,
        } = read_head(&mut stream)?;
        if status != 101 {
            // The error body follows; read what is there.
            let mut body = rest;
            let _ = stream.take(MAX_HEAD as u64).read_to_end(&mut body);
            return Err(ClientError::Refused {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        if header(&headers, "sec-websocket-accept")
            != Some(&ws::handshake::accept_key(key.as_bytes()))
        {
            return Err(ClientError::Protocol("wrong Sec-WebSocket-Accept".into()));
        }
        stream
            .set_read_timeout(Some(poll))
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        Ok(Subscriber {
            stream,
            decoder: ws::Decoder::client(ws::Limits {
                max_frame_bytes: MAX_BODY,
                max_message_bytes: MAX_BODY,
            }),
            buf: rest,
            start: 0,
        })
    }

    /// Sends one text command (masked, as a client must).
    pub fn send(&mut self, text: &str) -> Result<(), ClientError> {
        let frame = ws::masked_frame(OpCode::Text, text.as_bytes(), mask()?);
        self.stream
            .write_all(&frame)
            .map_err(|e| ClientError::Unreachable(e.to_string()))
    }

    /// Starts a clean close (Ctrl-C); errors are irrelevant then.
    pub fn close(&mut self) {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        if let Ok(m) = mask() {
            let _ = self
                .stream
                .write_all(&ws::masked_frame(OpCode::Close, &payload, m));
        }
    }

    /// The next text message, `Idle` after a quiet read timeout, or why the stream ended.
    pub fn receive(&mut self) -> Result<Incoming, ClientError> {
        loop {
            if self.start < self.buf.len() {
                let (used, event) = match self.decoder.decode(&mut self.buf[self.start..]) {
                    Ok((n, Some(Event::Text(t)))) => (n, Some(Ok(Incoming::Text(t.to_string())))),
                    Ok((n, Some(Event::Close { code, reason }))) => (
                        n,
                        Some(Err(ClientError::Closed {
                            code,
                            reason: reason.to_string(),
                        })),
                    ),
                    Ok((n, Some(Event::Ping(p)))) => {
                        let pong = ws::masked_frame(OpCode::Pong, p, mask()?);
                        let _ = self.stream.write_all(&pong);
                        (n, None)
                    }
                    Ok((n, _)) => (n, None),
                    Err(e) => return Err(ClientError::Protocol(e.to_string())),
                };
                self.start += used;
                if let Some(result) = event {
                    return result;
                }
                if used > 0 {
                    continue;
                }
            }
            // Keep only the undecoded tail, then read more.
            self.buf.drain(..self.start);
            self.start = 0;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(ClientError::Closed {
                        code: None,
                        reason: "the server went away".into(),
                    })
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Incoming::Idle)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Incoming::Idle),
                Err(e) => {
                    return Err(ClientError::Closed {
                        code: None,
                        reason: e.to_string(),
                    })
                }
            }
        }
    }
}

fn mask() -> Result<[u8; 4], ClientError> {
    let mut m = [0u8; 4];
    getrandom::getrandom(&mut m).map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(m)
}
