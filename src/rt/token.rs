//! The token of a request, and the doLogin cookie that can carry it (protocol-spec 3.1).

use crate::auth;
use crate::http::{Request, Response};
use serde_json::{json, Value};

/// The cookie a browser that logged in through doLogin keeps its token in, so that a page on
/// the same site opens the chat WebSocket with no token handling (protocol-spec 3.1).
pub const TOKEN_COOKIE: &str = "wxchat_token";

/// `Set-Cookie` for a token: script cannot read it (HttpOnly), other sites' pages do not send
/// it with their requests (SameSite=Lax), and it travels over TLS only when the login did.
pub fn token_cookie(token: &str, ttl_s: u64, secure: bool) -> String {
    format!(
        "{TOKEN_COOKIE}={token}; Path=/; Max-Age={ttl_s}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A login's reply: `{"code":200,"msg":"login ok","data":..}` with the token cookie.
pub fn logged_in(data: &Value, token: &str, ttl_s: u64, secure: bool) -> Response {
    Response::json(
        200,
        &json!({ "code": 200, "msg": "login ok", "data": data }),
    )
    .with_header("Set-Cookie", &token_cookie(token, ttl_s, secure))
}

/// The `Set-Cookie` that removes the token cookie (logout).
pub fn cleared_token_cookie() -> String {
    format!("{TOKEN_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")
}

/// The token of a request: `Authorization: Bearer`, else a `token` query or form parameter,
/// else the doLogin cookie (see [`cookie_token`]).
pub fn request_token(req: &Request, allowed_origins: &[String]) -> Option<String> {
    req.bearer()
        .map(String::from)
        .or_else(|| req.query_param("token"))
        .or_else(|| {
            req.body_params()
                .ok()?
                .into_iter()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v)
        })
        .filter(|t| auth::token_well_formed(t))
        .or_else(|| cookie_token(req, allowed_origins))
}

/// The token in the doLogin cookie, when the request may use it. A browser attaches cookies
/// to requests that other sites' pages make too (cross-site WebSocket hijacking, CSRF), so the
/// cookie counts only when the request carries no `Origin` (not a page: curl, an app), or the
/// `Origin` is this site (its host is the `Host` the request was sent to), or `[ws]
/// allowed_origins` lists it. SameSite=Lax already keeps the cookie off most cross-site
/// requests; this check does not depend on the browser honouring it.
pub fn cookie_token(req: &Request, allowed_origins: &[String]) -> Option<String> {
    let token = req
        .cookie(TOKEN_COOKIE)
        .filter(|t| auth::token_well_formed(t))?;
    let allowed = match req.header_str("origin") {
        None => true,
        Some(origin) => {
            let authority = origin
                .split_once("://")
                .map_or("", |(_, rest)| rest.trim_end_matches('/'));
            let same_site = req
                .header_str("host")
                .is_some_and(|host| !authority.is_empty() && host.eq_ignore_ascii_case(authority));
            same_site || allowed_origins.iter().any(|o| o == origin)
        }
    };
    allowed.then(|| token.to_string())
}
