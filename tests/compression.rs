//! permessage-deflate (RFC 7692) over real sockets: negotiated when offered (and not when off),
//! compressed messages both ways, small ones left plain, a broadcast compressed once and shared,
//! context takeover when configured, and a compression bomb closed with 1009 without touching
//! anyone else.

mod common;
use common::chat_client::{api_user, next_push, server_api, ws_request};
use common::*;
use serde_json::json;
use wxchat::ws::deflate::{Deflater, Inflater};

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

fn connect(s: &TestServer, path: &str, offer: bool) -> WsClient {
    let (c, resp) = WsClient::try_connect(s.addr, path, if offer { OFFER } else { "" });
    assert_eq!(resp.status, 101, "{resp:?}");
    c.unwrap()
}

/// A compressed text frame as a client sends it.
fn send_compressed(c: &mut WsClient, text: &str, d: &mut Deflater) {
    let mut payload = Vec::new();
    d.compress(text.as_bytes(), &mut payload);
    c.send_frame(true, 4, OP_TEXT, &payload, true);
}

/// The next data frame's text, inflated when RSV1 says so; and whether it was compressed.
fn recv_text(c: &mut WsClient, i: &mut Inflater) -> (String, bool, usize) {
    loop {
        let f = c.recv().expect("frame");
        if f.opcode != OP_TEXT {
            continue;
        }
        if !f.rsv1 {
            return (f.text(), false, f.payload.len());
        }
        let mut out = Vec::new();
        i.inflate(&f.payload, 1 << 24, &mut out).expect("inflates");
        return (String::from_utf8(out).unwrap(), true, f.payload.len());
    }
}

#[test]
fn echo_negotiates_and_compresses_both_ways() {
    let s = TestServer::start("[ws]\necho_path = \"/echo\"\n");
    let mut c = connect(&s, "/echo", true);
    assert_eq!(
        c.response.header("sec-websocket-extensions"),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let mut d = Deflater::new(15, false);
    let mut i = Inflater::new(false);
    let long = "消息 message ".repeat(100);
    send_compressed(&mut c, &long, &mut d);
    let (text, compressed, wire) = recv_text(&mut c, &mut i);
    assert_eq!(text, long);
    assert!(
        compressed && wire < long.len() / 4,
        "{wire} of {}",
        long.len()
    );
    // Small messages go out plain (below [ws] permessage_deflate_min_bytes, 512), plain ones echo.
    send_compressed(&mut c, "hi", &mut d);
    assert_eq!(recv_text(&mut c, &mut i), ("hi".into(), false, 2));
    c.send_text("plain");
    assert_eq!(recv_text(&mut c, &mut i).0, "plain");
    // A client that offers nothing gets nothing.
    let plain = connect(&s, "/echo", false);
    assert_eq!(plain.response.header("sec-websocket-extensions"), None);
}

#[test]
fn off_declines_and_context_takeover_keeps_the_context() {
    let s = TestServer::start("[ws]\necho_path = \"/echo\"\npermessage_deflate = \"off\"\n");
    let c = connect(&s, "/echo", true);
    assert_eq!(c.response.header("sec-websocket-extensions"), None);

    let s = TestServer::start(
        "[ws]\necho_path = \"/echo\"\npermessage_deflate = \"context_takeover\"\npermessage_deflate_min_bytes = 128\n",
    );
    let (c, _) = WsClient::try_connect(
        s.addr,
        "/echo",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    let mut c = c.unwrap();
    assert_eq!(
        c.response.header("sec-websocket-extensions"),
        Some("permessage-deflate")
    );
    let mut d = Deflater::new(15, true);
    let mut i = Inflater::new(true);
    let msg =
        r#"{"cmd":"message","data":{"conv_id":"p_1_2","msg":"the same words again and again"}}"#
            .repeat(3);
    let mut sizes = Vec::new();
    for _ in 0..3 {
        send_compressed(&mut c, &msg, &mut d);
        let (text, compressed, wire) = recv_text(&mut c, &mut i);
        assert_eq!(text, msg);
        assert!(compressed);
        sizes.push(wire);
    }
    assert!(sizes[2] < sizes[0] / 2, "the kept context pays: {sizes:?}");
}

#[test]
fn a_compression_bomb_is_closed_with_1009_and_nobody_else_notices() {
    let s = TestServer::start("[ws]\necho_path = \"/echo\"\n");
    let mut bystander = connect(&s, "/echo", true);
    let mut c = connect(&s, "/echo", true);
    let mut d = Deflater::new(15, false);
    let bomb = "0".repeat(8 << 20);
    send_compressed(&mut c, &bomb, &mut d);
    assert_eq!(c.expect_close(), Some(1009));
    bystander.send_text("still here");
    assert_eq!(bystander.recv_text(), "still here");
}

#[test]
fn a_broadcast_is_compressed_once_for_every_recipient() {
    let s = TestServer::start("[api]\nkey = \"k\"\n[chat]\nmax_msgs_per_sec = 0\n");
    let (a, ta) = api_user(s.addr, "k", "a");
    let (b, tb) = api_user(s.addr, "k", "b");
    let (c, tc) = api_user(s.addr, "k", "c");
    let r = server_api(
        s.addr,
        "k",
        "group_create",
        &json!({"owner_id": a, "name": "g", "members": [b, c]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let gid = r.json()["data"]["group"]["group_id"].as_u64().unwrap();
    let open = |token: &str, offer: bool| {
        let mut c = connect(&s, &format!("/ws?token={token}"), offer);
        assert_eq!(c.recv_json()["code"], 200);
        c
    };
    let mut sender = open(&ta, true);
    let mut zipped = open(&tb, true);
    let mut plain = open(&tc, false);
    let text = "a long group message that repeats itself, ".repeat(20);
    let r = ws_request(
        &mut sender,
        json!({"cmd":"send","req_id":1,"chat_type":1,"to_id":gid,"msg_type":0,"msg":text}),
    );
    assert_eq!(r["code"], 200, "{r}");
    let mut i = Inflater::new(false);
    let (z, compressed, wire) = recv_text(&mut zipped, &mut i);
    assert!(compressed && wire < z.len() / 3, "{wire} of {}", z.len());
    let pushed: serde_json::Value = serde_json::from_str(&z).unwrap();
    assert_eq!(pushed["data"]["msg"], text.as_str());
    assert_eq!(
        next_push(&mut plain, "message")["data"]["msg"],
        text.as_str()
    );
    let _ = c;
}
