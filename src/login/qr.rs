//! Official-account QR-code scan login.
//!
//! 1. A browser opens `GET /ws/qrlogin?app=NAME` (WebSocket). We draw a random single-use ticket,
//!    record it in the shared cache (`qr:<ticket>` -> this node, for `[wechat] qr_expire_s`), ask
//!    WeChat for a temporary `QR_STR_SCENE` code with the ticket as `scene_str`, and push
//!    `{"message_type":"qrcode_url","url":..,"expire_seconds":..}`.
//! 2. The user scans it: WeChat pushes `subscribe` (`EventKey` `qrscene_<ticket>`) or `SCAN`
//!    (`EventKey` `<ticket>`) to our callback, possibly on another process. A worker claims the
//!    ticket once (`qrused:<ticket>`), finds or creates the user by openid (merged by unionid from
//!    `cgi-bin/user/info` when the account may call it), issues a token, and the reactor pushes
//!    `scan_success` to the browser: directly when it is connected here, else over the bus.
//!    The callback is answered with a passive text reply.
//! 3. A ticket not scanned in time: `qrcode_expired`, and the WebSocket closes. A reused ticket
//!    (a second scan, or WeChat's retry of the callback) does nothing.

use crate::cluster::bus::Target;
use crate::config::WechatApp;
use crate::http::Request;
use crate::net::{ConnId, Ctx, Reply};
use crate::rt::{App, Completion};
use crate::store::{Backends, StoreResult, User, WechatIdentity};
use crate::wechat::api::{QrCode, UserInfo};
use crate::wechat::push::{Push, Replier, REPLY_DEADLINE};
use serde_json::json;
use std::time::Duration;

/// WeChat's page that renders a ticket as a QR image.
const SHOW_QRCODE: &str = "https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket=";
/// A scan event is handled once even when WeChat retries it within this time.
const EVENT_DEDUPE: Duration = Duration::from_secs(120);

/// The WebSocket close code sent when the QR code could not be created (try again later).
const CLOSE_TRY_AGAIN: u16 = 1013;

/// The official account a `/ws/qrlogin` request names (`?app=`), or the only one.
pub fn app_for(app: &App, req: &Request) -> Option<WechatApp> {
    let name = req.query_param("app");
    app.config
        .wechat
        .app(name.as_deref().filter(|n| !n.is_empty()), &["official"])
        .cloned()
}

fn random_ticket() -> Option<String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn fail_and_close(ctx: &mut dyn Ctx<Completion>, conn: ConnId, msg: &str, errcode: Option<i64>) {
    let mut v = json!({ "message_type": "error", "msg": msg });
    if let Some(c) = errcode {
        v["errcode"] = json!(c);
    }
    ctx.send_text(conn, &v.to_string());
    ctx.close(conn, CLOSE_TRY_AGAIN, "qrcode unavailable");
}

pub fn on_open(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: &Request) {
    let Some(wx_app) = app_for(app, req) else {
        ctx.close(conn, 1008, "no such official account");
        return;
    };
    let Some(ticket) = random_ticket() else {
        fail_and_close(ctx, conn, "cannot draw a ticket", None);
        return;
    };
    app.qr.open(&ticket, conn);
    let expire = app.config.wechat.qr_expire_s;
    let node = app.node_id.clone();
    let tokens = app.access_tokens.clone();
    let client = app.wx.clone();
    let t = ticket.clone();
    let ticket_if_busy = ticket.clone();
    let work = move |b: &Backends| -> Result<QrCode, (String, Option<i64>)> {
        b.cache
            .set(&format!("qr:{t}"), &node, Duration::from_secs(expire))
            .map_err(|e| (e.to_string(), None))?;
        tokens
            .call(&wx_app, |token| {
                client.qrcode_create(&wx_app, token, &t, expire)
            })
            .map_err(|e| {
                log::warn!("wechat {}: qrcode/create: {e}", wx_app.name);
                let (_, msg, errcode) = crate::login::wechat::wx_failure(&e);
                (msg, errcode)
            })
    };
    let then = move |app: &mut App,
                     ctx: &mut dyn Ctx<Completion>,
                     r: Result<QrCode, (String, Option<i64>)>| {
        if !app.qr.is_waiting(&ticket, conn) {
            return; // the browser left meanwhile
        }
        match r {
            Ok(qr) => {
                let seconds = if qr.expire_seconds > 0 {
                    qr.expire_seconds.min(expire)
                } else {
                    expire
                };
                let push = json!({
                    "message_type": "qrcode_url",
                    "url": format!("{SHOW_QRCODE}{}", url_encode(&qr.ticket)),
                    "expire_seconds": seconds,
                });
                ctx.send_text(conn, &push.to_string());
                let t2 = ticket.clone();
                let timer = app.after(ctx, Duration::from_secs(seconds), move |app, ctx| {
                    expired(app, ctx, &t2)
                });
                app.qr.set_expiry(&ticket, timer);
            }
            Err((msg, errcode)) => {
                app.qr.take(&ticket);
                fail_and_close(ctx, conn, &msg, errcode);
            }
        }
    };
    if !app.job(ctx, work, then) {
        app.qr.take(&ticket_if_busy);
        fail_and_close(ctx, conn, "server busy, retry", None);
    }
}

