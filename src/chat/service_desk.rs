//! The customer-service desk wired into the hub: the pure [`Desk`] decides, this module stores
//! its decisions, tells customers and agents (`service` pushes), sends the configured system
//! messages and runs the agents' and customers' `service_*` commands.
//!
//! Durability: a session is opened in the store before the customer's first message is
//! persisted, so a restart never loses a queue entry; assignments are written after the desk
//! made them (a write lost in a crash leaves the session queued, and it is assigned again).

use super::desk::{AgentStatus, Desk, DeskError, Effect};
use super::push::{push_users, to_desk};
use super::request::{conn_job, CmdResult, Pending};
use super::send::{acked, submit};
use crate::net::Ctx;
use crate::proto::Failure;
use crate::proto::{self, chat_type, code, msg_type, Command};
use crate::rt::{App, Completion};
use crate::store::{self, NewMessage};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Waiting customers listed in an agent's `queue` push.
const WAITING_SHOWN: usize = 50;

/// Loads the open sessions into the desk (at start, before anything is served). Their agents
/// count as disconnected until they come back; the grace period runs from now. True when
/// there was something to restore.
pub fn restore(app: &mut App) -> Result<bool, String> {
    let sessions = app
        .backends
        .open_service_sessions()
        .map_err(|e| format!("cannot load the open customer-service sessions: {e}"))?;
    let now = Instant::now();
    for s in &sessions {
        app.chat.desk.restore(s.customer, s.agent, now);
    }
    if !sessions.is_empty() {
        log::info!(
            "customer service: {} open sessions restored, {} waiting",
            sessions.len(),
            app.chat.desk.queue_len()
        );
    }
    Ok(!sessions.is_empty())
}

/// The reactor started: restored sessions of agents who do not come back are re-queued after
/// the grace period.
pub fn start(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    arm_grace(app, ctx);
}

fn arm_grace(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    let grace = Duration::from_secs(app.config.service.grace_s);
    app.after(ctx, grace + Duration::from_millis(5), move |app, ctx| {
        let now = ctx.now();
        run(app, ctx, |d| Ok(d.tick(now, grace))).ok();
    });
}

/// An agent's first connection authenticated.
pub fn agent_connected(app: &mut App, ctx: &mut dyn Ctx<Completion>, agent: u64) {
    let max = app.config.service.max_sessions_per_agent;
    run(app, ctx, |d| Ok(d.agent_online(agent, max))).ok();
}

/// An agent's last connection closed: their sessions wait for the grace period.
pub fn agent_disconnected(app: &mut App, ctx: &mut dyn Ctx<Completion>, agent: u64) {
    let now = ctx.now();
    app.chat.desk.agent_gone(agent, now);
    arm_grace(app, ctx);
}

/// A visitor logged in as `uid`: their session (queued or assigned) is now `uid`'s; the agent
/// serving it is told.
pub fn visitor_converted(app: &mut App, ctx: &mut dyn Ctx<Completion>, visitor: u64, uid: u64) {
    if !app.chat.role.mine {
        to_desk(
            app,
            &json!({ "op": "rekey", "visitor": visitor, "uid": uid }),
        );
        return;
    }
    let agent = app.chat.desk.session(visitor).flatten();
    run(app, ctx, |d| Ok(d.rekey(visitor, uid))).ok();
    if let Some(agent) = agent {
        let payload = event(json!({ "event": "converted", "visitor": visitor, "customer": uid }));
        push_users(app, ctx, &[agent], &payload);
    }
}

