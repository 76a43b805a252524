//! WeChat message push: `GET|POST /wechat/{app}/callback` (and `/wechat/callback` when one app is
//! configured).
//!
//! GET is WeChat's URL verification. POST is a push: `signature` and `timestamp` are checked in
//! every mode, `msg_signature` and the AES envelope in safe mode; the body is XML or JSON in
//! either mode. Verification and decryption are CPU work on the reactor (microseconds); what
//! follows needs the store and runs on workers:
//! - QR-code scans (official accounts) log a browser in ([`super::qrlogin`]) and are answered with
//!   a passive text reply, or `success` if that takes more than [`REPLY_DEADLINE`];
//! - customer-service messages (mini-programs, mini-games) are stored ([`super::service`]) and
//!   answered `success` once committed, or 503 so that WeChat retries: nothing acknowledged to
//!   WeChat is lost, and a retry is stored once (deduplicated by `MsgId`);
//! - anything else is answered `success`.

use crate::admin::metrics::METRICS;
use crate::admin::Topic;
use crate::app::{App, Completion};
use crate::config::WechatApp;
use crate::http::{Request, Response};
use crate::net::{ConnId, Ctx, Reply};
use crate::wechat::crypto::{self, CryptoError, MsgCrypt};
use crate::wechat::message::{self, Fields, Format};
use serde_json::json;
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

/// A refusal: plain text that names the problem and never echoes a secret.
fn refuse(status: u16, why: &str) -> Reply {
    Reply::Now(Response::error(status, why))
}

/// The app a callback URL names, or the only app when the URL names none.
fn find_app(app: &App, name: Option<&str>) -> Option<WechatApp> {
    let apps = &app.config.wechat.apps;
    match name {
        Some(n) => apps.iter().find(|a| a.name == n).cloned(),
        None if apps.len() == 1 => apps.first().cloned(),
        None => None,
    }
}

/// Verifies and handles one callback; refusals and URL verifications are counted and published
/// on the `wechat` topic here, accepted pushes by [`dispatch`].
pub fn handle(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    req: &Request,
    name: Option<&str>,
) -> Reply {
    let reply = verify(app, ctx, conn, req, name);
    if let Reply::Now(resp) = &reply {
        let refused = resp.status >= 400;
        if refused {
            METRICS.wechat_callbacks[1].inc();
        }
        if refused || req.method == "GET" {
            let peer = ctx.peer_addr(conn);
            let event = || {
                json!({
                    "kind": if req.method == "GET" { "verify" } else { "push" },
                    "app": name.unwrap_or(""),
                    "ok": !refused,
                    "status": resp.status,
                    "msg": if refused { String::from_utf8_lossy(&resp.body).trim().to_string() } else { String::new() },
                    "peer": peer.map(|p| p.to_string()),
                })
            };
            app.admin.emit(ctx, Topic::Wechat, event);
            if refused {
                app.admin.emit(ctx, Topic::Error, event);
            }
        }
    }
    reply
}

