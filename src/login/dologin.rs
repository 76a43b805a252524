//! online_chat's signed login, `POST /api/doLogin` (and online_chat's own path): the signature
//! over the ksorted fields, the time window, the replay guard (a used `sign` is refused for
//! twice the window) and the failed-login limiter per client address (protocol-spec 3.1).

use crate::auth;
use crate::http::{Request, Response};
use crate::login::tokens::{issue_token, profile_of, Issued};
use crate::net::{ConnId, Ctx, Reply};
use crate::proto::code;
use crate::proto::Failure;
use crate::rt::reply::api_error;
use crate::rt::token::logged_in;
use crate::rt::{App, Completion};
use crate::store::{self, Backends, Profile};
use serde_json::{json, Value};

/// The online_chat-compatible signed login (protocol-spec 3.1).
pub fn do_login(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    req: &Request,
) -> Reply {
    let params = match req.body_params() {
        Ok(p) => p,
        Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, why)),
    };
    // PHP keeps the last of a repeated form field, this layer the first: a signed field
    // given twice could be read one way and signed the other, so it is refused.
    for field in auth::DOLOGIN_SIGNED_FIELDS.iter().chain(&["sign"]) {
        if params.iter().filter(|(k, _)| k == field).count() > 1 {
            return Reply::Now(api_error(
                code::BAD_REQUEST,
                &format!("field {field} given more than once"),
            ));
        }
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(sign) = get("sign").map(str::to_ascii_lowercase) else {
        return Reply::Now(api_error(code::BAD_REQUEST, "missing field: sign"));
    };
    for field in ["app_uid", "time"] {
        if get(field).is_none_or(str::is_empty) {
            return Reply::Now(api_error(
                code::BAD_REQUEST,
                &format!("missing field: {field}"),
            ));
        }
    }
    let expected = auth::dologin_sign(&params, &app.secrets.sign_key);
    let limiter = login_limiter(app, ctx, conn, req);
    if !auth::constant_time_eq(expected.as_bytes(), sign.as_bytes()) {
        let Some(limiter) = limiter else {
            return Reply::Now(api_error(code::UNAUTHORIZED, "bad sign"));
        };
        // Count the failure (shared across processes with Redis), then answer.
        let submitted = app.job(
            ctx,
            move |b| b.cache.incr_window(&limiter.key, limiter.window),
            move |app, ctx, r| {
                let resp = match r {
                    Ok(n) if n > limiter.max => too_many_failures(),
                    _ => api_error(code::UNAUTHORIZED, "bad sign"),
                };
                app.respond_login(ctx, conn, "dologin", resp);
            },
        );
        return if submitted {
            Reply::Later
        } else {
            Reply::Now(api_error(code::UNAUTHORIZED, "bad sign"))
        };
    }
    let now_s = store::now_ms() / 1000;
    let window = app.config.auth.time_window_s;
    match get("time").and_then(|t| t.parse::<i64>().ok()) {
        Some(t) if (now_s - t).unsigned_abs() <= window => {}
        Some(_) => return Reply::Now(api_error(code::UNAUTHORIZED, "stale time: check the clock")),
        None => return Reply::Now(api_error(code::BAD_REQUEST, "time must be Unix seconds")),
    }
    let user_type = match get("user_type").filter(|s| !s.is_empty()) {
        Some(t) => match crate::profile::user_type(t) {
            Ok(v) => Some(v),
            Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, &why)),
        },
        None => None,
    };
    let app_uid = get("app_uid").unwrap_or_default().to_string();
    if app_uid.len() > 64 {
        return Reply::Now(api_error(code::BAD_REQUEST, "app_uid over 64 bytes"));
    }
    let profile = match profile_of(get("name"), get("head_img"), user_type) {
        Ok(p) => p,
        Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, &why)),
    };
    let visitor_token = get("visitor_token")
        .filter(|t| !t.is_empty())
        .map(String::from);
    if visitor_token
        .as_deref()
        .is_some_and(|t| !auth::token_well_formed(t))
    {
        return Reply::Now(api_error(code::BAD_REQUEST, "malformed visitor_token"));
    }
    let peer = ctx.peer_addr(conn).map(|a| a.ip());
    let login = DoLogin {
        app_uid,
        profile,
        limiter,
        visitor_token,
        // A signature is good for its whole time window either side of `time`: remember it
        // that long (and a second more).
        replay: ReplayGuard {
            key: format!("dologin_sign:{sign}"),
            ttl: std::time::Duration::from_secs(window.saturating_mul(2).saturating_add(1)),
        },
        is_mobile: crate::http::is_mobile(req.header_str("user-agent")),
        secure_cookie: peer.is_some_and(|ip| {
            crate::http::came_over_tls(ip, req, &app.config.http.trusted_proxies)
        }),
    };
    issue_token_for(app, ctx, conn, login);
    Reply::Later
}

