//! The client listener's HTTP API besides logins: uploads and the files they serve, and the
//! caller's own profile and logout (`/api/upload`, `/files/{name}`, `/api/me`, `/api/logout`).

use crate::auth;
use crate::http::{Request, Response};
use crate::login::tokens::profile_of;
use crate::net::{ConnId, Ctx, Reply};
use crate::proto::code;
use crate::proto::Failure;
use crate::rt::reply::{api_error, api_ok, later_or_busy, not_logged_in};
use crate::rt::token::{cleared_token_cookie, cookie_token, request_token};
use crate::rt::{App, Completion};
use crate::store::{Backends, StoreResult};
use serde_json::{json, Value};

/// `POST /api/upload`: token from `Authorization: Bearer`, `?token=` or a `token` form field;
/// the file is a multipart part (the first with a file name, or the field `file`) or the raw
/// body. Stored by content hash on a worker.
pub fn upload(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: Request) -> Reply {
    if req.body.len() > app.config.upload.max_bytes {
        return Reply::Now(api_error(
            413,
            &format!("upload over {} bytes", app.config.upload.max_bytes),
        ));
    }
    let mut token = req
        .bearer()
        .map(String::from)
        .or_else(|| req.query_param("token"));
    let cookie = cookie_token(&req, &app.config.ws.allowed_origins);
    let content_type = req.header_str("content-type").unwrap_or("").to_string();
    let (data, ext, mime): (Vec<u8>, &'static str, String) =
        match crate::upload::boundary(&content_type) {
            Some(b) => {
                let parts = match crate::upload::parse_multipart(&req.body, &b) {
                    Ok(p) => p,
                    Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, why)),
                };
                if token.is_none() {
                    token = parts
                        .iter()
                        .find(|p| p.field == "token" && p.filename.is_none())
                        .and_then(|p| std::str::from_utf8(p.data).ok())
                        .map(|t| t.trim().to_string());
                }
                let Some(file) = parts
                    .iter()
                    .find(|p| p.filename.is_some())
                    .or_else(|| parts.iter().find(|p| p.field == "file"))
                else {
                    return Reply::Now(api_error(code::BAD_REQUEST, "no file part in the upload"));
                };
                let ext = crate::upload::extension_for(
                    file.content_type.as_deref(),
                    file.filename.as_deref(),
                );
                (
                    file.data.to_vec(),
                    ext,
                    served_type(ext, file.content_type.as_deref()),
                )
            }
            None => {
                let ext = crate::upload::extension_for(
                    Some(&content_type),
                    req.query_param("name").as_deref(),
                );
                let mime = served_type(ext, Some(&content_type));
                (req.body, ext, mime)
            }
        };
    if data.is_empty() {
        return Reply::Now(api_error(code::BAD_REQUEST, "the file is empty"));
    }
    // Last, the doLogin cookie of a page of this site (cookie_token's Origin rule).
    let token = token.filter(|t| auth::token_well_formed(t)).or(cookie);
    let Some(token) = token else {
        return Reply::Now(api_error(code::UNAUTHORIZED, "a valid token is required"));
    };
    let files = app.files.clone();
    let work = move |b: &Backends| -> Result<Value, Failure> {
        match b.tokens.user(&auth::token_hash(&token)) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(Failure(code::UNAUTHORIZED, "bad or expired token".into())),
            Err(e) => return Err(Failure(crate::proto::store_code(&e), e.to_string())),
        }
        let size = data.len();
        let name = files
            .put(&data, ext)
            .map_err(|e| Failure(code::INTERNAL, format!("cannot store the file: {e}")))?;
        Ok(json!({ "url": format!("/files/{name}"), "size": size, "mime": mime }))
    };
    let then = move |_app: &mut App, ctx: &mut dyn Ctx<Completion>, r: Result<Value, Failure>| {
        ctx.respond(
            conn,
            match r {
                Ok(v) => api_ok(v),
                Err(Failure(c, m)) => api_error(c, &m),
            },
        );
    };
    later_or_busy(app.job(ctx, work, then))
}

