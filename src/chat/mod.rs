//! The chat hub: sessions, authentication, authorisation, sending with durable ordered delivery,
//! catch-up, friends, groups and presence. Runs on the reactor; everything that touches the store
//! goes through `App::job` (workers) or `App::persist` (the persister).
//!
//! This file is the command dispatch only (`on_message`, `run_command`, `admit`). One job per
//! file below it: `state` (the hub's state, held by the state owner), `request` (a command on
//! its way, `conn_job`), `session` (connections and authentication), `send` (admission, commit,
//! ack, fan-out), `conversation` (sync, history, conversations, receipts, recall, typing,
//! presence), `social` (friends and groups), `admission` (the send pipeline's rules, pure), and the features: customer service (`desk` pure,
//! `service_desk` carrying it out), `consult` (`consult_clock` pure), `visitor`, `wechat_cs`
//! (WeChat users' customer service, both ways), `presence`, `profile`, `membership` (pure),
//! `office_hours` (pure).
//!
//! Layer: above the state owner (`rt`), below `login` and the router. The pure cores (`state`,
//! `desk`, `consult_clock`, `membership`, `office_hours`) sit below `rt`, which holds the state:
//! they import nothing above `rt::timer`.

pub mod admission;
pub mod consult;
pub mod consult_clock;
pub mod conversation;
pub mod desk;
pub mod desk_lease;
pub mod membership;
pub mod office_hours;
pub mod presence;
pub mod profile;
pub mod push;
pub mod request;
pub mod send;
pub mod service_desk;
pub mod session;
pub mod social;
pub mod state;
pub mod visitor;
pub mod wechat_cs;
pub mod wechat_out;

use crate::net::{ConnId, Ctx, Message};
use crate::proto::Failure;
use crate::proto::{self, code, Command};
use crate::rt::{App, Completion};
use crate::store;
use conversation::*;
use request::{conn_job, Pending};
use send::{cmd_send, SendInput};
use serde_json::json;
use session::{authenticate, check_access_token, refuse_token, wait_for_auth, TokenCheck};
use social::*;

pub use push::push_to_users;
pub use send::{deliver_committed, deliver_remote};
pub use session::{on_close, on_shutdown, token_revoked};

pub use crate::store::{
    USER_TYPE_AGENT, USER_TYPE_CONSULTANT, USER_TYPE_CONVERTED, USER_TYPE_VISITOR,
};

/// A chat WebSocket opened (authenticated at once by a `?token=` or the login cookie).
pub fn on_open(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    req: &crate::http::Request,
) {
    session::on_open(app, ctx, conn, req, replay);
}

/// A frame that waited for the connection's authentication, run now.
fn replay(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, text: &str) {
    on_message(app, ctx, conn, Message::Text(text));
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
            let p = Pending::local(conn, "send".into(), req_id, ctx.now());
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
    let Some(mut cmd) = crate::rt::reply::chat_command_of(ctx, conn, message) else {
        return;
    };
    let p = Pending::local(conn, cmd.cmd.clone(), cmd.req_id.clone(), ctx.now());
    if cmd.cmd == "ping" {
        p.reply_ok(ctx, &json!({ "time": store::now_ms() }));
        return;
    }
    if cmd.cmd == "auth" {
        match cmd.str("token") {
            Ok(t) => authenticate(app, ctx, p, t.to_string(), replay),
            Err(e) => p.reply_err(ctx, code::BAD_REQUEST, &e),
        }
        return;
    }
    if let Some(token) = cmd.fields.remove("access_token") {
        match check_access_token(app, ctx, &p, &token, text, replay) {
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

/// An operation for the customer-service desk from another node (`desk_lease`).
pub fn desk_op(app: &mut App, ctx: &mut dyn Ctx<Completion>, origin: &str, op: &str) {
    desk_lease::handle(app, ctx, origin, op, run_command);
}

/// The reactor started: the desk's lease (with a bus) is polled from now on.
pub fn start_desk(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    desk_lease::start(app, ctx, run_command);
}

/// Runs an admitted command of an authenticated user.
fn run_command(app: &mut App, ctx: &mut dyn Ctx<Completion>, p: &Pending, uid: u64, cmd: &Command) {
    let conv_id = cmd
        .fields
        .get("conv_id")
        .and_then(serde_json::Value::as_str);
    if p.origin.is_none() && push::runs_on_desk(app, &cmd.cmd, None, conv_id) {
        let mut object = cmd.fields.clone();
        object.insert("cmd".into(), json!(cmd.cmd));
        if let Some(id) = &cmd.req_id {
            object.insert("req_id".into(), id.clone());
        }
        push::forward_to_desk(app, ctx, p, uid, serde_json::Value::Object(object));
        return;
    }
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
        _ => Err(Failure(
            code::BAD_REQUEST,
            format!("unknown cmd {:?}", cmd.cmd),
        )),
    };
    if let Err(Failure(c, m)) = result {
        p.reply_err(ctx, c, &m);
    }
}

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

// ---------------------------------------------------------------------------------------------
// Server API (business backend, authenticated by the API key): POST /api/server/{action}
