//! The desk's node in a cluster: one node at a time runs the customer-service desk and the
//! consultations' clocks, the one holding the Redis lease `<prefix>lease:desk`.
//!
//! - **The lease**: every node tries to take or renew it every [`RENEW_EVERY`]; it lapses
//!   [`LEASE_TTL`] after its holder's last renewal, so a dead holder is replaced within
//!   `LEASE_TTL + RENEW_EVERY` (8 s). The node that takes it restores the desk from the store as a
//!   restart does (open sessions, queue order, agents away until they are seen) and loads the
//!   consultations of the users it hears of; what a consultation used was saved as deltas every
//!   `[consult] save_every_s` by the previous holder, so at most that much is counted again.
//!   A node that finds someone else holding the lease it thought it had drops its desk (after
//!   saving the consultations' time).
//! - **The other nodes** forward to the desk's node, over the bus (`Target::Desk`): their
//!   connections' `service_*` and `consult_get` commands and their `send`s to customer service
//!   and consultations (run there as if local; the replies come back as `Target::Reply` for the
//!   connection), the sessions they open for WeChat users (`opened`), visitor conversions
//!   (`rekey`), the server API's consultation changes (`consult`), and who of their users the
//!   desk cares about: agents and the sides of consultations, as `online`/`offline` events and a
//!   full `snapshot` every [`RENEW_EVERY`] (which heals anything lost in between). A node not
//!   heard from for [`LEASE_TTL`] is taken as dead: its users are offline.
//! - **Deliveries** of service and consultation conversations are computed by the desk's node
//!   (who serves whom, the consultation's sides) and go to the recipients' nodes (`send.rs`).
//! - Without a bus the node is the desk's, restored at start (`server::handler`).
//!
//! An operation is a JSON object with `op`: `cmd`, `online`, `offline`, `snapshot`, `opened`,
//! `rekey`, `consult`, or (from the desk's node to every node) `ask`.

use super::consult;
use super::push::to_desk;
use super::request::{Origin, Pending, REMOTE};
use super::service_desk;
use crate::net::Ctx;
use crate::proto::{self, code, Command};
use crate::rt::{App, Completion};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the lease lasts after its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(6);
/// How often every node takes or renews the lease (and reports its users to the desk's node).
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
const LEASE_KEY: &str = "desk";
/// A forwarded command is forwarded again at most this often (the lease moved meanwhile).
const MAX_HOPS: u64 = 2;

/// Runs a forwarded command as the chat dispatch does (handed down by `chat::mod`, which this
/// file may not import).
pub type Run = fn(&mut App, &mut dyn Ctx<Completion>, &Pending, u64, &Command);

/// With a bus: the lease is polled from now on. Without: this node is the desk's.
pub fn start(app: &mut App, ctx: &mut dyn Ctx<Completion>, run: Run) {
    if app.bus.is_none() {
        app.chat.role.mine = true;
        return;
    }
    poll(app, ctx, run);
}

fn poll(app: &mut App, ctx: &mut dyn Ctx<Completion>, run: Run) {
    if app.chat.shutting_down {
        return;
    }
    let node = app.node_id.clone();
    let submitted = app.job(
        ctx,
        move |b| b.cache.lease(LEASE_KEY, &node, LEASE_TTL),
        move |app, ctx, r| match r {
            Ok(holder) => holder_is(app, ctx, holder, run),
            Err(e) => log::warn!("customer service: the desk lease cannot be read: {e}"),
        },
    );
    if !submitted {
        log::warn!("customer service: workers busy, the desk lease is not renewed this time");
    }
    if !app.chat.role.mine {
        snapshot(app);
    } else {
        let now = ctx.now();
        drop_silent_nodes(app, ctx, now);
    }
    app.after(ctx, RENEW_EVERY, move |app, ctx| poll(app, ctx, run));
}