/// A customer (web, app or visitor) writes to customer service: the first message opens a
/// session (stored first), later ones go straight to the persister.
pub(crate) fn customer_send(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    customer: u64,
    message: NewMessage,
) -> CmdResult {
    if app.chat.desk.session(customer).is_some() {
        submit(app, ctx, p, message);
        return Ok(());
    }
    conn_job(
        app,
        ctx,
        p,
        move |b| b.open_service_session(customer),
        move |app, ctx, p, r| match r {
            Ok(_) => {
                let texts = opened(app, ctx, customer);
                submit(app, ctx, p, message);
                system_messages(app, customer, texts);
            }
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

/// The customer's session is open in the store: put it on the desk (a no-op when it is there
/// already). Returns the system messages to send after the customer's message.
pub fn opened(app: &mut App, ctx: &mut dyn Ctx<Completion>, customer: u64) -> Vec<String> {
    if !app.chat.role.mine {
        // The desk's node puts it on the desk and sends the greetings.
        to_desk(app, &json!({ "op": "opened", "customer": customer }));
        return Vec::new();
    }
    if app.chat.desk.session(customer).is_some() {
        return Vec::new();
    }
    run(app, ctx, |d| Ok(d.customer_message(customer))).ok();
    let s = &app.config.service;
    let mut texts = Vec::new();
    let greeting = if app.chat.office_hours.is_open(store::now_ms() / 1000) {
        &s.welcome
    } else {
        &s.offline_message
    };
    if !greeting.is_empty() {
        texts.push(greeting.clone());
    }
    if let Some(position) = app.chat.desk.position(customer) {
        if !s.queue_message.is_empty() {
            texts.push(s.queue_message.replace("{position}", &position.to_string()));
        }
    }
    texts
}

/// Stores system messages (from uid 0) in the customer's conversation; they are delivered like
/// any message, and WeChat customers get them through the customer-service API.
pub fn system_messages(app: &mut App, customer: u64, texts: Vec<String>) {
    for text in texts {
        let message = NewMessage {
            conv_id: proto::service_conv(customer),
            chat_type: chat_type::SERVICE,
            from_id: 0,
            to_id: customer,
            msg_type: msg_type::TEXT,
            body: Value::String(text).to_string(),
            client_msg_id: None,
            created_at: store::now_ms(),
        };
        if app
            .persist(message, |app, ctx, r| acked(app, ctx, None, r))
            .is_err()
        {
            log::warn!(
                "customer service: persister busy, a system message to {customer} was not sent"
            );
        }
    }
}

/// Whether `agent` may write to `customer` now (they serve them).
pub(crate) fn check_serves(desk: &Desk, agent: u64, customer: u64) -> CmdResult {
    match desk.session(customer) {
        Some(Some(a)) if a == agent => Ok(()),
        Some(Some(_)) => Err(Failure(
            code::FORBIDDEN,
            "this customer is served by another agent".into(),
        )),
        Some(None) => Err(Failure(
            code::FORBIDDEN,
            "this customer is waiting in the queue: service_accept first".into(),
        )),
        None => Err(Failure(
            code::NOT_FOUND,
            "no open service session for this customer".into(),
        )),
    }
}

fn desk_error(e: DeskError) -> Failure {
    let c = match e {
        DeskError::NoSession | DeskError::NoSuchAgent => code::NOT_FOUND,
        DeskError::NotYourCustomer => code::FORBIDDEN,
        DeskError::AgentUnavailable => code::CONFLICT,
    };
    Failure(c, e.to_string())
}

/// Closed sessions remembered for the `rated` push to their agent (per process, best effort:
/// the rating itself is stored either way).
const CLOSED_REMEMBERED: usize = 4096;

fn remember_closed(app: &mut App, session_id: u64, agent: u64) {
    let c = &mut app.chat;
    if c.closed_by.insert(session_id, agent).is_none() {
        c.closed_order.push_back(session_id);
    }
    while c.closed_order.len() > CLOSED_REMEMBERED {
        if let Some(old) = c.closed_order.pop_front() {
            c.closed_by.remove(&old);
        }
    }
}

fn event(data: Value) -> String {
    proto::push("service", &data)
}

/// Runs a desk operation, then carries out its effects and tells the agents when the queue
/// changed.
fn run(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    op: impl FnOnce(&mut Desk) -> Result<Vec<Effect>, DeskError>,
) -> Result<(), DeskError> {
    let before = (
        app.chat.desk.queue_len(),
        app.chat.desk.waiting(WAITING_SHOWN),
    );
    let effects = op(&mut app.chat.desk)?;
    apply(app, ctx, &effects);
    let after = (
        app.chat.desk.queue_len(),
        app.chat.desk.waiting(WAITING_SHOWN),
    );
    if before != after {
        let agents = app.chat.all_agents();
        let payload = event(json!({ "event": "queue", "length": after.0, "waiting": after.1 }));
        push_users(app, ctx, &agents, &payload);
    }
    Ok(())
}

fn apply(app: &mut App, ctx: &mut dyn Ctx<Completion>, effects: &[Effect]) {
    let mut writes: Vec<(u64, Option<u64>)> = Vec::new();
    for e in effects {
        match *e {
            Effect::Assigned {
                customer,
                agent,
                from,
            } => {
                writes.push((customer, Some(agent)));
                let to_customer = event(json!({ "event": "assigned", "agent": agent }));
                push_users(app, ctx, &[customer], &to_customer);
                let to_agent =
                    event(json!({ "event": "assigned", "customer": customer, "from": from }));
                push_users(app, ctx, &[agent], &to_agent);
                if let Some(from) = from {
                    let moved =
                        event(json!({ "event": "transferred", "customer": customer, "to": agent }));
                    push_users(app, ctx, &[from], &moved);
                }
            }
            Effect::Queued { customer, position } => {
                let payload = event(json!({ "event": "queued", "position": position }));
                push_users(app, ctx, &[customer], &payload);
            }
            Effect::Requeued { customer, agent } => {
                writes.push((customer, None));
                let payload = event(json!({ "event": "requeued", "customer": customer }));
                push_users(app, ctx, &[agent], &payload);
            }
            // Closing is stored by whoever closes (they know the session id).
            Effect::Closed { .. } => {}
        }
    }
    if writes.is_empty() {
        return;
    }
    let submitted = app.job(
        ctx,
        move |b| {
            for (customer, agent) in writes {
                if let Err(e) = b.assign_service_session(customer, agent) {
                    log::warn!("customer service: assignment of {customer} not stored: {e}");
                }
            }
        },
        |_, _, ()| {},
    );
    if !submitted {
        log::warn!("customer service: workers busy, assignments not stored (restored as queued)");
    }
}

/// The `service_*` commands. Agents: `service_status`, `service_accept`, `service_transfer`,
/// `service_close`, `service_info`; customers: `service_close`, `service_rate`, `service_info`.
pub(crate) fn command(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let agent = app.chat.is_agent(uid);
    let agents_only = || {
        Err(Failure(
            code::FORBIDDEN,
            format!("{} is for customer-service agents", cmd.cmd),
        ))
    };
    match cmd.cmd.as_str() {
        "service_status" => {
            if !agent {
                return agents_only();
            }
            let available = match cmd.str("status").map_err(Failure::bad_request)? {
                "available" => true,
                "away" => false,
                _ => return Err(Failure::bad_request("status is \"available\" or \"away\"")),
            };
            run(app, ctx, |d| d.set_status(uid, available)).map_err(desk_error)?;
            p.reply_ok(ctx, &info(app, uid, true));
            Ok(())
        }
        "service_accept" => {
            if !agent {
                return agents_only();
            }
            let customer = cmd.u64("customer").map_err(Failure::bad_request)?;
            run(app, ctx, |d| d.accept(uid, customer)).map_err(desk_error)?;
            p.reply_ok(ctx, &json!({ "customer": customer }));
            Ok(())
        }
        "service_transfer" => {
            if !agent {
                return agents_only();
            }
            let customer = cmd.u64("customer").map_err(Failure::bad_request)?;
            let to = cmd.u64("to").map_err(Failure::bad_request)?;
            if to == uid {
                return Err(Failure::bad_request("transfer to another agent"));
            }
            run(app, ctx, |d| d.transfer(customer, uid, to)).map_err(desk_error)?;
            p.reply_ok(ctx, &json!({ "customer": customer, "to": to }));
            Ok(())
        }
        "service_close" => {
            let customer = if agent {
                let customer = cmd.u64("customer").map_err(Failure::bad_request)?;
                check_serves(&app.chat.desk, uid, customer)?;
                customer
            } else {
                if app.chat.desk.session(uid).is_none() {
                    return Err(Failure(code::NOT_FOUND, "no open service session".into()));
                }
                uid
            };
            close(
                app,
                ctx,
                p,
                customer,
                if agent { "agent" } else { "customer" },
            )
        }
        "service_rate" => {
            if agent {
                return Err(Failure(
                    code::FORBIDDEN,
                    "customers rate their sessions".into(),
                ));
            }
            let id = cmd.u64("session_id").map_err(Failure::bad_request)?;
            let rating = cmd.u64("rating").map_err(Failure::bad_request)?;
            let rating = match u8::try_from(rating) {
                Ok(r @ 1..=5) => r,
                _ => return Err(Failure::bad_request("rating is 1 to 5")),
            };
            let comment = cmd.opt_str("comment").unwrap_or_default().to_string();
            if comment.len() > 1024 {
                return Err(Failure(code::TOO_LARGE, "comment over 1024 bytes".into()));
            }
            let comment_sent = comment.clone();
            conn_job(
                app,
                ctx,
                p,
                move |b| b.rate_service_session(id, uid, rating, &comment),
                move |app, ctx, p, r| match r {
                    Ok(()) => {
                        p.reply_ok(ctx, &json!({ "session_id": id, "rating": rating }));
                        if let Some(agent) = app.chat.closed_by.remove(&id) {
                            let rated = event(json!({
                                "event": "rated", "customer": uid, "session_id": id,
                                "rating": rating, "comment": comment_sent,
                            }));
                            push_users(app, ctx, &[agent], &rated);
                        }
                    }
                    Err(e) => p.reply_store_err(ctx, &e),
                },
            )
        }
        "service_info" => {
            p.reply_ok(ctx, &info(app, uid, agent));
            Ok(())
        }
        "service_customer" => {
            if !agent {
                return agents_only();
            }
            let customer = cmd.u64("customer").map_err(Failure::bad_request)?;
            conn_job(
                app,
                ctx,
                p,
                move |b| -> store::StoreResult<Option<Value>> {
                    let Some(user) = b.user(customer)? else {
                        return Ok(None);
                    };
                    let route = b.cs_route(customer)?;
                    Ok(Some(customer_view(
                        &user,
                        route.as_ref().map(|(appid, _)| appid.as_str()),
                    )))
                },
                |_app, ctx, p, r| match r {
                    Ok(Some(v)) => p.reply_ok(ctx, &v),
                    Ok(None) => p.reply_err(ctx, code::NOT_FOUND, "no such user"),
                    Err(e) => p.reply_store_err(ctx, &e),
                },
            )
        }
        other => Err(Failure::bad_request(format!("unknown cmd {other:?}"))),
    }
}

/// Closes the customer's session: stored first, then taken off the desk; both sides are told,
/// the customer with the session id to rate.
fn close(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    customer: u64,
    by: &'static str,
) -> CmdResult {
    conn_job(
        app,
        ctx,
        p,
        move |b| b.close_service_session(customer),
        move |app, ctx, p, r| {
            let id = match r {
                Ok(id) => id,
                Err(e) => return p.reply_store_err(ctx, &e),
            };
            let agent = app.chat.desk.session(customer).flatten();
            // The session may have changed hands while the store closed it: close it anyway.
            run(app, ctx, |d| d.close(customer, None)).ok();
            let ask = app.config.service.ask_rating && id.is_some();
            let to_customer =
                event(json!({ "event": "closed", "session_id": id, "by": by, "rate": ask }));
            push_users(app, ctx, &[customer], &to_customer);
            if let (Some(agent), Some(id)) = (agent, id) {
                remember_closed(app, id, agent);
            }
            if let Some(agent) = agent {
                let to_agent = event(
                    json!({ "event": "closed", "customer": customer, "session_id": id, "by": by }),
                );
                push_users(app, ctx, &[agent], &to_agent);
            }
            p.reply_ok(ctx, &json!({ "customer": customer, "session_id": id }));
            let closing = app.config.service.closing_message.clone();
            if !closing.is_empty() {
                system_messages(app, customer, vec![closing]);
            }
        },
    )
}

/// Who a customer is, for the agent: profile and kind (an anonymous web visitor, a WeChat user
/// whose replies go through WeChat's customer-service API, or a registered user).
fn customer_view(user: &store::User, wechat_appid: Option<&str>) -> Value {
    let kind = if user.user_type == store::USER_TYPE_VISITOR {
        "visitor"
    } else if wechat_appid.is_some() {
        "wechat"
    } else {
        "user"
    };
    json!({
        "uid": user.uid,
        "name": user.name,
        "head_img": user.head_img,
        "kind": kind,
        "wechat_appid": wechat_appid,
        "app_uid": user.app_uid,
    })
}

/// An agent's view (status, customers, queue) or a customer's (their session).
fn info(app: &App, uid: u64, agent: bool) -> Value {
    let desk = &app.chat.desk;
    if agent {
        let status = match desk.agent_status(uid) {
            Some(AgentStatus::Available) => "available",
            Some(AgentStatus::Away) => "away",
            _ => "offline",
        };
        json!({
            "status": status,
            "max_sessions": app.config.service.max_sessions_per_agent,
            "customers": desk.customers_of(uid),
            "queue_length": desk.queue_len(),
            "waiting": desk.waiting(WAITING_SHOWN),
        })
    } else {
        let session = desk
            .session(uid)
            .map(|agent| json!({ "agent": agent, "position": desk.position(uid) }));
        json!({ "session": session })
    }
}
