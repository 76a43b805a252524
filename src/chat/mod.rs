//! The chat hub: sessions, authentication, authorisation, sending with durable ordered delivery,
//! catch-up, friends, groups and presence. Runs on the reactor; everything that touches the store
//! goes through `App::job` (workers) or `App::persist` (the persister).

pub mod consult;
pub mod desk;
pub mod membership;
pub mod office_hours;
pub mod persister;
pub mod presence;
pub mod profile;
pub mod service_desk;
pub mod visitor;

use crate::admin::metrics::METRICS;
use crate::admin::Topic;
use crate::app::{api_error, api_ok, App, AppTimer, Completion};
use crate::auth;
use crate::cluster::bus::{Envelope, Target};
use crate::config::Config;
use crate::http::Request;
use crate::net::{ConnId, Ctx, Frame, Message};
use crate::proto::{self, chat_type, close, code, Command, ConvRef, SendArgs};
use crate::store::{self, Appended, Backends, NewMessage, StoreError, StoreResult};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `user_type` of customer-service agents.
pub const USER_TYPE_AGENT: i64 = 1;
/// `user_type` of consultants (timed consultations name them explicitly; the type is a label).
pub const USER_TYPE_CONSULTANT: i64 = 2;
pub use crate::store::{USER_TYPE_CONVERTED, USER_TYPE_VISITOR};

/// Bytes of frames a connection may send while its authentication is under way.
const MAX_WAITING_BYTES: usize = 64 * 1024;

/// Most messages one `sync` / `history` returns.
const MAX_PAGE: u64 = 200;

/// One chat connection.
struct Session {
    uid: Option<u64>,
    /// An anonymous visitor's connection: customer-service commands only.
    visitor: bool,
    authenticating: bool,
    /// Authenticated (or being authenticated) by the doLogin cookie: an explicit token wins.
    via_cookie: bool,
    /// The SHA-256 of the token this connection authenticated with: online_chat frames carry a
    /// token each (`access_token`), compared with this; logout closes the connections it names.
    token_hash: Option<[u8; 32]>,
    /// Frames that arrived while the connection was authenticating, run once it is done
    /// (at most `MAX_WAITING_BYTES`).
    waiting: Vec<String>,
    auth_timer: Option<AppTimer>,
    /// Store requests in flight for this connection.
    pending: usize,
    rate_window: Instant,
    rate_count: u32,
}

/// The hub's in-memory state (reactor-owned).
pub struct ChatState {
    sessions: HashMap<ConnId, Session>,
    /// uid -> its open, authenticated connections.
    online: HashMap<u64, Vec<ConnId>>,
    /// Friends of online users (authorisation and presence without a store round trip).
    friends: HashMap<u64, HashSet<u64>>,
    /// Group members, loaded on demand, updated by membership changes made through this server.
    groups: HashMap<u64, Arc<Vec<u64>>>,
    /// Online agents (`user_type` 1) on this process.
    agents: HashSet<u64>,
    /// Customer-service sessions: who serves whom, who waits.
    desk: desk::Desk,
    /// Session id -> the agent who served it, for sessions closed on this process and not yet
    /// rated: the agent is told the rating (`rated`). Bounded; the oldest entries go first.
    closed_by: HashMap<u64, u64>,
    closed_order: std::collections::VecDeque<u64>,
    consults: consult::Consults,
    office_hours: office_hours::OfficeHours,
    body_limits: proto::BodyLimits,
    /// The presence refresh timer is set (it runs while anyone is online here).
    presence_refresh_armed: bool,
    shutting_down: bool,
}

impl ChatState {
    pub fn new(config: &Config) -> ChatState {
        ChatState {
            sessions: HashMap::new(),
            online: HashMap::new(),
            friends: HashMap::new(),
            groups: HashMap::new(),
            agents: HashSet::new(),
            desk: desk::Desk::new(),
            closed_by: HashMap::new(),
            closed_order: std::collections::VecDeque::new(),
            consults: consult::Consults::default(),
            // Validated with the config.
            office_hours: office_hours::OfficeHours::parse(
                &config.service.office_hours,
                &config.service.utc_offset,
            )
            .unwrap_or_else(|_| {
                office_hours::OfficeHours::parse("", "+00:00").expect("always open parses")
            }),
            presence_refresh_armed: false,
            shutting_down: false,
            body_limits: proto::BodyLimits {
                max_text_bytes: config.chat.max_text_bytes,
            },
        }
    }

    pub fn is_online(&self, uid: u64) -> bool {
        self.online.get(&uid).is_some_and(|c| !c.is_empty())
    }

    /// Users with an authenticated connection here.
    pub fn users_online(&self) -> usize {
        self.online.len()
    }

    /// Customers waiting for an agent.
    pub fn service_queue_len(&self) -> usize {
        self.desk.queue_len()
    }

    /// Timed consultations held in memory here.
    pub fn consultations_live(&self) -> usize {
        self.consults.len()
    }

    pub fn is_agent(&self, uid: u64) -> bool {
        self.agents.contains(&uid)
    }

    /// Who a service conversation's pushes go to: the customer and their agent.
    fn service_recipients(&self, customer: u64) -> Vec<u64> {
        service_desk::recipients(&self.desk, customer)
    }

    fn conns_of(&self, uid: u64) -> &[ConnId] {
        self.online.get(&uid).map_or(&[], Vec::as_slice)
    }
}

/// A request waiting for a reply: the connection and the command's name and id.
#[derive(Clone)]
struct Pending {
    conn: ConnId,
    cmd: String,
    req_id: Option<Value>,
    /// When the command arrived (for the ack latency histogram).
    at: Instant,
}

impl Pending {
    fn reply_ok(&self, ctx: &mut dyn Ctx<Completion>, data: &Value) {
        ctx.send_text(self.conn, &proto::ok(&self.cmd, &self.req_id, data));
    }
    fn reply_raw(&self, ctx: &mut dyn Ctx<Completion>, data: &str) {
        ctx.send_text(self.conn, &proto::ok_raw(&self.cmd, &self.req_id, data));
    }
    fn reply_err(&self, ctx: &mut dyn Ctx<Completion>, c: u16, msg: &str) {
        if self.cmd == "send" {
            METRICS.messages_rejected.inc();
        }
        ctx.send_text(self.conn, &proto::fail(&self.cmd, &self.req_id, c, msg));
    }
    fn reply_store_err(&self, ctx: &mut dyn Ctx<Completion>, e: &StoreError) {
        self.reply_err(ctx, proto::store_code(e), &e.to_string());
    }
    /// Reports a command that could not even be started (inside a continuation).
    fn reply_if_err(&self, ctx: &mut dyn Ctx<Completion>, r: CmdResult) {
        if let Err((c, m)) = r {
            self.reply_err(ctx, c, &m);
        }
    }
}

pub fn on_open(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: &Request) {
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
            waiting: Vec::new(),
            auth_timer: Some(timer),
            pending: 0,
            rate_window: ctx.now(),
            rate_count: 0,
        },
    );
    // The token on the URL, else the doLogin cookie of a page of this site (app::cookie_token
    // says when a cookie may count).
    let (token, via_cookie) = match req.query_param("token") {
        Some(t) => (Some(t), false),
        None => (
            crate::app::cookie_token(req, &app.config.ws.allowed_origins),
            true,
        ),
    };
    if let Some(s) = app.chat.sessions.get_mut(&conn) {
        s.via_cookie = via_cookie && token.is_some();
    }
    if let Some(token) = token {
        let p = Pending {
            conn,
            cmd: "auth".into(),
            req_id: None,
            at: ctx.now(),
        };
        authenticate(app, ctx, p, token);
    }
}

/// `[chat] auth_timeout_s` passed since the connection opened: closed unless authenticated.
fn auth_deadline(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId) {
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
        app.cancel(ctx, t);
    }
    let uid = session.uid?;
    release(app, ctx, conn, uid);
    Some(uid)
}

/// The connection no longer speaks for `uid` (it closed, or its cookie identity gave way to an
/// explicit token): the user goes offline here when it was their last connection.
fn release(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, uid: u64) {
    let now_offline = match app.chat.online.get_mut(&uid) {
        Some(conns) => {
            conns.retain(|c| *c != conn);
            conns.is_empty()
        }
        None => false,
    };
    if now_offline {
        app.chat.online.remove(&uid);
        if app.chat.agents.remove(&uid) {
            service_desk::agent_disconnected(app, ctx, uid);
        }
        consult::went_offline(app, ctx, uid);
        push_presence(app, ctx, uid, false);
        app.chat.friends.remove(&uid);
        presence::went_offline(app, ctx, uid);
    }
}