/// The failed-login counter of the request's client address, when limiting is on.
fn login_limiter(
    app: &App,
    ctx: &dyn Ctx<Completion>,
    conn: ConnId,
    req: &Request,
) -> Option<LoginLimiter> {
    let max = app.config.auth.login_failures_per_ip;
    if max == 0 {
        return None;
    }
    let ip = crate::http::client_ip(
        ctx.peer_addr(conn)?.ip(),
        req,
        &app.config.http.trusted_proxies,
    );
    Some(LoginLimiter {
        key: format!("login_fail:{ip}"),
        max,
        window: std::time::Duration::from_secs(app.config.auth.login_failure_window_s.max(1)),
    })
}

/// doLogin: refuses a replayed signature, creates or updates the user and answers with a
/// new token (and the token cookie), after converting the visitor whose `visitor_token`
/// came along (the outcome is in `data.visitor`).
fn issue_token_for(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, login: DoLogin) {
    let ttl = app.config.auth.token_ttl_s;
    let DoLogin {
        app_uid,
        profile,
        limiter,
        visitor_token,
        replay,
        is_mobile,
        secure_cookie,
    } = login;
    let work = move |b: &Backends| -> Result<Issued, Failure> {
        let failed = Failure::from;
        if let Some(l) = &limiter {
            let failures = b.cache.peek_window(&l.key).map_err(failed)?;
            if failures >= l.max {
                return Err(Failure(code::RATE_LIMITED, TOO_MANY_FAILURES.into()));
            }
        }
        // First use of this signature wins (SET NX in Redis, so across processes).
        let Some(claim) = b.cache.try_lock(&replay.key, replay.ttl).map_err(failed)? else {
            return Err(Failure(
                code::UNAUTHORIZED,
                "sign already used: sign each login afresh".into(),
            ));
        };
        issue_token(&**b, &*b.tokens, &app_uid, &profile, true, ttl).map_err(|e| {
            // Nothing was issued: the same signed request may be retried.
            let _ = b.cache.unlock(&replay.key, &claim);
            failed(e)
        })
    };
    let then = move |app: &mut App, ctx: &mut dyn Ctx<Completion>, r: Result<Issued, Failure>| {
        let logged_in = move |data: &Value| {
            let token = data["token"].as_str().unwrap_or_default().to_string();
            logged_in(data, &token, ttl, secure_cookie)
        };
        let Issued {
            mut data,
            user,
            profile_changed,
        } = match r {
            Ok(issued) => issued,
            Err(Failure(c, m)) => return app.respond_login(ctx, conn, "dologin", api_error(c, &m)),
        };
        data["is_mobile"] = json!(u8::from(is_mobile));
        if profile_changed {
            crate::chat::profile::changed(app, ctx, &user);
        }
        match visitor_token {
            Some(vt) => {
                let uid = user.uid;
                crate::chat::visitor::convert(app, ctx, &vt, uid, move |app, ctx, r| {
                    data["visitor"] = match r {
                        Ok(v) => v,
                        Err(Failure(c, m)) => json!({ "code": c, "msg": m }),
                    };
                    app.respond_login(ctx, conn, "dologin", logged_in(&data));
                });
            }
            None => app.respond_login(ctx, conn, "dologin", logged_in(&data)),
        }
    };
    if !app.job(ctx, work, then) {
        app.respond_login(
            ctx,
            conn,
            "dologin",
            api_error(code::UNAVAILABLE, "server busy, retry"),
        );
    }
}

/// A doLogin whose signature and fields were checked, on its way to a worker.
struct DoLogin {
    app_uid: String,
    profile: Profile,
    limiter: Option<LoginLimiter>,
    visitor_token: Option<String>,
    replay: ReplayGuard,
    /// online_chat's `data.is_mobile`, from the User-Agent.
    is_mobile: bool,
    /// The login came over TLS (through a trusted proxy): the cookie gets `Secure`.
    secure_cookie: bool,
}

/// A used signature, remembered in the shared cache for as long as it could be accepted.
struct ReplayGuard {
    key: String,
    ttl: std::time::Duration,
}

/// Failed logins counted per client address (`[auth] login_failures_per_ip`).
struct LoginLimiter {
    key: String,
    max: u64,
    window: std::time::Duration,
}

const TOO_MANY_FAILURES: &str = "too many failed logins from this address; retry later";

fn too_many_failures() -> Response {
    api_error(code::RATE_LIMITED, TOO_MANY_FAILURES)
}