/// `GET /files/<sha256>.<ext>`: read on a worker, served with the type of its extension.
pub fn serve_file(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, name: &str) -> Reply {
    let Some((hash, ext)) = crate::upload::parse_file_name(name) else {
        return Reply::Now(Response::error(404, "no such file"));
    };
    let hash = hash.to_string();
    let files = app.files.clone();
    let ok = app.job(
        ctx,
        move |_s| files.serve(&hash, ext),
        move |_app, ctx, r| {
            let resp = match r {
                Ok(Some(crate::upload::Served::Redirect(url))) => Response::new(302)
                    .with_header("Location", &url)
                    .with_header("Cache-Control", "no-store"),
                Ok(Some(crate::upload::Served::Bytes(data))) => {
                    let ct =
                        crate::upload::content_type_of(ext).unwrap_or("application/octet-stream");
                    let mut resp = Response::new(200)
                        .with_body(ct, data)
                        .with_header("X-Content-Type-Options", "nosniff")
                        .with_header("Cache-Control", "public, max-age=31536000, immutable");
                    if ext == "bin" {
                        resp = resp.with_header("Content-Disposition", "attachment");
                    }
                    resp
                }
                Ok(None) => Response::error(404, "no such file"),
                Err(e) => Response::error(500, &format!("cannot read the file: {e}")),
            };
            ctx.respond(conn, resp);
        },
    );
    later_or_busy(ok)
}

/// The `mime` an upload reply reports: the type the file will be served with (a `curl -F
/// file=@v.amr` part declares `application/octet-stream` but is stored and served as `audio/amr`);
/// the declared type only for `.bin`, which is served as an attachment.
fn served_type(ext: &str, declared: Option<&str>) -> String {
    crate::upload::content_type_of(ext)
        .map(String::from)
        .unwrap_or_else(|| declared.unwrap_or_default().to_string())
}

/// `GET /api/me`: the user a token belongs to.
pub fn me(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: &Request) -> Reply {
    let Some(token) = request_token(req, &app.config.ws.allowed_origins) else {
        return Reply::Now(not_logged_in());
    };
    let hash = auth::token_hash(&token);
    let ok = app.job(
        ctx,
        move |b| match b.tokens.user(&hash)? {
            Some(uid) => b.user(uid),
            None => Ok(None),
        },
        move |_app, ctx, r| {
            let resp = match r {
                Ok(Some(user)) => api_ok(json!(user)),
                Ok(None) => not_logged_in(),
                Err(e) => api_error(crate::proto::store_code(&e), &e.to_string()),
            };
            ctx.respond(conn, resp);
        },
    );
    later_or_busy(ok)
}

/// `POST /api/me`: the caller sets their own `name` and/or `head_img` (JSON or form); the
/// reply is the user afterwards, and a change is pushed to their contacts (`profile`).
pub fn update_me(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    req: &Request,
) -> Reply {
    let Some(token) = request_token(req, &app.config.ws.allowed_origins) else {
        return Reply::Now(not_logged_in());
    };
    let fields = match req.body_params() {
        Ok(f) => f,
        Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, why)),
    };
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if get("name").is_none() && get("head_img").is_none() {
        return Reply::Now(api_error(
            code::BAD_REQUEST,
            "nothing to change: send name and/or head_img",
        ));
    }
    let profile = match profile_of(get("name"), get("head_img"), None) {
        Ok(p) => p,
        Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, &why)),
    };
    let hash = auth::token_hash(&token);
    let ok = app.job(
        ctx,
        move |b| match b.tokens.user(&hash)? {
            Some(uid) => {
                b.update_profile(uid, profile.name.as_deref(), profile.head_img.as_deref())
            }
            None => Ok(None),
        },
        move |app, ctx, r| {
            let resp = match r {
                Ok(Some((user, changed))) => {
                    if changed {
                        crate::chat::profile::changed(app, ctx, &user);
                    }
                    api_ok(json!(user))
                }
                Ok(None) => not_logged_in(),
                Err(e) => api_error(crate::proto::store_code(&e), &e.to_string()),
            };
            ctx.respond(conn, resp);
        },
    );
    later_or_busy(ok)
}

/// `POST /api/logout`: revokes the token, closes the WebSockets it opened (4003, on every
/// process) and clears the token cookie.
pub fn logout(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: &Request) -> Reply {
    let Some(token) = request_token(req, &app.config.ws.allowed_origins) else {
        return Reply::Now(not_logged_in());
    };
    let hash = auth::token_hash(&token);
    let ok = app.job(
        ctx,
        move |b| -> StoreResult<Option<u64>> {
            let uid = b.tokens.user(&hash)?;
            b.tokens.revoke(&hash)?;
            Ok(uid)
        },
        move |app, ctx, r| {
            let resp = match r {
                Ok(uid) => {
                    if let Some(uid) = uid {
                        crate::chat::token_revoked(app, ctx, uid, hash);
                    }
                    api_ok(json!({})).with_header("Set-Cookie", &cleared_token_cookie())
                }
                Err(e) => api_error(crate::proto::store_code(&e), &e.to_string()),
            };
            ctx.respond(conn, resp);
        },
    );
    later_or_busy(ok)
}
