//! WeChat message push: `GET|POST /wechat/{app}/callback` (and `/wechat/callback` when one app is
//! configured).
//!
//! GET is WeChat's URL verification. POST is a push: `signature` and `timestamp` are checked in
//! every mode, `msg_signature` and the AES envelope in safe mode; the body is XML or JSON in
//! either mode. Verification and decryption are CPU work on the reactor (microseconds); what
//! follows needs the store and runs on workers:
//! - QR-code scans (official accounts) log a browser in ([`crate::login::qr`]) and are answered with
//!   a passive text reply, or `success` if that takes more than [`crate::wechat::push::REPLY_DEADLINE`];
//! - customer-service messages (mini-programs, mini-games) are stored ([`crate::chat::wechat_cs`]) and
//!   answered `success` once committed, or 503 so that WeChat retries: nothing acknowledged to
//!   WeChat is lost, and a retry is stored once (deduplicated by `MsgId`);
//! - anything else is answered `success`.

use crate::config::WechatApp;
use crate::feed::metrics::METRICS;
use crate::feed::Topic;
use crate::http::{Request, Response};
use crate::net::{ConnId, Ctx, Reply};
use crate::rt::{App, Completion};
use crate::wechat::crypto::{self, CryptoError, MsgCrypt};
use crate::wechat::message::{self};
use crate::wechat::push::{Push, Replier};
use serde_json::json;

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
            app.feed.emit(ctx, Topic::Wechat, event);
            if refused {
                app.feed.emit(ctx, Topic::Error, event);
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
    let replier = Replier::new(format, encrypted, wx_app.clone(), &fields);
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
    app.feed.emit(ctx, Topic::Wechat, || {
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
            return crate::login::qr::on_scan(app, ctx, conn, push, ticket);
        }
    }
    if matches!(kind, "miniprogram" | "minigame") {
        if let Some(reply) = crate::chat::wechat_cs::inbound(app, ctx, conn, &push) {
            return reply;
        }
    }
    Reply::Now(Replier::success())
}
