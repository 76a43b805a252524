//! Shared support for integration tests: servers on 127.0.0.1:0 with a temporary data directory,
//! a small blocking WebSocket client, raw HTTP, and a deadline-based `wait_for`.
//! No fixed ports, no sleeps as synchronisation, no timing asserts.
#![allow(dead_code)]

pub mod chat_client;
pub mod fake_wechat;
pub mod private_redis;
pub mod services;
pub mod wx_push;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wxchat::config::Config;
use wxchat::server::{Running, Server};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `cond` until it holds or `TIMEOUT` passes.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

/// An in-process server with its own data directory.
pub struct TestServer {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    /// The admin listener (on port 0 like the client listener).
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server; `toml` is extra configuration merged over test defaults.
    pub fn start(toml: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = test_config(dir.path(), toml);
        let server = Server::bind(config).expect("bind");
        let running = server.spawn().expect("spawn");
        TestServer {
            addr: running.addr,
            admin: running.admin.expect("test servers have an admin listener"),
            running: Some(running),
            dir,
        }
    }

    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().expect("clean stop");
        }
    }
}

/// Test defaults: port 0, the given data dir, echo on, then `extra` on top (later keys win).
pub fn test_config(data_dir: &Path, extra: &str) -> Config {
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\nlog_level = \"warn\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        data_dir.display().to_string()
    );
    let merged = merge_toml(&base, extra);
    Config::from_parts(&merged, "test", std::iter::empty()).expect("test config")
}

