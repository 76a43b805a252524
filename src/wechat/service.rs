//! Customer service for WeChat users (mini-programs and mini-games): their messages come in
//! through the message push and become wxchat messages in their customer-service conversation
//! (`s_<uid>`, `chat_type` 2); agents' replies go out through `cgi-bin/message/custom/send`.
//!
//! Inbound messages are stored with `client_msg_id` `wx:<MsgId>` (events: `wxev:<CreateTime>:
//! <Event>`), so WeChat's retries of a push are stored once; the push is answered `success` only
//! after the commit. Outbound messages leave in order, one call at a time per customer, and the
//! agent who wrote one gets a `wx_delivery` push with WeChat's verdict (45015: outside the 48-hour
//! reply window, 45047: over the 5-replies quota, ...).

use crate::app::{App, Completion};
use crate::config::WechatApp;
use crate::http::Response;
use crate::net::{ConnId, Ctx, Reply};
use crate::proto::{self, chat_type, msg_type};
use crate::store::{self, Backends, NewMessage, StoreResult, StoredMessage, WechatIdentity};
use crate::wechat::api::WxError;
use crate::wechat::callback::{Push, Replier};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};

const MINI: &[&str] = &["miniprogram", "minigame"];

/// Agents' messages waiting to go to WeChat, per customer (one call in flight each).
#[derive(Default)]
pub struct Outbox {
    queues: HashMap<u64, VecDeque<StoredMessage>>,
}

impl Outbox {
    pub fn pending(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }
}

/// A push turned into a message (type, body as JSON text, dedupe id), or None when it is not a
/// customer-service message.
fn to_message(fields: &crate::wechat::message::Fields) -> Option<(u8, String, String)> {
    let created = fields.get("CreateTime").unwrap_or_default();
    match fields.get("MsgType")? {
        "text" => {
            let content = fields.get("Content").filter(|c| !c.trim().is_empty())?;
            let id = fields.get("MsgId")?;
            Some((
                msg_type::TEXT,
                Value::from(content).to_string(),
                format!("wx:{id}"),
            ))
        }
        "image" => {
            let url = fields.get("PicUrl")?;
            let id = fields.get("MsgId")?;
            let body = json!({ "url": url, "media_id": fields.get("MediaId").unwrap_or_default() });
            Some((msg_type::IMAGE, body.to_string(), format!("wx:{id}")))
        }
        "miniprogrampage" => {
            let id = fields.get("MsgId")?;
            let body = json!({
                "title": fields.get("Title").unwrap_or_default(),
                "pagepath": fields.get("PagePath").unwrap_or_default(),
                "thumb_url": fields.get("ThumbUrl").unwrap_or_default(),
                "thumb_media_id": fields.get("ThumbMediaId").unwrap_or_default(),
                "appid": fields.get("AppId").unwrap_or_default(),
            });
            Some((
                msg_type::MINIPROGRAM_PAGE,
                body.to_string(),
                format!("wx:{id}"),
            ))
        }
        "event" if fields.get("Event") == Some("user_enter_tempsession") => {
            let body = json!({
                "event": "user_enter_tempsession",
                "session_from": fields.get("SessionFrom").unwrap_or_default(),
            });
            Some((
                msg_type::EVENT,
                body.to_string(),
                format!("wxev:{created}:user_enter_tempsession"),
            ))
        }
        _ => None,
    }
}

