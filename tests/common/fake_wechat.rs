//! A fake WeChat API server for tests: the endpoints wxchat calls, answering by the request, with
//! call counters and an injectable delay. `jscode2session` answers by `js_code`:
//! - `ok-<openid>` -> openid, the fixed session key [`SESSION_KEY`];
//! - `ok-<openid>-u-<unionid>` -> the same with a unionid;
//! - `err-<errcode>` -> that WeChat error;
//! - `junk` -> an HTML page (not WeChat's JSON).
//!
//! A wrong appid or secret gets 40125, as WeChat would answer. `cgi-bin/stable_token` and
//! `cgi-bin/token` issue `TOKEN-<n>` (n counts fetches); `cgi-bin/get_api_domain_ip` accepts only
//! the latest token that was not expired with [`FakeWechat::expire_token`] (40001 otherwise).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The session key every successful fake login returns (base64 of 16 bytes 00..0f).
pub const SESSION_KEY: &str = "AAECAwQFBgcICQoLDA0ODw==";
pub const APPID: &str = "wx0123456789abcdef";
pub const SECRET: &str = "fake-app-secret-0042";

#[derive(Default)]
struct State {
    calls: HashMap<String, u64>,
    delay_ms: u64,
    tokens_issued: u64,
    token_expired: bool,
    /// Request bodies per path (JSON calls), oldest first.
    bodies: HashMap<String, Vec<String>>,
    media_uploaded: u64,
    /// Paths answered with this WeChat error instead.
    errors: HashMap<String, i64>,
}

pub struct FakeWechat {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    served: Arc<AtomicU64>,
}

