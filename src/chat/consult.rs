//! Timed consultations (`chat_type` 3): a user and a consultant in conversation `c_<id>`, with
//! time bought through the server API. The time runs only while both are connected (here), both
//! get the remaining time every `[consult] report_every_s` and a warning at each of
//! `warn_at_s`; at zero the consultation ends and further messages get 410 until it is extended.
//!
//! The live figure is held here; what was used is saved every `save_every_s` (and at every pause,
//! end and shutdown) as deltas, so a crash loses at most a few seconds of it and an extension
//! made meanwhile is never overwritten.

use super::consult_clock::{secs, Change, Live, Rules, Tick};
use super::push::{ask_for, push_users, to_desk};
use super::request::{conn_job, CmdResult, Pending};
use crate::net::{ConnId, Ctx, Reply};
use crate::proto::Command;
use crate::proto::Failure;
use crate::proto::{self, code};
use crate::rt::reply::api_ok;
use crate::rt::{App, Completion};
use crate::store::{Consultation, StoreError};
use serde_json::{json, Value};
use std::time::Duration;

/// Longest time one create or extend may add (30 days).
const MAX_ADD_S: u64 = 30 * 86_400;

fn push(app: &App, ctx: &mut dyn Ctx<Completion>, id: u64, event: &str) {
    let Some(l) = app.chat.consults.live.get(&id) else {
        return;
    };
    let payload = proto::push(
        "consult",
        &json!({ "consult_id": id, "event": event, "remaining_s": secs(l.remaining_ms), "total_s": secs(l.total_ms) }),
    );
    let sides = l.sides();
    push_users(app, ctx, &sides, &payload);
}

/// Puts stored consultations in memory (those not there yet), then starts the ones whose both
/// sides are here.
pub fn load(app: &mut App, ctx: &mut dyn Ctx<Completion>, list: Vec<Consultation>) {
    let now = ctx.now();
    for c in list {
        if app.chat.consults.live.contains_key(&c.id) {
            continue;
        }
        let warned = warned_at(app, c.remaining_ms);
        app.chat.consults.live.insert(
            c.id,
            Live {
                user: c.user,
                consultant: c.consultant,
                total_ms: c.total_ms,
                remaining_ms: c.remaining_ms,
                since: None,
                unsaved_ms: 0,
                ended: c.ended || c.remaining_ms == 0,
                warned,
                last_report: now,
                timer: None,
            },
        );
        for uid in [c.user, c.consultant] {
            app.chat.consults.by_user.entry(uid).or_default().push(c.id);
        }
        evaluate(app, ctx, c.id);
    }
}

/// Thresholds at or above `remaining_ms` count as announced (nothing to warn about).
fn warned_at(app: &App, remaining_ms: u64) -> Vec<u64> {
    app.config
        .consult
        .warn_at_s
        .iter()
        .map(|s| s * 1000)
        .filter(|t| *t >= remaining_ms)
        .collect()
}

/// A connection of `uid` authenticated (after `load` and `came_online`): it is told the state
/// of each of the user's active consultations, so a side that arrives while the other is away
/// knows where it stands (the other events reach only connections that are open then).
pub fn connected(app: &App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, uid: u64) {
    let now = ctx.now();
    let mut ids = app.chat.consults.of(uid);
    ids.sort_unstable();
    for id in ids {
        let Some(l) = app.chat.consults.live.get(&id) else {
            continue;
        };
        let (remaining_ms, running) = l.remaining_at(now);
        let payload = proto::push(
            "consult",
            &json!({ "consult_id": id, "event": "state", "remaining_s": secs(remaining_ms),
                     "total_s": secs(l.total_ms), "running": running, "ended": l.ended }),
        );
        ctx.send_text(conn, &payload);
    }
}

