//! Builds WeChat message pushes the way WeChat sends them: signed query, plaintext or safe-mode
//! (AES) body, XML or JSON; and opens encrypted passive replies.
#![allow(dead_code)]

use super::{http_raw, HttpResponse};
use std::net::SocketAddr;
use wxchat::wechat::crypto::{signature, MsgCrypt};
use wxchat::wechat::message::{self, Format};

pub struct Pusher {
    pub path: String,
    pub token: String,
    pub aes_key: String,
    pub appid: String,
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A flat push body in `format` from (name, value) pairs; values that parse as integers stay
/// numbers.
pub fn body(format: Format, fields: &[(&str, &str)]) -> String {
    let values: Vec<(&str, serde_json::Value)> = fields
        .iter()
        .map(|(k, v)| {
            let v = match v.parse::<i64>() {
                Ok(n) if *k == "CreateTime" || *k == "MsgId" => serde_json::Value::from(n),
                _ => serde_json::Value::from(*v),
            };
            (*k, v)
        })
        .collect();
    message::build(format, &values)
}

impl Pusher {
    fn signed_query(&self, ts: i64, nonce: &str) -> String {
        let sig = signature(&[&self.token, &ts.to_string(), nonce]);
        format!("signature={sig}&timestamp={ts}&nonce={nonce}&openid=o")
    }

    fn post(&self, addr: SocketAddr, query: &str, body: &str) -> HttpResponse {
        http_raw(
            addr,
            format!(
                "POST {}?{query} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
                self.path,
                body.len()
            )
            .as_bytes(),
        )
    }

    /// A plaintext push signed now.
    pub fn plain(&self, addr: SocketAddr, body: &str) -> HttpResponse {
        self.plain_at(addr, body, now())
    }

    /// A plaintext push signed with the given timestamp.
    pub fn plain_at(&self, addr: SocketAddr, body: &str, ts: i64) -> HttpResponse {
        self.post(addr, &self.signed_query(ts, "1234567"), body)
    }

    /// The safe-mode envelope of `inner` (encrypted for `appid`) and its query.
    pub fn seal(&self, format: Format, inner: &str, appid: &str) -> (String, String) {
        let ts = now();
        let nonce = "7654321";
        let crypt = MsgCrypt::new(&self.aes_key, appid).unwrap();
        let encrypt = crypt.encrypt(inner, &[7u8; 16]);
        let msg_sig = signature(&[&self.token, &ts.to_string(), nonce, &encrypt]);
        let envelope = message::build(
            format,
            &[
                ("ToUserName", "gh_test".into()),
                ("Encrypt", encrypt.as_str().into()),
            ],
        );
        let query = format!(
            "{}&encrypt_type=aes&msg_signature={msg_sig}",
            self.signed_query(ts, nonce)
        );
        (query, envelope)
    }

    /// A safe-mode push.
    pub fn safe(&self, addr: SocketAddr, format: Format, inner: &str) -> HttpResponse {
        let (query, envelope) = self.seal(format, inner, &self.appid);
        self.post(addr, &query, &envelope)
    }

    /// Sends a prepared (query, body).
    pub fn raw(&self, addr: SocketAddr, query: &str, body: &str) -> HttpResponse {
        self.post(addr, query, body)
    }

    /// URL verification.
    pub fn verify_url(&self, addr: SocketAddr, query: &str) -> HttpResponse {
        http_raw(
            addr,
            format!(
                "GET {}?{query} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                self.path
            )
            .as_bytes(),
        )
    }

    /// Checks an encrypted passive reply's signature and returns its decrypted fields.
    pub fn open_reply(&self, reply: &str) -> message::Fields {
        let (_, env) = message::parse(reply.as_bytes()).expect("reply envelope");
        let encrypt = env.get("Encrypt").expect("Encrypt");
        let sig = signature(&[
            &self.token,
            env.get("TimeStamp").expect("TimeStamp"),
            env.get("Nonce").expect("Nonce"),
            encrypt,
        ]);
        assert_eq!(
            Some(sig.as_str()),
            env.get("MsgSignature"),
            "reply signature"
        );
        let crypt = MsgCrypt::new(&self.aes_key, &self.appid).unwrap();
        let (plain, _) = crypt.decrypt(encrypt).expect("reply decrypts");
        message::parse(plain.as_bytes()).expect("reply message").1
    }
}