/// A customer-service push from a mini-program user: stored, delivered to agents, answered
/// after the commit. None when the push is something else.
pub fn inbound(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    push: &Push,
) -> Option<Reply> {
    let (mt, body, client_msg_id) = to_message(&push.fields)?;
    let Some(openid) = push.fields.get("FromUserName").filter(|o| !o.is_empty()) else {
        return Some(Reply::Now(Response::error(400, "missing FromUserName")));
    };
    let created_at = push
        .fields
        .get("CreateTime")
        .and_then(|t| t.parse::<i64>().ok())
        .map_or_else(store::now_ms, |t| t * 1000);
    let id = WechatIdentity {
        appid: push.app.appid.clone(),
        openid: openid.to_string(),
        unionid: None,
        session_key: None,
    };
    let work = move |b: &Backends| -> StoreResult<u64> {
        let (user, _) = b.wechat_login(&id, false)?;
        b.set_cs_route(user.uid, &id.appid, &id.openid)?;
        // Before the message: a restart must find the session it opens.
        b.open_service_session(user.uid)?;
        Ok(user.uid)
    };
    let then = move |app: &mut App, ctx: &mut dyn Ctx<Completion>, r: StoreResult<u64>| {
        let uid = match r {
            Ok(uid) => uid,
            Err(e) => {
                log::warn!("wechat customer service: {e}");
                ctx.respond(conn, Response::error(503, "storage unavailable, retry"));
                return;
            }
        };
        let greetings = crate::chat::service_desk::opened(app, ctx, uid);
        let message = NewMessage {
            conv_id: proto::service_conv(uid),
            chat_type: chat_type::SERVICE,
            from_id: uid,
            to_id: 0,
            msg_type: mt,
            body,
            client_msg_id: Some(client_msg_id),
            created_at,
        };
        let queued = app.persist(message, move |app, ctx, r| match r {
            Ok(a) => {
                ctx.respond(conn, Replier::success());
                if !a.duplicate {
                    crate::chat::deliver_committed(app, ctx, &a.message);
                }
            }
            Err(e) => {
                log::warn!("wechat customer service: {e}");
                ctx.respond(conn, Response::error(503, "storage unavailable, retry"));
            }
        });
        if queued.is_err() {
            ctx.respond(conn, Response::error(503, "server busy, retry"));
        }
        crate::chat::service_desk::system_messages(app, uid, greetings);
    };
    Some(if app.job(ctx, work, then) {
        Reply::Later
    } else {
        Reply::Now(Response::error(503, "server busy, retry"))
    })
}

/// A committed agent message in a customer's service conversation: queue it for WeChat.
pub fn outbound(app: &mut App, ctx: &mut dyn Ctx<Completion>, m: &StoredMessage) {
    if !app
        .config
        .wechat
        .apps
        .iter()
        .any(|a| MINI.contains(&a.kind.as_str()))
    {
        return;
    }
    let customer = m.to_id;
    let queue = app.service_outbox.queues.entry(customer).or_default();
    queue.push_back(m.clone());
    if queue.len() == 1 {
        send_next(app, ctx, customer);
    }
}

/// The configured mini-programs and mini-games (the apps with customer service).
fn mini_apps(app: &App) -> Vec<WechatApp> {
    app.config
        .wechat
        .apps
        .iter()
        .filter(|a| MINI.contains(&a.kind.as_str()))
        .cloned()
        .collect()
}

/// Why a message could not be handed to WeChat.
struct Undelivered {
    errcode: Option<i64>,
    msg: String,
}

fn explain(e: &WxError) -> Undelivered {
    match e {
        WxError::Api { errcode, errmsg } => {
            let what = match errcode {
                45015 => "outside the reply window: the user has not written in the last 48 hours",
                45047 => "over the reply quota: wait for the user to write again",
                40003 => "WeChat does not know this user (bad openid)",
                48001 => "the app is not authorised to send customer-service messages",
                _ => "WeChat refused the message",
            };
            Undelivered {
                errcode: Some(*errcode),
                msg: format!("{what} (errcode {errcode}: {errmsg})"),
            }
        }
        other => Undelivered {
            errcode: None,
            msg: other.to_string(),
        },
    }
}

/// The `custom/send` payload of a stored message (uploading a local image first).
fn payload_for(
    data_dir: &std::path::Path,
    client: &crate::wechat::api::Client,
    wx_app: &WechatApp,
    token: &str,
    openid: &str,
    m: &StoredMessage,
) -> Result<Value, WxError> {
    let body: Value = serde_json::from_str(&m.body).unwrap_or(Value::Null);
    let s = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default();
    let unsupported =
        |what: &str| WxError::Unreachable(format!("{what} cannot be sent to a WeChat user"));
    Ok(match m.msg_type {
        msg_type::TEXT => {
            json!({ "touser": openid, "msgtype": "text", "text": { "content": body.as_str().unwrap_or_default() } })
        }
        msg_type::IMAGE => {
            let url = s("url");
            let Some((hash, ext)) = url
                .strip_prefix("/files/")
                .and_then(crate::upload::parse_file_name)
            else {
                return Err(unsupported("an image that is not an uploaded file"));
            };
            let data = crate::upload::read_file(data_dir, hash, ext)
                .map_err(|e| WxError::Unreachable(format!("cannot read the image: {e}")))?
                .ok_or_else(|| WxError::Unreachable("the image file is gone".into()))?;
            let ct = crate::upload::content_type_of(ext).unwrap_or("application/octet-stream");
            let media_id =
                client.media_upload(wx_app, token, "image", &format!("{hash}.{ext}"), ct, &data)?;
            json!({ "touser": openid, "msgtype": "image", "image": { "media_id": media_id } })
        }
        msg_type::LINK => json!({
            "touser": openid, "msgtype": "link",
            "link": { "title": s("title"), "description": s("description"), "url": s("url"), "thumb_url": s("thumb_url") },
        }),
        msg_type::MINIPROGRAM_PAGE => json!({
            "touser": openid, "msgtype": "miniprogrampage",
            "miniprogrampage": { "title": s("title"), "pagepath": s("pagepath"), "thumb_media_id": s("thumb_media_id") },
        }),
        _ => return Err(unsupported("this message type")),
    })
}