/// Graceful shutdown: a held lease is given up (after the consultations' save was queued;
/// shutdown waits for both), so another node takes the desk at its next renewal instead of
/// after the lease lapses. Renewals stop with the shutdown.
pub fn on_shutdown(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    if app.bus.is_none() || !app.chat.role.mine {
        return;
    }
    let node = app.node_id.clone();
    app.job(
        ctx,
        move |b| b.cache.release(LEASE_KEY, &node),
        |_, _, r| {
            if let Err(e) = r {
                log::warn!("customer service: the desk lease was not given up: {e}");
            }
        },
    );
    // Draining connections no longer change a desk that another node is about to restore.
    app.chat.role.mine = false;
    app.chat.role.owner = None;
}

/// The lease's holder as just read.
fn holder_is(app: &mut App, ctx: &mut dyn Ctx<Completion>, holder: String, run: Run) {
    let me = holder == app.node_id;
    let moved = app.chat.role.owner.as_deref() != Some(holder.as_str());
    app.chat.role.owner = Some(holder.clone());
    if me && !app.chat.role.mine {
        take_over(app, ctx, run);
    } else if !me && app.chat.role.mine {
        give_up(app, ctx);
    }
    if moved {
        log::info!("customer service: the desk is on node {holder}");
        if !me {
            snapshot(app);
        }
    }
}

/// This node took the lease: the desk is restored from the store; operations wait meanwhile.
fn take_over(app: &mut App, ctx: &mut dyn Ctx<Completion>, run: Run) {
    app.chat.role.mine = true;
    app.chat.role.restoring = true;
    let submitted = app.job(
        ctx,
        |b| b.open_service_sessions(),
        move |app, ctx, r| {
            let sessions = match r {
                Ok(s) => s,
                Err(e) => {
                    // Tried again at the next renewal.
                    log::warn!("customer service: cannot restore the desk: {e}");
                    app.chat.role.mine = false;
                    app.chat.role.restoring = false;
                    return;
                }
            };
            let now = ctx.now();
            for s in &sessions {
                if app.chat.desk.session(s.customer).is_none() {
                    app.chat.desk.restore(s.customer, s.agent, now);
                }
            }
            log::info!(
                "customer service: this node holds the desk: {} open sessions, {} waiting",
                sessions.len(),
                app.chat.desk.queue_len()
            );
            app.chat.role.restoring = false;
            service_desk::start(app, ctx);
            // This node's own agents and consultation sides.
            let here: Vec<(u64, bool)> = app
                .chat
                .role
                .reported
                .iter()
                .map(|(u, a)| (*u, *a))
                .collect();
            for (uid, agent) in here {
                came(app, ctx, uid, agent);
            }
            while let Some((origin, op)) = app.chat.role.held.pop_front() {
                handle(app, ctx, &origin, &op, run);
            }
        },
    );
    if !submitted {
        app.chat.role.mine = false;
        app.chat.role.restoring = false;
    }
}

/// Someone else holds the lease now: what the consultations used is saved, the desk and the
/// clocks are dropped (the new holder restores them from the store).
fn give_up(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    log::warn!("customer service: another node holds the desk now; dropping this node's");
    consult::drop_all(app, ctx);
    app.chat.desk = super::desk::Desk::new();
    let role = &mut app.chat.role;
    role.mine = false;
    role.restoring = false;
    role.held.clear();
    role.remote.clear();
    role.last_seen.clear();
}

/// A user the desk cares about is online somewhere (and was not before): an agent takes
/// sessions, a consultation side's consultations are loaded and may run.
fn came(app: &mut App, ctx: &mut dyn Ctx<Completion>, uid: u64, agent: bool) {
    if agent {
        service_desk::agent_connected(app, ctx, uid);
    }
    consult::load_for(app, ctx, uid);
}

/// A user the desk cared about is offline everywhere.
fn left(app: &mut App, ctx: &mut dyn Ctx<Completion>, uid: u64, agent: bool) {
    if agent {
        service_desk::agent_disconnected(app, ctx, uid);
    }
    consult::went_offline(app, ctx, uid);
}

/// Sends the desk's node this node's users it cares about (every renewal).
fn snapshot(app: &App) {
    let users: Vec<Value> = app
        .chat
        .role
        .reported
        .iter()
        .map(|(u, a)| json!([u, a]))
        .collect();
    to_desk(
        app,
        &json!({ "op": "snapshot", "node": app.node_id, "users": users }),
    );
}