/// Graceful shutdown began.
pub fn on_shutdown(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    consult::on_shutdown(app, ctx);
    presence::on_shutdown(app, ctx);
}

/// Tells a user's online friends that they came online or went offline.
fn push_presence(app: &mut App, ctx: &mut dyn Ctx<Completion>, uid: u64, online: bool) {
    let Some(friends) = app.chat.friends.get(&uid) else {
        return;
    };
    let friends: Vec<u64> = friends.iter().copied().collect();
    let payload = proto::push("presence", &json!({ "uid": uid, "online": online }));
    push_users(app, ctx, &friends, &payload);
}

/// Sends one push to these users' connections on this process and, with the bus, on the others.
fn push_users(app: &App, ctx: &mut dyn Ctx<Completion>, uids: &[u64], payload: &str) {
    if uids.is_empty() {
        return;
    }
    let frame = Frame::text(payload.as_bytes());
    for uid in uids {
        for c in app.chat.conns_of(*uid) {
            ctx.send(*c, &frame);
        }
    }
    if let Some(bus) = &app.bus {
        bus.publish(Target::Users(uids.to_vec()), payload);
    }
}

/// Sends one push to these users wherever they are connected (this process and, with the bus,
/// the others).
pub fn push_to_users(app: &App, ctx: &mut dyn Ctx<Completion>, uids: &[u64], payload: &str) {
    push_users(app, ctx, uids, payload);
}

/// Delivers a message committed outside a chat connection's `send` (a WeChat user's message).
pub fn deliver_committed(app: &mut App, ctx: &mut dyn Ctx<Completion>, m: &store::StoredMessage) {
    fan_out(app, ctx, m, None);
}

/// A push published by another process: deliver it to the connections held here.
pub fn deliver_remote(app: &mut App, ctx: &mut dyn Ctx<Completion>, env: Envelope) {
    let frame = Frame::text(env.payload.as_bytes());
    match env.target {
        Target::Users(uids) => {
            for uid in uids {
                for c in app.chat.conns_of(uid) {
                    ctx.send(*c, &frame);
                }
            }
        }
        Target::Conv(conv_id) => deliver_to_conv(app, ctx, conv_id, frame, None),
        Target::Kick(uid) => {
            kick_local(app, ctx, uid);
        }
        Target::Logout(uid, hash) => {
            close_token_local(app, ctx, uid, &hash);
        }
        Target::Qr(ticket) => {
            crate::wechat::qrlogin::deliver(app, ctx, &ticket, &env.payload);
        }
    }
}