fn send_next(app: &mut App, ctx: &mut dyn Ctx<Completion>, customer: u64) {
    let Some(m) = app
        .service_outbox
        .queues
        .get(&customer)
        .and_then(|q| q.front().cloned())
    else {
        app.service_outbox.queues.remove(&customer);
        return;
    };
    let apps = mini_apps(app);
    let tokens = app.access_tokens.clone();
    let client = app.wx.clone();
    let data_dir = app.config.server.data_dir.clone();
    let msg = m.clone();
    let (msg_id, conv_id, seq, sender) = (m.msg_id, m.conv_id.clone(), m.seq, m.from_id);
    let work = move |b: &Backends| -> Option<Result<(), Undelivered>> {
        let route = match b.cs_route(customer) {
            Ok(r) => r?,
            Err(e) => {
                return Some(Err(Undelivered {
                    errcode: None,
                    msg: e.to_string(),
                }))
            }
        };
        let (appid, openid) = route;
        let wx_app = apps.iter().find(|a| a.appid == appid)?;
        Some(
            tokens
                .call(wx_app, |token| {
                    let payload = payload_for(&data_dir, &client, wx_app, token, &openid, &msg)?;
                    client.custom_send(wx_app, token, &payload)
                })
                .map_err(|e| {
                    log::info!("wechat {}: custom/send: {e}", wx_app.name);
                    explain(&e)
                }),
        )
    };
    let then = move |app: &mut App,
                     ctx: &mut dyn Ctx<Completion>,
                     r: Option<Result<(), Undelivered>>| {
        if let Some(q) = app.service_outbox.queues.get_mut(&customer) {
            q.pop_front();
        }
        if let Some(result) = r {
            let mut data =
                json!({ "msg_id": msg_id, "conv_id": conv_id, "seq": seq, "ok": result.is_ok() });
            if let Err(u) = result {
                data["msg"] = json!(u.msg);
                if let Some(c) = u.errcode {
                    data["errcode"] = json!(c);
                }
            }
            if sender != 0 {
                crate::chat::push_to_users(app, ctx, &[sender], &proto::push("wx_delivery", &data));
            }
        }
        send_next(app, ctx, customer);
    };
    if !app.job(ctx, work, then) {
        // Workers saturated: report and drop this one rather than stall the queue.
        if let Some(q) = app.service_outbox.queues.get_mut(&customer) {
            q.pop_front();
        }
        let data = json!({ "msg_id": m.msg_id, "conv_id": m.conv_id, "seq": m.seq, "ok": false, "msg": "server busy: not sent to WeChat" });
        crate::chat::push_to_users(app, ctx, &[m.from_id], &proto::push("wx_delivery", &data));
    }
}

/// An agent is typing in a WeChat user's service conversation: tell WeChat (best effort).
pub fn typing(app: &mut App, ctx: &mut dyn Ctx<Completion>, customer: u64) {
    let apps = mini_apps(app);
    if apps.is_empty() {
        return;
    }
    let tokens = app.access_tokens.clone();
    let client = app.wx.clone();
    app.job(
        ctx,
        move |b: &Backends| {
            let Ok(Some((appid, openid))) = b.cs_route(customer) else {
                return;
            };
            if let Some(wx_app) = apps.iter().find(|a| a.appid == appid) {
                if let Err(e) =
                    tokens.call(wx_app, |t| client.custom_typing(wx_app, t, &openid, true))
                {
                    log::debug!("wechat {}: custom/typing: {e}", wx_app.name);
                }
            }
        },
        |_, _, ()| {},
    );
}
