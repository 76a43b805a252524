//! Customer service for WeChat users, outbound: agents' replies go out through
//! `cgi-bin/message/custom/send`, in order, one call at a time per customer, and the agent who
//! wrote one gets a `wx_delivery` push with WeChat's verdict (45015: outside the 48-hour reply
//! window, 45047: over the 5-replies quota, ...). Typing is relayed the same way.

use super::push::push_to_users;
use super::wechat_cs::MINI;
use crate::config::WechatApp;
use crate::net::Ctx;
use crate::proto::{self, code, msg_type};
use crate::rt::{App, Completion};
use crate::store::{Backends, StoredMessage};
use crate::wechat::api::WxError;
use serde_json::{json, Value};

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
    let queue = app.chat.wechat_outbox.queues.entry(customer).or_default();
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

/// Why a message could not be handed to WeChat: the `wx_delivery` push's `code` (as in replies:
/// 4xx = the message, 5xx = WeChat or us), WeChat's `errcode` when it answered, and what to do.
struct Undelivered {
    code: u16,
    errcode: Option<i64>,
    msg: String,
}

impl Undelivered {
    fn new(code: u16, msg: impl Into<String>) -> Undelivered {
        Undelivered {
            code,
            errcode: None,
            msg: msg.into(),
        }
    }
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
                code: code::BAD_GATEWAY,
                errcode: Some(*errcode),
                msg: format!("{what} (errcode {errcode}: {errmsg})"),
            }
        }
        WxError::Unreachable(_) => Undelivered::new(code::BAD_GATEWAY, e.to_string()),
        WxError::Cache(_) => Undelivered::new(code::UNAVAILABLE, e.to_string()),
    }
}

/// A message type WeChat's `custom/send` cannot carry, refused before any WeChat call: the agent
/// learns what is wrong with the message and what to send instead, rather than that WeChat
/// failed.
fn not_carried(mt: u8) -> Undelivered {
    let (what, instead) = match mt {
        msg_type::VOICE => ("voice", "send text instead"),
        msg_type::VIDEO => ("short video", "send a link or image instead"),
        msg_type::RICH_TEXT => ("rich text", "send plain text instead"),
        msg_type::FILE => ("files", "send a link instead"),
        _ => ("this message type", "send text, an image or a link instead"),
    };
    Undelivered::new(
        code::UNSUPPORTED_TYPE,
        format!("WeChat customer service cannot carry {what} (msg_type {mt}); {instead}"),
    )
}

/// What goes to WeChat for one stored message, worked out before any WeChat call.
enum Outgoing {
    /// A `custom/send` payload as it stands.
    Ready(Value),
    /// An uploaded image: `media/upload` first, then `custom/send` with its media_id.
    Image {
        name: String,
        content_type: &'static str,
        data: Vec<u8>,
    },
}

/// Checks a stored message against what WeChat customer service carries and gathers what the
/// call needs (an image's bytes). Every refusal here is about the message, not WeChat.
fn prepare(
    files: &dyn crate::upload::FileStore,
    openid: &str,
    m: &StoredMessage,
) -> Result<Outgoing, Undelivered> {
    let body: Value = serde_json::from_str(&m.body).unwrap_or(Value::Null);
    let s = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default();
    Ok(match m.msg_type {
        msg_type::TEXT => Outgoing::Ready(
            json!({ "touser": openid, "msgtype": "text", "text": { "content": body.as_str().unwrap_or_default() } }),
        ),
        msg_type::IMAGE => {
            let url = s("url");
            let Some((hash, ext)) = url
                .strip_prefix("/files/")
                .and_then(crate::upload::parse_file_name)
            else {
                return Err(Undelivered::new(
                    code::BAD_REQUEST,
                    "WeChat customer service takes only images uploaded here (POST /api/upload); upload it first",
                ));
            };
            let data = files
                .get(hash, ext)
                .map_err(|e| {
                    Undelivered::new(code::INTERNAL, format!("cannot read the image: {e}"))
                })?
                .ok_or_else(|| Undelivered::new(code::NOT_FOUND, "the image file is gone"))?;
            Outgoing::Image {
                name: format!("{hash}.{ext}"),
                content_type: crate::upload::content_type_of(ext)
                    .unwrap_or("application/octet-stream"),
                data,
            }
        }
        msg_type::LINK => Outgoing::Ready(json!({
            "touser": openid, "msgtype": "link",
            "link": { "title": s("title"), "description": s("description"), "url": s("url"), "thumb_url": s("thumb_url") },
        })),
        msg_type::MINIPROGRAM_PAGE => Outgoing::Ready(json!({
            "touser": openid, "msgtype": "miniprogrampage",
            "miniprogrampage": { "title": s("title"), "pagepath": s("pagepath"), "thumb_media_id": s("thumb_media_id") },
        })),
        other => return Err(not_carried(other)),
    })
}

/// The WeChat calls for a prepared message (inside `AccessTokens::call`, so a stale token is
/// refreshed and the whole send retried).
fn deliver(
    client: &crate::wechat::api::Client,
    wx_app: &WechatApp,
    token: &str,
    openid: &str,
    out: &Outgoing,
) -> Result<(), WxError> {
    let payload = match out {
        Outgoing::Ready(p) => std::borrow::Cow::Borrowed(p),
        Outgoing::Image {
            name,
            content_type,
            data,
        } => {
            let media_id = client.media_upload(wx_app, token, "image", name, content_type, data)?;
            std::borrow::Cow::Owned(
                json!({ "touser": openid, "msgtype": "image", "image": { "media_id": media_id } }),
            )
        }
    };
    client.custom_send(wx_app, token, &payload)
}

