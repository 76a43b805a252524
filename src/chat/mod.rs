//! The chat hub: sessions, authentication, authorisation, sending with durable ordered delivery,
//! catch-up, friends, groups and presence. Runs on the reactor; everything that touches the store
//! goes through `App::job` (workers) or `App::persist` (the persister).
//!
//! This file holds the hub's state (`ChatState`, `Session`, `Pending`), the command dispatch
//! (`on_message`, `admit`) and the helpers every command uses (`conn_job`, `bad`). One job per
//! file below it: `session` (connections and authentication), `send` (admission, commit, ack,
//! fan-out), `conversation` (sync, history, conversations, receipts, recall, typing, presence),
//! `social` (friends and groups), `server_api`, and the features: customer service (`desk` pure,
//! `service_desk` carrying it out), `consult`, `visitor`, `presence`, `profile`, `membership`,
//! `office_hours`, `persister`.

pub mod consult;
mod conversation;
pub mod desk;
pub mod membership;
pub mod office_hours;
pub mod persister;
pub mod presence;
pub mod profile;
mod send;
mod server_api;
pub mod service_desk;
mod session;
mod social;
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

use conversation::*;
use send::*;
pub use send::{deliver_committed, deliver_remote, push_to_users};
pub use server_api::server_api;
use session::*;
pub use session::{on_close, on_open, on_shutdown, token_revoked};
use social::*;

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

// ---------------------------------------------------------------------------------------------
// Server API (business backend, authenticated by the API key): POST /api/server/{action}