impl FakeWechat {
    pub fn start() -> FakeWechat {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let served = Arc::new(AtomicU64::new(0));
        let (st, sv) = (state.clone(), served.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (st, sv) = (st.clone(), sv.clone());
                std::thread::spawn(move || serve(stream, &st, &sv));
            }
        });
        FakeWechat {
            addr,
            state,
            served,
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Calls received on `path` (e.g. "/sns/jscode2session").
    pub fn calls(&self, path: &str) -> u64 {
        self.state
            .lock()
            .unwrap()
            .calls
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// WeChat invalidates the current access_token (as a `cgi-bin/token` fetch elsewhere would).
    pub fn expire_token(&self) {
        self.state.lock().unwrap().token_expired = true;
    }

    /// The JSON bodies posted to `path`, oldest first.
    pub fn bodies(&self, path: &str) -> Vec<serde_json::Value> {
        self.state
            .lock()
            .unwrap()
            .bodies
            .get(path)
            .map(|v| {
                v.iter()
                    .map(|b| serde_json::from_str(b).unwrap_or(serde_json::Value::Null))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `scene_str` of every QR code created, oldest first.
    pub fn qr_scenes(&self) -> Vec<String> {
        self.bodies("/cgi-bin/qrcode/create")
            .iter()
            .filter_map(|b| {
                b["action_info"]["scene"]["scene_str"]
                    .as_str()
                    .map(String::from)
            })
            .collect()
    }

    /// The `[[wechat.apps]]` entry of an official account on this fake (callback token and
    /// EncodingAESKey given).
    pub fn official_toml(&self, name: &str, token: &str, aes_key: &str) -> String {
        format!(
            "[[wechat.apps]]\nname = \"{name}\"\nkind = \"official\"\nappid = \"{APPID}\"\n\
             secret = \"{SECRET}\"\napi_base = \"{}\"\ntoken = \"{token}\"\naes_key = \"{aes_key}\"\n",
            self.base()
        )
    }

    /// Makes `path` answer with WeChat error `errcode` (None: normal answers again).
    pub fn set_error(&self, path: &str, errcode: Option<i64>) {
        let mut st = self.state.lock().unwrap();
        match errcode {
            Some(c) => st.errors.insert(path.to_string(), c),
            None => st.errors.remove(path),
        };
    }

    pub fn set_delay(&self, d: Duration) {
        self.state.lock().unwrap().delay_ms = d.as_millis() as u64;
    }

    /// The `[[wechat.apps]]` entry of a mini-program on this fake.
    pub fn app_toml(&self, name: &str) -> String {
        format!(
            "[[wechat.apps]]\nname = \"{name}\"\nkind = \"miniprogram\"\nappid = \"{APPID}\"\n\
             secret = \"{SECRET}\"\napi_base = \"{}\"\n",
            self.base()
        )
    }
}

fn query_map(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%2D", "-").replace("%2d", "-")))
        .collect()
}

fn serve(mut s: TcpStream, state: &Mutex<State>, served: &AtomicU64) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buf.len() < head_end + 4 + length {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let request_body = String::from_utf8_lossy(&buf[head_end + 4..]).to_string();
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let delay = {
        let mut st = state.lock().unwrap();
        *st.calls.entry(path.to_string()).or_default() += 1;
        if path != "/cgi-bin/media/upload" {
            st.bodies
                .entry(path.to_string())
                .or_default()
                .push(request_body.clone());
        }
        st.delay_ms
    };
    let token_ok = || {
        let st = state.lock().unwrap();
        let current = format!("TOKEN-{}", st.tokens_issued);
        query_map(query).get("access_token") == Some(&current) && !st.token_expired
    };
    const BAD_TOKEN: &str =
        r#"{"errcode":40001,"errmsg":"invalid credential, access_token is invalid or not latest"}"#;
    if delay > 0 {
        std::thread::sleep(Duration::from_millis(delay));
    }
    let q = query_map(query);
    let forced = state.lock().unwrap().errors.get(path).copied();
    let body = match path {
        _ if forced.is_some() => {
            let c = forced.unwrap_or_default();
            format!(r#"{{"errcode":{c},"errmsg":"forced error {c}"}}"#)
        }
        "/sns/jscode2session" => {
            let code = q.get("js_code").cloned().unwrap_or_default();
            if q.get("appid").map(String::as_str) != Some(APPID)
                || q.get("secret").map(String::as_str) != Some(SECRET)
            {
                r#"{"errcode":40125,"errmsg":"invalid appsecret"}"#.to_string()
            } else if let Some(n) = code.strip_prefix("err-") {
                format!(r#"{{"errcode":{n},"errmsg":"fake error {n}"}}"#)
            } else if code == "junk" {
                "<html><body>502 Bad Gateway</body></html>".to_string()
            } else if let Some(rest) = code.strip_prefix("ok-") {
                match rest.split_once("-u-") {
                    Some((openid, unionid)) => format!(
                        r#"{{"openid":"{openid}","session_key":"{SESSION_KEY}","unionid":"{unionid}"}}"#
                    ),
                    None => format!(r#"{{"openid":"{rest}","session_key":"{SESSION_KEY}"}}"#),
                }
            } else {
                r#"{"errcode":40029,"errmsg":"invalid code"}"#.to_string()
            }
        }
        "/cgi-bin/stable_token" | "/cgi-bin/token" => {
            let (appid, secret) = if path == "/cgi-bin/token" {
                (q.get("appid").cloned(), q.get("secret").cloned())
            } else {
                let v: serde_json::Value = serde_json::from_str(&request_body).unwrap_or_default();
                (
                    v["appid"].as_str().map(String::from),
                    v["secret"].as_str().map(String::from),
                )
            };
            if appid.as_deref() != Some(APPID) || secret.as_deref() != Some(SECRET) {
                r#"{"errcode":40125,"errmsg":"invalid appsecret"}"#.to_string()
            } else {
                let mut st = state.lock().unwrap();
                st.tokens_issued += 1;
                st.token_expired = false;
                format!(
                    r#"{{"access_token":"TOKEN-{}","expires_in":7200}}"#,
                    st.tokens_issued
                )
            }
        }
        "/cgi-bin/get_api_domain_ip" => {
            let st = state.lock().unwrap();
            let current = format!("TOKEN-{}", st.tokens_issued);
            if q.get("access_token") == Some(&current) && !st.token_expired {
                r#"{"ip_list":["101.226.103.0/25"]}"#.to_string()
            } else {
                r#"{"errcode":40001,"errmsg":"invalid credential, access_token is invalid or not latest"}"#.to_string()
            }
        }
        _ if path.starts_with("/cgi-bin/")
            && path != "/cgi-bin/get_api_domain_ip"
            && !token_ok() =>
        {
            BAD_TOKEN.to_string()
        }
        "/cgi-bin/qrcode/create" => {
            let v: serde_json::Value = serde_json::from_str(&request_body).unwrap_or_default();
            match v["action_info"]["scene"]["scene_str"].as_str() {
                Some(scene) if v["action_name"] == "QR_STR_SCENE" => format!(
                    r#"{{"ticket":"gQ+{scene}/=","expire_seconds":{},"url":"http://weixin.qq.com/q/{scene}"}}"#,
                    v["expire_seconds"].as_u64().unwrap_or(60)
                ),
                _ => r#"{"errcode":40097,"errmsg":"invalid args"}"#.to_string(),
            }
        }
        "/cgi-bin/user/info" => {
            // `<openid>-u-<unionid>` carries a unionid; `nouser-...` is not a follower;
            // `...-nick-<name>` is an old account that still gets nicknames and avatars.
            let openid = q.get("openid").cloned().unwrap_or_default();
            match openid.split_once("-u-") {
                _ if openid.contains("-nick-") => {
                    let nick = openid.split_once("-nick-").map_or("", |(_, n)| n);
                    format!(
                        r#"{{"subscribe":1,"openid":"{openid}","nickname":"{nick}","headimgurl":"https://thirdwx.qlogo.cn/mmopen/{nick}/132"}}"#
                    )
                }
                Some((_, union)) => {
                    format!(r#"{{"subscribe":1,"openid":"{openid}","unionid":"{union}"}}"#)
                }
                None if openid.starts_with("nouser") => r#"{"subscribe":0}"#.to_string(),
                None => format!(r#"{{"subscribe":1,"openid":"{openid}"}}"#),
            }
        }
        "/cgi-bin/message/custom/send" => {
            // WeChat's reply-window and quota errors by the recipient's openid.
            let v: serde_json::Value = serde_json::from_str(&request_body).unwrap_or_default();
            let to = v["touser"].as_str().unwrap_or_default();
            if to.starts_with("late") {
                r#"{"errcode":45015,"errmsg":"response out of time limit or subscription is canceled"}"#.to_string()
            } else if to.starts_with("quota") {
                r#"{"errcode":45047,"errmsg":"out of response count limit"}"#.to_string()
            } else if v["msgtype"].as_str().is_none() {
                r#"{"errcode":40008,"errmsg":"invalid message type"}"#.to_string()
            } else {
                r#"{"errcode":0,"errmsg":"ok"}"#.to_string()
            }
        }
        "/cgi-bin/message/custom/typing" => r#"{"errcode":0,"errmsg":"ok"}"#.to_string(),
        "/cgi-bin/media/upload" => {
            let mut st = state.lock().unwrap();
            if !request_body.contains("name=\"media\"") {
                r#"{"errcode":41005,"errmsg":"media data missing"}"#.to_string()
            } else {
                st.media_uploaded += 1;
                format!(
                    r#"{{"type":"image","media_id":"MEDIA-{}","created_at":1}}"#,
                    st.media_uploaded
                )
            }
        }
        _ => r#"{"errcode":404,"errmsg":"no such fake endpoint"}"#.to_string(),
    };
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes());
    served.fetch_add(1, Ordering::Relaxed);
}
