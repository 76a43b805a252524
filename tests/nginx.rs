//! wxchat behind a real nginx running `deploy/nginx/wxchat.conf` with TLS (a certificate made
//! for the test): a wss client logs in and chats with permessage-deflate negotiated through the
//! proxy, uploads a file over https, and the server sees the client's own address (nginx's
//! connections to wxchat come from another address, a trusted proxy's).

mod common;
use common::chat_client::{api_user, next_push, server_api, ws_login, ws_request};
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use wxchat::ws::deflate::{Deflater, Inflater};

/// nginx's address towards wxchat: a loopback address of its own, so the server can tell the
/// proxy (trusted) from the client (127.0.0.1).
const PROXY_ADDR: &str = "127.0.0.3";

struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test CA (`ca.pem`, which the client trusts) and a server certificate it signed for
/// 127.0.0.1 and localhost: the (certificate, key) paths nginx serves.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=wxchat test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Starts nginx with the shipped site configuration in front of `upstream`.
fn start_nginx(upstream: SocketAddr) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let port = free_port();
    let site = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/wxchat.conf"),
    )
    .unwrap()
    .replace("server 127.0.0.1:9501;", &format!("server {upstream};"))
    .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{port} ssl;"))
    .replace("listen [::]:443 ssl;", "")
    .replace("/etc/ssl/wxchat/fullchain.pem", &cert.display().to_string())
    .replace("/etc/ssl/wxchat/privkey.pem", &key.display().to_string())
    .replace(
        "proxy_pass http://wxchat;",
        &format!("proxy_pass http://wxchat;\n        proxy_bind {PROXY_ADDR};"),
    );
    assert!(
        site.contains(&format!("listen 127.0.0.1:{port} ssl;")),
        "{site}"
    );
    let d = dir.path().display();
    std::fs::write(dir.path().join("wxchat.conf"), site).unwrap();
    std::fs::write(
        dir.path().join("nginx.conf"),
        format!(
            "daemon off;\nmaster_process off;\nuser root;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               include {d}/wxchat.conf;\n}}\n"
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nginx (Debian's nginx package; scripts/tools installs it)");
    let nginx = Nginx { child, port, dir };
    wait_for("nginx to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    nginx
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to nginx that trusts only the test's certificate.
fn tls(nginx: &Nginx) -> Tls {
    let mut roots = rustls::RootCertStore::empty();
    let cert = CertificateDer::from_pem_file(nginx.dir.path().join("ca.pem")).unwrap();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// Reads one HTTP response head (and its Content-Length body) from a TLS stream.
fn read_http(s: &mut Tls) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "eof in the response head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, head, body)
}

/// A WebSocket client over TLS offering permessage-deflate.
struct Wss {
    s: Tls,
    buf: Vec<u8>,
    deflate: Deflater,
    inflate: Inflater,
}

impl Wss {
    fn connect(nginx: &Nginx, path: &str) -> (Wss, String) {
        let mut s = tls(nginx);
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
            nginx.port
        )
        .unwrap();
        s.flush().unwrap();
        let (status, head, _) = read_http(&mut s);
        assert_eq!(status, 101, "{head}");
        let wss = Wss {
            s,
            buf: Vec::new(),
            deflate: Deflater::new(15, false),
            inflate: Inflater::new(false),
        };
        (wss, head)
    }

    fn send_json(&mut self, v: &Value) {
        let mut payload = Vec::new();
        self.deflate
            .compress(v.to_string().as_bytes(), &mut payload);
        self.s
            .write_all(&encode_client_frame(true, 4, OP_TEXT, &payload, true))
            .unwrap();
        self.s.flush().unwrap();
    }

    /// The next message with this `cmd` (others skipped), and whether it came compressed.
    fn recv_cmd(&mut self, cmd: &str) -> (Value, bool) {
        loop {
            let (v, compressed) = self.recv();
            if v["cmd"] == cmd {
                return (v, compressed);
            }
        }
    }

    /// The next text message, inflated; and whether it came compressed.
    fn recv(&mut self) -> (Value, bool) {
        loop {
            if let Some((f, used)) = decode_server_frame(&self.buf).unwrap() {
                self.buf.drain(..used);
                if f.opcode != OP_TEXT {
                    continue;
                }
                let text = if f.rsv1 {
                    let mut out = Vec::new();
                    self.inflate.inflate(&f.payload, 1 << 20, &mut out).unwrap();
                    out
                } else {
                    f.payload
                };
                return (serde_json::from_slice(&text).unwrap(), f.rsv1);
            }
            let mut tmp = [0u8; 16384];
            let n = self.s.read(&mut tmp).unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }
}

#[test]
fn wss_through_nginx_chats_compressed_uploads_and_names_the_client() {
    let s = TestServer::start(&format!(
        "[api]\nkey = \"k\"\n[chat]\nmax_msgs_per_sec = 0\n[http]\ntrusted_proxies = [\"{PROXY_ADDR}\"]\n"
    ));
    let nginx = start_nginx(s.addr);
    let (a, ta) = api_user(s.addr, "k", "a");
    let (b, tb) = api_user(s.addr, "k", "b");
    assert_eq!(
        server_api(
            s.addr,
            "k",
            "friend_add",
            &json!({"uid": a, "friend_id": b})
        )
        .status,
        200
    );
    let mut watch = WsClient::connect(s.admin, "/admin/subscribe");
    watch.send_text(r#"{"cmd":"subscribe","req_id":1,"topics":["connection"]}"#);
    assert_eq!(watch.recv_json()["code"], 200);

    // wss through nginx, compression negotiated end to end.
    let (mut wss, head) = Wss::connect(&nginx, &format!("/ws?token={ta}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate"),
        "{head}"
    );
    let (auth, _) = wss.recv();
    assert_eq!(
        (auth["cmd"].as_str(), auth["data"]["uid"].as_u64()),
        (Some("auth"), Some(a))
    );
    // The server saw nginx's address on the socket and the client's through the proxy headers.
    let open = loop {
        let e = watch.recv_json();
        if e["event"] == "open" {
            break e;
        }
    };
    assert!(
        open["peer"].as_str().unwrap().starts_with(PROXY_ADDR),
        "{open}"
    );
    assert_eq!(open["client"], "127.0.0.1", "{open}");

    // Chat both ways; a long push comes compressed.
    let mut direct = ws_login(s.addr, &tb);
    let text = "长消息 through nginx, ".repeat(40);
    wss.send_json(&json!({"cmd":"send","req_id":2,"chat_type":0,"to_id":b,"msg_type":0,"msg":text,"client_msg_id":"n-1"}));
    let (ack, _) = wss.recv_cmd("send");
    assert_eq!(ack["code"], 200, "{ack}");
    assert_eq!(
        next_push(&mut direct, "message")["data"]["msg"],
        text.as_str()
    );
    let r = ws_request(
        &mut direct,
        json!({"cmd":"send","req_id":3,"chat_type":0,"to_id":a,"msg_type":0,"msg":text}),
    );
    assert_eq!(r["code"], 200, "{r}");
    let (push, compressed) = wss.recv_cmd("message");
    assert_eq!(
        (push["cmd"].as_str(), push["data"]["msg"].as_str()),
        (Some("message"), Some(text.as_str()))
    );
    assert!(compressed, "a long push is compressed through the proxy");

    // An upload over https.
    let png: &[u8] = b"\x89PNG\r\n\x1a\nthrough nginx";
    let mut up = tls(&nginx);
    write!(
        up,
        "POST /api/upload?name=a.png HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ta}\r\n\
         Content-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        png.len()
    )
    .unwrap();
    up.write_all(png).unwrap();
    up.flush().unwrap();
    let (status, head, body) = read_http(&mut up);
    assert_eq!(status, 200, "{head}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["data"]["url"].as_str().unwrap().ends_with(".png"), "{v}");
}
