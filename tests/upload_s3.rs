//! `[upload] backend = "s3"` against a real S3-compatible server: moto's (`moto_server`, from
//! PyPI; scripts/tools installs it), started by each test on a free port and killed at its end.
//! A file uploaded through one node is served by another with its own data directory; redirect
//! mode hands out a presigned URL that serves the bytes; a missing object is the same 404 as a
//! missing local file; a store that refuses us is an upload error reply, not a hang.

mod common;
use common::chat_client::{api_agent, next_push, ws_login, ws_request};
use common::fake_wechat::{FakeWechat, APPID, SECRET};
use common::wx_push::{body, now, Pusher};
use common::*;
use serde_json::json;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const API_KEY: &str = "k";
const BUCKET: &str = "wxchat-test";

/// A moto S3 server on a free port, killed on drop.
struct Moto {
    child: Child,
    addr: SocketAddr,
}

impl Moto {
    /// Starts `moto_server`; `authorising` switches moto's IAM checks on, so it refuses every
    /// request whose credentials it did not issue (all of ours).
    ///
    /// The port is picked by binding port 0 and letting it go, so another test may take it
    /// before Python gets there: moto then exits, and a plain connect would reach the other
    /// test's listener. Ready therefore means moto itself answered an HTTP request; a moto that
    /// exited is started again on a new port.
    fn start(authorising: bool) -> Moto {
        for _ in 0..5 {
            if let Some(moto) = Self::try_start(authorising) {
                return moto;
            }
        }
        panic!("moto_server exited at start five times (ports taken?)");
    }

