//! Mini-program login and data decryption over HTTP:
//! - `POST /api/wx/login {code, app?}`: `wx.login` code -> `jscode2session` -> the user found or
//!   created by (appid, openid), merged by unionid -> a wxchat token from the same token store as
//!   every login. The session key stays on the server.
//! - `POST /api/wx/decrypt {encryptedData, iv, app?}` (with the token): decrypts with the
//!   session key of the user's latest login to that app.

use crate::auth;
use crate::http::{Request, Response};
use crate::net::{ConnId, Ctx, Reply};
use crate::proto::code;
use crate::rt::reply::{api_error, api_ok, not_logged_in};
use crate::rt::token::request_token;
use crate::rt::{App, Completion};
use crate::store::{StoreError, WechatIdentity};
use crate::wechat::api::WxError;
use crate::wechat::decrypt::{self, DecryptError};
use serde_json::{json, Value};

const MINI: &[&str] = &["miniprogram", "minigame"];

/// A request's fields from a JSON object or a form body: strings as they are, an object (the
/// `userInfo` of a login) as its JSON text, anything else left out.
fn fields(req: &Request) -> Result<Vec<(String, String)>, &'static str> {
    if let Ok(Value::Object(map)) = req.json() {
        return Ok(map
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                Value::Object(_) => Some((k, v.to_string())),
                _ => None,
            })
            .collect());
    }
    req.body_params()
}

/// The name WeChat gives every user who has not chosen to share theirs (`getUserProfile` since
/// 2022): never stored over a real name.
const ANONYMOUS_NICKNAME: &str = "微信用户";

/// A WeChat nickname and avatar as profile fields: each kept when it passes the profile rules
/// (an unusable one is dropped, never failing the login), the anonymous placeholder dropped.
pub fn wechat_profile(
    nickname: Option<&str>,
    avatar: Option<&str>,
) -> (Option<String>, Option<String>) {
    let name = nickname
        .and_then(|n| crate::profile::name(n).ok())
        .filter(|n| !n.is_empty() && n != ANONYMOUS_NICKNAME);
    let head_img = avatar
        .and_then(|a| crate::profile::head_img(a).ok())
        .filter(|a| !a.is_empty());
    (name, head_img)
}

/// The profile a mini-program sent with its login: `userInfo` (what `wx.getUserProfile` /
/// `wx.getUserInfo` return, as an object or its JSON text) or flat `nickName` / `avatarUrl`.
fn sent_profile(fields: &[(String, String)]) -> (Option<String>, Option<String>) {
    let info = field(fields, "userInfo").and_then(|t| serde_json::from_str::<Value>(t).ok());
    let pick = |name: &str| -> Option<String> {
        info.as_ref()
            .and_then(|i| i.get(name))
            .and_then(Value::as_str)
            .or_else(|| field(fields, name))
            .map(String::from)
    };
    wechat_profile(pick("nickName").as_deref(), pick("avatarUrl").as_deref())
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The mini-program app a request names (or the only one).
fn mini_app(app: &App, name: Option<&str>) -> Result<crate::config::WechatApp, Response> {
    app.config
        .wechat
        .app(name, MINI)
        .cloned()
        .ok_or_else(|| match name {
            Some(n) => api_error(code::NOT_FOUND, &format!("no mini-program app named {n:?}")),
            None if app
                .config
                .wechat
                .apps
                .iter()
                .any(|a| MINI.contains(&a.kind.as_str())) =>
            {
                api_error(
                    code::BAD_REQUEST,
                    "several mini-programs are configured: name one with \"app\"",
                )
            }
            None => api_error(code::NOT_FOUND, "no mini-program is configured"),
        })
}

/// WeChat's answer, as our reply: `(http status, message, errcode)`.
pub fn wx_failure(e: &WxError) -> (u16, String, Option<i64>) {
    match e {
        WxError::Api { errcode, errmsg } => {
            let (status, what) = match errcode {
                40029 => (code::BAD_REQUEST, "invalid code: call wx.login again"),
                40163 => (code::BAD_REQUEST, "code already used: call wx.login again"),
                45011 => (
                    code::RATE_LIMITED,
                    "WeChat rate limit: too many logins, retry later",
                ),
                40226 => (
                    code::FORBIDDEN,
                    "WeChat blocked this user (high-risk account)",
                ),
                -1 => (code::UNAVAILABLE, "WeChat is busy, retry"),
                _ => (
                    502,
                    "WeChat refused the request: check the app's appid and secret",
                ),
            };
            (
                status,
                format!("{what} (errcode {errcode}: {errmsg})"),
                Some(*errcode),
            )
        }
        WxError::Unreachable(why) => (502, format!("WeChat API unreachable: {why}"), None),
        WxError::Cache(_) => (code::UNAVAILABLE, e.to_string(), None),
    }
}

pub fn failure(status: u16, msg: &str, errcode: Option<i64>) -> Response {
    let mut body = json!({ "code": status, "msg": msg });
    if let Some(c) = errcode {
        body["errcode"] = json!(c);
    }
    Response::json(status, &body)
}

fn store_failure(e: &StoreError) -> (u16, String, Option<i64>) {
    (crate::proto::store_code(e), e.to_string(), None)
}

pub fn login(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: &Request) -> Reply {
    let fields = match fields(req) {
        Ok(f) => f,
        Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, why)),
    };
    let Some(js_code) = field(&fields, "code").map(String::from) else {
        return Reply::Now(api_error(code::BAD_REQUEST, "missing field: code"));
    };
    if js_code.len() > 256 || js_code.chars().any(char::is_control) {
        return Reply::Now(api_error(code::BAD_REQUEST, "code is not a wx.login code"));
    }
    let wx_app = match mini_app(app, field(&fields, "app")) {
        Ok(a) => a,
        Err(resp) => return Reply::Now(resp),
    };
    let (name, head_img) = sent_profile(&fields);
    let client = app.wx.clone();
    let ttl = app.config.auth.token_ttl_s;
    let work = move |b: &crate::store::Backends| -> Result<_, (u16, String, Option<i64>)> {
        let session = client.code_to_session(&wx_app, &js_code).map_err(|e| {
            let f = wx_failure(&e);
            log::warn!("wx login ({}): {e}", wx_app.name);
            f
        })?;
        let (user, created) = b
            .wechat_login(
                &WechatIdentity {
                    appid: wx_app.appid.clone(),
                    openid: session.openid,
                    unionid: session.unionid.filter(|u| !u.is_empty()),
                    session_key: Some(session.session_key),
                },
                true,
            )
            .map_err(|e| store_failure(&e))?;
        let mut changed_profile = None;
        if name.is_some() || head_img.is_some() {
            let updated = b
                .update_profile(user.uid, name.as_deref(), head_img.as_deref())
                .map_err(|e| store_failure(&e))?;
            if let Some((after, changed)) = updated {
                changed_profile = (changed && !created).then(|| after.clone());
            }
        }
        let token =
            crate::store::tokens::mint(&*b.tokens, user.uid, ttl).map_err(|e| store_failure(&e))?;
        let data = json!({ "uid": user.uid, "token": token, "expires_in": ttl, "is_new": created });
        Ok((data, changed_profile))
    };
    let ok = app.job(ctx, work, move |app, ctx, r| {
        let resp = match r {
            Ok((data, changed_profile)) => {
                if let Some(user) = changed_profile {
                    crate::chat::profile::changed(app, ctx, &user);
                }
                Response::json(
                    200,
                    &json!({ "code": 200, "msg": "login ok", "data": data }),
                )
            }
            Err((status, msg, errcode)) => failure(status, &msg, errcode),
        };
        app.respond_login(ctx, conn, "wx", resp);
    });
    crate::rt::reply::later_or_busy(ok)
}

