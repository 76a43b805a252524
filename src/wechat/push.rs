//! A verified, decrypted WeChat push and how to answer it: a passive reply in the push's format,
//! encrypted when the push was (the callback endpoint is `app/wechat_callback.rs`).

use crate::config::WechatApp;
use crate::http::Response;
use crate::wechat::crypto::{self, MsgCrypt};
use crate::wechat::message::{self, Fields, Format};
use std::time::Duration;

/// WeChat waits 5 s for an answer; a passive reply not ready by then is replaced by `success`.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(4);

/// A verified, decrypted push and how to answer it.
pub struct Push {
    pub app: WechatApp,
    pub fields: Fields,
    pub replier: Replier,
}

/// Builds answers in the push's format, encrypted when the push was.
#[derive(Clone)]
pub struct Replier {
    format: Format,
    /// Safe mode: replies are encrypted with the app's key.
    encrypted: bool,
    app: WechatApp,
    /// The user who sent the push (`FromUserName`) and our account (`ToUserName`).
    user: String,
    account: String,
}

impl Replier {
    /// Replies to the push `fields` came in: to its sender, from its account.
    pub fn new(format: Format, encrypted: bool, app: WechatApp, fields: &Fields) -> Replier {
        Replier {
            format,
            encrypted,
            app,
            user: fields.get("FromUserName").unwrap_or_default().to_string(),
            account: fields.get("ToUserName").unwrap_or_default().to_string(),
        }
    }

    /// The bare acknowledgement (no encryption needed).
    pub fn success() -> Response {
        Response::new(200).with_body("text/plain; charset=utf-8", b"success".to_vec())
    }

    /// A passive text reply to the user.
    pub fn text(&self, content: &str) -> Response {
        let now = crate::store::now_ms() / 1000;
        let plain = message::text_reply(self.format, &self.user, &self.account, now, content);
        let body = if self.encrypted {
            match self.seal(&plain, now) {
                Ok(b) => b,
                Err(e) => {
                    log::warn!("wechat {}: cannot encrypt a reply: {e}", self.app.name);
                    return Self::success();
                }
            }
        } else {
            plain
        };
        let ct = match self.format {
            Format::Xml => "application/xml; charset=utf-8",
            Format::Json => "application/json; charset=utf-8",
        };
        Response::new(200).with_body(ct, body.into_bytes())
    }

    fn seal(&self, plain: &str, now: i64) -> Result<String, String> {
        let crypt = MsgCrypt::new(&self.app.aes_key, &self.app.appid).map_err(|e| e.to_string())?;
        let mut random = [0u8; 16];
        getrandom::getrandom(&mut random).map_err(|e| e.to_string())?;
        let encrypt = crypt.encrypt(plain, &random);
        let mut n = [0u8; 4];
        getrandom::getrandom(&mut n).map_err(|e| e.to_string())?;
        let nonce = (u32::from_be_bytes(n) % 1_000_000_000).to_string();
        let ts = now.to_string();
        let signature = crypto::signature(&[&self.app.token, &ts, &nonce, &encrypt]);
        Ok(message::encrypted_reply(
            self.format,
            &encrypt,
            &signature,
            now,
            &nonce,
        ))
    }
}
