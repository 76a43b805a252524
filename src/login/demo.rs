//! `POST /api/demo/login`: tokens for trying the pages on a developer's machine without a
//! business backend (`[web] demo`, loopback listener only; 404 everywhere else). Demo users are
//! `app_uid` `demo:<name>`, made friends with the other demo users of this process so the chat
//! demo works at once.

use crate::http::Request;
use crate::login::tokens::{issue_token, profile_of};
use crate::net::{ConnId, Ctx, Reply};
use crate::proto::code;
use crate::rt::reply::api_error;
use crate::rt::{App, Completion};
use crate::store::{Backends, StoreError};

/// Demo users befriended on login (the newest ones of this process).
const MAX_DEMO_FRIENDS: usize = 50;

pub fn login(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: &Request) -> Reply {
    if !app.config.demo_login_enabled() {
        return Reply::Now(api_error(code::NOT_FOUND, "no such endpoint"));
    }
    let fields = match req.body_params() {
        Ok(f) => f,
        Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, why)),
    };
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let name = match get("name").map(crate::profile::name) {
        Some(Ok(n)) if !n.is_empty() && n.chars().count() <= 32 => n,
        _ => {
            return Reply::Now(api_error(
                code::BAD_REQUEST,
                "name: 1-32 characters, no control characters",
            ))
        }
    };
    let user_type = match get("user_type").filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => match crate::profile::user_type(t) {
            Ok(t) => Some(t),
            Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, &why)),
        },
    };
    let profile = match profile_of(Some(&name), None, user_type) {
        Ok(p) => p,
        Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, &why)),
    };
    let ttl = app.config.auth.token_ttl_s;
    let others: Vec<u64> = app
        .demo_users
        .iter()
        .rev()
        .take(MAX_DEMO_FRIENDS)
        .copied()
        .collect();
    let app_uid = format!("demo:{name}");
    let work = move |b: &Backends| -> Result<crate::login::tokens::Issued, StoreError> {
        let issued = issue_token(&**b, &*b.tokens, &app_uid, &profile, true, ttl)?;
        let me = issued.user.uid;
        for other in others.into_iter().filter(|o| *o != me) {
            b.add_friendship(me, other)?;
        }
        Ok(issued)
    };
    let ok = app.job(ctx, work, move |app, ctx, r| {
        let resp = match r {
            Ok(issued) => {
                let uid = issued.user.uid;
                if !app.demo_users.contains(&uid) {
                    app.demo_users.push(uid);
                }
                let token = issued.data["token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                crate::rt::token::logged_in(&issued.data, &token, ttl, false)
            }
            Err(e) => api_error(crate::proto::store_code(&e), &e.to_string()),
        };
        ctx.respond(conn, resp);
    });
    crate::rt::reply::later_or_busy(ok)
}