fn expired(app: &mut App, ctx: &mut dyn Ctx<Completion>, ticket: &str) {
    if let Some(w) = app.qr.take(ticket) {
        ctx.send_text(w.conn, r#"{"message_type":"qrcode_expired"}"#);
        ctx.close(w.conn, 1000, "qrcode expired");
    }
}

/// The browser closed its WebSocket: its ticket can no longer log anyone in.
pub fn on_close(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId) {
    let Some((ticket, w)) = app.qr.leave(conn) else {
        return;
    };
    if let Some(t) = w.expiry {
        app.cancel(ctx, t);
    }
    let key = format!("qr:{ticket}");
    // Best effort: the entry expires by itself anyway.
    app.job(ctx, move |b| b.cache.delete(&key), |_, _, _| {});
}

/// Delivers a `scan_success` push to the browser holding `ticket` here, if any.
pub fn deliver(app: &mut App, ctx: &mut dyn Ctx<Completion>, ticket: &str, payload: &str) -> bool {
    let Some(w) = app.qr.take(ticket) else {
        return false;
    };
    if let Some(t) = w.expiry {
        app.cancel(ctx, t);
    }
    ctx.send_text(w.conn, payload);
    ctx.close(w.conn, 1000, "logged in");
    true
}

/// What a claimed scan produced.
struct Scanned {
    user: User,
    token: String,
    created: bool,
    /// The nickname or avatar from `user/info` changed the user's profile.
    profile_changed: bool,
    /// The node holding the browser (`qr:<ticket>`, deleted once claimed): where the bus takes
    /// `scan_success`.
    node: String,
}

/// Claims the ticket and logs the user in (worker side). None: unknown, expired or used ticket,
/// or a retry of an event already handled.
#[allow(clippy::too_many_arguments)]
fn claim_and_login(
    b: &Backends,
    tokens: &crate::wechat::access_token::AccessTokens,
    client: &crate::wechat::api::Client,
    wx_app: &WechatApp,
    openid: &str,
    ticket: &str,
    event_key: &str,
    ttl: u64,
) -> StoreResult<Option<Scanned>> {
    let Some(event_lock) = b.cache.try_lock(event_key, EVENT_DEDUPE)? else {
        return Ok(None);
    };
    let Some(node) = b.cache.get(&format!("qr:{ticket}"))? else {
        return Ok(None);
    };
    let used_key = format!("qrused:{ticket}");
    let Some(used) = b
        .cache
        .try_lock(&used_key, Duration::from_secs(24 * 3600))?
    else {
        return Ok(None);
    };
    let result = (|| {
        // The unionid (and, for old accounts, a profile) when the account may call user/info.
        let info = tokens
            .call(wx_app, |t| client.user_info(wx_app, t, openid))
            .unwrap_or_else(|e| {
                log::info!("wechat {}: user/info unavailable: {e}", wx_app.name);
                UserInfo::default()
            });
        let (mut user, created) = b.wechat_login(
            &WechatIdentity {
                appid: wx_app.appid.clone(),
                openid: openid.to_string(),
                unionid: info.unionid.filter(|u| !u.is_empty()),
                session_key: None,
            },
            true,
        )?;
        // WeChat stopped returning nicknames in 2021; accounts that still get one use it.
        let (name, head_img) = crate::login::wechat::wechat_profile(
            info.nickname.as_deref(),
            info.headimgurl.as_deref(),
        );
        let mut profile_changed = false;
        if name.is_some() || head_img.is_some() {
            if let Some((after, changed)) =
                b.update_profile(user.uid, name.as_deref(), head_img.as_deref())?
            {
                user = after;
                profile_changed = changed && !created;
            }
        }
        let token = crate::store::tokens::mint(&*b.tokens, user.uid, ttl)?;
        Ok(Scanned {
            user,
            token,
            created,
            profile_changed,
            node,
        })
    })();
    match result {
        Ok(s) => {
            let _ = b.cache.delete(&format!("qr:{ticket}"));
            Ok(Some(s))
        }
        Err(e) => {
            // Not logged in: let WeChat's retry (or another scan) try again.
            let _ = b.cache.unlock(&used_key, &used);
            let _ = b.cache.unlock(event_key, &event_lock);
            Err(e)
        }
    }
}

/// A `subscribe`/`SCAN` push carrying a login ticket.
pub fn on_scan(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    push: Push,
    ticket: String,
) -> Reply {
    let Some(openid) = push.fields.get("FromUserName").map(String::from) else {
        return Reply::Now(Replier::success());
    };
    // WeChat's retry of an event repeats FromUserName + CreateTime (and the event itself).
    let event_key = format!(
        "wxev:{}:{openid}:{}:{}:{ticket}",
        push.app.appid,
        push.fields.get("CreateTime").unwrap_or_default(),
        push.fields.get("Event").unwrap_or_default(),
    );
    let ttl = app.config.auth.token_ttl_s;
    let tokens = app.access_tokens.clone();
    let client = app.wx.clone();
    let wx_app = push.app.clone();
    let replier_app = push.app.name.clone();
    let replier = push.replier;
    // Parked before the job is submitted, so its answer always finds the callback.
    let answer_id = app.qr.park_answer(conn);
    let t = ticket.clone();
    let work = move |b: &Backends| {
        claim_and_login(b, &tokens, &client, &wx_app, &openid, &t, &event_key, ttl)
    };
    let then = move |app: &mut App,
                     ctx: &mut dyn Ctx<Completion>,
                     r: StoreResult<Option<Scanned>>| {
        match &r {
            Ok(Some(s)) => app.feed.login(
                ctx,
                "qr",
                true,
                json!({ "uid": s.user.uid, "app": replier_app, "ticket": ticket, "is_new": s.created }),
            ),
            Ok(None) => {}
            Err(e) => app.feed.login(
                ctx,
                "qr",
                false,
                json!({ "app": replier_app, "ticket": ticket, "msg": e.to_string() }),
            ),
        }
        match r {
            Ok(Some(s)) => {
                if s.profile_changed {
                    crate::chat::profile::changed(app, ctx, &s.user);
                }
                let payload = json!({
                    "message_type": "scan_success",
                    "user": s.user,
                    "token": s.token,
                    "expires_in": ttl,
                    "is_new": s.created,
                })
                .to_string();
                if !deliver(app, ctx, &ticket, &payload) {
                    if let Some(bus) = &app.bus {
                        bus.publish_to_node(Target::Qr(ticket.clone()), &payload, &s.node);
                    }
                }
                let nickname = if s.user.name.is_empty() {
                    "微信用户"
                } else {
                    s.user.name.as_str()
                };
                let text = format!("{nickname}，登录成功！这是你第{}次登录", s.user.login_count);
                answer(app, ctx, answer_id, replier.text(&text));
            }
            Ok(None) => answer(app, ctx, answer_id, Replier::success()),
            Err(e) => {
                log::warn!("wechat: scan login failed: {e}");
                answer(
                    app,
                    ctx,
                    answer_id,
                    crate::http::Response::error(503, "storage unavailable, retry"),
                );
            }
        }
    };
    if !app.job(ctx, work, then) {
        app.qr.take_answer(answer_id);
        return Reply::Now(crate::http::Response::error(503, "server busy, retry"));
    }
    app.after(ctx, REPLY_DEADLINE, move |app, ctx| {
        answer(app, ctx, answer_id, Replier::success())
    });
    Reply::Later
}

/// Answers a waiting callback once (the result or the deadline, whichever comes first).
fn answer(app: &mut App, ctx: &mut dyn Ctx<Completion>, id: u64, resp: crate::http::Response) {
    if let Some(conn) = app.qr.take_answer(id) {
        ctx.respond(conn, resp);
    }
}
