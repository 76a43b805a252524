//! Pushes to users wherever they are connected: this process's connections (one frame, shared)
//! and, with the bus, the other processes'.

use super::request::Pending;
use crate::chat::state::Forwarded;
use crate::cluster::bus::Target;
use crate::net::{Ctx, Frame};
use crate::proto::code;
use crate::rt::{App, Completion};
use serde_json::{json, Value};
use std::time::Duration;

/// Sends one push to these users' connections on this process and, with the bus, on the others.
pub(crate) fn push_users(app: &App, ctx: &mut dyn Ctx<Completion>, uids: &[u64], payload: &str) {
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

/// Sends one push to one user wherever they are connected.
pub(crate) fn push_to_user(app: &App, ctx: &mut dyn Ctx<Completion>, uid: u64, text: &str) {
    push_users(app, ctx, &[uid], text);
}

/// Sends an operation to the node holding the customer-service desk (`desk_lease`); dropped
/// while nobody is known to hold it (the senders' next snapshot or retry heals that).
pub(crate) fn to_desk(app: &App, op: &Value) {
    if let (Some(bus), Some(owner)) = (&app.bus, app.chat.role.owner.as_deref()) {
        if owner != app.node_id {
            bus.publish_to_node(Target::Desk, &op.to_string(), owner);
        }
    }
}

/// Asks every node which of these users it holds (the desk's node, for a consultation's sides).
pub(crate) fn desk_ask(app: &App, uids: &[u64]) {
    if let Some(bus) = &app.bus {
        bus.publish_all(
            Target::Desk,
            &json!({ "op": "ask", "uids": uids }).to_string(),
        );
    }
}

/// On the desk's node: the consultation's sides it does not know to be online are asked for.
pub(crate) fn ask_for(app: &App, sides: &[u64]) {
    let unknown: Vec<u64> = sides
        .iter()
        .copied()
        .filter(|u| !app.chat.online_anywhere(*u))
        .collect();
    if !unknown.is_empty() {
        desk_ask(app, &unknown);
    }
}

/// Whether a command of a connection here must run on the desk's node instead: customer
/// service and consultations, on a node that does not hold the desk.
pub(crate) fn runs_on_desk(
    app: &App,
    cmd: &str,
    chat_type: Option<u64>,
    conv_id: Option<&str>,
) -> bool {
    if app.chat.role.mine || app.bus.is_none() {
        return false;
    }
    match cmd {
        // Who else is in the conversation is known there.
        "typing" | "read" => matches!(
            conv_id.and_then(crate::proto::parse_conv),
            Some(crate::proto::ConvRef::Service(_) | crate::proto::ConvRef::Consult(_))
        ),
        "send" => matches!(
            chat_type.and_then(|c| u8::try_from(c).ok()),
            Some(crate::proto::chat_type::SERVICE | crate::proto::chat_type::CONSULT)
        ),
        "service_status" | "service_accept" | "service_transfer" | "service_close"
        | "service_rate" | "service_info" | "service_customer" | "consult_get" => true,
        _ => false,
    }
}

/// How long a forwarded command waits for the desk's node before it is answered 503 (retry):
/// the node may have died with it (the lease moves within 8 s).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Most commands waiting on the desk's node; more are answered 503 at once.
const FORWARDED_MAX: usize = 65_536;

/// Forwards a command of a connection here to the desk's node, which runs it and sends the
/// reply back (`Target::Reply` with this node's number for it). `command` is the command as a
/// JSON object.
pub(crate) fn forward_to_desk(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    command: Value,
) {
    let owner = app.chat.role.owner.clone();
    let (Some(bus), Some(owner)) = (&app.bus, owner) else {
        p.reply_err(ctx, code::UNAVAILABLE, MOVING);
        return;
    };
    if app.chat.forwarded.len() >= FORWARDED_MAX {
        p.reply_err(ctx, code::UNAVAILABLE, "server busy, retry");
        return;
    }
    app.chat.next_forward += 1;
    let fid = app.chat.next_forward;
    let op = json!({
        "op": "cmd", "node": app.node_id, "fid": fid, "uid": uid,
        "agent": app.chat.agents.contains(&uid), "hops": 0, "cmd": command,
    });
    bus.publish_to_node(Target::Desk, &op.to_string(), &owner);
    let timer = app.after(ctx, FORWARD_TIMEOUT, move |app, ctx| {
        if let Some(f) = app.chat.forwarded.remove(&fid) {
            let text = crate::proto::fail(
                &f.cmd,
                &f.req_id,
                code::UNAVAILABLE,
                "customer service did not answer (its node may be moving), retry",
            );
            deliver_forwarded_reply(app, ctx, &f, &text);
        }
    });
    app.chat.forwarded.insert(
        fid,
        Forwarded {
            conn: p.conn,
            uid,
            cmd: p.cmd.clone(),
            req_id: p.req_id.clone(),
            timer: Some(timer),
        },
    );
}

/// The reply to a forwarded command arrived: to its connection if it still speaks for the user
/// (a reply after the timeout's 503 is dropped: the client retried).
pub(crate) fn forwarded_reply(app: &mut App, ctx: &mut dyn Ctx<Completion>, fid: u64, text: &str) {
    if let Some(mut f) = app.chat.forwarded.remove(&fid) {
        if let Some(t) = f.timer.take() {
            app.cancel(ctx, t);
        }
        deliver_forwarded_reply(app, ctx, &f, text);
    }
}

fn deliver_forwarded_reply(app: &App, ctx: &mut dyn Ctx<Completion>, f: &Forwarded, text: &str) {
    if app.chat.sessions.get(&f.conn).and_then(|s| s.uid) == Some(f.uid) {
        ctx.send_text(f.conn, text);
    }
}

/// The answer while no node is known to hold the desk.
pub(crate) const MOVING: &str = "customer service is moving to another node, retry";