/// Closes the user's connections on this process with 4003; returns how many.
fn kick_local(app: &App, ctx: &mut dyn Ctx<Completion>, uid: u64) -> usize {
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
fn close_token_local(app: &App, ctx: &mut dyn Ctx<Completion>, uid: u64, hash_hex: &str) {
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
struct Authenticated {
    uid: u64,
    friends: Vec<u64>,
    user_type: i64,
    consults: Vec<store::Consultation>,
}

fn authenticate(app: &mut App, ctx: &mut dyn Ctx<Completion>, p: Pending, token: String) {
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
        return authenticate(app, ctx, p, token);
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
                app.admin.emit(ctx, Topic::Connection, || {
                    json!({ "event": "auth", "conn": conn.to_string(), "uid": uid, "user_type": user_type })
                });
                if let Some(t) = session.auth_timer.take() {
                    app.cancel(ctx, t);
                }
                let first = !app.chat.is_online(uid);
                app.chat.online.entry(uid).or_default().push(p.conn);
                app.chat.friends.insert(uid, friends.into_iter().collect());
                p.reply_ok(ctx, &json!({ "uid": uid }));
                consult::load(app, ctx, consults);
                if first {
                    consult::came_online(app, ctx, uid);
                    if user_type == USER_TYPE_AGENT {
                        app.chat.agents.insert(uid);
                        service_desk::agent_connected(app, ctx, uid);
                    }
                    push_presence(app, ctx, uid, true);
                    presence::came_online(app, ctx, uid);
                }
                consult::connected(app, ctx, p.conn, uid);
                for text in waiting {
                    on_message(app, ctx, conn, Message::Text(&text));
                }
            }
            Ok(None) if session.via_cookie => {
                // A stale login cookie: said so, but the connection stays for the token the
                // page may send (frames that waited run now).
                session.via_cookie = false;
                let waiting = std::mem::take(&mut session.waiting);
                METRICS.login("token", false);
                let conn = p.conn;
                app.admin.emit(ctx, Topic::Connection, || {
                    json!({ "event": "auth_failed", "conn": conn.to_string(), "reason": "bad or expired login cookie" })
                });
                p.reply_err(
                    ctx,
                    code::UNAUTHORIZED,
                    "bad or expired login cookie: authenticate with a token",
                );
                for text in waiting {
                    on_message(app, ctx, conn, Message::Text(&text));
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
fn auth_failed(app: &mut App, ctx: &mut dyn Ctx<Completion>, p: &Pending) {
    METRICS.login("token", false);
    let conn = p.conn;
    app.admin.emit(ctx, Topic::Connection, || {
        json!({ "event": "auth_failed", "conn": conn.to_string(), "reason": "bad or expired token" })
    });
    p.reply_err(ctx, code::UNAUTHORIZED, "bad or expired token");
    ctx.close(p.conn, close::AUTH_FAILED, "authentication failed");
}

/// Keeps a frame until the connection's authentication finishes (then it runs as if it had
/// just arrived). Past `MAX_WAITING_BYTES` the frame is refused with 503.
fn wait_for_auth(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, text: &str) {
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
enum TokenCheck {
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
fn check_access_token(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    token: &Value,
    text: &str,
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
            let auth = Pending {
                conn: p.conn,
                cmd: "auth".into(),
                req_id: None,
                at: p.at,
            };
            authenticate(app, ctx, auth, token.to_string());
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

fn refuse_token(ctx: &mut dyn Ctx<Completion>, p: &Pending) {
    p.reply_err(
        ctx,
        code::UNAUTHORIZED,
        "access_token does not belong to this connection's user",
    );
}

pub fn on_message(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    message: Message<'_>,
) {
    // The hot command first: a plain `send` skips the general decoder's map of every field.
    if let Message::Text(text) = &message {
        if let Some((req_id, args)) = proto::parse_send(text) {
            let p = Pending {
                conn,
                cmd: "send".into(),
                req_id,
                at: ctx.now(),
            };
            match admit(app, ctx, &p) {
                Admit::Yes(uid) => {
                    let result = cmd_send(app, ctx, &p, uid, SendInput::Decoded(args));
                    p.reply_if_err(ctx, result);
                }
                Admit::Authenticating => wait_for_auth(app, ctx, conn, text),
                Admit::Refused => {}
            }
            return;
        }
    }
    let text = match &message {
        Message::Text(t) => *t,
        Message::Binary(_) => "",
    };
    let Some(mut cmd) = crate::app::chat_command_of(ctx, conn, message) else {
        return;
    };
    let p = Pending {
        conn,
        cmd: cmd.cmd.clone(),
        req_id: cmd.req_id.clone(),
        at: ctx.now(),
    };
    if cmd.cmd == "ping" {
        p.reply_ok(ctx, &json!({ "time": store::now_ms() }));
        return;
    }
    if cmd.cmd == "auth" {
        match cmd.str("token") {
            Ok(t) => authenticate(app, ctx, p, t.to_string()),
            Err(e) => p.reply_err(ctx, code::BAD_REQUEST, &e),
        }
        return;
    }
    if let Some(token) = cmd.fields.remove("access_token") {
        match check_access_token(app, ctx, &p, &token, text) {
            TokenCheck::Same => {}
            TokenCheck::Handled => return,
            TokenCheck::Other { uid, hash } => {
                // Another token: the same user's (another device's login) is fine.
                let r = conn_job(
                    app,
                    ctx,
                    &p,
                    move |b| b.tokens.user(&hash),
                    move |app, ctx, p, r| match r {
                        Ok(Some(owner)) if owner == uid => run_command(app, ctx, p, uid, &cmd),
                        Ok(_) => refuse_token(ctx, p),
                        Err(e) => p.reply_store_err(ctx, &e),
                    },
                );
                p.reply_if_err(ctx, r);
                return;
            }
        }
    }
    match admit(app, ctx, &p) {
        Admit::Yes(uid) => run_command(app, ctx, &p, uid, &cmd),
        Admit::Authenticating => wait_for_auth(app, ctx, conn, text),
        Admit::Refused => {}
    }
}

/// Runs an admitted command of an authenticated user.
fn run_command(app: &mut App, ctx: &mut dyn Ctx<Completion>, p: &Pending, uid: u64, cmd: &Command) {
    let result = match cmd.cmd.as_str() {
        "send" => cmd_send(app, ctx, p, uid, SendInput::Command(cmd)),
        "sync" => cmd_page(app, ctx, p, uid, cmd, true),
        "history" => cmd_page(app, ctx, p, uid, cmd, false),
        "conversations" => cmd_conversations(app, ctx, p, uid),
        "read" => cmd_read(app, ctx, p, uid, cmd),
        "typing" => cmd_typing(app, ctx, p, uid, cmd),
        "recall" => cmd_recall(app, ctx, p, uid, cmd),
        "read_count" => cmd_read_count(app, ctx, p, uid, cmd),
        "presence" => cmd_presence(app, ctx, p, uid, cmd),
        "friends" => cmd_friends(app, ctx, p, uid),
        "friend_request" => cmd_friend_request(app, ctx, p, uid, cmd),
        "friend_accept" => cmd_friend_accept(app, ctx, p, uid, cmd),
        "friend_requests" => cmd_friend_requests(app, ctx, p, uid),
        "friend_remove" => cmd_friend_remove(app, ctx, p, uid, cmd),
        "groups" => cmd_groups(app, ctx, p, uid),
        "group_create" => cmd_group_create(app, ctx, p, uid, cmd),
        "group_members" => cmd_group_members(app, ctx, p, uid, cmd),
        "group_invite" => cmd_group_invite(app, ctx, p, uid, cmd),
        "group_leave" => cmd_group_leave(app, ctx, p, uid, cmd),
        "service_status" | "service_accept" | "service_transfer" | "service_close"
        | "service_rate" | "service_info" | "service_customer" => {
            service_desk::command(app, ctx, p, uid, cmd)
        }
        "consult_get" => consult::command(app, ctx, p, uid, cmd),
        _ => Err((code::BAD_REQUEST, format!("unknown cmd {:?}", cmd.cmd))),
    };
    if let Err((c, m)) = result {
        p.reply_err(ctx, c, &m);
    }
}

type CmdResult = Result<(), (u16, String)>;

/// Whether a command may run.
enum Admit {
    /// Yes, as this user.
    Yes(u64),
    /// Not yet: the connection's authentication is under way (the frame waits for it).
    Authenticating,
    /// No, and the reply has been sent.
    Refused,
}

/// The checks every command after `auth` passes: an authenticated session, a command visitors
/// may use, room for one more request in flight.
fn admit(app: &mut App, ctx: &mut dyn Ctx<Completion>, p: &Pending) -> Admit {
    let Some(session) = app.chat.sessions.get_mut(&p.conn) else {
        return Admit::Refused;
    };
    let Some(uid) = session.uid else {
        if session.authenticating {
            return Admit::Authenticating;
        }
        p.reply_err(ctx, code::UNAUTHORIZED, "authenticate first");
        return Admit::Refused;
    };
    if session.visitor && !VISITOR_COMMANDS.contains(&p.cmd.as_str()) {
        p.reply_err(
            ctx,
            code::FORBIDDEN,
            "visitors may only use customer service: log in first",
        );
        return Admit::Refused;
    }
    if session.pending >= app.config.chat.max_pending_per_conn {
        p.reply_err(ctx, code::UNAVAILABLE, "too many requests in flight, retry");
        return Admit::Refused;
    }
    Admit::Yes(uid)
}

/// What an anonymous visitor may do (besides `ping` and `auth`).
const VISITOR_COMMANDS: &[&str] = &[
    "send",
    "sync",
    "history",
    "conversations",
    "read",
    "typing",
    "service_close",
    "service_rate",
    "service_info",
];

fn bad(m: impl Into<String>) -> (u16, String) {
    (code::BAD_REQUEST, m.into())
}

/// Runs a store job for a connection's request, counting it against the connection's limit.
fn conn_job<R: Send + 'static>(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    work: impl FnOnce(&Backends) -> R + Send + 'static,
    then: impl FnOnce(&mut App, &mut dyn Ctx<Completion>, &Pending, R) + Send + 'static,
) -> CmdResult {
    let conn = p.conn;
    let p2 = p.clone();
    let ok = app.job(ctx, work, move |app, ctx, r| {
        if let Some(s) = app.chat.sessions.get_mut(&conn) {
            s.pending = s.pending.saturating_sub(1);
            then(app, ctx, &p2, r);
        }
    });
    if !ok {
        return Err((code::UNAVAILABLE, "server busy, retry".into()));
    }
    if let Some(s) = app.chat.sessions.get_mut(&conn) {
        s.pending += 1;
    }
    Ok(())
}

/// Calls `then` with the group's members: from the cache, or after loading them.
fn with_members(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    gid: u64,
    then: impl FnOnce(&mut App, &mut dyn Ctx<Completion>, &Pending, Arc<Vec<u64>>) + Send + 'static,
) -> CmdResult {
    if let Some(m) = app.chat.groups.get(&gid).cloned() {
        then(app, ctx, p, m);
        return Ok(());
    }
    conn_job(
        app,
        ctx,
        p,
        move |s| s.group_members(gid),
        move |app, ctx, p, r| match r {
            Ok(Some(members)) => {
                let members = Arc::new(members);
                app.chat.groups.insert(gid, members.clone());
                then(app, ctx, p, members);
            }
            Ok(None) => p.reply_err(ctx, code::NOT_FOUND, "no such group"),
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

/// Checks that `uid` may read `conv_id`, then calls `then`.
fn with_conv_access(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    conv_id: &str,
    then: impl FnOnce(&mut App, &mut dyn Ctx<Completion>, &Pending, Vec<u64>) + Send + 'static,
) -> CmdResult {
    match proto::parse_conv(conv_id) {
        Some(ConvRef::Friend(a, b)) if a == uid || b == uid => {
            then(app, ctx, p, vec![a, b]);
            Ok(())
        }
        Some(ConvRef::Group(g)) => with_members(app, ctx, p, g, move |app, ctx, p, members| {
            if members.binary_search(&uid).is_ok() {
                then(app, ctx, p, members.to_vec());
            } else {
                p.reply_err(ctx, code::FORBIDDEN, "not a member of this group");
            }
        }),
        Some(ConvRef::Service(c)) if c == uid || app.chat.is_agent(uid) => {
            let members = app.chat.service_recipients(c);
            then(app, ctx, p, members);
            Ok(())
        }
        Some(ConvRef::Consult(id)) => {
            consult::with_live(app, ctx, p, id, move |app, ctx, p, sides| {
                if sides.contains(&uid) {
                    then(app, ctx, p, sides.to_vec());
                } else {
                    p.reply_err(ctx, code::FORBIDDEN, "not your consultation");
                }
            })
        }
        Some(_) => Err((code::FORBIDDEN, "not your conversation".into())),
        None => Err(bad("bad conv_id")),
    }
}

/// Where a send's fields come from.
enum SendInput<'a> {
    /// The hot path's typed decode (`proto::parse_send`): every field present and well-formed.
    Decoded(SendArgs),
    /// The general decoder's command, whose fields are checked here.
    Command(&'a Command),
}

/// A general command's send fields, checked in the order their errors are reported.
fn send_args(app: &App, p: &Pending, cmd: &Command) -> Result<SendArgs, (u16, String)> {
    let chat_type = cmd.u64("chat_type").map_err(bad)?;
    refuse_visitor(app, p, chat_type)?;
    let to_id = cmd.u64("to_id").map_err(bad)?;
    let msg_type = cmd.u64("msg_type").map_err(bad)?;
    let client_msg_id =
        proto::client_msg_id_of(cmd.fields.get("client_msg_id").cloned()).map_err(bad)?;
    let msg = cmd.fields.get("msg").cloned().unwrap_or(Value::Null);
    Ok(SendArgs {
        chat_type,
        to_id,
        msg_type,
        client_msg_id,
        msg,
    })
}

/// Visitors write to customer service only.
fn refuse_visitor(app: &App, p: &Pending, chat_type: u64) -> CmdResult {
    if chat_type != u64::from(chat_type::SERVICE)
        && app.chat.sessions.get(&p.conn).is_some_and(|s| s.visitor)
    {
        return Err((
            code::FORBIDDEN,
            "visitors may only write to customer service (chat_type 2)".into(),
        ));
    }
    Ok(())
}

fn cmd_send(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    input: SendInput<'_>,
) -> CmdResult {
    // Rate limit per connection, one-second windows.
    let limit = app.config.chat.max_msgs_per_sec;
    if let Some(s) = app.chat.sessions.get_mut(&p.conn) {
        let now = ctx.now();
        if now.duration_since(s.rate_window) >= Duration::from_secs(1) {
            s.rate_window = now;
            s.rate_count = 0;
        }
        s.rate_count += 1;
        if limit > 0 && s.rate_count > limit {
            return Err((
                code::RATE_LIMITED,
                format!("over {limit} messages per second"),
            ));
        }
    }
    let args = match input {
        SendInput::Decoded(args) => {
            refuse_visitor(app, p, args.chat_type)?;
            args
        }
        SendInput::Command(cmd) => send_args(app, p, cmd)?,
    };
    let (ct, to_id, client_msg_id) = (args.chat_type, args.to_id, args.client_msg_id);
    let mt = u8::try_from(args.msg_type).map_err(|_| bad("unknown msg_type"))?;
    let body = proto::validate_body(mt, &args.msg, &app.chat.body_limits)?;
    let base = NewMessage {
        conv_id: String::new(),
        chat_type: 0,
        from_id: uid,
        to_id,
        msg_type: mt,
        body,
        client_msg_id,
        created_at: store::now_ms(),
    };
    match u8::try_from(ct).unwrap_or(u8::MAX) {
        chat_type::FRIEND => {
            if to_id == uid {
                return Err(bad("cannot send to yourself"));
            }
            let friends = app
                .chat
                .friends
                .get(&uid)
                .is_some_and(|f| f.contains(&to_id));
            let message = NewMessage {
                conv_id: proto::friend_conv(uid, to_id),
                ..base
            };
            if friends {
                submit(app, ctx, p, message);
                return Ok(());
            }
            if !app.config.chat.allow_strangers {
                // The cache may miss a friendship made through another process sharing the
                // database: check the store before refusing.
                return conn_job(
                    app,
                    ctx,
                    p,
                    move |s| s.friends(uid),
                    move |app, ctx, p, r| match r {
                        Ok(list) if list.contains(&to_id) => {
                            app.chat.friends.insert(uid, list.into_iter().collect());
                            submit(app, ctx, p, message);
                        }
                        Ok(_) => p.reply_err(ctx, code::FORBIDDEN, "not friends"),
                        Err(e) => p.reply_store_err(ctx, &e),
                    },
                );
            }
            submit_if_user_exists(app, ctx, p, to_id, message)
        }
        chat_type::GROUP => with_members(app, ctx, p, to_id, move |app, ctx, p, members| {
            let m = NewMessage {
                conv_id: proto::group_conv(to_id),
                chat_type: chat_type::GROUP,
                ..base
            };
            if members.binary_search(&uid).is_ok() {
                submit(app, ctx, p, m);
                return;
            }
            // The cached list may miss a member added through another process: reload once.
            let reloaded = conn_job(
                app,
                ctx,
                p,
                move |s| s.group_members(to_id),
                move |app, ctx, p, r| match r {
                    Ok(Some(fresh)) => {
                        let member = fresh.binary_search(&uid).is_ok();
                        app.chat.groups.insert(to_id, Arc::new(fresh));
                        if member {
                            submit(app, ctx, p, m);
                        } else {
                            p.reply_err(ctx, code::FORBIDDEN, "not a member of this group");
                        }
                    }
                    Ok(None) => p.reply_err(ctx, code::NOT_FOUND, "no such group"),
                    Err(e) => p.reply_store_err(ctx, &e),
                },
            );
            p.reply_if_err(ctx, reloaded);
        }),
        chat_type::SERVICE => {
            if mt >= proto::msg_type::RECALL {
                return Err(bad("unknown msg_type"));
            }
            if !app.chat.is_agent(uid) {
                // A customer writes to customer service: their own conversation.
                let message = NewMessage {
                    conv_id: proto::service_conv(uid),
                    chat_type: chat_type::SERVICE,
                    to_id: 0,
                    ..base
                };
                return service_desk::customer_send(app, ctx, p, uid, message);
            }
            // An agent answers a customer they serve.
            if to_id == 0 || to_id == uid {
                return Err(bad("an agent's to_id is the customer's uid"));
            }
            service_desk::check_serves(&app.chat.desk, uid, to_id)?;
            let message = NewMessage {
                conv_id: proto::service_conv(to_id),
                chat_type: chat_type::SERVICE,
                ..base
            };
            submit(app, ctx, p, message);
            Ok(())
        }
        chat_type::CONSULT => {
            if mt >= proto::msg_type::RECALL {
                return Err(bad("unknown msg_type"));
            }
            // to_id names the consultation; the stored message's to_id is the other side.
            consult::with_live(app, ctx, p, to_id, move |app, ctx, p, sides| {
                if !sides.contains(&uid) {
                    return p.reply_err(ctx, code::FORBIDDEN, "not your consultation");
                }
                if let Err((c, m)) = consult::check_open(app, to_id) {
                    return p.reply_err(ctx, c, &m);
                }
                let other = if sides[0] == uid { sides[1] } else { sides[0] };
                let message = NewMessage {
                    conv_id: proto::consult_conv(to_id),
                    chat_type: chat_type::CONSULT,
                    to_id: other,
                    ..base
                };
                submit(app, ctx, p, message);
            })
        }
        _ => Err(bad("unknown chat_type")),
    }
}

/// Submits `message` once the store confirms its recipient `to_id` exists (404 otherwise).
fn submit_if_user_exists(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    to_id: u64,
    message: NewMessage,
) -> CmdResult {
    conn_job(
        app,
        ctx,
        p,
        move |s| s.existing_users(&[to_id]),
        move |app, ctx, p, r| match r {
            Ok(found) if !found.is_empty() => submit(app, ctx, p, message),
            Ok(_) => p.reply_err(ctx, code::NOT_FOUND, "no such user"),
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

/// Hands a validated, authorised message to the persister; the ack and the deliveries follow
/// the commit.
fn submit(app: &mut App, ctx: &mut dyn Ctx<Completion>, p: &Pending, message: NewMessage) {
    let p2 = p.clone();
    let r = app.persist(message, move |app, ctx, r| {
        if let Some(s) = app.chat.sessions.get_mut(&p2.conn) {
            s.pending = s.pending.saturating_sub(1);
        }
        acked(app, ctx, Some(&p2), r);
    });
    match r {
        Ok(()) => {
            if let Some(s) = app.chat.sessions.get_mut(&p.conn) {
                s.pending += 1;
            }
        }
        Err(_) => p.reply_err(
            ctx,
            code::UNAVAILABLE,
            "server busy, retry with the same client_msg_id",
        ),
    }
}

fn ack_data(m: &store::StoredMessage, duplicate: bool) -> Value {
    json!({ "msg_id": m.msg_id, "conv_id": m.conv_id, "seq": m.seq, "time": m.created_at, "duplicate": duplicate })
}

/// After the commit: ack the sender, deliver to everyone online (serialised once).
fn acked(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: Option<&Pending>,
    r: StoreResult<Appended>,
) {
    let a = match r {
        Ok(a) => a,
        Err(e) => {
            app.admin.emit(
                ctx,
                Topic::Error,
                || json!({ "kind": "persist", "msg": e.to_string() }),
            );
            if let Some(p) = p {
                p.reply_err(
                    ctx,
                    proto::store_code(&e),
                    &format!("{e}; retry with the same client_msg_id"),
                );
            }
            return;
        }
    };
    if let Some(p) = p {
        p.reply_raw(ctx, &proto::ack_json(&a.message, a.duplicate));
        METRICS
            .ack_seconds
            .observe_duration(ctx.now().saturating_duration_since(p.at));
    }
    if !a.duplicate {
        fan_out(app, ctx, &a.message, p.map(|p| p.conn));
        let m = &a.message;
        if m.chat_type == chat_type::SERVICE && m.to_id != 0 && m.from_id != m.to_id {
            // An agent's answer: a WeChat customer gets it through the customer-service API.
            crate::wechat::service::outbound(app, ctx, m);
        }
    }
}

fn fan_out(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    m: &store::StoredMessage,
    except: Option<ConnId>,
) {
    if let Some(c) = METRICS.messages.get(usize::from(m.chat_type)) {
        c.inc();
    }
    let bodies = app.admin.message_bodies();
    app.admin
        .emit(ctx, Topic::Message, || message_event(m, bodies));
    let payload = proto::message_push(m);
    if let Some(bus) = &app.bus {
        bus.publish(Target::Conv(m.conv_id.clone()), &payload);
    }
    let frame = Frame::text(payload.as_bytes());
    deliver_to_conv(app, ctx, m.conv_id.clone(), frame, except);
}

/// The `message` info topic's event: ids, conversation, sender, receiver, type and size; the
/// body only when `[admin] message_bodies` is on. A group message's `to_id` is the group, so it
/// goes out as `group_id`: `to_id` stays a user, and a subscriber's `uid=` (which matches `to_id`)
/// never picks up a group that happens to share a user's number.
fn message_event(m: &store::StoredMessage, with_body: bool) -> Value {
    let mut v = json!({
        "msg_id": m.msg_id,
        "conv_id": m.conv_id,
        "seq": m.seq,
        "chat_type": m.chat_type,
        "msg_type": m.msg_type,
        "from_id": m.from_id,
        "size": m.body.len(),
        "created_at": m.created_at,
    });
    let to = if m.chat_type == proto::chat_type::GROUP {
        "group_id"
    } else {
        "to_id"
    };
    v[to] = json!(m.to_id);
    if with_body {
        v["body"] = Value::String(m.body.clone());
    }
    v
}

/// Sends `frame` to every connection held here of the conversation's members (except one).
fn deliver_to_conv(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conv_id: String,
    frame: Frame,
    except: Option<ConnId>,
) {
    let recipients: Vec<u64> = match proto::parse_conv(&conv_id) {
        Some(ConvRef::Friend(a, b)) => vec![a, b],
        Some(ConvRef::Service(c)) => app.chat.service_recipients(c),
        // Loaded while either side is connected here.
        Some(ConvRef::Consult(id)) => app
            .chat
            .consults
            .sides(id)
            .map_or_else(Vec::new, |s| s.to_vec()),
        Some(ConvRef::Group(g)) => match app.chat.groups.get(&g) {
            Some(members) => members.to_vec(),
            None => {
                // Not cached (evicted or never loaded here): load, then deliver.
                app.job(
                    ctx,
                    move |s| s.group_members(g),
                    move |app, ctx, r| {
                        if let Ok(Some(members)) = r {
                            app.chat.groups.insert(g, Arc::new(members));
                            deliver_to_conv(app, ctx, conv_id, frame, except);
                        }
                    },
                );
                return;
            }
        },
        None => return,
    };
    let mut delivered = 0;
    for uid in recipients {
        for c in app.chat.conns_of(uid) {
            if Some(*c) != except && ctx.send(*c, &frame) {
                delivered += 1;
            }
        }
    }
    METRICS.deliveries.add(delivered);
}

fn cmd_page(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
    forward: bool,
) -> CmdResult {
    let conv_id = cmd.str("conv_id").map_err(bad)?.to_string();
    let limit = cmd.u64_or("limit", 50).map_err(bad)?.clamp(1, MAX_PAGE) as u32;
    let cursor = if forward {
        cmd.u64_or("after_seq", 0).map_err(bad)?
    } else {
        cmd.u64_or("before_seq", 0).map_err(bad)?
    };
    let conv = conv_id.clone();
    // A group member added later reads from their join on (unless the group shows its history).
    let group = match proto::parse_conv(&conv_id) {
        Some(ConvRef::Group(g)) => Some(g),
        _ => None,
    };
    with_conv_access(app, ctx, p, uid, &conv, move |app, ctx, p, _| {
        let conv = conv_id.clone();
        let r = conn_job(
            app,
            ctx,
            p,
            move |s| {
                let floor = match group {
                    Some(g) => s.group_history_floor(g, uid)?,
                    None => 0,
                };
                if forward {
                    s.sync(&conv, membership::sync_after(cursor, floor), limit + 1)
                } else {
                    let mut page = s.history(&conv, cursor, limit + 1)?;
                    membership::trim_history(&mut page, floor);
                    Ok(page)
                }
            },
            move |_app, ctx, p, r| match r {
                Ok(mut ms) => {
                    let has_more = ms.len() > limit as usize;
                    ms.truncate(limit as usize);
                    let data = format!(
                        "{{\"conv_id\":{},\"messages\":{},\"has_more\":{has_more}}}",
                        Value::from(conv_id.as_str()),
                        proto::messages_json(&ms)
                    );
                    p.reply_raw(ctx, &data);
                }
                Err(e) => p.reply_store_err(ctx, &e),
            },
        );
        p.reply_if_err(ctx, r);
    })
}

/// The other side of a conversation whose profile its line shows: the friend of a one-to-one
/// chat, the customer of a service conversation seen by an agent.
fn peer_of(conv_id: &str, uid: u64) -> Option<u64> {
    match proto::parse_conv(conv_id)? {
        ConvRef::Friend(a, b) => Some(if a == uid { b } else { a }),
        ConvRef::Service(c) if c != uid => Some(c),
        _ => None,
    }
}

fn cmd_conversations(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
) -> CmdResult {
    conn_job(
        app,
        ctx,
        p,
        move |s| -> StoreResult<(Vec<store::ConversationSummary>, HashMap<u64, store::User>)> {
            let list = s.conversations(uid, 500)?;
            let mut peers: Vec<u64> = list
                .iter()
                .filter_map(|c| peer_of(&c.conv_id, uid))
                .collect();
            peers.sort_unstable();
            peers.dedup();
            let users = s.users(&peers)?.into_iter().map(|u| (u.uid, u)).collect();
            Ok((list, users))
        },
        move |_app, ctx, p, r| match r {
            Ok((list, users)) => {
                let items: Vec<String> = list
                .iter()
                .map(|c| {
                    let peer = peer_of(&c.conv_id, uid)
                        .and_then(|u| users.get(&u))
                        .map_or_else(|| "null".to_string(), |u| profile::view(u).to_string());
                    format!(
                        "{{\"conv_id\":{},\"chat_type\":{},\"last_seq\":{},\"read_seq\":{},\"unread\":{},\"last\":{},\"peer\":{}}}",
                        Value::from(c.conv_id.as_str()),
                        c.chat_type,
                        c.last_seq,
                        c.read_seq,
                        c.last_seq - c.read_seq,
                        c.last.as_ref().map_or_else(|| "null".to_string(), proto::message_json),
                        peer
                    )
                })
                .collect();
                p.reply_raw(ctx, &format!("{{\"conversations\":[{}]}}", items.join(",")));
            }
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

fn cmd_read(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let conv_id = cmd.str("conv_id").map_err(bad)?.to_string();
    let seq = cmd.u64("seq").map_err(bad)?;
    let conv = conv_id.clone();
    with_conv_access(app, ctx, p, uid, &conv, move |app, ctx, p, members| {
        let conv = conv_id.clone();
        let r = conn_job(
            app,
            ctx,
            p,
            move |s| s.mark_read(uid, &conv, seq),
            move |app, ctx, p, r| match r {
                Ok(store::ReadMark { read_seq, moved }) => {
                    p.reply_ok(ctx, &json!({ "conv_id": conv_id, "read_seq": read_seq }));
                    // One-to-one: the peer sees the receipt, once per move of the cursor (a
                    // repeated or backward read tells them nothing new). Groups: counted
                    // (read_count).
                    if moved && members.len() == 2 && conv_id.starts_with("p_") {
                        let payload = proto::push(
                            "read",
                            &json!({ "conv_id": conv_id, "uid": uid, "seq": read_seq }),
                        );
                        let peers: Vec<u64> =
                            members.iter().copied().filter(|m| *m != uid).collect();
                        push_users(app, ctx, &peers, &payload);
                    }
                }
                Err(e) => p.reply_store_err(ctx, &e),
            },
        );
        p.reply_if_err(ctx, r);
    })
}

/// Recalls one's own message within `[chat] recall_window_s`: the original's body is blanked and
/// a recall event (msg_type 100) takes the next seq, so every member learns of it through the
/// usual delivery or `sync`.
fn cmd_recall(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let conv_id = cmd.str("conv_id").map_err(bad)?.to_string();
    let msg_id = cmd.u64("msg_id").map_err(bad)?;
    let window_ms = app.config.chat.recall_window_s as i64 * 1000;
    let conv = conv_id.clone();
    with_conv_access(app, ctx, p, uid, &conv, move |app, ctx, p, _| {
        let conv = conv_id.clone();
        let r = conn_job(
            app,
            ctx,
            p,
            move |s| -> Result<store::StoredMessage, (u16, String)> {
                let m = s
                    .message(msg_id)
                    .map_err(|e| (proto::store_code(&e), e.to_string()))?
                    .filter(|m| m.conv_id == conv)
                    .ok_or((
                        code::NOT_FOUND,
                        "no such message in this conversation".to_string(),
                    ))?;
                if m.from_id != uid {
                    return Err((
                        code::FORBIDDEN,
                        "only the sender may recall a message".into(),
                    ));
                }
                if m.body == "null" || m.msg_type == proto::msg_type::RECALL {
                    return Err((code::CONFLICT, "already recalled".into()));
                }
                if store::now_ms() - m.created_at > window_ms {
                    return Err((code::CONFLICT, "the recall window has passed".into()));
                }
                s.blank_message(msg_id)
                    .map_err(|e| (proto::store_code(&e), e.to_string()))?;
                Ok(m)
            },
            move |app, ctx, p, r| match r {
                Ok(m) => {
                    let event = NewMessage {
                        conv_id: m.conv_id.clone(),
                        chat_type: m.chat_type,
                        from_id: uid,
                        to_id: m.to_id,
                        msg_type: proto::msg_type::RECALL,
                        body: json!({ "msg_id": m.msg_id, "seq": m.seq }).to_string(),
                        client_msg_id: None,
                        created_at: store::now_ms(),
                    };
                    submit(app, ctx, p, event);
                }
                Err((c, msg)) => p.reply_err(ctx, c, &msg),
            },
        );
        p.reply_if_err(ctx, r);
    })
}

/// How many members have read a conversation up to `seq` (group read receipts are counted).
fn cmd_read_count(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let conv_id = cmd.str("conv_id").map_err(bad)?.to_string();
    let seq = cmd.u64("seq").map_err(bad)?;
    let conv = conv_id.clone();
    with_conv_access(app, ctx, p, uid, &conv, move |app, ctx, p, members| {
        let conv = conv_id.clone();
        let total = members.len();
        let r = conn_job(
            app,
            ctx,
            p,
            move |s| s.read_count(&conv, seq),
            move |_app, ctx, p, r| match r {
                Ok(n) => p.reply_ok(
                    ctx,
                    &json!({ "conv_id": conv_id, "seq": seq, "read": n, "members": total }),
                ),
                Err(e) => p.reply_store_err(ctx, &e),
            },
        );
        p.reply_if_err(ctx, r);
    })
}

fn cmd_typing(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let conv_id = cmd.str("conv_id").map_err(bad)?.to_string();
    let conv = conv_id.clone();
    with_conv_access(app, ctx, p, uid, &conv, move |app, ctx, p, members| {
        if let Some(ConvRef::Service(c)) = proto::parse_conv(&conv_id) {
            if c != uid {
                if let Err((code, msg)) = service_desk::check_serves(&app.chat.desk, uid, c) {
                    return p.reply_err(ctx, code, &msg);
                }
                crate::wechat::service::typing(app, ctx, c);
            }
        }
        let payload = proto::push("typing", &json!({ "conv_id": conv_id, "uid": uid }));
        let others: Vec<u64> = members.iter().copied().filter(|m| *m != uid).collect();
        push_users(app, ctx, &others, &payload);
        p.reply_ok(ctx, &json!({}));
    })
}

fn cmd_presence(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let uids = cmd.u64_list("uids").map_err(bad)?;
    let friends = app.chat.friends.get(&uid).cloned().unwrap_or_default();
    let asked: Vec<u64> = uids.into_iter().filter(|u| friends.contains(u)).collect();
    let p = p.clone();
    presence::lookup(app, ctx, asked.clone(), move |_app, ctx, r| match r {
        Ok(online) => {
            let out: serde_json::Map<String, Value> = asked
                .iter()
                .map(|u| (u.to_string(), Value::from(online.contains(u))))
                .collect();
            p.reply_ok(ctx, &json!({ "online": out }));
        }
        Err(e) => p.reply_store_err(ctx, &e),
    });
    Ok(())
}

/// These users in this order with their profiles (loaded on a worker).
fn with_profiles(s: &Backends, uids: Vec<u64>) -> StoreResult<Vec<(u64, Option<store::User>)>> {
    let mut found: HashMap<u64, store::User> =
        s.users(&uids)?.into_iter().map(|u| (u.uid, u)).collect();
    Ok(uids.into_iter().map(|u| (u, found.remove(&u))).collect())
}

/// A friend or member line: who, how they are called, and whether they are online.
fn person(uid: u64, user: &Option<store::User>, online: bool) -> Value {
    let (name, head_img) = user
        .as_ref()
        .map_or(("", ""), |u| (u.name.as_str(), u.head_img.as_str()));
    json!({ "uid": uid, "name": name, "head_img": head_img, "online": online })
}

fn cmd_friends(app: &mut App, ctx: &mut dyn Ctx<Completion>, p: &Pending, uid: u64) -> CmdResult {
    conn_job(
        app,
        ctx,
        p,
        move |s| with_profiles(s, s.friends(uid)?),
        |app, ctx, p, r| match r {
            Ok(list) => {
                let p = p.clone();
                let uids: Vec<u64> = list.iter().map(|(u, _)| *u).collect();
                presence::lookup_or_local(app, ctx, uids, move |_app, ctx, online| {
                    let items: Vec<Value> = list
                        .iter()
                        .map(|(f, user)| person(*f, user, online.contains(f)))
                        .collect();
                    p.reply_ok(ctx, &json!({ "friends": items }));
                });
            }
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

fn push_to_user(app: &App, ctx: &mut dyn Ctx<Completion>, uid: u64, text: &str) {
    push_users(app, ctx, &[uid], text);
}

fn cmd_friend_request(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let to = cmd.u64("to_id").map_err(bad)?;
    if to == uid {
        return Err(bad("cannot befriend yourself"));
    }
    if app.chat.friends.get(&uid).is_some_and(|f| f.contains(&to)) {
        return Err((code::CONFLICT, "already friends".into()));
    }
    let note: String = cmd
        .opt_str("note")
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    let note2 = note.clone();
    conn_job(
        app,
        ctx,
        p,
        move |s| -> StoreResult<bool> {
            if s.existing_users(&[to])?.is_empty() {
                return Ok(false);
            }
            s.add_friend_request(uid, to, &note2)?;
            Ok(true)
        },
        move |app, ctx, p, r| match r {
            Ok(true) => {
                p.reply_ok(ctx, &json!({}));
                let push = proto::push(
                    "friend_request",
                    &json!({ "from_id": uid, "note": note, "time": store::now_ms() }),
                );
                push_to_user(app, ctx, to, &push);
            }
            Ok(false) => p.reply_err(ctx, code::NOT_FOUND, "no such user"),
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

/// Records a friendship in the caches and tells both sides.
fn friendship_made(app: &mut App, ctx: &mut dyn Ctx<Completion>, a: u64, b: u64) {
    for (x, y) in [(a, b), (b, a)] {
        if let Some(f) = app.chat.friends.get_mut(&x) {
            f.insert(y);
        }
        let push = proto::push(
            "friend_added",
            &json!({ "uid": y, "online": app.chat.is_online(y) }),
        );
        push_to_user(app, ctx, x, &push);
    }
}

fn friendship_ended(app: &mut App, ctx: &mut dyn Ctx<Completion>, a: u64, b: u64) {
    for (x, y) in [(a, b), (b, a)] {
        if let Some(f) = app.chat.friends.get_mut(&x) {
            f.remove(&y);
        }
        push_to_user(
            app,
            ctx,
            x,
            &proto::push("friend_removed", &json!({ "uid": y })),
        );
    }
}

fn cmd_friend_accept(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let from = cmd.u64("from_id").map_err(bad)?;
    conn_job(
        app,
        ctx,
        p,
        move |s| -> StoreResult<bool> {
            if !s.take_friend_request(from, uid)? {
                return Ok(false);
            }
            s.add_friendship(from, uid)?;
            Ok(true)
        },
        move |app, ctx, p, r| match r {
            Ok(true) => {
                p.reply_ok(ctx, &json!({ "uid": from }));
                friendship_made(app, ctx, from, uid);
            }
            Ok(false) => p.reply_err(ctx, code::NOT_FOUND, "no pending request from that user"),
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

fn cmd_friend_requests(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
) -> CmdResult {
    conn_job(
        app,
        ctx,
        p,
        move |s| s.friend_requests(uid),
        |_app, ctx, p, r| match r {
            Ok(list) => {
                let items: Vec<Value> = list
                    .into_iter()
                    .map(
                        |(from, note, time)| json!({ "from_id": from, "note": note, "time": time }),
                    )
                    .collect();
                p.reply_ok(ctx, &json!({ "requests": items }));
            }
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

fn cmd_friend_remove(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let other = cmd.u64("uid").map_err(bad)?;
    conn_job(
        app,
        ctx,
        p,
        move |s| s.remove_friendship(uid, other),
        move |app, ctx, p, r| match r {
            Ok(()) => {
                p.reply_ok(ctx, &json!({}));
                friendship_ended(app, ctx, uid, other);
            }
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

fn cmd_groups(app: &mut App, ctx: &mut dyn Ctx<Completion>, p: &Pending, uid: u64) -> CmdResult {
    conn_job(
        app,
        ctx,
        p,
        move |s| s.groups_of(uid),
        |_app, ctx, p, r| match r {
            Ok(list) => p.reply_ok(ctx, &json!({ "groups": list })),
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

/// Tells every online member about a membership change.
fn push_group_event(
    app: &App,
    ctx: &mut dyn Ctx<Completion>,
    gid: u64,
    event: &str,
    uids: &[u64],
    notify: &[u64],
) {
    let payload = proto::push(
        "group_event",
        &json!({ "group_id": gid, "event": event, "uids": uids }),
    );
    push_users(app, ctx, notify, &payload);
}

fn create_group(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    owner: u64,
    name: String,
    members: Vec<u64>,
    history_for_new_members: bool,
    done: impl FnOnce(&mut App, &mut dyn Ctx<Completion>, Result<Value, (u16, String)>) + Send + 'static,
) -> bool {
    let max = app.config.chat.max_group_members;
    app.job(
        ctx,
        move |s| -> Result<(store::Group, Vec<u64>), (u16, String)> {
            let mut wanted: Vec<u64> = members.clone();
            wanted.push(owner);
            wanted.sort_unstable();
            wanted.dedup();
            if wanted.len() > max {
                return Err((
                    code::BAD_REQUEST,
                    format!("a group has at most {max} members"),
                ));
            }
            let existing = s
                .existing_users(&wanted)
                .map_err(|e| (proto::store_code(&e), e.to_string()))?;
            if existing.len() != wanted.len() {
                return Err((code::NOT_FOUND, "some of those users do not exist".into()));
            }
            let g = s
                .create_group(owner, &name, &wanted, history_for_new_members)
                .map_err(|e| (proto::store_code(&e), e.to_string()))?;
            Ok((g, wanted))
        },
        move |app, ctx, r| match r {
            Ok((g, members)) => {
                app.chat
                    .groups
                    .insert(g.group_id, Arc::new(members.clone()));
                push_group_event(app, ctx, g.group_id, "created", &members, &members);
                done(app, ctx, Ok(json!({ "group": g, "members": members })));
            }
            Err(e) => done(app, ctx, Err(e)),
        },
    )
}

fn cmd_group_create(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let name = cmd.str("name").map_err(bad)?.trim().to_string();
    if name.is_empty() || name.len() > 128 {
        return Err(bad("name must be 1-128 bytes"));
    }
    let members = cmd.u64_list("members").map_err(bad)?;
    let history =
        membership::history_option(cmd.fields.get("history_for_new_members")).map_err(bad)?;
    let p2 = p.clone();
    if create_group(
        app,
        ctx,
        uid,
        name,
        members,
        history,
        move |_app, ctx, r| match r {
            Ok(v) => p2.reply_ok(ctx, &v),
            Err((c, m)) => p2.reply_err(ctx, c, &m),
        },
    ) {
        Ok(())
    } else {
        Err((code::UNAVAILABLE, "server busy, retry".into()))
    }
}

fn cmd_group_members(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let gid = cmd.u64("group_id").map_err(bad)?;
    with_members(app, ctx, p, gid, move |app, ctx, p, members| {
        if members.binary_search(&uid).is_err() {
            return p.reply_err(ctx, code::FORBIDDEN, "not a member of this group");
        }
        let ids = members.to_vec();
        let r = conn_job(
            app,
            ctx,
            p,
            move |s| with_profiles(s, ids),
            move |app, ctx, p, r| match r {
                Ok(list) => {
                    let p = p.clone();
                    let uids: Vec<u64> = list.iter().map(|(u, _)| *u).collect();
                    presence::lookup_or_local(app, ctx, uids, move |_app, ctx, online| {
                        let items: Vec<Value> = list
                            .iter()
                            .map(|(m, user)| person(*m, user, online.contains(m)))
                            .collect();
                        p.reply_ok(ctx, &json!({ "group_id": gid, "members": items }));
                    });
                }
                Err(e) => p.reply_store_err(ctx, &e),
            },
        );
        p.reply_if_err(ctx, r);
    })
}

fn cmd_group_invite(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let gid = cmd.u64("group_id").map_err(bad)?;
    let uids = cmd.u64_list("uids").map_err(bad)?;
    if uids.is_empty() {
        return Err(bad("uids is empty"));
    }
    with_members(app, ctx, p, gid, move |app, ctx, p, members| {
        if members.binary_search(&uid).is_err() {
            p.reply_err(ctx, code::FORBIDDEN, "not a member of this group");
            return;
        }
        if members.len() + uids.len() > app.config.chat.max_group_members {
            p.reply_err(
                ctx,
                code::BAD_REQUEST,
                "the group would be over its member limit",
            );
            return;
        }
        add_members(app, ctx, gid, uids, p.clone());
    })
}

fn add_members(app: &mut App, ctx: &mut dyn Ctx<Completion>, gid: u64, uids: Vec<u64>, p: Pending) {
    let uids2 = uids.clone();
    let r = conn_job(
        app,
        ctx,
        &p,
        move |s| -> StoreResult<Vec<u64>> {
            let existing = s.existing_users(&uids2)?;
            s.add_group_members(gid, &existing)?;
            Ok(existing)
        },
        move |app, ctx, p, r| match r {
            Ok(added) => {
                app.chat.groups.remove(&gid);
                p.reply_ok(ctx, &json!({ "group_id": gid, "added": added }));
                notify_membership(app, ctx, gid, "joined", added);
            }
            Err(e) => p.reply_store_err(ctx, &e),
        },
    );
    if let Err((c, m)) = r {
        p.reply_err(ctx, c, &m);
    }
}

/// Reloads the member list, then tells every member (including those who just left) what changed.
fn notify_membership(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    gid: u64,
    event: &'static str,
    uids: Vec<u64>,
) {
    app.chat.groups.remove(&gid);
    app.job(
        ctx,
        move |s| s.group_members(gid),
        move |app, ctx, r| {
            if let Ok(Some(members)) = r {
                let notify = membership::audience(&members, &uids);
                app.chat.groups.insert(gid, Arc::new(members));
                push_group_event(app, ctx, gid, event, &uids, &notify);
            }
        },
    );
}

fn cmd_group_leave(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let gid = cmd.u64("group_id").map_err(bad)?;
    conn_job(
        app,
        ctx,
        p,
        move |s| s.remove_group_member(gid, uid),
        move |app, ctx, p, r| match r {
            Ok(()) => {
                p.reply_ok(ctx, &json!({ "group_id": gid }));
                notify_membership(app, ctx, gid, "left", vec![uid]);
            }
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Server API (business backend, authenticated by the API key): POST /api/server/{action}

fn field_u64(body: &Value, name: &str) -> Result<u64, (u16, String)> {
    body.get(name)
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| bad(format!("missing or bad \"{name}\"")))
}

fn field_list(body: &Value, name: &str) -> Result<Vec<u64>, (u16, String)> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| bad(format!("\"{name}\" must list user ids")))
            })
            .collect(),
        _ => Err(bad(format!("\"{name}\" must be an array"))),
    }
}

/// Answers a deferred server-API request from a store job's result.
fn respond_job<R: Send + 'static>(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    work: impl FnOnce(&Backends) -> Result<R, StoreError> + Send + 'static,
    then: impl FnOnce(&mut App, &mut dyn Ctx<Completion>, R) -> Value + Send + 'static,
) -> crate::net::Reply {
    let ok = app.job(ctx, work, move |app, ctx, r| {
        let resp = match r {
            Ok(v) => api_ok(then(app, ctx, v)),
            Err(e) => api_error(proto::store_code(&e), &e.to_string()),
        };
        ctx.respond(conn, resp);
    });
    crate::app::later_or_busy(ok)
}

pub fn server_api(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    action: &str,
    body: Value,
) -> crate::net::Reply {
    use crate::net::Reply;
    let result: Result<Reply, (u16, String)> = (|| match action {
        "consult_create" | "consult_extend" | "consult_get" | "consult_end" => {
            consult::server_api(app, ctx, conn, action, &body)
        }
        "user" => {
            let text = |name: &str| -> Result<Option<String>, (u16, String)> {
                match body.get(name) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(bad(format!("\"{name}\" must be a string"))),
                }
            };
            let user_type = match body.get("user_type") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => {
                    Some(crate::profile::user_type(&n.to_string()).map_err(bad)?)
                }
                Some(Value::String(s)) => Some(crate::profile::user_type(s).map_err(bad)?),
                Some(_) => return Err(bad(crate::profile::user_type("").unwrap_err())),
            };
            let profile = crate::app::profile_of(
                text("name")?.as_deref(),
                text("head_img")?.as_deref(),
                user_type,
            )
            .map_err(bad)?;
            let ttl = app.config.auth.token_ttl_s;
            let issued = |app: &mut App, ctx: &mut dyn Ctx<Completion>, i: crate::app::Issued| {
                if i.profile_changed {
                    profile::changed(app, ctx, &i.user);
                }
                i.data
            };
            // A user known by wxchat's uid (a WeChat user has no app_uid) is updated in place.
            if body.get("uid").is_some_and(|v| !v.is_null()) {
                let uid = field_u64(&body, "uid")?;
                if profile.user_type.is_some() {
                    return Err(bad("user_type is set by app_uid only"));
                }
                return Ok(respond_job(
                    app,
                    ctx,
                    conn,
                    move |s| crate::app::issue_token_for_uid(s, uid, &profile, ttl),
                    issued,
                ));
            }
            let app_uid = body.get("app_uid").and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
            let app_uid = app_uid
                .filter(|s| !s.is_empty() && s.len() <= 64)
                .ok_or_else(|| bad("missing app_uid (or uid)"))?;
            Ok(respond_job(
                app,
                ctx,
                conn,
                move |s| crate::app::issue_token(s, &app_uid, &profile, false, ttl),
                issued,
            ))
        }
        "send" => {
            let from = field_u64(&body, "from_id")?;
            let ct = field_u64(&body, "chat_type")?;
            let to = field_u64(&body, "to_id")?;
            let mt =
                u8::try_from(field_u64(&body, "msg_type")?).map_err(|_| bad("unknown msg_type"))?;
            let msg = body.get("msg").cloned().unwrap_or(Value::Null);
            let text = proto::validate_body(mt, &msg, &app.chat.body_limits)?;
            let conv_id = match u8::try_from(ct).unwrap_or(u8::MAX) {
                chat_type::FRIEND if from != to => proto::friend_conv(from, to),
                chat_type::GROUP => proto::group_conv(to),
                _ => {
                    return Err(bad(
                        "chat_type must be 0 (friend, to another user) or 1 (group)",
                    ))
                }
            };
            let m = NewMessage {
                conv_id,
                chat_type: ct as u8,
                from_id: from,
                to_id: to,
                msg_type: mt,
                body: text,
                // The same rule as a client's send: 1-64 bytes, or a number.
                client_msg_id: proto::client_msg_id_of(body.get("client_msg_id").cloned())
                    .map_err(bad)?,
                created_at: store::now_ms(),
            };
            let r = app.persist(m, move |app, ctx, r| {
                let resp = match &r {
                    Ok(a) => api_ok(ack_data(&a.message, a.duplicate)),
                    Err(e) => api_error(proto::store_code(e), &e.to_string()),
                };
                ctx.respond(conn, resp);
                acked(app, ctx, None, r);
            });
            match r {
                Ok(()) => Ok(Reply::Later),
                Err(_) => Err((code::UNAVAILABLE, "server busy, retry".into())),
            }
        }
        "group_create" => {
            let owner = field_u64(&body, "owner_id")?;
            let name = body
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .to_string();
            if name.is_empty() || name.len() > 128 {
                return Err(bad("name must be 1-128 bytes"));
            }
            let members = field_list(&body, "members")?;
            let history =
                membership::history_option(body.get("history_for_new_members")).map_err(bad)?;
            if create_group(
                app,
                ctx,
                owner,
                name,
                members,
                history,
                move |_app, ctx, r| {
                    ctx.respond(
                        conn,
                        match r {
                            Ok(v) => api_ok(v),
                            Err((c, m)) => api_error(c, &m),
                        },
                    )
                },
            ) {
                Ok(Reply::Later)
            } else {
                Err((code::UNAVAILABLE, "server busy, retry".into()))
            }
        }
        "group_add" => {
            let gid = field_u64(&body, "group_id")?;
            let uids = field_list(&body, "uids")?;
            Ok(respond_job(
                app,
                ctx,
                conn,
                move |s| {
                    let existing = s.existing_users(&uids)?;
                    s.add_group_members(gid, &existing)?;
                    Ok(existing)
                },
                move |app, ctx, added| {
                    notify_membership(app, ctx, gid, "joined", added.clone());
                    json!({ "group_id": gid, "added": added })
                },
            ))
        }
        "group_remove" => {
            let gid = field_u64(&body, "group_id")?;
            let uid = field_u64(&body, "uid")?;
            Ok(respond_job(
                app,
                ctx,
                conn,
                move |s| s.remove_group_member(gid, uid),
                move |app, ctx, ()| {
                    notify_membership(app, ctx, gid, "left", vec![uid]);
                    json!({ "group_id": gid })
                },
            ))
        }
        "friend_add" | "friend_remove" => {
            let a = field_u64(&body, "uid")?;
            let b = field_u64(&body, "friend_id")?;
            if a == b {
                return Err(bad("uid and friend_id must differ"));
            }
            let add = action == "friend_add";
            Ok(respond_job(
                app,
                ctx,
                conn,
                move |s| {
                    if add {
                        if s.existing_users(&[a, b])?.len() != 2 {
                            return Err(StoreError::NotFound("user"));
                        }
                        s.add_friendship(a, b)
                    } else {
                        s.remove_friendship(a, b)
                    }
                },
                move |app, ctx, ()| {
                    if add {
                        friendship_made(app, ctx, a, b);
                    } else {
                        friendship_ended(app, ctx, a, b);
                    }
                    json!({})
                },
            ))
        }
        "kick" => {
            let uid = field_u64(&body, "uid")?;
            let closed = kick_local(app, ctx, uid);
            if let Some(bus) = &app.bus {
                bus.publish(Target::Kick(uid), "");
            }
            // `closed` counts this process's connections; the others close theirs.
            Ok(Reply::Now(api_ok(json!({ "uid": uid, "closed": closed }))))
        }
        "wx_check" => Ok(crate::wechat::login::check(app, ctx, conn, &body)),
        "online" => {
            let uids = field_list(&body, "uids")?;
            let answer = |app: &App, uids: &[u64], r: StoreResult<HashSet<u64>>| match r {
                Ok(online) => {
                    let out: serde_json::Map<String, Value> = uids
                        .iter()
                        .map(|u| (u.to_string(), Value::from(online.contains(u))))
                        .collect();
                    // total_online counts this process's users.
                    api_ok(json!({ "online": out, "total_online": app.chat.online.len() }))
                }
                Err(e) => api_error(proto::store_code(&e), &e.to_string()),
            };
            if app.backends.presence.is_local() {
                let r = app.backends.presence.online(&uids);
                return Ok(Reply::Now(answer(
                    app,
                    &uids,
                    r.map(|v| v.into_iter().collect()),
                )));
            }
            presence::lookup(app, ctx, uids.clone(), move |app, ctx, r| {
                ctx.respond(conn, answer(app, &uids, r));
            });
            Ok(Reply::Later)
        }
        _ => Err((
            code::NOT_FOUND,
            format!("unknown server API action {action:?}"),
        )),
    })();
    match result {
        Ok(r) => r,
        Err((c, m)) => Reply::Now(api_error(c, &m)),
    }
}
