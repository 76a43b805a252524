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
        st.delay_ms
    };
    if delay > 0 {
        std::thread::sleep(Duration::from_millis(delay));
    }
    let q = query_map(query);
    let body = match path {
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
        _ => r#"{"errcode":404,"errmsg":"no such fake endpoint"}"#.to_string(),
    };
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes());
    served.fetch_add(1, Ordering::Relaxed);
}
