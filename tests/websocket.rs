//! The WebSocket transport over real sockets: handshake answers, echo, every close code the
//! server uses, pings, timeouts and the slow-consumer limit.

mod common;
use common::*;
use std::io::Write;
use std::time::Duration;

const ECHO: &str = "[ws]\necho_path = \"/echo\"\n";

#[test]
fn handshake_returns_rfc_accept_key() {
    let s = TestServer::start(ECHO);
    let c = WsClient::connect(s.addr, "/echo");
    assert_eq!(
        c.response.header("Sec-WebSocket-Accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert!(c
        .response
        .header("Upgrade")
        .unwrap()
        .eq_ignore_ascii_case("websocket"));
}

#[test]
fn handshake_rejections() {
    let s = TestServer::start(
        "[ws]\necho_path = \"/echo\"\nallowed_origins = [\"https://ok.example\"]\nsubprotocols = [\"wxchat.v1\"]\n",
    );
    // Wrong version: 426 naming the supported one.
    let raw = "GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\nOrigin: https://ok.example\r\n\r\n";
    let r = http_raw(s.addr, raw.as_bytes());
    assert_eq!(r.status, 426);
    assert_eq!(r.header("Sec-WebSocket-Version"), Some("13"));
    // Missing key: 400.
    let raw = "GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nOrigin: https://ok.example\r\n\r\n";
    assert_eq!(http_raw(s.addr, raw.as_bytes()).status, 400);
    // Not an upgrade at all: 400.
    assert_eq!(http_get(s.addr, "/echo").status, 400);
    // Origin not allowed: 403.
    let (c, r) = WsClient::try_connect(s.addr, "/echo", "Origin: https://evil.example\r\n");
    assert!(c.is_none());
    assert_eq!(r.status, 403);
    // Allowed origin and a known subprotocol: echoed.
    let (c, r) = WsClient::try_connect(
        s.addr,
        "/echo",
        "Origin: https://ok.example\r\nSec-WebSocket-Protocol: other, wxchat.v1\r\n",
    );
    assert!(c.is_some(), "{r:?}");
    assert_eq!(r.header("Sec-WebSocket-Protocol"), Some("wxchat.v1"));
}

#[test]
fn echoes_text_binary_and_fragments() {
    let s = TestServer::start(ECHO);
    let mut c = WsClient::connect(s.addr, "/echo");
    c.send_text("你好, wxchat");
    assert_eq!(c.recv_text(), "你好, wxchat");
    c.send_binary(&[0, 1, 2, 255]);
    let f = c.recv().unwrap();
    assert_eq!((f.opcode, f.payload), (OP_BINARY, vec![0, 1, 2, 255]));
    // Fragmented with a ping in the middle: pong first, then the whole message.
    c.send_frame(false, 0, OP_TEXT, b"Hel", true);
    c.send_frame(true, 0, OP_PING, b"mid", true);
    c.send_frame(true, 0, OP_CONT, b"lo", true);
    let pong = c.recv().unwrap();
    assert_eq!((pong.opcode, pong.payload), (OP_PONG, b"mid".to_vec()));
    assert_eq!(c.recv_text(), "Hello");
    // 70 KB message (64-bit length form on the way back is not needed; 16-bit is).
    let big = "x".repeat(70_000);
    c.send_text(&big);
    assert_eq!(c.recv_text(), big);
}

#[test]
fn frames_pipelined_behind_the_handshake_are_processed() {
    let s = TestServer::start(ECHO);
    let mut stream = connect(s.addr);
    let mut req = b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec();
    req.extend(encode_client_frame(true, 0, OP_TEXT, b"early", true));
    stream.write_all(&req).unwrap();
    let mut buf = Vec::new();
    let resp = read_response(&mut stream, &mut buf).unwrap();
    assert_eq!(resp.status, 101);
    let mut c = WsClient::from_parts(stream, buf, resp);
    assert_eq!(c.recv_text(), "early");
}

fn expect_close_code(setup: &str, send: impl FnOnce(&mut WsClient), code: u16) {
    let s = TestServer::start(setup);
    let mut c = WsClient::connect(s.addr, "/echo");
    send(&mut c);
    assert_eq!(c.expect_close(), Some(code));
    // The server finishes the close: after our close reply the TCP connection ends.
    c.send_close(code, "");
    assert!(
        closed_by_peer(&mut c.stream),
        "server kept the connection open"
    );
}

#[test]
fn unmasked_client_frame_is_1002() {
    expect_close_code(ECHO, |c| c.send_frame(true, 0, OP_TEXT, b"hi", false), 1002);
}

#[test]
fn rsv_bits_are_1002() {
    expect_close_code(ECHO, |c| c.send_frame(true, 2, OP_TEXT, b"hi", true), 1002);
}

#[test]
fn unknown_opcode_is_1002() {
    expect_close_code(ECHO, |c| c.send_frame(true, 0, 3, b"", true), 1002);
}

#[test]
fn fragmented_control_frame_is_1002() {
    expect_close_code(ECHO, |c| c.send_frame(false, 0, OP_PING, b"x", true), 1002);
}

#[test]
fn oversized_control_frame_is_1002() {
    expect_close_code(
        ECHO,
        |c| c.send_frame(true, 0, OP_PING, &[0u8; 126], true),
        1002,
    );
}

#[test]
fn continuation_without_start_is_1002() {
    expect_close_code(ECHO, |c| c.send_frame(true, 0, OP_CONT, b"x", true), 1002);
}

#[test]
fn invalid_close_code_is_1002() {
    expect_close_code(
        ECHO,
        |c| c.send_frame(true, 0, OP_CLOSE, &1005u16.to_be_bytes(), true),
        1002,
    );
}

#[test]
fn invalid_utf8_is_1007() {
    expect_close_code(
        ECHO,
        |c| c.send_frame(true, 0, OP_TEXT, &[0xce, 0xba, 0xff], true),
        1007,
    );
}

#[test]
fn invalid_utf8_across_fragments_fails_fast_1007() {
    expect_close_code(
        ECHO,
        |c| {
            // The first fragment is already invalid; the server must not wait for the rest.
            c.send_frame(false, 0, OP_TEXT, &[b'a', 0xc0, 0x80], true);
        },
        1007,
    );
}

#[test]
fn oversized_frame_is_1009() {
    expect_close_code(
        "[ws]\necho_path = \"/echo\"\nmax_frame_bytes = 1024\nmax_message_bytes = 4096\n",
        |c| c.send_binary(&[0u8; 2000]),
        1009,
    );
}

#[test]
fn oversized_message_is_1009() {
    expect_close_code(
        "[ws]\necho_path = \"/echo\"\nmax_frame_bytes = 1024\nmax_message_bytes = 4096\n",
        |c| {
            c.send_frame(false, 0, OP_BINARY, &[0u8; 1000], true);
            for _ in 0..4 {
                c.send_frame(false, 0, OP_CONT, &[0u8; 1000], true);
            }
        },
        1009,
    );
}

#[test]
fn peer_close_is_echoed_and_connection_ends() {
    let s = TestServer::start(ECHO);
    let mut c = WsClient::connect(s.addr, "/echo");
    c.send_close(1000, "bye");
    assert_eq!(c.expect_close(), Some(1000));
    assert!(closed_by_peer(&mut c.stream));
    // A 4xxx application code is echoed too.
    let mut c = WsClient::connect(s.addr, "/echo");
    c.send_close(4321, "");
    assert_eq!(c.expect_close(), Some(4321));
}

#[test]
fn ping_gets_pong_with_same_payload() {
    let s = TestServer::start(ECHO);
    let mut c = WsClient::connect(s.addr, "/echo");
    c.send_frame(true, 0, OP_PING, b"are you there", true);
    let f = c.recv().unwrap();
    assert_eq!((f.opcode, f.payload), (OP_PONG, b"are you there".to_vec()));
}

#[test]
fn server_pings_and_drops_silent_peers() {
    let s = TestServer::start("[ws]\necho_path = \"/echo\"\nping_interval_s = 1\n");
    let mut c = WsClient::connect(s.addr, "/echo");
    let f = c.recv().unwrap();
    assert_eq!(f.opcode, OP_PING, "server pings an idle peer");
    // Do not answer: the server gives up with 1001 after another interval.
    assert_eq!(c.expect_close(), Some(1001));
}

#[test]
fn answering_pings_keeps_the_connection() {
    let s = TestServer::start("[ws]\necho_path = \"/echo\"\nping_interval_s = 1\n");
    let mut c = WsClient::connect(s.addr, "/echo");
    for _ in 0..3 {
        let f = c.recv().unwrap();
        assert_eq!(f.opcode, OP_PING);
        c.send_frame(true, 0, OP_PONG, &f.payload, true);
    }
    c.send_text("still here");
    assert_eq!(c.recv_text(), "still here");
}

#[test]
fn unfinished_handshake_times_out() {
    let s = TestServer::start("[ws]\nhandshake_timeout_s = 1\n");
    let mut stream = connect(s.addr);
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    assert!(
        closed_by_peer(&mut stream),
        "half a request must not hold a slot forever"
    );
}

#[test]
fn chat_path_holds_the_connection_open() {
    let s = TestServer::start("");
    let mut c = WsClient::connect(s.addr, "/ws");
    c.send_frame(true, 0, OP_PING, b"1", true);
    assert_eq!(c.recv().unwrap().opcode, OP_PONG);
}

#[test]
fn reader_that_stops_reading_is_closed_at_the_cap() {
    // A soft limit under the 64 KiB at which reading pauses: the paused peer's queue stays above
    // it, so the slow-consumer clock runs. (Above 64 KiB, a peer that only answers its own
    // requests is held back by TCP and never reaches the soft limit; see tests/memory.rs.)
    let s = TestServer::start(
        "[server]\nmax_out_bytes = 1048576\nsoft_out_bytes = 32768\nsoft_out_secs = 1\n[ws]\necho_path = \"/echo\"\n",
    );
    let mut c = WsClient::connect(s.addr, "/echo");
    c.stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let chunk = encode_client_frame(true, 0, OP_BINARY, &[7u8; 60_000], true);
    // Keep sending, never read: the server stops reading us (backpressure), our writes block.
    let mut sent = 0usize;
    for _ in 0..2000 {
        match c.stream.write_all(&chunk) {
            Ok(()) => sent += chunk.len(),
            Err(_) => break,
        }
    }
    assert!(sent < 2000 * chunk.len(), "the server never pushed back");
    // Above the soft limit for longer than soft_out_secs: the server closes us.
    assert!(
        closed_by_peer(&mut c.stream),
        "slow consumer was not closed"
    );
    // The server itself is fine.
    let mut c2 = WsClient::connect(s.addr, "/echo");
    c2.send_text("ok");
    assert_eq!(c2.recv_text(), "ok");
}