/// On the desk's node: nodes not heard from for a lease's length are dead, their users offline.
fn drop_silent_nodes(app: &mut App, ctx: &mut dyn Ctx<Completion>, now: Instant) {
    let silent: Vec<String> = app
        .chat
        .role
        .last_seen
        .iter()
        .filter(|(_, at)| now.saturating_duration_since(**at) > LEASE_TTL)
        .map(|(n, _)| n.clone())
        .collect();
    for node in silent {
        log::warn!("customer service: node {node} is silent; its users count as offline");
        app.chat.role.last_seen.remove(&node);
        for (uid, agent) in app.chat.role.drop_node(&node) {
            if !app.chat.is_online(uid) {
                left(app, ctx, uid, agent);
            }
        }
    }
}

/// An operation from another node (or, `ask`, from the desk's node).
pub fn handle(app: &mut App, ctx: &mut dyn Ctx<Completion>, origin: &str, op: &str, run: Run) {
    let Ok(mut v) = serde_json::from_str::<Value>(op) else {
        log::warn!("customer service: a malformed desk operation from {origin} was dropped");
        return;
    };
    let kind = v.get("op").and_then(Value::as_str).unwrap_or_default();
    if kind == "ask" {
        return answer_ask(app, &v);
    }
    if !app.chat.role.mine {
        return not_mine(app, origin, &v);
    }
    if app.chat.role.restoring {
        if app.chat.role.held.len() < crate::chat::state::DeskRole::HELD_MAX {
            app.chat
                .role
                .held
                .push_back((origin.to_string(), op.to_string()));
        }
        return;
    }
    let uid = field(&v, "uid");
    let node = v
        .get("node")
        .and_then(Value::as_str)
        .unwrap_or(origin)
        .to_string();
    let node = node.as_str();
    if kind != "cmd" {
        app.chat.role.last_seen.insert(node.to_string(), ctx.now());
    }
    match kind {
        "cmd" => command(app, ctx, node, &mut v, run),
        "online" => {
            let agent = v.get("agent").and_then(Value::as_bool).unwrap_or(false);
            let before = app.chat.online_anywhere(uid);
            app.chat.role.remote_online(uid, agent, node);
            if !before {
                came(app, ctx, uid, agent);
            } else {
                // Known already: their consultations may be new to the desk.
                consult::load_for(app, ctx, uid);
            }
        }
        "offline" => {
            let agent = app.chat.is_agent(uid);
            if app.chat.role.remote_offline(uid, node) && !app.chat.is_online(uid) {
                left(app, ctx, uid, agent);
            }
        }
        "snapshot" => {
            let users: Vec<(u64, bool)> = v
                .get("users")
                .and_then(Value::as_array)
                .map(|list| {
                    list.iter()
                        .filter_map(|p| Some((p.get(0)?.as_u64()?, p.get(1)?.as_bool()?)))
                        .collect()
                })
                .unwrap_or_default();
            let (came_now, left_now) = app.chat.role.replace_node(node, &users);
            // New to the remote view; those connected here too were the desk's already.
            for uid in came_now {
                if !app.chat.is_online(uid) {
                    let agent = app.chat.is_agent(uid);
                    came(app, ctx, uid, agent);
                }
            }
            for (uid, agent) in left_now {
                if !app.chat.is_online(uid) {
                    left(app, ctx, uid, agent);
                }
            }
        }
        "opened" => {
            let customer = field(&v, "customer");
            let texts = service_desk::opened(app, ctx, customer);
            service_desk::system_messages(app, customer, texts);
        }
        "rekey" => {
            service_desk::visitor_converted(app, ctx, field(&v, "visitor"), field(&v, "uid"));
        }
        "consult" => consult::changed_elsewhere(app, ctx, &v),
        other => log::warn!("customer service: unknown desk operation {other:?} from {origin}"),
    }
}

