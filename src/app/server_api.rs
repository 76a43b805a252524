//! The server API (`POST /api/server/{action}`, authenticated by the API key): the business
//! backend's users, messages, groups, friendships, kicks and presence.

use crate::auth;
use crate::chat::send::{ack_data, acked};
use crate::chat::session::kick_local;
use crate::chat::social::{create_group, friendship_ended, friendship_made, notify_membership};
use crate::chat::{consult, membership, presence, profile};
use crate::cluster::bus::Target;
use crate::http::Request;
use crate::net::{ConnId, Ctx, Reply};
use crate::proto::Failure;
use crate::proto::{self, chat_type, code};
use crate::rt::reply::{api_error, api_ok, field_list, field_u64, later_or_busy};
use crate::rt::{App, Completion};
use crate::store::{self, Backends, NewMessage, StoreError, StoreResult};
use serde_json::{json, Value};
use std::collections::HashSet;

/// `POST /api/server/{action}`: the API key, then the action.
pub fn handle(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    req: &Request,
    action: &str,
) -> Reply {
    let presented = req
        .bearer()
        .or_else(|| req.header_str("x-api-key"))
        .unwrap_or("");
    if !auth::constant_time_eq(presented.trim().as_bytes(), app.secrets.api_key.as_bytes()) {
        return Reply::Now(api_error(code::UNAUTHORIZED, "bad or missing API key"));
    }
    let body: Value = match req.json() {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Reply::Now(api_error(
                code::BAD_REQUEST,
                "the body must be a JSON object",
            ))
        }
    };
    server_api(app, ctx, conn, action, body)
}

/// Answers a deferred server-API request from a store job's result.
pub fn respond_job<R: Send + 'static>(
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
    later_or_busy(ok)
}

pub fn server_api(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    action: &str,
    body: Value,
) -> crate::net::Reply {
    use crate::net::Reply;
    let result: Result<Reply, Failure> = (|| match action {
        "consult_create" | "consult_extend" | "consult_get" | "consult_end" => {
            consult::server_api(app, ctx, conn, action, &body)
        }
        "user" => {
            let text = |name: &str| -> Result<Option<String>, Failure> {
                match body.get(name) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(Failure::bad_request(format!("\"{name}\" must be a string"))),
                }
            };
            let user_type = match body.get("user_type") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => {
                    Some(crate::profile::user_type(&n.to_string()).map_err(Failure::bad_request)?)
                }
                Some(Value::String(s)) => {
                    Some(crate::profile::user_type(s).map_err(Failure::bad_request)?)
                }
                // Not a number at all: the shared rule's refusal, naming what was sent.
                Some(other) => Some(
                    crate::profile::user_type(&other.to_string()).map_err(Failure::bad_request)?,
                ),
            };
            let profile = crate::login::tokens::profile_of(
                text("name")?.as_deref(),
                text("head_img")?.as_deref(),
                user_type,
            )
            .map_err(Failure::bad_request)?;
            let ttl = app.config.auth.token_ttl_s;
            let issued =
                |app: &mut App, ctx: &mut dyn Ctx<Completion>, i: crate::login::tokens::Issued| {
                    if i.profile_changed {
                        profile::changed(app, ctx, &i.user);
                    }
                    i.data
                };
            // A user known by wxchat's uid (a WeChat user has no app_uid) is updated in place.
            if body.get("uid").is_some_and(|v| !v.is_null()) {
                let uid = field_u64(&body, "uid")?;
                if profile.user_type.is_some() {
                    return Err(Failure::bad_request("user_type is set by app_uid only"));
                }
                return Ok(respond_job(
                    app,
                    ctx,
                    conn,
                    move |s| {
                        crate::login::tokens::issue_token_for_uid(
                            &**s, &*s.tokens, uid, &profile, ttl,
                        )
                    },
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
                .ok_or_else(|| Failure::bad_request("missing app_uid (or uid)"))?;
            Ok(respond_job(
                app,
                ctx,
                conn,
                move |s| {
                    crate::login::tokens::issue_token(
                        &**s, &*s.tokens, &app_uid, &profile, false, ttl,
                    )
                },
                issued,
            ))
        }
        "send" => {
            let from = field_u64(&body, "from_id")?;
            let ct = field_u64(&body, "chat_type")?;
            let to = field_u64(&body, "to_id")?;
            let mt = u8::try_from(field_u64(&body, "msg_type")?)
                .map_err(|_| Failure::bad_request("unknown msg_type"))?;
            let msg = body.get("msg").cloned().unwrap_or(Value::Null);
            let text = proto::validate_body(mt, &msg, &app.chat.body_limits)?;
            let conv_id = match u8::try_from(ct).unwrap_or(u8::MAX) {
                chat_type::FRIEND if from != to => proto::friend_conv(from, to),
                chat_type::GROUP => proto::group_conv(to),
                _ => {
                    return Err(Failure::bad_request(
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
                    .map_err(Failure::bad_request)?,
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
                Err(_) => Err(Failure::busy()),
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
                return Err(Failure::bad_request("name must be 1-128 bytes"));
            }
            let members = field_list(&body, "members")?;
            let history = membership::history_option(body.get("history_for_new_members"))
                .map_err(Failure::bad_request)?;
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
                            Err(Failure(c, m)) => api_error(c, &m),
                        },
                    )
                },
            ) {
                Ok(Reply::Later)
            } else {
                Err(Failure::busy())
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
                return Err(Failure::bad_request("uid and friend_id must differ"));
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
        "wx_check" => Ok(crate::login::wechat::check(app, ctx, conn, &body)),
        "online" => {
            let uids = field_list(&body, "uids")?;
            let answer = |app: &App, uids: &[u64], r: StoreResult<HashSet<u64>>| match r {
                Ok(online) => {
                    let out: serde_json::Map<String, Value> = uids
                        .iter()
                        .map(|u| (u.to_string(), Value::from(online.contains(u))))
                        .collect();
                    // The cluster's distinct users as of the last figures tick (this process's
                    // until the first), and this process's share.
                    let here = app.chat.online.len() as u64;
                    let total = app
                        .cluster
                        .as_ref()
                        .map_or(here, |c| c.users_online.max(here));
                    api_ok(json!({ "online": out, "total_online": total, "node_online": here }))
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
        _ => Err(Failure(
            code::NOT_FOUND,
            format!("unknown server API action {action:?}"),
        )),
    })();
    match result {
        Ok(r) => r,
        Err(Failure(c, m)) => Reply::Now(api_error(c, &m)),
    }
}
