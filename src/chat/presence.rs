//! Presence: which users are online, on this process or (with Redis) on any process.
//!
//! The hub's `online` map knows this process's users. The presence service (`store::presence`)
//! knows everyone's: this process reports a user when their first connection authenticates and
//! withdraws them when their last one closes, and refreshes all of its users every third of the
//! TTL, so the users of a process that dies lapse by themselves. The in-process service is called
//! directly (it cannot block); Redis is called from workers, and a lookup that fails there is
//! answered with 503 by commands that exist to ask about presence.

use crate::net::Ctx;
use crate::rt::{App, Completion};
use crate::store::{StoreError, StoreResult};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn refresh_every(app: &App) -> Duration {
    Duration::from_millis((app.config.redis.presence_ttl_s.max(3) * 1000) / 3)
}

fn arm_refresh(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    if !app.chat.presence_refresh_armed {
        app.chat.presence_refresh_armed = true;
        let every = refresh_every(app);
        app.after(ctx, every, on_refresh);
    }
}

/// Runs a presence update: inline when local, else on a worker (logged if it fails: the next
/// refresh repairs it).
fn update(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    what: &'static str,
    f: impl FnOnce(&dyn crate::store::presence::Presence, &str) -> StoreResult<()> + Send + 'static,
) {
    update_then(app, ctx, what, f, |_, _| {});
}

/// As [`update`], and `failed` runs on the reactor when the worker's update failed.
fn update_then(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    what: &'static str,
    f: impl FnOnce(&dyn crate::store::presence::Presence, &str) -> StoreResult<()> + Send + 'static,
    failed: impl FnOnce(&mut App, &mut dyn Ctx<Completion>) + Send + 'static,
) {
    let node = app.node_id.clone();
    if app.backends.presence.is_local() {
        if let Err(e) = f(&*app.backends.presence, &node) {
            log::warn!("presence {what}: {e}");
        }
        return;
    }
    let submitted = app.job(
        ctx,
        move |b| f(&*b.presence, &node),
        move |app, ctx, r| {
            if let Err(e) = r {
                log::warn!("presence {what}: {e}");
                failed(app, ctx);
            }
        },
    );
    if !submitted {
        log::warn!("presence {what}: worker queue full; the next refresh repairs it");
    }
}

/// The user's first connection on this process authenticated.
pub fn came_online(app: &mut App, ctx: &mut dyn Ctx<Completion>, uid: u64) {
    arm_refresh(app, ctx);
    update(app, ctx, "online", move |p, node| {
        p.set_online(node, &[uid])
    });
}

/// The user's last connection on this process closed.
pub fn went_offline(app: &mut App, ctx: &mut dyn Ctx<Completion>, uid: u64) {
    if app.chat.shutting_down {
        return;
    }
    update(app, ctx, "offline", move |p, node| p.set_offline(node, uid));
}

/// The refresh timer fired: re-report every user of this process.
fn on_refresh(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    app.chat.presence_refresh_armed = false;
    if app.chat.online.is_empty() || app.chat.shutting_down {
        return;
    }
    report_all(app, ctx);
    arm_refresh(app, ctx);
}

/// Re-reports every user of this process now (the periodic refresh, and after the bus found
/// Redis lost entries: presence was likely lost with them, and pushes from other nodes find
/// nobody here until it is back, so a failed report is tried again every half second for a
/// while instead of waiting for the next refresh).
pub fn report_all(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    report_all_tries(app, ctx, 20);
}

fn report_all_tries(app: &mut App, ctx: &mut dyn Ctx<Completion>, tries: u32) {
    if app.chat.online.is_empty() || app.chat.shutting_down {
        return;
    }
    let uids: Vec<u64> = app.chat.online.keys().copied().collect();
    let report = move |p: &dyn crate::store::presence::Presence, node: &str| {
        // Bounded pipelines: one huge one would hold a connection (and Redis) for long.
        for chunk in uids.chunks(1000) {
            p.set_online(node, chunk)?;
        }
        Ok(())
    };
    update_then(app, ctx, "refresh", report, move |app, ctx| {
        if tries > 1 {
            app.after(ctx, Duration::from_millis(500), move |app, ctx| {
                report_all_tries(app, ctx, tries - 1)
            });
        }
    });
}

/// Graceful shutdown: withdraw every user of this process at once.
pub fn on_shutdown(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    let uids: Vec<u64> = app.chat.online.keys().copied().collect();
    app.chat.shutting_down = true;
    if !uids.is_empty() {
        update(app, ctx, "shutdown", move |p, node| {
            for chunk in uids.chunks(1000) {
                p.clear_node(node, chunk)?;
            }
            Ok(())
        });
    }
}

/// Calls `then` with the subset of `uids` online anywhere (always exactly once: a full worker
/// queue is reported as unavailable).
pub fn lookup(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    uids: Vec<u64>,
    then: impl FnOnce(&mut App, &mut dyn Ctx<Completion>, StoreResult<HashSet<u64>>) + Send + 'static,
) {
    if app.backends.presence.is_local() {
        let r = app
            .backends
            .presence
            .online(&uids)
            .map(|v| v.into_iter().collect());
        then(app, ctx, r);
        return;
    }
    let slot = Arc::new(Mutex::new(Some(then)));
    let in_job = slot.clone();
    let submitted = app.job(
        ctx,
        move |b| b.presence.online(&uids).map(|v| v.into_iter().collect()),
        move |app, ctx, r| {
            if let Some(then) = take(&in_job) {
                then(app, ctx, r);
            }
        },
    );
    if !submitted {
        if let Some(then) = take(&slot) {
            then(
                app,
                ctx,
                Err(StoreError::Unavailable("server busy, retry".into())),
            );
        }
    }
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    match slot.lock() {
        Ok(mut g) => g.take(),
        Err(p) => p.into_inner().take(),
    }
}

/// `lookup` for lists shown alongside other data (friends, group members): if the shared
/// service fails, this process's own view is used instead of failing the whole answer.
pub fn lookup_or_local(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    uids: Vec<u64>,
    then: impl FnOnce(&mut App, &mut dyn Ctx<Completion>, HashSet<u64>) + Send + 'static,
) {
    let fallback: HashSet<u64> = uids
        .iter()
        .copied()
        .filter(|u| app.chat.is_online(*u))
        .collect();
    lookup(app, ctx, uids, move |app, ctx, r| {
        let online = match r {
            Ok(set) => set,
            Err(e) => {
                log::warn!("presence lookup failed, answering with this node's view: {e}");
                fallback
            }
        };
        then(app, ctx, online);
    });
}
