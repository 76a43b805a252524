//! The HTTP layer over real sockets: routes, keep-alive and pipelining, and every error status.

mod common;
use common::*;
use std::io::Write;

#[test]
fn healthz_reports_status_version_uptime_connections() {
    let s = TestServer::start("");
    let r = http_get(s.addr, "/healthz");
    assert_eq!(r.status, 200);
    assert!(r
        .header("Content-Type")
        .unwrap()
        .starts_with("application/json"));
    let j = r.json();
    assert_eq!(j["status"], "ok");
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    assert!(j["uptime_s"].is_u64());
    assert!(j["connections"].as_u64().unwrap() >= 1);
}

#[test]
fn head_has_headers_but_no_body() {
    let s = TestServer::start("");
    let mut c = connect(s.addr);
    c.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    // HEAD carries the real Content-Length; our reader must not consume a body for it, so read
    // the head by hand.
    let mut head = Vec::new();
    use std::io::Read;
    let mut tmp = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut tmp).unwrap();
        head.push(tmp[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let get = read_response(&mut c, &mut buf).unwrap();
    assert_eq!(get.status, 200);
    assert_eq!(get.json()["status"], "ok");
}

#[test]
fn keep_alive_and_pipelining_answer_in_order() {
    let s = TestServer::start("");
    let mut c = connect(s.addr);
    c.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut c, &mut buf).unwrap().status, 200);
    assert_eq!(read_response(&mut c, &mut buf).unwrap().status, 404);
    assert_eq!(read_response(&mut c, &mut buf).unwrap().status, 200);
    // Still open for more.
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let last = read_response(&mut c, &mut buf).unwrap();
    assert_eq!(last.status, 200);
    assert!(closed_by_peer(&mut c));
}

#[test]
fn http_1_0_closes_unless_keep_alive() {
    let s = TestServer::start("");
    let mut c = connect(s.addr);
    c.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c, &mut Vec::new()).unwrap().status, 200);
    assert!(closed_by_peer(&mut c));
}

#[test]
fn unknown_route_404_and_wrong_method_405() {
    let s = TestServer::start("");
    let r = http_get(s.addr, "/no/such/thing");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], 404);
    let r = http_raw(
        s.addr,
        b"DELETE /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    assert!(r.header("Allow").unwrap().contains("GET"));
}

#[test]
fn body_over_limit_is_413_before_it_is_sent() {
    let s = TestServer::start("[http]\nmax_body_bytes = 1000\n");
    let r = http_raw(
        s.addr,
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n",
    );
    assert_eq!(r.status, 413);
}

#[test]
fn headers_over_limit_are_431() {
    let s = TestServer::start("[http]\nmax_header_bytes = 1024\n");
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    assert_eq!(http_raw(s.addr, big.as_bytes()).status, 431);
    // Too many headers.
    let mut many = String::from("GET /healthz HTTP/1.1\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    let s2 = TestServer::start("[http]\nmax_header_bytes = 65536\nmax_headers = 32\n");
    assert_eq!(http_raw(s2.addr, many.as_bytes()).status, 431);
}

#[test]
fn chunked_body_is_411_and_garbage_is_400() {
    let s = TestServer::start("");
    let r = http_raw(
        s.addr,
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 411);
    let r = http_raw(s.addr, b"\x00\x01garbage\r\n\r\n");
    assert_eq!(r.status, 400);
    let r = http_raw(
        s.addr,
        b"POST /healthz HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    );
    assert_eq!(r.status, 400);
}
