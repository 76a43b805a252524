//! Customer service for WeChat users (mini-programs and mini-games), inbound: their messages
//! come in through the message push and become wxchat messages in their customer-service
//! conversation (`s_<uid>`, `chat_type` 2). Agents' replies go out in `wechat_out`.
//!
//! Inbound messages are stored with `client_msg_id` `wx:<MsgId>` (events: `wxev:<CreateTime>:
//! <Event>`), so WeChat's retries of a push are stored once; the push is answered `success` only
//! after the commit.

use crate::http::Response;
use crate::net::{ConnId, Ctx, Reply};
use crate::proto::{self, chat_type, msg_type};
use crate::rt::{App, Completion};
use crate::store::{self, Backends, NewMessage, StoreResult, WechatIdentity};
use crate::wechat::push::{Push, Replier};
use serde_json::{json, Value};

pub(crate) const MINI: &[&str] = &["miniprogram", "minigame"];

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
                    crate::chat::send::deliver_committed(app, ctx, &a.message);
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