fn send_next(app: &mut App, ctx: &mut dyn Ctx<Completion>, customer: u64) {
    let Some(m) = app
        .chat
        .wechat_outbox
        .queues
        .get(&customer)
        .and_then(|q| q.front().cloned())
    else {
        app.chat.wechat_outbox.queues.remove(&customer);
        return;
    };
    let apps = mini_apps(app);
    let tokens = app.access_tokens.clone();
    let client = app.wx.clone();
    let files = app.files.clone();
    let msg = m.clone();
    let (msg_id, conv_id, seq, sender) = (m.msg_id, m.conv_id.clone(), m.seq, m.from_id);
    let work = move |b: &Backends| -> Option<Result<(), Undelivered>> {
        let route = match b.cs_route(customer) {
            Ok(r) => r?,
            Err(e) => return Some(Err(Undelivered::new(code::UNAVAILABLE, e.to_string()))),
        };
        let (appid, openid) = route;
        let wx_app = apps.iter().find(|a| a.appid == appid)?;
        let out = match prepare(&*files, &openid, &msg) {
            Ok(out) => out,
            Err(u) => return Some(Err(u)),
        };
        Some(
            tokens
                .call(wx_app, |token| {
                    deliver(&client, wx_app, token, &openid, &out)
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
        if let Some(q) = app.chat.wechat_outbox.queues.get_mut(&customer) {
            q.pop_front();
        }
        if let Some(result) = r {
            let mut data =
                json!({ "msg_id": msg_id, "conv_id": conv_id, "seq": seq, "ok": result.is_ok() });
            if let Err(u) = result {
                data["code"] = json!(u.code);
                data["msg"] = json!(u.msg);
                if let Some(c) = u.errcode {
                    data["errcode"] = json!(c);
                }
            }
            if sender != 0 {
                push_to_users(app, ctx, &[sender], &proto::push("wx_delivery", &data));
            }
        }
        send_next(app, ctx, customer);
    };
    if !app.job(ctx, work, then) {
        // Workers saturated: report and drop this one rather than stall the queue.
        if let Some(q) = app.chat.wechat_outbox.queues.get_mut(&customer) {
            q.pop_front();
        }
        let data = json!({ "msg_id": m.msg_id, "conv_id": m.conv_id, "seq": m.seq, "ok": false, "code": code::UNAVAILABLE, "msg": "server busy: not sent to WeChat" });
        push_to_users(app, ctx, &[m.from_id], &proto::push("wx_delivery", &data));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::chat_type;

    fn stored(mt: u8, body: Value) -> StoredMessage {
        StoredMessage {
            msg_id: 1,
            conv_id: "s_7".into(),
            seq: 1,
            chat_type: chat_type::SERVICE,
            from_id: 3,
            to_id: 7,
            msg_type: mt,
            body: body.to_string(),
            created_at: 0,
        }
    }

    fn refusal(mt: u8, body: Value) -> (u16, String) {
        let dir = tempfile::tempdir().unwrap();
        let files = crate::upload::local::LocalStore::new(dir.path());
        match prepare(&files, "o-7", &stored(mt, body)) {
            Ok(_) => panic!("msg_type {mt} was prepared for WeChat"),
            Err(u) => (u.code, u.msg),
        }
    }

    #[test]
    fn types_wechat_cannot_carry_say_so_and_what_to_send_instead() {
        assert_eq!(
            refusal(msg_type::VIDEO, json!({"url": "/files/v.mp4"})),
            (
                code::UNSUPPORTED_TYPE,
                "WeChat customer service cannot carry short video (msg_type 3); send a link or image instead".into()
            )
        );
        for (mt, what) in [
            (msg_type::VOICE, "voice (msg_type 2)"),
            (msg_type::RICH_TEXT, "rich text (msg_type 4)"),
            (msg_type::FILE, "files (msg_type 5)"),
            (msg_type::RECALL, "this message type (msg_type 100)"),
        ] {
            let (c, msg) = refusal(mt, json!({}));
            assert_eq!(c, code::UNSUPPORTED_TYPE);
            assert!(msg.contains(what) && msg.contains("instead"), "{msg}");
        }
        let (c, msg) = refusal(msg_type::IMAGE, json!({"url": "https://x.example/a.png"}));
        assert_eq!(c, code::BAD_REQUEST, "{msg}");
        let (c, _) = refusal(
            msg_type::IMAGE,
            json!({"url": format!("/files/{}.png", "a".repeat(64))}),
        );
        assert_eq!(c, code::NOT_FOUND);
    }

    #[test]
    fn carried_types_become_custom_send_payloads() {
        let dir = tempfile::tempdir().unwrap();
        let files = crate::upload::local::LocalStore::new(dir.path());
        let Ok(Outgoing::Ready(p)) = prepare(&files, "o-7", &stored(msg_type::TEXT, json!("hi")))
        else {
            panic!("text is carried");
        };
        assert_eq!(
            p,
            json!({"touser":"o-7","msgtype":"text","text":{"content":"hi"}})
        );
        let name = crate::upload::FileStore::put(&files, b"png bytes", "png").unwrap();
        let image = stored(msg_type::IMAGE, json!({ "url": format!("/files/{name}") }));
        let Ok(Outgoing::Image {
            content_type, data, ..
        }) = prepare(&files, "o-7", &image)
        else {
            panic!("an uploaded image is carried");
        };
        assert_eq!(
            (content_type, data.as_slice()),
            ("image/png", &b"png bytes"[..])
        );
        let link = stored(
            msg_type::LINK,
            json!({"title": "t", "url": "https://x.example"}),
        );
        let Ok(Outgoing::Ready(p)) = prepare(&files, "o-7", &link) else {
            panic!("a link is carried");
        };
        assert_eq!(p["link"]["url"], "https://x.example");
    }
}
