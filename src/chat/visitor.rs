//! Anonymous web visitors: `POST /api/service/visitor` issues a temporary identity
//! (`user_type` 3) whose WebSocket may use customer service only; on login it converts into the
//! registered user (`POST /api/service/visitor/convert`, or `visitor_token` in doLogin).
//!
//! Conversion copies the visitor's conversation into the user's through the persister (each copy
//! deduplicated by `client_msg_id` `visitor:<msg_id>`, so a retried conversion never doubles a
//! message), then marks the visitor converted in the store (their tokens stop working, their
//! service sessions move to the user) and hands the desk's session over.

use crate::auth;
use crate::http::{Request, Response};
use crate::net::{ConnId, Ctx, Reply};
use crate::proto::Failure;
use crate::proto::{self, chat_type, close, code, msg_type};
use crate::rt::reply::{api_error, api_ok, later_or_busy};
use crate::rt::token::request_token;
use crate::rt::{App, Completion};
use crate::store::{self, NewMessage, StoredMessage, USER_TYPE_VISITOR};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most messages a conversion carries over (a visitor's conversation is short).
const MAX_COPIED: usize = 2_000;

type Outcome = Result<Value, Failure>;

type DoneFn = Box<dyn FnOnce(&mut App, &mut dyn Ctx<Completion>, Outcome) + Send>;

/// The conversion's continuation, called exactly once by whichever step ends it (a worker
/// queue that is full must answer too, so every step keeps a handle).
#[derive(Clone)]
struct Done(Arc<Mutex<Option<DoneFn>>>);

impl Done {
    fn call(&self, app: &mut App, ctx: &mut dyn Ctx<Completion>, r: Outcome) {
        let f = match self.0.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(f) = f {
            f(app, ctx, r);
        }
    }
}

fn busy() -> Failure {
    Failure::busy()
}

fn failed(e: store::StoreError) -> Failure {
    Failure::from(e)
}

/// `POST /api/service/visitor`: a new visitor and their token.
pub fn create(app: &mut App, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: &Request) -> Reply {
    let ttl = app.config.service.visitor_ttl_s;
    let max = app.config.service.visitors_per_ip_per_min;
    let limit_key = ctx.peer_addr(conn).map(|peer| {
        let ip = crate::http::client_ip(peer.ip(), req, &app.config.http.trusted_proxies);
        format!("visitors:{ip}")
    });
    let work = move |b: &store::Backends| -> Outcome {
        if let (Some(key), true) = (&limit_key, max > 0) {
            let n = b
                .cache
                .incr_window(key, std::time::Duration::from_secs(60))
                .map_err(failed)?;
            if n > max {
                return Err(Failure(
                    code::RATE_LIMITED,
                    "too many visitors from this address; retry in a minute".into(),
                ));
            }
        }
        let user = b.create_visitor().map_err(failed)?;
        let token = crate::store::tokens::mint(&*b.tokens, user.uid, ttl).map_err(failed)?;
        Ok(
            json!({ "uid": user.uid, "token": token, "expires_in": ttl, "user_type": USER_TYPE_VISITOR }),
        )
    };
    let ok = app.job(ctx, work, move |app, ctx, r: Outcome| {
        app.respond_login(ctx, conn, "visitor", respond(r));
    });
    later_or_busy(ok)
}

fn respond(r: Outcome) -> Response {
    match r {
        Ok(data) => api_ok(data),
        Err(Failure(c, m)) => api_error(c, &m),
    }
}

/// `POST /api/service/visitor/convert` with the registered user's token (`Authorization:
/// Bearer`) and `visitor_token` in the body.
pub fn convert_request(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    req: &Request,
) -> Reply {
    let Some(token) = request_token(req, &app.config.ws.allowed_origins) else {
        return Reply::Now(crate::rt::reply::not_logged_in());
    };
    let visitor_token = req.body_params().ok().and_then(|p| {
        p.into_iter()
            .find(|(k, _)| k == "visitor_token")
            .map(|(_, v)| v)
    });
    let Some(visitor_token) = visitor_token.filter(|t| auth::token_well_formed(t)) else {
        return Reply::Now(api_error(
            code::BAD_REQUEST,
            "missing or malformed visitor_token",
        ));
    };
    let hash = auth::token_hash(&token);
    let ok = app.job(
        ctx,
        move |b| b.tokens.user(&hash),
        move |app, ctx, r| match r {
            Ok(Some(uid)) => convert(app, ctx, &visitor_token, uid, move |_app, ctx, r| {
                ctx.respond(conn, respond(r));
            }),
            Ok(None) => ctx.respond(conn, crate::rt::reply::not_logged_in()),
            Err(e) => ctx.respond(conn, api_error(proto::store_code(&e), &e.to_string())),
        },
    );
    later_or_busy(ok)
}

/// Converts the visitor holding `visitor_token` into `uid`; `done` gets
/// `{"visitor","uid","messages"}` or the error.
pub fn convert(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    visitor_token: &str,
    uid: u64,
    done: impl FnOnce(&mut App, &mut dyn Ctx<Completion>, Outcome) + Send + 'static,
) {
    let hash = auth::token_hash(visitor_token);
    let work = move |b: &store::Backends| -> Result<(u64, Vec<StoredMessage>), Failure> {
        let bad_token = || {
            Failure(
                code::UNAUTHORIZED,
                "bad or expired visitor_token".to_string(),
            )
        };
        let visitor = b
            .tokens
            .user(&hash)
            .map_err(failed)?
            .ok_or_else(bad_token)?;
        let user = b.user(visitor).map_err(failed)?.ok_or_else(bad_token)?;
        if user.user_type != USER_TYPE_VISITOR || visitor == uid {
            return Err(Failure(
                code::CONFLICT,
                "not a visitor's token (or already converted)".into(),
            ));
        }
        let conv = proto::service_conv(visitor);
        let mut messages: Vec<StoredMessage> = Vec::new();
        let mut after = 0;
        while messages.len() < MAX_COPIED {
            let page = b.sync(&conv, after, 500).map_err(failed)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            messages.extend(page.into_iter().filter(|m| m.msg_type != msg_type::RECALL));
        }
        Ok((visitor, messages))
    };
    let token = visitor_token.to_string();
    let done = Done(Arc::new(Mutex::new(Some(Box::new(done)))));
    let d = done.clone();
    let submitted = app.job(ctx, work, move |app, ctx, r| match r {
        Ok((visitor, messages)) => copy(app, ctx, token, visitor, uid, messages, d),
        Err(e) => d.call(app, ctx, Err(e)),
    });
    if !submitted {
        done.call(app, ctx, Err(busy()));
    }
}

/// Copies the visitor's messages into the user's conversation, then finishes the conversion.
fn copy(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    token: String,
    visitor: u64,
    uid: u64,
    messages: Vec<StoredMessage>,
    done: Done,
) {
    let count = messages.len();
    if count == 0 {
        finish(app, ctx, token, visitor, uid, 0, done);
        return;
    }
    let lost = Arc::new(AtomicBool::new(false));
    let map = |id: u64| if id == visitor { uid } else { id };
    for (i, m) in messages.into_iter().enumerate() {
        let copy = NewMessage {
            conv_id: proto::service_conv(uid),
            chat_type: chat_type::SERVICE,
            from_id: map(m.from_id),
            to_id: map(m.to_id),
            msg_type: m.msg_type,
            body: m.body,
            client_msg_id: Some(format!("visitor:{}", m.msg_id)),
            created_at: m.created_at,
        };
        let lost_here = lost.clone();
        let last = i + 1 == count;
        let then_done = last.then(|| done.clone());
        let token = token.clone();
        // The persister commits in order, so the last copy's completion comes after the
        // others'.
        let r = app.persist(copy, move |app, ctx, r| {
            if r.is_err() {
                lost_here.store(true, Ordering::Relaxed);
            }
            if let Some(done) = then_done {
                if lost_here.load(Ordering::Relaxed) {
                    done.call(
                        app,
                        ctx,
                        Err(Failure(
                            code::UNAVAILABLE,
                            "storage unavailable, retry".into(),
                        )),
                    );
                } else {
                    finish(app, ctx, token, visitor, uid, count, done);
                }
            }
        });
        if r.is_err() {
            lost.store(true, Ordering::Relaxed);
            done.call(app, ctx, Err(busy()));
            // Copies already queued are deduplicated when the client retries.
            return;
        }
    }
}

fn finish(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    token: String,
    visitor: u64,
    uid: u64,
    copied: usize,
    done: Done,
) {
    let hash = auth::token_hash(&token);
    let work = move |b: &store::Backends| -> Result<(), Failure> {
        b.convert_visitor(visitor, uid).map_err(failed)?;
        if let Err(e) = b.tokens.revoke(&hash) {
            // The visitor is marked converted, so the token no longer authenticates anyway.
            log::info!("visitor conversion: token not revoked: {e}");
        }
        Ok(())
    };
    let d = done.clone();
    let submitted = app.job(ctx, work, move |app, ctx, r| match r {
        Ok(()) => {
            super::service_desk::visitor_converted(app, ctx, visitor, uid);
            for c in app.chat.conns_of(visitor).to_vec() {
                ctx.close(
                    c,
                    close::CONVERTED,
                    "visitor converted: reconnect with your token",
                );
            }
            d.call(
                app,
                ctx,
                Ok(json!({ "visitor": visitor, "uid": uid, "messages": copied })),
            );
        }
        Err(e) => d.call(app, ctx, Err(e)),
    });
    if !submitted {
        done.call(app, ctx, Err(busy()));
    }
}

// ---------------------------------------------------------------------------------------------
// The purge of idle visitors ([service] visitor_purge_after_s): a timer on the reactor, the
// deletes on a worker, in batches.

/// Visitors deleted by one job (one transaction): small enough to keep the store's write lock
/// short, large enough to catch up quickly after a long pause.
const PURGE_BATCH: u32 = 500;

/// Between two full batches: the other jobs get the workers in between.
const PURGE_NEXT_BATCH: Duration = Duration::from_millis(10);

/// How often the purge looks: a quarter of the idle age (a visitor goes at most a quarter late),
/// at least every second and at most every hour.
fn purge_every(purge_after_s: u64) -> Duration {
    Duration::from_secs((purge_after_s / 4).clamp(1, 3_600))
}

/// When the next purge job runs after one deleted `deleted` visitors.
fn purge_next(deleted: usize, every: Duration) -> Duration {
    if deleted >= PURGE_BATCH as usize {
        PURGE_NEXT_BATCH
    } else {
        every
    }
}

/// The reactor started: the purge runs periodically unless it is off.
pub fn start_purge(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    let after_s = app.config.service.visitor_purge_after_s;
    if after_s > 0 {
        app.after(ctx, purge_every(after_s), purge);
    }
}

fn purge(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    let after_s = app.config.service.visitor_purge_after_s;
    let every = purge_every(after_s);
    let idle_ms = i64::try_from(after_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let submitted = app.job(
        ctx,
        move |b| b.purge_idle_visitors(store::now_ms().saturating_sub(idle_ms), PURGE_BATCH),
        move |app, ctx, r| {
            let next = match r {
                Ok(uids) => {
                    if !uids.is_empty() {
                        log::info!("visitors: {} idle visitors purged", uids.len());
                    }
                    // A connection opened before the token expired may still be up.
                    for uid in &uids {
                        for c in app.chat.conns_of(*uid).to_vec() {
                            ctx.close(c, close::KICKED, "visitor purged");
                        }
                        if let Some(bus) = &app.bus {
                            bus.publish(crate::cluster::bus::Target::Kick(*uid), "");
                        }
                    }
                    purge_next(uids.len(), every)
                }
                Err(e) => {
                    log::warn!(
                        "visitors: purge failed, retried in {}s: {e}",
                        every.as_secs()
                    );
                    every
                }
            };
            app.after(ctx, next, purge);
        },
    );
    if !submitted {
        log::warn!("visitors: purge postponed, the workers are busy");
        app.after(ctx, every, purge);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_looks_every_quarter_of_the_age_within_bounds() {
        assert_eq!(purge_every(30 * 86_400), Duration::from_secs(3_600));
        assert_eq!(purge_every(4_000), Duration::from_secs(1_000));
        assert_eq!(purge_every(2), Duration::from_secs(1));
    }

    #[test]
    fn full_batches_are_followed_at_once() {
        let every = Duration::from_secs(60);
        assert_eq!(purge_next(PURGE_BATCH as usize, every), PURGE_NEXT_BATCH);
        assert_eq!(purge_next(PURGE_BATCH as usize - 1, every), every);
        assert_eq!(purge_next(0, every), every);
    }
}
