//! A chat connection's life: opening, the authentication deadline, authentication (URL
//! token, login cookie, `auth`, online_chat's `access_token`), logout, closing.

use super::admission::RateWindow;
use super::consult;
use super::desk_lease;
use super::presence;
use super::request::{Pending, Replay};
use super::send::*;
use super::service_desk;
use super::state::{Session, MAX_WAITING_BYTES};
use super::{USER_TYPE_AGENT, USER_TYPE_CONVERTED, USER_TYPE_VISITOR};
use crate::auth;
use crate::cluster::bus::Target;
use crate::feed::metrics::METRICS;
use crate::feed::Topic;
use crate::http::Request;
use crate::net::{ConnId, Ctx};
use crate::proto::{self, close, code};
use crate::rt::{App, Completion};
use crate::store::{self, Backends, StoreResult};
use serde_json::{json, Value};
use std::time::Duration;

pub fn on_open(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    req: &Request,
    replay: Replay,
) {
    let deadline = Duration::from_secs(app.config.chat.auth_timeout_s);
    let timer = app.after(ctx, deadline, move |app, ctx| auth_deadline(app, ctx, conn));
    app.chat.sessions.insert(
        conn,
        Session {
            uid: None,
            visitor: false,
            authenticating: false,
            via_cookie: false,
            token_hash: None,
            waiting: Default::default(),
            auth_timer: Some(Box::new(timer)),
            pending: 0,
            rate: RateWindow::new(ctx.now()),
        },
    );
    // The token on the URL, else the doLogin cookie of a page of this site (app::cookie_token
    // says when a cookie may count).
    let (token, via_cookie) = match req.query_param("token") {
        Some(t) => (Some(t), false),
        None => (
            crate::rt::token::cookie_token(req, &app.config.ws.allowed_origins),
            true,
        ),
    };
    if let Some(s) = app.chat.sessions.get_mut(&conn) {
        s.via_cookie = via_cookie && token.is_some();
    }
    if let Some(token) = token {
        let p = Pending::local(conn, "auth".into(), None, ctx.now());
        authenticate(app, ctx, p, token, replay);
    }
}

/// `[chat] auth_timeout_s` passed since the connection opened: closed unless authenticated.
pub(crate) fn auth_deadline(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId) {
    if let Some(s) = app.chat.sessions.get_mut(&conn) {
        s.auth_timer = None;
    }
    if app
        .chat
        .sessions
        .get(&conn)
        .is_some_and(|s| s.uid.is_none())
    {
        ctx.send_text(
            conn,
            &proto::fail(
                "auth",
                &None,
                code::UNAUTHORIZED,
                "not authenticated in time",
            ),
        );
        ctx.close(conn, close::AUTH_TIMEOUT, "authentication timeout");
    }
}

/// A chat connection closed; returns the user it was authenticated as.
pub fn on_close(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId) -> Option<u64> {
    let session = app.chat.sessions.remove(&conn)?;
    if let Some(t) = session.auth_timer {
        app.cancel(ctx, *t);
    }
    let uid = session.uid?;
    release(app, ctx, conn, uid);
    Some(uid)
}

/// The connection no longer speaks for `uid` (it closed, or its cookie identity gave way to an
/// explicit token): the user goes offline here when it was their last connection.
pub(crate) fn release(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, uid: u64) {
    let now_offline = match app.chat.online.get_mut(&uid) {
        Some(conns) => {
            conns.retain(|c| *c != conn);
            conns.is_empty()
        }
        None => false,
    };
    if now_offline {
        app.chat.online.remove(&uid);
        let agent = app.chat.agents.remove(&uid);
        if app.chat.role.mine {
            app.chat.role.reported.remove(&uid);
            if agent && !app.chat.role.remote.contains_key(&uid) {
                service_desk::agent_disconnected(app, ctx, uid);
            }
            consult::went_offline(app, ctx, uid);
        } else {
            desk_lease::report_offline(app, uid);
        }
        push_presence(app, ctx, uid, false);
        app.chat.friends.remove(&uid);
        presence::went_offline(app, ctx, uid);
    }
}

/// Graceful shutdown began.
pub fn on_shutdown(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    consult::on_shutdown(app, ctx);
    presence::on_shutdown(app, ctx);
    desk_lease::on_shutdown(app, ctx);
}

/// Closes the user's connections on this process with 4003; returns how many.
pub(crate) fn kick_local(app: &App, ctx: &mut dyn Ctx<Completion>, uid: u64) -> usize {
    let conns: Vec<ConnId> = app.chat.conns_of(uid).to_vec();
    for c in &conns {
        ctx.close(*c, close::KICKED, "kicked");
    }
    conns.len()
}

/// A token was revoked (logout): its connections close with 4003 here and, with the bus, on
/// every other process.
pub fn token_revoked(app: &mut App, ctx: &mut dyn Ctx<Completion>, uid: u64, hash: [u8; 32]) {
    let hex = auth::hex(&hash);
    close_token_local(app, ctx, uid, &hex);
    if let Some(bus) = &app.bus {
        bus.publish(Target::Logout(uid, hex), "");
    }
}