fn verify(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    req: &Request,
    name: Option<&str>,
) -> Reply {
    let Some(wx_app) = find_app(app, name) else {
        return refuse(404, "no such WeChat app");
    };
    if wx_app.token.is_empty() {
        return refuse(
            404,
            "message push is not configured for this app (no token)",
        );
    }
    let query = req.query_params();
    let param = |k: &str| {
        query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let (Some(signature), Some(timestamp), Some(nonce)) =
        (param("signature"), param("timestamp"), param("nonce"))
    else {
        return refuse(400, "signature, timestamp and nonce are required");
    };
    if !crypto::verify(&[&wx_app.token, timestamp, nonce], signature) {
        log::warn!("wechat {}: callback with a bad signature", wx_app.name);
        return refuse(403, "bad signature");
    }
    if req.method == "GET" {
        return match param("echostr") {
            Some(echo) => Reply::Now(
                Response::new(200).with_body("text/plain; charset=utf-8", echo.as_bytes().to_vec()),
            ),
            None => refuse(400, "echostr is required"),
        };
    }
    let now = crate::store::now_ms() / 1000;
    match timestamp.parse::<i64>() {
        Ok(t) if (now - t).unsigned_abs() <= app.config.wechat.callback_window_s => {}
        Ok(_) => return refuse(403, "stale timestamp"),
        Err(_) => return refuse(400, "timestamp must be Unix seconds"),
    }
    let encrypted = param("encrypt_type") == Some("aes");
    let (format, fields) = if encrypted {
        if wx_app.aes_key.is_empty() {
            return refuse(400, "safe mode is not configured for this app (no aes_key)");
        }
        let (format, outer) = match message::parse(&req.body) {
            Ok(p) => p,
            Err(why) => return refuse(400, &why),
        };
        let Some(encrypt) = outer.get("Encrypt").filter(|e| !e.is_empty()) else {
            return refuse(400, "safe mode without an Encrypt field");
        };
        let Some(msg_signature) = param("msg_signature") else {
            return refuse(400, "msg_signature is required in safe mode");
        };
        if !crypto::verify(&[&wx_app.token, timestamp, nonce, encrypt], msg_signature) {
            log::warn!(
                "wechat {}: safe-mode push with a bad msg_signature",
                wx_app.name
            );
            return refuse(403, "bad msg_signature");
        }
        let crypt = match MsgCrypt::new(&wx_app.aes_key, &wx_app.appid) {
            Ok(c) => c,
            Err(e) => return refuse(500, &e.to_string()),
        };
        let plain = match crypt.decrypt(encrypt) {
            Ok((plain, _)) => plain,
            Err(e @ CryptoError::WrongAppid) => return refuse(403, &e.to_string()),
            Err(e) => return refuse(400, &format!("cannot decrypt: {e}")),
        };
        match message::parse(plain.as_bytes()) {
            Ok((_, inner)) => (format, inner),
            Err(why) => return refuse(400, &format!("decrypted message: {why}")),
        }
    } else {
        if wx_app.require_encryption {
            return refuse(
                403,
                "this app accepts safe-mode (encrypt_type=aes) pushes only",
            );
        }
        match message::parse(&req.body) {
            Ok(p) => p,
            Err(why) => return refuse(400, &why),
        }
    };
    let replier = Replier {
        format,
        encrypted,
        app: wx_app.clone(),
        user: fields.get("FromUserName").unwrap_or_default().to_string(),
        account: fields.get("ToUserName").unwrap_or_default().to_string(),
    };
    dispatch(
        app,
        ctx,
        conn,
        Push {
            app: wx_app,
            fields,
            replier,
        },
    )
}

fn dispatch(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, push: Push) -> Reply {
    let msg_type = push.fields.get("MsgType").unwrap_or_default().to_string();
    let event = push.fields.get("Event").unwrap_or_default().to_string();
    let kind = push.app.kind.as_str();
    METRICS.wechat_callbacks[0].inc();
    app.admin.emit(ctx, Topic::Wechat, || {
        json!({
            "kind": "push",
            "app": push.app.name,
            "ok": true,
            "msg_type": msg_type,
            "event": event,
            "openid": push.fields.get("FromUserName").unwrap_or_default(),
            "msg_id": push.fields.get("MsgId"),
        })
    });
    log::debug!(
        "wechat {}: push {msg_type} {event} from {}",
        push.app.name,
        push.fields.get("FromUserName").unwrap_or_default()
    );
    if kind == "official" && msg_type == "event" {
        let key = push.fields.get("EventKey").unwrap_or_default();
        let ticket = match event.as_str() {
            "subscribe" => key.strip_prefix("qrscene_"),
            "SCAN" => Some(key),
            _ => None,
        };
        if let Some(ticket) = ticket.filter(|t| !t.is_empty()).map(String::from) {
            return super::qrlogin::on_scan(app, ctx, conn, push, ticket);
        }
    }
    if matches!(kind, "miniprogram" | "minigame") {
        if let Some(reply) = super::service::inbound(app, ctx, conn, &push) {
            return reply;
        }
    }
    Reply::Now(Replier::success())
}