fn field(v: &Value, name: &str) -> u64 {
    v.get(name).and_then(Value::as_u64).unwrap_or(0)
}

/// A forwarded command, run here as if its connection were local.
fn command(app: &mut App, ctx: &mut dyn Ctx<Completion>, node: &str, v: &mut Value, run: Run) {
    let (Some(bus), Some(object)) = (
        app.bus.as_ref().and_then(|b| b.publisher()),
        v.get_mut("cmd").map(Value::take),
    ) else {
        return;
    };
    let uid = field(v, "uid");
    let origin = Arc::new(Origin {
        node: node.to_string(),
        fid: field(v, "fid"),
        bus,
    });
    let Ok(cmd) = proto::command_from_value(object) else {
        return;
    };
    let p = Pending {
        conn: REMOTE,
        cmd: cmd.cmd.clone(),
        req_id: cmd.req_id.clone(),
        at: ctx.now(),
        origin: Some(origin),
    };
    // An agent the desk has not heard of yet (their node's report is on its way).
    let agent = v.get("agent").and_then(Value::as_bool).unwrap_or(false);
    if agent && !app.chat.is_agent(uid) {
        let before = app.chat.online_anywhere(uid);
        app.chat.role.remote_online(uid, true, node);
        if !before {
            came(app, ctx, uid, true);
        }
    }
    run(app, ctx, &p, uid, &cmd);
}

/// An operation for the desk reached a node that no longer holds it: a command goes on to the
/// holder (or is refused, retry), anything else is dropped (the next snapshot heals it).
fn not_mine(app: &App, origin: &str, v: &Value) {
    if v.get("op").and_then(Value::as_str) != Some("cmd") {
        return;
    }
    let hops = v.get("hops").and_then(Value::as_u64).unwrap_or(0);
    let owner = app.chat.role.owner.clone();
    if let (Some(owner), Some(bus)) = (owner, &app.bus) {
        if hops < MAX_HOPS && owner != app.node_id {
            let mut again = v.clone();
            again["hops"] = json!(hops + 1);
            bus.publish_to_node(
                crate::cluster::bus::Target::Desk,
                &again.to_string(),
                &owner,
            );
            return;
        }
    }
    let node = v
        .get("node")
        .and_then(Value::as_str)
        .unwrap_or(origin)
        .to_string();
    let node = node.as_str();
    if let Some(bus) = &app.bus {
        let cmd = v.get("cmd").cloned().unwrap_or(Value::Null);
        let name = cmd.get("cmd").and_then(Value::as_str).unwrap_or("error");
        let req_id = cmd.get("req_id").cloned();
        let text = proto::fail(
            name,
            &req_id,
            code::UNAVAILABLE,
            "customer service is moving to another node, retry",
        );
        let target = crate::cluster::bus::Target::Reply(field(v, "fid"));
        bus.publish_to_node(target, &text, node);
    }
}

/// The desk's node asks who of these users is here (a consultation was created for them): those
/// online here are reported from now on.
fn answer_ask(app: &mut App, v: &Value) {
    let uids: Vec<u64> = v
        .get("uids")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    for uid in uids {
        if app.chat.is_online(uid) && !app.chat.role.reported.contains_key(&uid) {
            let agent = app.chat.agents.contains(&uid);
            report_online(app, uid, agent);
        }
    }
}

/// A user of this node the desk cares about (an agent, a consultation side) came online: the
/// desk's node is told (the caller on the desk's node handles it itself).
pub fn report_online(app: &mut App, uid: u64, agent: bool) {
    app.chat.role.reported.insert(uid, agent);
    if !app.chat.role.mine {
        to_desk(
            app,
            &json!({ "op": "online", "node": app.node_id, "uid": uid, "agent": agent }),
        );
    }
}

/// Their last connection here closed (they were reported).
pub fn report_offline(app: &mut App, uid: u64) {
    if app.chat.role.reported.remove(&uid).is_some() && !app.chat.role.mine {
        to_desk(
            app,
            &json!({ "op": "offline", "node": app.node_id, "uid": uid }),
        );
    }
}