/// Closes the user's connections on this process that this token (SHA-256, hex) authenticated.
pub(crate) fn close_token_local(
    app: &App,
    ctx: &mut dyn Ctx<Completion>,
    uid: u64,
    hash_hex: &str,
) {
    for c in app.chat.conns_of(uid) {
        let opened_by_it = app
            .chat
            .sessions
            .get(c)
            .and_then(|s| s.token_hash)
            .is_some_and(|h| auth::hex(&h) == hash_hex);
        if opened_by_it {
            ctx.close(*c, close::KICKED, "logged out");
        }
    }
}

/// What a token's authentication loads.
pub(crate) struct Authenticated {
    uid: u64,
    friends: Vec<u64>,
    user_type: i64,
    consults: Vec<store::Consultation>,
}

pub(crate) fn authenticate(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: Pending,
    token: String,
    replay: Replay,
) {
    let Some(session) = app.chat.sessions.get_mut(&p.conn) else {
        return;
    };
    if session.via_cookie && session.authenticating && p.cmd == "auth" {
        // An explicit token while the cookie is being checked: it is decided after that.
        let frame = json!({ "cmd": "auth", "req_id": p.req_id, "token": token }).to_string();
        session.waiting.push(frame);
        return;
    }
    if let (Some(uid), true) = (session.uid, session.via_cookie) {
        // A page that sends a token means it: the token wins over the login cookie the
        // browser attached (another user's, or an older login).
        if session.token_hash == Some(auth::token_hash(&token)) {
            p.reply_ok(ctx, &json!({ "uid": uid }));
            return;
        }
        session.uid = None;
        session.token_hash = None;
        session.via_cookie = false;
        session.visitor = false;
        release(app, ctx, p.conn, uid);
        return authenticate(app, ctx, p, token, replay);
    }
    if session.uid.is_some() || session.authenticating {
        p.reply_err(ctx, code::BAD_REQUEST, "already authenticated");
        return;
    }
    if !auth::token_well_formed(&token) {
        session.waiting.clear();
        auth_failed(app, ctx, &p);
        return;
    }
    session.authenticating = true;
    let conn = p.conn;
    let busy = p.clone();
    let hash = auth::token_hash(&token);
    let work = move |b: &Backends| -> StoreResult<Option<Authenticated>> {
        match b.tokens.user(&hash)? {
            Some(uid) => {
                let user_type = b.user(uid)?.map_or(0, |u| u.user_type);
                if user_type == USER_TYPE_CONVERTED {
                    // A visitor who logged in: their token died with the visitor.
                    return Ok(None);
                }
                Ok(Some(Authenticated {
                    uid,
                    friends: b.friends(uid)?,
                    user_type,
                    consults: b.active_consultations(uid)?,
                }))
            }
            None => Ok(None),
        }
    };
    let then = move |app: &mut App,
                     ctx: &mut dyn Ctx<Completion>,
                     r: StoreResult<Option<Authenticated>>| {
        let Some(session) = app.chat.sessions.get_mut(&p.conn) else {
            return;
        };
        session.authenticating = false;
        match r {
            Ok(Some(Authenticated {
                uid,
                friends,
                user_type,
                consults,
            })) => {
                session.uid = Some(uid);
                session.token_hash = Some(hash);
                let waiting = std::mem::take(&mut session.waiting);
                session.visitor = user_type == USER_TYPE_VISITOR;
                METRICS.login("token", true);
                let conn = p.conn;
                app.feed.emit(ctx, Topic::Connection, || {
                    json!({ "event": "auth", "conn": conn.to_string(), "uid": uid, "user_type": user_type })
                });
                if let Some(t) = session.auth_timer.take() {
                    app.cancel(ctx, *t);
                }
                let first = !app.chat.is_online(uid);
                app.chat.online.entry(uid).or_default().push(p.conn);
                app.chat.friends.insert(uid, friends.into_iter().collect());
                p.reply_ok(ctx, &json!({ "uid": uid }));
                let agent = user_type == USER_TYPE_AGENT;
                let desk_cares = agent || !consults.is_empty();
                if app.chat.role.mine {
                    // Known online elsewhere in the cluster: the desk has them already.
                    let elsewhere = app.chat.role.remote.contains_key(&uid);
                    consult::load(app, ctx, consults);
                    if first {
                        consult::came_online(app, ctx, uid);
                        if agent {
                            app.chat.agents.insert(uid);
                            if !elsewhere {
                                service_desk::agent_connected(app, ctx, uid);
                            }
                        }
                        if desk_cares {
                            app.chat.role.reported.insert(uid, agent);
                        }
                    }
                    consult::connected(app, ctx, p.conn, uid);
                } else if first {
                    // The desk and the clocks are on another node: it is told.
                    if agent {
                        app.chat.agents.insert(uid);
                    }
                    if desk_cares {
                        desk_lease::report_online(app, uid, agent);
                    }
                }
                if first {
                    push_presence(app, ctx, uid, true);
                    presence::came_online(app, ctx, uid);
                }
                for text in waiting {
                    replay(app, ctx, conn, &text);
                }
            }
            Ok(None) if session.via_cookie => {
                // A stale login cookie: said so, but the connection stays for the token the
                // page may send (frames that waited run now).
                session.via_cookie = false;
                let waiting = std::mem::take(&mut session.waiting);
                METRICS.login("token", false);
                let conn = p.conn;
                app.feed.emit(ctx, Topic::Connection, || {
                    json!({ "event": "auth_failed", "conn": conn.to_string(), "reason": "bad or expired login cookie" })
                });
                p.reply_err(
                    ctx,
                    code::UNAUTHORIZED,
                    "bad or expired login cookie: authenticate with a token",
                );
                for text in waiting {
                    replay(app, ctx, conn, &text);
                }
            }
            Ok(None) => {
                session.waiting.clear();
                auth_failed(app, ctx, &p);
            }
            Err(e) => {
                // The frames that waited are answered: the client retries them.
                for text in std::mem::take(&mut session.waiting) {
                    if let Ok(cmd) = proto::parse_chat_command(&text) {
                        let msg = format!("{e}; retry");
                        let c = proto::store_code(&e);
                        ctx.send_text(p.conn, &proto::fail(&cmd.cmd, &cmd.req_id, c, &msg));
                    }
                }
                p.reply_store_err(ctx, &e)
            }
        }
    };
    if !app.job(ctx, work, then) {
        if let Some(s) = app.chat.sessions.get_mut(&conn) {
            s.authenticating = false;
            s.waiting.clear();
        }
        busy.reply_err(ctx, code::UNAVAILABLE, "server busy, retry");
    }
}