pub fn decrypt(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: &Request) -> Reply {
    let Some(token) = request_token(req, &app.config.ws.allowed_origins) else {
        return Reply::Now(not_logged_in());
    };
    let fields = match fields(req) {
        Ok(f) => f,
        Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, why)),
    };
    let (Some(data), Some(iv)) = (
        field(&fields, "encryptedData").map(String::from),
        field(&fields, "iv").map(String::from),
    ) else {
        return Reply::Now(api_error(
            code::BAD_REQUEST,
            "encryptedData and iv are required",
        ));
    };
    let wx_app = match mini_app(app, field(&fields, "app")) {
        Ok(a) => a,
        Err(resp) => return Reply::Now(resp),
    };
    let hash = auth::token_hash(&token);
    let work = move |b: &crate::store::Backends| -> Result<Value, Response> {
        let store_err = |e: StoreError| api_error(crate::proto::store_code(&e), &e.to_string());
        let Some(uid) = b.tokens.user(&hash).map_err(store_err)? else {
            return Err(not_logged_in());
        };
        let Some(key) = b
            .wechat_session_key(uid, &wx_app.appid)
            .map_err(store_err)?
        else {
            return Err(api_error(
                code::NOT_FOUND,
                "no WeChat session for this user and app: log in with wx.login first",
            ));
        };
        decrypt::decrypt(&key, &data, &iv, &wx_app.appid).map_err(|e| match e {
            DecryptError::BadInput(_) | DecryptError::Undecryptable | DecryptError::WrongApp => {
                api_error(code::BAD_REQUEST, &e.to_string())
            }
        })
    };
    let ok = app.job(ctx, work, move |_app, ctx, r| {
        ctx.respond(conn, r.map_or_else(|resp| resp, api_ok));
    });
    crate::rt::reply::later_or_busy(ok)
}

/// Server API `wx_check {"app"}`: proves the app's configuration works end to end: takes the
/// access_token (cached, or fetched by one caller) and makes one call with it
/// (`cgi-bin/get_api_domain_ip`), refreshing once on a token error.
pub fn check(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, body: &Value) -> Reply {
    let name = body.get("app").and_then(Value::as_str);
    let Some(wx_app) = app
        .config
        .wechat
        .app(name, &["miniprogram", "minigame", "official"])
        .cloned()
    else {
        return Reply::Now(api_error(
            code::NOT_FOUND,
            "no such WeChat app (name one with \"app\" when several are configured)",
        ));
    };
    let tokens = app.access_tokens.clone();
    let client = app.wx.clone();
    let ok = app.job(
        ctx,
        move |_b| {
            tokens
                .call(&wx_app, |t| client.check_token(&wx_app, t))
                .map(|()| json!({ "app": wx_app.name, "appid": wx_app.appid, "ok": true }))
        },
        move |_app, ctx, r| {
            let resp = match r {
                Ok(v) => api_ok(v),
                Err(e) => {
                    let (status, msg, errcode) = wx_failure(&e);
                    failure(status, &msg, errcode)
                }
            };
            ctx.respond(conn, resp);
        },
    );
    crate::rt::reply::later_or_busy(ok)
}