/// The client command `consult_get {consult_id}`: the consultation's figures, for its two
/// sides only (as the server API's `consult_get`).
pub(crate) fn command(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let id = cmd.u64("consult_id").map_err(Failure::bad_request)?;
    conn_job(
        app,
        ctx,
        p,
        move |b| b.consultation(id),
        move |app, ctx, p, r| match r {
            Ok(Some(c)) if c.user == uid || c.consultant == uid => {
                let data = view(app, ctx, &c);
                p.reply_ok(ctx, &data);
            }
            Ok(Some(_)) => p.reply_err(ctx, code::FORBIDDEN, "not your consultation"),
            Ok(None) => p.reply_err(ctx, code::NOT_FOUND, "no such consultation"),
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

/// The server API ended a consultation (stored already): the live copy, if any, stops with
/// nothing left, and both sides get `ended`.
fn ended_by_api(app: &mut App, ctx: &mut dyn Ctx<Completion>, c: &Consultation) {
    let timer = app.chat.consults.live.get_mut(&c.id).and_then(|l| {
        l.since = None;
        l.remaining_ms = 0;
        // The store holds zero now; what was used since the last save no longer matters.
        l.unsaved_ms = 0;
        l.ended = true;
        l.timer.take()
    });
    if let Some(t) = timer {
        app.cancel(ctx, t);
    }
    if app.chat.consults.live.contains_key(&c.id) {
        push(app, ctx, c.id, "ended");
    } else {
        let payload = proto::push(
            "consult",
            &json!({ "consult_id": c.id, "event": "ended", "remaining_s": 0, "total_s": secs(c.total_ms) }),
        );
        push_users(app, ctx, &[c.user, c.consultant], &payload);
    }
}

/// Time was added to a consultation (stored already): the live copy gets it too.
fn extended(app: &mut App, ctx: &mut dyn Ctx<Completion>, id: u64, extra_ms: u64) {
    let warned = {
        let now = ctx.now();
        app.chat.consults.live.get_mut(&id).map(|l| {
            l.settle(now);
            l.remaining_ms += extra_ms;
            l.total_ms += extra_ms;
            l.ended = false;
            l.remaining_ms
        })
    };
    if let Some(remaining) = warned {
        let w = warned_at(app, remaining);
        if let Some(l) = app.chat.consults.live.get_mut(&id) {
            l.warned = w;
        }
        push(app, ctx, id, "extended");
        if app
            .chat
            .consults
            .live
            .get(&id)
            .is_some_and(|l| l.since.is_some())
        {
            arm(app, ctx, id);
        } else {
            evaluate(app, ctx, id);
        }
    }
}

/// On the desk's node: the server API changed a consultation through another node (stored
/// already): created ones are loaded, extensions and ends applied to the live copy.
pub fn changed_elsewhere(app: &mut App, ctx: &mut dyn Ctx<Completion>, op: &Value) {
    let id = op.get("id").and_then(Value::as_u64).unwrap_or(0);
    match op.get("event").and_then(Value::as_str) {
        Some("extended") => {
            let extra_ms = op.get("extra_ms").and_then(Value::as_u64).unwrap_or(0);
            extended(app, ctx, id, extra_ms);
        }
        Some("created" | "ended") => {
            app.job(
                ctx,
                move |b| b.consultation(id),
                move |app, ctx, r| match r {
                    Ok(Some(c)) if c.ended => ended_by_api(app, ctx, &c),
                    Ok(Some(c)) => {
                        ask_for(app, &[c.user, c.consultant]);
                        load(app, ctx, vec![c]);
                    }
                    Ok(None) => {}
                    Err(e) => log::warn!("consultation {id} not loaded: {e}"),
                },
            );
        }
        _ => {}
    }
}

/// On the desk's node: `uid` is online somewhere; their active consultations are loaded (those
/// not in memory yet) and may run, and they are told where each stands.
pub fn load_for(app: &mut App, ctx: &mut dyn Ctx<Completion>, uid: u64) {
    app.job(
        ctx,
        move |b| b.active_consultations(uid),
        move |app, ctx, r| match r {
            Ok(list) => {
                let sides: Vec<u64> = list.iter().flat_map(|c| [c.user, c.consultant]).collect();
                let ids: Vec<u64> = list.iter().map(|c| c.id).collect();
                ask_for(app, &sides);
                load(app, ctx, list);
                came_online(app, ctx, uid);
                for id in ids {
                    state_to(app, ctx, id, uid);
                }
            }
            Err(e) => log::warn!("consultations of {uid} not loaded: {e}"),
        },
    );
}

/// The user is told the consultation's state (as a connection here is when it authenticates).
fn state_to(app: &App, ctx: &mut dyn Ctx<Completion>, id: u64, uid: u64) {
    let Some(l) = app.chat.consults.live.get(&id) else {
        return;
    };
    let (remaining_ms, running) = l.remaining_at(ctx.now());
    let payload = proto::push(
        "consult",
        &json!({ "consult_id": id, "event": "state", "remaining_s": secs(remaining_ms),
                 "total_s": secs(l.total_ms), "running": running, "ended": l.ended }),
    );
    push_users(app, ctx, &[uid], &payload);
}

/// Another node holds the desk now: what was used is saved, the clocks stop here.
pub fn drop_all(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    let ids: Vec<u64> = app.chat.consults.live.keys().copied().collect();
    save(app, ctx, &ids);
    let timers: Vec<_> = app
        .chat
        .consults
        .live
        .values_mut()
        .filter_map(|l| l.timer.take())
        .collect();
    for t in timers {
        app.cancel(ctx, t);
    }
    app.chat.consults.live.clear();
    app.chat.consults.by_user.clear();
}

/// A user's first connection here authenticated: their consultations may start.
pub fn came_online(app: &mut App, ctx: &mut dyn Ctx<Completion>, uid: u64) {
    let ids = app.chat.consults.of(uid);
    for id in ids {
        evaluate(app, ctx, id);
    }
}

/// A user's last connection here closed: their running consultations pause; those with nobody
/// left here are saved and dropped from memory.
pub fn went_offline(app: &mut App, ctx: &mut dyn Ctx<Completion>, uid: u64) {
    let ids = app.chat.consults.of(uid);
    for id in ids {
        evaluate(app, ctx, id);
        let idle = app
            .chat
            .consults
            .live
            .get(&id)
            .is_some_and(|l| l.sides().iter().all(|u| !app.chat.online_anywhere(*u)));
        if idle {
            save(app, ctx, &[id]);
            if let Some(l) = app.chat.consults.live.remove(&id) {
                for u in l.sides() {
                    if let Some(v) = app.chat.consults.by_user.get_mut(&u) {
                        v.retain(|x| *x != id);
                        if v.is_empty() {
                            app.chat.consults.by_user.remove(&u);
                        }
                    }
                }
            }
        }
    }
}

/// Runs or pauses the consultation according to who is connected.
fn evaluate(app: &mut App, ctx: &mut dyn Ctx<Completion>, id: u64) {
    let now = ctx.now();
    let Some(l) = app.chat.consults.live.get(&id) else {
        return;
    };
    let both = l.sides().iter().all(|u| app.chat.online_anywhere(*u));
    let Some(l) = app.chat.consults.live.get_mut(&id) else {
        return;
    };
    match l.presence(both, now) {
        Change::None => {}
        Change::Started => {
            push(app, ctx, id, "running");
            arm(app, ctx, id);
            arm_save(app, ctx);
        }
        Change::Paused(timer) => {
            if let Some(t) = timer {
                app.cancel(ctx, t);
            }
            push(app, ctx, id, "paused");
            save(app, ctx, &[id]);
        }
    }
}

/// Sets the consultation's timer for its next event: zero, a warning or a report.
fn arm(app: &mut App, ctx: &mut dyn Ctx<Completion>, id: u64) {
    let rules = Rules::of(&app.config.consult);
    let now = ctx.now();
    let Some(l) = app.chat.consults.live.get_mut(&id) else {
        return;
    };
    let old = l.timer.take();
    let delay = l.next_event_in(&rules, now);
    if let Some(t) = old {
        app.cancel(ctx, t);
    }
    let t = app.after(ctx, delay, move |app, ctx| tick(app, ctx, id));
    if let Some(l) = app.chat.consults.live.get_mut(&id) {
        l.timer = Some(t);
    }
}

fn tick(app: &mut App, ctx: &mut dyn Ctx<Completion>, id: u64) {
    let now = ctx.now();
    let rules = Rules::of(&app.config.consult);
    let Some(l) = app.chat.consults.live.get_mut(&id) else {
        return;
    };
    l.timer = None;
    match l.tick(&rules, now) {
        Tick::Idle => {}
        Tick::Ended => {
            push(app, ctx, id, "ended");
            save(app, ctx, &[id]);
        }
        Tick::Warning => {
            push(app, ctx, id, "warning");
            arm(app, ctx, id);
        }
        Tick::Report => {
            push(app, ctx, id, "time");
            arm(app, ctx, id);
        }
        Tick::Quiet => arm(app, ctx, id),
    }
}

/// Saves what the given consultations used (with their end, when they ended).
fn save(app: &mut App, ctx: &mut dyn Ctx<Completion>, ids: &[u64]) {
    let now = ctx.now();
    let mut used = Vec::new();
    for id in ids {
        if let Some(l) = app.chat.consults.live.get_mut(id) {
            l.settle(now);
            if l.unsaved_ms > 0 || l.ended {
                used.push((*id, l.unsaved_ms, l.ended));
                l.unsaved_ms = 0;
            }
        }
    }
    if used.is_empty() {
        return;
    }
    let submitted = app.job(
        ctx,
        move |b| b.use_consultation_time(&used),
        |_, _, r| {
            if let Err(e) = r {
                log::warn!("consultation time not saved: {e}");
            }
        },
    );
    if !submitted {
        log::warn!("consultation time not saved: workers busy");
    }
}

/// The periodic save of running consultations.
fn arm_save(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    if app.chat.consults.save_armed {
        return;
    }
    app.chat.consults.save_armed = true;
    let every = Duration::from_secs(app.config.consult.save_every_s);
    app.after(ctx, every, |app, ctx| {
        app.chat.consults.save_armed = false;
        let running: Vec<u64> = app
            .chat
            .consults
            .live
            .iter()
            .filter(|(_, l)| l.since.is_some())
            .map(|(id, _)| *id)
            .collect();
        save(app, ctx, &running);
        if !running.is_empty() {
            arm_save(app, ctx);
        }
    });
}

/// Graceful shutdown: everything used so far is saved (shutdown waits for the job).
pub fn on_shutdown(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    let ids: Vec<u64> = app.chat.consults.live.keys().copied().collect();
    save(app, ctx, &ids);
}

/// Calls `then` with the consultation's sides once it is in memory (loaded when needed).
pub(crate) fn with_live(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    id: u64,
    then: impl FnOnce(&mut App, &mut dyn Ctx<Completion>, &Pending, [u64; 2]) + Send + 'static,
) -> CmdResult {
    if let Some(sides) = app.chat.consults.sides(id) {
        then(app, ctx, p, sides);
        return Ok(());
    }
    conn_job(
        app,
        ctx,
        p,
        move |b| b.consultation(id),
        move |app, ctx, p, r| match r {
            Ok(Some(c)) => {
                let sides = [c.user, c.consultant];
                // Only the desk's node runs the clocks.
                let here = sides.iter().any(|u| app.chat.online_anywhere(*u));
                if here && app.chat.role.mine {
                    load(app, ctx, vec![c]);
                }
                then(app, ctx, p, sides);
            }
            Ok(None) => p.reply_err(ctx, code::NOT_FOUND, "no such consultation"),
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

/// Whether a message may be sent in the consultation now: 410 once its time is used up.
pub(crate) fn check_open(app: &App, id: u64) -> CmdResult {
    match app.chat.consults.live.get(&id) {
        Some(l) if l.ended || l.remaining_ms == 0 => Err(Failure(
            code::GONE,
            "the consultation's time is used up".into(),
        )),
        _ => Ok(()),
    }
}

/// The live view of a consultation, or the stored one.
fn view(app: &App, ctx: &dyn Ctx<Completion>, c: &Consultation) -> Value {
    let (remaining_ms, total_ms, ended, running) = match app.chat.consults.live.get(&c.id) {
        Some(l) => {
            let (remaining_ms, running) = l.remaining_at(ctx.now());
            (remaining_ms, l.total_ms, l.ended, running)
        }
        None => (c.remaining_ms, c.total_ms, c.ended, false),
    };
    json!({
        "consult_id": c.id, "conv_id": proto::consult_conv(c.id), "user": c.user,
        "consultant": c.consultant, "remaining_s": secs(remaining_ms),
        "remaining_ms": remaining_ms, "total_s": secs(total_ms),
        "ended": ended, "running": running,
    })
}

fn seconds(body: &Value) -> Result<u64, Failure> {
    match body.get("seconds").and_then(Value::as_u64) {
        Some(s @ 1..=MAX_ADD_S) => Ok(s),
        _ => Err(Failure::bad_request(format!(
            "seconds must be 1 to {MAX_ADD_S}"
        ))),
    }
}

fn field(body: &Value, name: &str) -> Result<u64, Failure> {
    body.get(name)
        .and_then(Value::as_u64)
        .filter(|v| *v > 0)
        .ok_or_else(|| Failure::bad_request(format!("missing {name}")))
}

/// Server API: `consult_create {user, consultant, seconds}`, `consult_extend {consult_id,
/// seconds}`, `consult_get {consult_id}`, `consult_end {consult_id}`.
pub fn server_api(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    action: &str,
    body: &Value,
) -> Result<Reply, Failure> {
    let store_err =
        |e: &StoreError| crate::rt::reply::api_error(proto::store_code(e), &e.to_string());
    let ok = match action {
        "consult_create" => {
            let user = field(body, "user")?;
            let consultant = field(body, "consultant")?;
            if user == consultant {
                return Err(Failure::bad_request("user and consultant must differ"));
            }
            let ms = seconds(body)? * 1000;
            app.job(
                ctx,
                move |b| -> Result<Consultation, StoreError> {
                    if b.existing_users(&[user, consultant])?.len() != 2 {
                        return Err(StoreError::NotFound("user"));
                    }
                    b.create_consultation(user, consultant, ms)
                },
                move |app, ctx, r| match r {
                    Ok(c) => {
                        let id = c.id;
                        let data = view(app, ctx, &c);
                        let payload = proto::push(
                            "consult",
                            &json!({ "consult_id": id, "event": "created", "remaining_s": data["remaining_s"], "total_s": data["total_s"], "user": user, "consultant": consultant }),
                        );
                        push_users(app, ctx, &[user, consultant], &payload);
                        if !app.chat.role.mine {
                            // The clocks run on the desk's node.
                            to_desk(app, &json!({ "op": "consult", "id": id, "event": "created" }));
                        } else {
                            // Then `running` when both are online (the nodes are asked who
                            // holds them).
                            ask_for(app, &[c.user, c.consultant]);
                            load(app, ctx, vec![c]);
                        }
                        ctx.respond(conn, api_ok(data));
                    }
                    Err(e) => ctx.respond(conn, store_err(&e)),
                },
            )
        }
        "consult_extend" => {
            let id = field(body, "consult_id")?;
            let extra_ms = seconds(body)? * 1000;
            app.job(
                ctx,
                move |b| b.extend_consultation(id, extra_ms),
                move |app, ctx, r| match r {
                    Ok(c) if !app.chat.role.mine => {
                        to_desk(
                            app,
                            &json!({ "op": "consult", "id": id, "event": "extended", "extra_ms": extra_ms }),
                        );
                        let data = view(app, ctx, &c);
                        ctx.respond(conn, api_ok(data));
                    }
                    Ok(c) => {
                        extended(app, ctx, id, extra_ms);
                        let data = view(app, ctx, &c);
                        ctx.respond(conn, api_ok(data));
                    }
                    Err(e) => ctx.respond(conn, store_err(&e)),
                },
            )
        }
        "consult_end" => {
            let id = field(body, "consult_id")?;
            app.job(
                ctx,
                move |b| b.end_consultation(id),
                move |app, ctx, r| match r {
                    Ok(c) => {
                        if app.chat.role.mine {
                            ended_by_api(app, ctx, &c);
                        } else {
                            to_desk(app, &json!({ "op": "consult", "id": id, "event": "ended" }));
                        }
                        let data = view(app, ctx, &c);
                        ctx.respond(conn, api_ok(data));
                    }
                    Err(e) => ctx.respond(conn, store_err(&e)),
                },
            )
        }
        "consult_get" => {
            let id = field(body, "consult_id")?;
            app.job(
                ctx,
                move |b| b.consultation(id),
                move |app, ctx, r| match r {
                    Ok(Some(c)) => {
                        let data = view(app, ctx, &c);
                        ctx.respond(conn, api_ok(data));
                    }
                    Ok(None) => ctx.respond(conn, store_err(&StoreError::NotFound("consultation"))),
                    Err(e) => ctx.respond(conn, store_err(&e)),
                },
            )
        }
        _ => {
            return Err(Failure(
                code::NOT_FOUND,
                format!("unknown action {action:?}"),
            ))
        }
    };
    Ok(crate::rt::reply::later_or_busy(ok))
}