/// A token that authenticates nobody, malformed or unknown: counted, published on the
/// `connection` topic, answered with 401, and the connection closed with 4001.
pub(crate) fn auth_failed(app: &mut App, ctx: &mut dyn Ctx<Completion>, p: &Pending) {
    METRICS.login("token", false);
    let conn = p.conn;
    app.feed.emit(ctx, Topic::Connection, || {
        json!({ "event": "auth_failed", "conn": conn.to_string(), "reason": "bad or expired token" })
    });
    p.reply_err(ctx, code::UNAUTHORIZED, "bad or expired token");
    ctx.close(p.conn, close::AUTH_FAILED, "authentication failed");
}

/// Keeps a frame until the connection's authentication finishes (then it runs as if it had
/// just arrived). Past `MAX_WAITING_BYTES` the frame is refused with 503.
pub(crate) fn wait_for_auth(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    text: &str,
) {
    let Some(session) = app.chat.sessions.get_mut(&conn) else {
        return;
    };
    let held: usize = session.waiting.iter().map(String::len).sum();
    if held + text.len() > MAX_WAITING_BYTES {
        let (cmd, req_id) = proto::parse_chat_command(text)
            .map(|c| (c.cmd, c.req_id))
            .unwrap_or_else(|_| ("error".into(), None));
        ctx.send_text(
            conn,
            &proto::fail(
                &cmd,
                &req_id,
                code::UNAVAILABLE,
                "authentication in progress: too many frames waiting, retry",
            ),
        );
        return;
    }
    session.waiting.push(text.to_string());
}

/// What to do with a frame's `access_token` (online_chat sends its token in every frame).
pub(crate) enum TokenCheck {
    /// The connection's own token: go on.
    Same,
    /// Handled: held for the authentication it started, or refused.
    Handled,
    /// Another well-formed token: it must be this user's (checked on a worker).
    Other { uid: u64, hash: [u8; 32] },
}

/// online_chat's `access_token` in a frame: it authenticates a connection that is not yet
/// authenticated (the frame runs afterwards); on an authenticated connection it must belong to
/// the connection's user, or the command is refused with 401 and nothing is done.
pub(crate) fn check_access_token(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    token: &Value,
    text: &str,
    replay: Replay,
) -> TokenCheck {
    let Some(session) = app.chat.sessions.get_mut(&p.conn) else {
        return TokenCheck::Handled;
    };
    let Some(token) = token.as_str() else {
        p.reply_err(ctx, code::BAD_REQUEST, "access_token must be a string");
        return TokenCheck::Handled;
    };
    let Some(uid) = session.uid else {
        let start = !session.authenticating;
        wait_for_auth(app, ctx, p.conn, text);
        if start {
            let auth = Pending::local(p.conn, "auth".into(), None, p.at);
            authenticate(app, ctx, auth, token.to_string(), replay);
        }
        return TokenCheck::Handled;
    };
    let hash = auth::token_hash(token);
    if session.token_hash == Some(hash) {
        return TokenCheck::Same;
    }
    if !auth::token_well_formed(token) {
        refuse_token(ctx, p);
        return TokenCheck::Handled;
    }
    TokenCheck::Other { uid, hash }
}

pub(crate) fn refuse_token(ctx: &mut dyn Ctx<Completion>, p: &Pending) {
    p.reply_err(
        ctx,
        code::UNAUTHORIZED,
        "access_token does not belong to this connection's user",
    );
}
