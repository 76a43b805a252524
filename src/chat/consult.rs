//! Timed consultations (`chat_type` 3): a user and a consultant in conversation `c_<id>`, with
//! time bought through the server API. The time runs only while both are connected (here), both
//! get the remaining time every `[consult] report_every_s` and a warning at each of
//! `warn_at_s`; at zero the consultation ends and further messages get 410 until it is extended.
//!
//! The live figure is held here; what was used is saved every `save_every_s` (and at every pause,
//! end and shutdown) as deltas, so a crash loses at most a few seconds of it and an extension
//! made meanwhile is never overwritten.

use super::{bad, conn_job, push_users, CmdResult, Pending};
use crate::app::{api_ok, App, AppTimer, Completion};
use crate::net::{ConnId, Ctx, Reply};
use crate::proto::Command;
use crate::proto::{self, code};
use crate::store::{Consultation, StoreError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Longest time one create or extend may add (30 days).
const MAX_ADD_S: u64 = 30 * 86_400;

/// A consultation held in memory while one of its two sides is connected here.
struct Live {
    user: u64,
    consultant: u64,
    total_ms: u64,
    /// As of `since` while running; current otherwise.
    remaining_ms: u64,
    since: Option<Instant>,
    /// Used but not yet saved.
    unsaved_ms: u64,
    ended: bool,
    /// Thresholds (ms) already announced.
    warned: Vec<u64>,
    last_report: Instant,
    timer: Option<AppTimer>,
}

impl Live {
    fn sides(&self) -> [u64; 2] {
        [self.user, self.consultant]
    }

    /// The remaining time at `now` (without settling), and whether it runs.
    fn remaining_at(&self, now: Instant) -> (u64, bool) {
        match self.since {
            Some(since) => {
                let run = now.saturating_duration_since(since).as_millis() as u64;
                (self.remaining_ms.saturating_sub(run), true)
            }
            None => (self.remaining_ms, false),
        }
    }

    /// Brings `remaining_ms` up to `now` (running consultations).
    fn settle(&mut self, now: Instant) {
        if let Some(since) = self.since {
            let used =
                (now.saturating_duration_since(since).as_millis() as u64).min(self.remaining_ms);
            self.remaining_ms -= used;
            self.unsaved_ms += used;
            self.since = Some(now);
        }
    }
}

#[derive(Default)]
pub struct Consults {
    live: HashMap<u64, Live>,
    /// uid -> the live consultations they take part in.
    by_user: HashMap<u64, Vec<u64>>,
    save_armed: bool,
}

impl Consults {
    /// Consultations held in memory.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The live consultations `uid` takes part in.
    fn of(&self, uid: u64) -> Vec<u64> {
        self.by_user.get(&uid).cloned().unwrap_or_default()
    }

    /// The two sides of a live consultation.
    pub fn sides(&self, id: u64) -> Option<[u64; 2]> {
        self.live.get(&id).map(Live::sides)
    }
}

fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

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
pub(super) fn command(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let id = cmd.u64("consult_id").map_err(bad)?;
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
            .is_some_and(|l| l.sides().iter().all(|u| !app.chat.is_online(*u)));
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
    let both = l.sides().iter().all(|u| app.chat.is_online(*u));
    let should_run = both && !l.ended && l.remaining_ms > 0;
    let running = l.since.is_some();
    if should_run && !running {
        if let Some(l) = app.chat.consults.live.get_mut(&id) {
            l.since = Some(now);
            l.last_report = now;
        }
        push(app, ctx, id, "running");
        arm(app, ctx, id);
        arm_save(app, ctx);
    } else if !should_run && running {
        let timer = app.chat.consults.live.get_mut(&id).and_then(|l| {
            l.settle(now);
            l.since = None;
            l.timer.take()
        });
        if let Some(t) = timer {
            app.cancel(ctx, t);
        }
        push(app, ctx, id, "paused");
        save(app, ctx, &[id]);
    }
}

/// Sets the consultation's timer for its next event: zero, a warning or a report.
fn arm(app: &mut App, ctx: &mut dyn Ctx<Completion>, id: u64) {
    let report = Duration::from_secs(app.config.consult.report_every_s);
    let thresholds: Vec<u64> = app
        .config
        .consult
        .warn_at_s
        .iter()
        .map(|s| s * 1000)
        .collect();
    let now = ctx.now();
    let Some(l) = app.chat.consults.live.get_mut(&id) else {
        return;
    };
    let old = l.timer.take();
    let mut next_ms = l.remaining_ms;
    for t in thresholds {
        if t < l.remaining_ms && !l.warned.contains(&t) {
            next_ms = next_ms.min(l.remaining_ms - t);
        }
    }
    let until_report = (l.last_report + report).saturating_duration_since(now);
    let delay = Duration::from_millis(next_ms).min(until_report);
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
    let report = Duration::from_secs(app.config.consult.report_every_s);
    let thresholds: Vec<u64> = app
        .config
        .consult
        .warn_at_s
        .iter()
        .map(|s| s * 1000)
        .collect();
    let Some(l) = app.chat.consults.live.get_mut(&id) else {
        return;
    };
    l.timer = None;
    if l.since.is_none() {
        return;
    }
    l.settle(now);
    if l.remaining_ms == 0 {
        l.ended = true;
        l.since = None;
        push(app, ctx, id, "ended");
        save(app, ctx, &[id]);
        return;
    }
    // Timers fire a little late: a threshold is announced once the time is within 50 ms of it.
    let crossed: Vec<u64> = thresholds
        .into_iter()
        .filter(|t| l.remaining_ms <= t + 50 && !l.warned.contains(t))
        .collect();
    let report_due = now >= l.last_report + report;
    if report_due {
        l.last_report = now;
    }
    if !crossed.is_empty() {
        l.warned.extend(crossed);
        push(app, ctx, id, "warning");
    } else if report_due {
        push(app, ctx, id, "time");
    }
    arm(app, ctx, id);
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
pub(super) fn with_live(
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
                let here = sides.iter().any(|u| app.chat.is_online(*u));
                if here {
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
pub(super) fn check_open(app: &App, id: u64) -> CmdResult {
    match app.chat.consults.live.get(&id) {
        Some(l) if l.ended || l.remaining_ms == 0 => {
            Err((code::GONE, "the consultation's time is used up".into()))
        }
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
        "consultant": c.consultant, "remaining_s": secs(remaining_ms), "total_s": secs(total_ms),
        "ended": ended, "running": running,
    })
}

fn seconds(body: &Value) -> Result<u64, (u16, String)> {
    match body.get("seconds").and_then(Value::as_u64) {
        Some(s @ 1..=MAX_ADD_S) => Ok(s),
        _ => Err(bad(format!("seconds must be 1 to {MAX_ADD_S}"))),
    }
}

fn field(body: &Value, name: &str) -> Result<u64, (u16, String)> {
    body.get(name)
        .and_then(Value::as_u64)
        .filter(|v| *v > 0)
        .ok_or_else(|| bad(format!("missing {name}")))
}

/// Server API: `consult_create {user, consultant, seconds}`, `consult_extend {consult_id,
/// seconds}`, `consult_get {consult_id}`, `consult_end {consult_id}`.
pub fn server_api(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    action: &str,
    body: &Value,
) -> Result<Reply, (u16, String)> {
    let store_err = |e: &StoreError| crate::app::api_error(proto::store_code(e), &e.to_string());
    let ok = match action {
        "consult_create" => {
            let user = field(body, "user")?;
            let consultant = field(body, "consultant")?;
            if user == consultant {
                return Err(bad("user and consultant must differ"));
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
                        // Then `running` when both are here.
                        if [c.user, c.consultant].iter().any(|u| app.chat.is_online(*u)) {
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
                    Ok(c) => {
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
                        ended_by_api(app, ctx, &c);
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
        _ => return Err((code::NOT_FOUND, format!("unknown action {action:?}"))),
    };
    Ok(crate::app::later_or_busy(ok))
}