    fn try_start(authorising: bool) -> Option<Moto> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if authorising {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run moto_server ({e}): the S3 tests need moto's server; \
                 run scripts/tools or pip install 'moto[server]'"
            )
        });
        let mut moto = Moto {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        // Python takes a few seconds to start: a longer deadline than wait_for's.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(_)) = moto.child.try_wait() {
                return None;
            }
            if let Ok(r) = moto.request("GET / HTTP/1.1\r\nHost: s3\r\nConnection: close\r\n\r\n") {
                let server = r.header("server").unwrap_or_default().to_string();
                assert!(
                    server.contains("Werkzeug") || server.contains("amazon"),
                    "port {port} answered, but not as moto: {r:?}"
                );
                return Some(moto);
            }
            assert!(Instant::now() < deadline, "moto_server did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One request to moto; an I/O error (not listening yet, reset) is returned, not a panic.
    fn request(&self, raw: &str) -> std::io::Result<HttpResponse> {
        let mut s = TcpStream::connect(self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(raw.as_bytes())?;
        read_response(&mut s, &mut Vec::new())
    }

    fn create_bucket(&self) {
        let raw = format!(
            "PUT /{BUCKET} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        );
        let r = self
            .request(&raw)
            .or_else(|e| {
                // A bucket PUT is idempotent for its owner: a reset answer is asked again.
                eprintln!("create bucket: {e}; asking again");
                std::thread::sleep(Duration::from_millis(200));
                self.request(&raw)
            })
            .expect("create bucket");
        assert_eq!(r.status, 200, "create bucket: {}", r.text());
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node on the bucket of `moto` with `serve` mode.
fn node(endpoint: &str, serve: &str) -> TestServer {
    TestServer::start(&node_toml(endpoint, serve))
}

fn node_toml(endpoint: &str, serve: &str) -> String {
    format!(
        "[api]\nkey = \"{API_KEY}\"\n\
         [upload]\nbackend = \"s3\"\nserve = \"{serve}\"\ns3_endpoint = \"{endpoint}\"\n\
         s3_bucket = \"{BUCKET}\"\ns3_access_key = \"AKIDWXCHATTEST\"\ns3_secret_key = \"not-a-real-secret\"\n\
         s3_path_style = true\ns3_prefix = \"cluster/files\"\ns3_timeout_ms = 5000\n"
    )
}

/// A raw-body upload with a bearer token; the reply.
fn upload(
    s: &TestServer,
    token: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
) -> HttpResponse {
    let mut raw = format!(
        "POST /api/upload?name={name} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    http_raw(s.addr, &raw)
}

fn token(s: &TestServer, app_uid: &str) -> String {
    common::chat_client::api_user(s.addr, API_KEY, app_uid).1
}

/// `http://host:port/path?query` -> (address, path and query).
fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_at(rest.find('/').expect("a path"));
    (host.parse().expect("host:port"), path.to_string())
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00 shared through the bucket \xff\xfe";

#[test]
fn a_file_uploaded_on_one_node_is_served_by_another() {
    let moto = Moto::start(false);
    moto.create_bucket();
    let mut a = node(&moto.endpoint(), "proxy");
    let mut b = node(&moto.endpoint(), "proxy");
    let r = upload(&a, &token(&a, "alice"), "p.png", "image/png", PNG);
    assert_eq!(r.status, 200, "{}", r.text());
    let url = r.json()["data"]["url"].as_str().unwrap().to_string();
    assert_eq!(r.json()["data"]["mime"], "image/png");
    let name = url.strip_prefix("/files/").unwrap().to_string();
    assert_eq!(name, wxchat::upload::name_for(PNG, "png"));

    // Node B has never seen the file: it reads it from the bucket.
    let got = http_get(b.addr, &url);
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.body, PNG);
    assert_eq!(got.header("content-type"), Some("image/png"));
    assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
    assert!(!b.dir.path().join("files").exists());
    assert!(!a.dir.path().join("files").exists());

    // The object is where the prefix says (a GET signed here), stored with its type.
    let bucket = rusty_s3::Bucket::new(
        moto.endpoint().parse().unwrap(),
        rusty_s3::UrlStyle::Path,
        BUCKET,
        "us-east-1",
    )
    .unwrap();
    let creds = rusty_s3::Credentials::new("AKIDWXCHATTEST", "not-a-real-secret");
    let key = format!("cluster/files/{name}");
    let signed = rusty_s3::S3Action::sign(
        &bucket.get_object(Some(&creds), &key),
        Duration::from_secs(60),
    );
    let (host, path) = split_url(signed.as_str());
    let direct = http_raw(
        host,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!((direct.status, direct.body.as_slice()), (200, PNG));
    assert_eq!(direct.header("content-type"), Some("image/png"));

    // The same bytes through B: the same URL, and the PUT again is harmless.
    let again = upload(&b, &token(&b, "bob"), "q.png", "image/png", PNG);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["data"]["url"].as_str(), Some(url.as_str()));
    assert_eq!(http_get(a.addr, &url).body, PNG);

    // A .bin is an attachment, as with local files.
    let r = upload(&a, &token(&a, "alice"), "x.html", "text/html", b"<p>hi</p>");
    let bin = r.json()["data"]["url"].as_str().unwrap().to_string();
    assert!(bin.ends_with(".bin"), "{bin}");
    let got = http_get(b.addr, &bin);
    assert_eq!(got.body, b"<p>hi</p>");
    assert_eq!(got.header("content-disposition"), Some("attachment"));
    assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    a.stop();
    b.stop();
}

#[test]
fn redirect_mode_hands_out_a_presigned_url_and_missing_files_are_404() {
    let moto = Moto::start(false);
    moto.create_bucket();
    let mut a = node(&moto.endpoint(), "proxy");
    let mut r = node(&moto.endpoint(), "redirect");
    let mut local = TestServer::start("");
    let up = upload(&a, &token(&a, "alice"), "p.png", "image/png", PNG);
    assert_eq!(up.status, 200, "{}", up.text());
    let url = up.json()["data"]["url"].as_str().unwrap().to_string();

    let got = http_get(r.addr, &url);
    assert_eq!(got.status, 302, "{}", got.text());
    let location = got.header("location").unwrap().to_string();
    assert!(
        location.starts_with(&format!("{}/{BUCKET}/cluster/files/", moto.endpoint())),
        "{location}"
    );
    assert!(location.contains("X-Amz-Signature="), "{location}");
    assert!(location.contains("X-Amz-Expires=300"), "{location}");
    assert!(!location.contains("not-a-real-secret"), "{location}");
    let (host, path) = split_url(&location);
    let fetched = http_raw(
        host,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!((fetched.status, fetched.body.as_slice()), (200, PNG));
    assert_eq!(fetched.header("content-type"), Some("image/png"));

    // A well-formed name of no object: the local backend's 404, in both modes.
    let missing = format!("/files/{}.png", "c".repeat(64));
    let want = http_get(local.addr, &missing);
    assert_eq!(want.status, 404);
    for s in [&a, &r] {
        let got = http_get(s.addr, &missing);
        assert_eq!((got.status, &got.body), (want.status, &want.body));
        assert_eq!(got.header("content-type"), want.header("content-type"));
    }
    a.stop();
    r.stop();
    local.stop();
}

#[test]
fn a_store_that_refuses_us_is_an_upload_error_not_a_hang() {
    // moto with its IAM checks on refuses every request of ours. (moto checks no query-string
    // signature, so a wrong key alone is not refused by it; with IAM on it answers our presigned
    // requests 500, which exercises the same path as a 403 InvalidAccessKeyId from a real store.)
    let moto = Moto::start(true);
    let mut s = node(&moto.endpoint(), "proxy");
    let t = token(&s, "alice");
    let r = upload(&s, &t, "p.png", "image/png", PNG);
    assert_eq!(r.status, 500, "{}", r.text());
    let msg = r.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("cannot store the file") && msg.contains("HTTP 5"),
        "{msg}"
    );
    assert!(
        !msg.contains("not-a-real-secret") && !msg.contains("X-Amz"),
        "{msg}"
    );
    // Reading is refused the same way: an error, not a 404 that would hide it.
    let got = http_get(
        s.addr,
        &format!("/files/{}", wxchat::upload::name_for(PNG, "png")),
    );
    assert_eq!(got.status, 500, "{}", got.text());

    // A store nobody listens on: an error reply too.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut gone = node(&format!("http://{closed}"), "proxy");
    let r = upload(&gone, &token(&gone, "bob"), "p.png", "image/png", PNG);
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("object store put"), "{}", r.text());

    // Both servers are alive and well.
    for srv in [&s, &gone] {
        assert_eq!(http_get(srv.addr, "/healthz").status, 200);
    }
    s.stop();
    gone.stop();
}

#[test]
fn an_agent_image_goes_to_wechat_from_the_bucket() {
    let moto = Moto::start(false);
    moto.create_bucket();
    let fake = FakeWechat::start();
    let (cb_token, aes_key) = ("cbtoken", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG");
    let mut a = node(&moto.endpoint(), "proxy");
    let mut b = TestServer::start(&merge_toml(
        &node_toml(&moto.endpoint(), "proxy"),
        &format!(
            "[wechat]\ntimeout_ms = 2000\n[[wechat.apps]]\nname = \"mp\"\nkind = \"miniprogram\"\n\
             appid = \"{APPID}\"\nsecret = \"{SECRET}\"\napi_base = \"{}\"\ntoken = \"{cb_token}\"\n\
             aes_key = \"{aes_key}\"\n",
            fake.base()
        ),
    ));
    // A WeChat user writes to customer service on B; an agent there takes it.
    let (_, agent_token) = api_agent(b.addr, API_KEY, "agent-1");
    let mut agent = ws_login(b.addr, &agent_token);
    let pusher = Pusher {
        path: "/wechat/mp/callback".into(),
        token: cb_token.into(),
        aes_key: aes_key.into(),
        appid: APPID.into(),
    };
    let push = body(
        wxchat::wechat::message::Format::Xml,
        &[
            ("ToUserName", "gh_test"),
            ("FromUserName", "o-s3"),
            ("CreateTime", &now().to_string()),
            ("MsgType", "text"),
            ("Content", "a picture please"),
            ("MsgId", "7001"),
        ],
    );
    let r = pusher.plain(b.addr, &push);
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let customer = next_push(&mut agent, "message")["data"]["from_id"]
        .as_u64()
        .unwrap();

    // The image was uploaded through A; B reads it from the bucket for media/upload.
    let up = upload(&a, &token(&a, "alice"), "p.png", "image/png", PNG);
    assert_eq!(up.status, 200, "{}", up.text());
    let url = up.json()["data"]["url"].as_str().unwrap().to_string();
    let r = ws_request(
        &mut agent,
        json!({"cmd":"send","req_id":1,"chat_type":2,"to_id":customer,"msg_type":1,"msg":{"url":url}}),
    );
    assert_eq!(r["code"], 200, "{r}");
    let d = next_push(&mut agent, "wx_delivery")["data"].clone();
    assert_eq!(d["ok"], true, "{d}");
    assert_eq!(fake.calls("/cgi-bin/media/upload"), 1);
    assert_eq!(
        fake.bodies("/cgi-bin/message/custom/send").last().unwrap()["image"],
        json!({"media_id":"MEDIA-1"})
    );
    assert!(!b.dir.path().join("files").exists());
    a.stop();
    b.stop();
}