/// Merges two TOML documents table by table (keys of `b` win).
pub fn merge_toml(a: &str, b: &str) -> String {
    let mut ta: toml::Table = toml::from_str(a).expect("toml a");
    let tb: toml::Table = toml::from_str(b).expect("toml b");
    for (k, v) in tb {
        match (ta.get_mut(&k), v) {
            (Some(toml::Value::Table(x)), toml::Value::Table(y)) => {
                for (k2, v2) in y {
                    x.insert(k2, v2);
                }
            }
            (_, v) => {
                ta.insert(k, v);
            }
        }
    }
    toml::to_string(&ta).expect("toml out")
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads one response from `s` (Content-Length framed, or until EOF).
pub fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<HttpResponse> {
    let header_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "eof before headers",
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, status_line.to_string()))?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: Option<usize> = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok());
    buf.drain(..header_end);
    let body = match len {
        Some(len) => {
            while buf.len() < len {
                let mut tmp = [0u8; 4096];
                let n = s.read(&mut tmp)?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in body"));
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            buf.drain(..len).collect()
        }
        None if status == 101 => Vec::new(),
        None => {
            s.read_to_end(buf)?;
            std::mem::take(buf)
        }
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Sends raw bytes, reads one response.
pub fn http_raw(addr: SocketAddr, raw: &[u8]) -> HttpResponse {
    let mut s = connect(addr);
    s.write_all(raw).unwrap();
    read_response(&mut s, &mut Vec::new()).expect("response")
}

pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn http_post_json(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
    extra_headers: &str,
) -> HttpResponse {
    let body = body.to_string();
    http_raw(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// True once the peer has closed the connection (EOF or reset) within the timeout.
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut tmp = [0u8; 4096];
    loop {
        match s.read(&mut tmp) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// WebSocket client

pub const OP_CONT: u8 = 0;
pub const OP_TEXT: u8 = 1;
pub const OP_BINARY: u8 = 2;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;

/// A frame as received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
    /// RSV1: a permessage-deflate compressed message.
    pub rsv1: bool,
}

impl WsFrame {
    pub fn text(&self) -> String {
        String::from_utf8(self.payload.clone()).expect("utf-8 text frame")
    }

    /// (code, reason) of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

pub struct WsClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub response: HttpResponse,
}

impl WsClient {
    /// Opens a WebSocket; panics unless the server answers 101.
    pub fn connect(addr: SocketAddr, path: &str) -> WsClient {
        let (c, resp) = Self::try_connect(addr, path, "");
        assert_eq!(resp.status, 101, "upgrade refused: {resp:?}");
        c.expect("client")
    }

    /// Sends an upgrade request with `extra` headers; returns the client when 101.
    pub fn try_connect(
        addr: SocketAddr,
        path: &str,
        extra: &str,
    ) -> (Option<WsClient>, HttpResponse) {
        let mut s = connect(addr);
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let resp = read_response(&mut s, &mut buf).expect("handshake response");
        if resp.status != 101 {
            return (None, resp);
        }
        let copy = HttpResponse {
            status: resp.status,
            headers: resp.headers.clone(),
            body: Vec::new(),
        };
        (
            Some(WsClient {
                stream: s,
                buf,
                response: copy,
            }),
            resp,
        )
    }

    /// Wraps a stream whose handshake the caller did itself (`buf` holds bytes read past it).
    pub fn from_parts(stream: TcpStream, buf: Vec<u8>, response: HttpResponse) -> WsClient {
        WsClient {
            stream,
            buf,
            response,
        }
    }

    /// Sends one frame with full control over its bits (masked unless `mask` is false).
    pub fn send_frame(&mut self, fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: bool) {
        let bytes = encode_client_frame(fin, rsv, opcode, payload, mask);
        self.stream.write_all(&bytes).unwrap();
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_frame(true, 0, OP_TEXT, text.as_bytes(), true);
    }

    pub fn send_binary(&mut self, data: &[u8]) {
        self.send_frame(true, 0, OP_BINARY, data, true);
    }

    pub fn send_close(&mut self, code: u16, reason: &str) {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        self.send_frame(true, 0, OP_CLOSE, &p, true);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Receives the next frame (within the timeout).
    pub fn recv(&mut self) -> io::Result<WsFrame> {
        loop {
            if let Some((frame, used)) = decode_server_frame(&self.buf)? {
                self.buf.drain(..used);
                return Ok(frame);
            }
            let mut tmp = [0u8; 65536];
            let n = self.stream.read(&mut tmp)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Receives the next text message, skipping pings.
    pub fn recv_text(&mut self) -> String {
        loop {
            let f = self.recv().expect("frame");
            match f.opcode {
                OP_PING | OP_PONG => continue,
                OP_TEXT => return f.text(),
                other => panic!("expected text, got opcode {other}: {f:?}"),
            }
        }
    }

    /// Receives the next JSON message.
    pub fn recv_json(&mut self) -> serde_json::Value {
        let t = self.recv_text();
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("bad json {t}: {e}"))
    }

    /// Waits for the server's close frame and returns its code (None for an empty close).
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            let f = self.recv().expect("close frame");
            if f.opcode == OP_CLOSE {
                return f.close_code();
            }
        }
    }

    pub fn set_timeout(&self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
    }
}

pub fn encode_client_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push((if fin { 0x80 } else { 0 }) | ((rsv & 7) << 4) | (opcode & 0x0f));
    let m = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n < 65536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        let key = [0x37u8, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Decodes one unmasked server frame: Ok(None) when incomplete.
pub fn decode_server_frame(buf: &[u8]) -> io::Result<Option<(WsFrame, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    if buf[1] & 0x80 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "server frame masked",
        ));
    }
    let (len, start) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if buf.len() < start + len {
        return Ok(None);
    }
    Ok(Some((
        WsFrame {
            fin,
            opcode,
            payload: buf[start..start + len].to_vec(),
            rsv1: buf[0] & 0x40 != 0,
        },
        start + len,
    )))
}

// ---------------------------------------------------------------------------------------------
// The server binary

pub fn server_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_server"))
}

/// Writes a config file for the binary into `dir` and returns its path.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\nlog_level = \"info\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        dir.join("data").display().to_string()
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, merge_toml(&base, extra)).unwrap();
    path
}

/// Runs `server <args> --config <config>` to completion.
pub fn run_cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(server_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run server");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A child server process that is killed when dropped, so a failing test leaves none behind.
pub struct ChildServer(pub Child);

impl ChildServer {
    /// Stops the server as an operator or a service manager does (SIGTERM) and checks that it
    /// exited cleanly.
    pub fn stop_cleanly(&mut self) {
        // SAFETY: a signal to the child process this test started.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let status = self.0.wait().expect("wait for the server");
        assert!(status.success(), "the server exited with {status}");
    }
}

impl std::ops::Deref for ChildServer {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildServer {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `server run` in the foreground as a child process; waits for its pid file.
pub fn spawn_foreground(config: &Path, data_dir: &Path) -> (ChildServer, SocketAddr) {
    let child = Command::new(server_bin())
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let pid_file = data_dir.join("server.pid");
    let mut addr = None;
    wait_for("the server's pid file", || {
        addr = read_pid_file(&pid_file).and_then(|(pid, a)| (pid == child.id()).then_some(a));
        addr.is_some()
    });
    (ChildServer(child), addr.unwrap())
}

/// (pid, address) from a pid file.
pub fn read_pid_file(path: &Path) -> Option<(u32, SocketAddr)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let addr = lines.next()?.trim().parse().ok()?;
    Some((pid, addr))
}
