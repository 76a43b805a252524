//! Friends and groups: requests, friendships, group creation, membership and its events.

use super::membership;
use super::presence;
use super::push::*;
use super::request::{conn_job, CmdResult, Pending};
use crate::cluster::bus::Target;
use crate::net::Ctx;
use crate::proto::Failure;
use crate::proto::{self, code, Command};
use crate::rt::{App, Completion};
use crate::store::{self, StoreResult, UserStore};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Calls `then` with the group's members: from the cache, or after loading them.
pub(crate) fn with_members(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    gid: u64,
    then: impl FnOnce(&mut App, &mut dyn Ctx<Completion>, &Pending, Arc<Vec<u64>>) + Send + 'static,
) -> CmdResult {
    if let Some(m) = app.chat.groups.get(&gid).cloned() {
        then(app, ctx, p, m);
        return Ok(());
    }
    conn_job(
        app,
        ctx,
        p,
        move |s| s.group_members(gid),
        move |app, ctx, p, r| match r {
            Ok(Some(members)) => {
                let members = Arc::new(members);
                app.chat.groups.insert(gid, members.clone());
                then(app, ctx, p, members);
            }
            Ok(None) => p.reply_err(ctx, code::NOT_FOUND, "no such group"),
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

/// These users in this order with their profiles (loaded on a worker).
pub(crate) fn with_profiles(
    s: &dyn UserStore,
    uids: Vec<u64>,
) -> StoreResult<Vec<(u64, Option<store::User>)>> {
    let mut found: HashMap<u64, store::User> =
        s.users(&uids)?.into_iter().map(|u| (u.uid, u)).collect();
    Ok(uids.into_iter().map(|u| (u, found.remove(&u))).collect())
}

/// A friend or member line: who, how they are called, and whether they are online.
pub(crate) fn person(uid: u64, user: &Option<store::User>, online: bool) -> Value {
    let (name, head_img) = user
        .as_ref()
        .map_or(("", ""), |u| (u.name.as_str(), u.head_img.as_str()));
    json!({ "uid": uid, "name": name, "head_img": head_img, "online": online })
}

pub(crate) fn cmd_friends(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
) -> CmdResult {
    conn_job(
        app,
        ctx,
        p,
        move |s| with_profiles(&**s, s.friends(uid)?),
        |app, ctx, p, r| match r {
            Ok(list) => {
                let p = p.clone();
                let uids: Vec<u64> = list.iter().map(|(u, _)| *u).collect();
                presence::lookup_or_local(app, ctx, uids, move |_app, ctx, online| {
                    let items: Vec<Value> = list
                        .iter()
                        .map(|(f, user)| person(*f, user, online.contains(f)))
                        .collect();
                    p.reply_ok(ctx, &json!({ "friends": items }));
                });
            }
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

pub(crate) fn cmd_friend_request(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let to = cmd.u64("to_id").map_err(Failure::bad_request)?;
    if to == uid {
        return Err(Failure::bad_request("cannot befriend yourself"));
    }
    if app.chat.friends.get(&uid).is_some_and(|f| f.contains(&to)) {
        return Err(Failure(code::CONFLICT, "already friends".into()));
    }
    let note: String = cmd
        .opt_str("note")
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    let note2 = note.clone();
    conn_job(
        app,
        ctx,
        p,
        move |s| -> StoreResult<bool> {
            if s.existing_users(&[to])?.is_empty() {
                return Ok(false);
            }
            s.add_friend_request(uid, to, &note2)?;
            Ok(true)
        },
        move |app, ctx, p, r| match r {
            Ok(true) => {
                p.reply_ok(ctx, &json!({}));
                let push = proto::push(
                    "friend_request",
                    &json!({ "from_id": uid, "note": note, "time": store::now_ms() }),
                );
                push_to_user(app, ctx, to, &push);
            }
            Ok(false) => p.reply_err(ctx, code::NOT_FOUND, "no such user"),
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

/// Records a friendship in the caches and tells both sides.
pub(crate) fn friendship_made(app: &mut App, ctx: &mut dyn Ctx<Completion>, a: u64, b: u64) {
    invalidate_friends(app, a, b);
    for (x, y) in [(a, b), (b, a)] {
        if let Some(f) = app.chat.friends.get_mut(&x) {
            f.insert(y);
        }
        let push = proto::push(
            "friend_added",
            &json!({ "uid": y, "online": app.chat.is_online(y) }),
        );
        push_to_user(app, ctx, x, &push);
    }
}

/// The other nodes reload these two users' friend lists (a friendship made or ended here).
fn invalidate_friends(app: &App, a: u64, b: u64) {
    if let Some(bus) = &app.bus {
        bus.publish(Target::Friends(vec![a, b]), "");
    }
}

pub(crate) fn friendship_ended(app: &mut App, ctx: &mut dyn Ctx<Completion>, a: u64, b: u64) {
    invalidate_friends(app, a, b);
    for (x, y) in [(a, b), (b, a)] {
        if let Some(f) = app.chat.friends.get_mut(&x) {
            f.remove(&y);
        }
        push_to_user(
            app,
            ctx,
            x,
            &proto::push("friend_removed", &json!({ "uid": y })),
        );
    }
}

pub(crate) fn cmd_friend_accept(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let from = cmd.u64("from_id").map_err(Failure::bad_request)?;
    conn_job(
        app,
        ctx,
        p,
        move |s| -> StoreResult<bool> {
            if !s.take_friend_request(from, uid)? {
                return Ok(false);
            }
            s.add_friendship(from, uid)?;
            Ok(true)
        },
        move |app, ctx, p, r| match r {
            Ok(true) => {
                p.reply_ok(ctx, &json!({ "uid": from }));
                friendship_made(app, ctx, from, uid);
            }
            Ok(false) => p.reply_err(ctx, code::NOT_FOUND, "no pending request from that user"),
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

pub(crate) fn cmd_friend_requests(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
) -> CmdResult {
    conn_job(
        app,
        ctx,
        p,
        move |s| s.friend_requests(uid),
        |_app, ctx, p, r| match r {
            Ok(list) => {
                let items: Vec<Value> = list
                    .into_iter()
                    .map(
                        |(from, note, time)| json!({ "from_id": from, "note": note, "time": time }),
                    )
                    .collect();
                p.reply_ok(ctx, &json!({ "requests": items }));
            }
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

pub(crate) fn cmd_friend_remove(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let other = cmd.u64("uid").map_err(Failure::bad_request)?;
    conn_job(
        app,
        ctx,
        p,
        move |s| s.remove_friendship(uid, other),
        move |app, ctx, p, r| match r {
            Ok(()) => {
                p.reply_ok(ctx, &json!({}));
                friendship_ended(app, ctx, uid, other);
            }
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

pub(crate) fn cmd_groups(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
) -> CmdResult {
    conn_job(
        app,
        ctx,
        p,
        move |s| s.groups_of(uid),
        |_app, ctx, p, r| match r {
            Ok(list) => p.reply_ok(ctx, &json!({ "groups": list })),
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

/// Tells every online member about a membership change.
pub(crate) fn push_group_event(
    app: &App,
    ctx: &mut dyn Ctx<Completion>,
    gid: u64,
    event: &str,
    uids: &[u64],
    notify: &[u64],
) {
    let payload = proto::push(
        "group_event",
        &json!({ "group_id": gid, "event": event, "uids": uids }),
    );
    push_users(app, ctx, notify, &payload);
}

pub(crate) fn create_group(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    owner: u64,
    name: String,
    members: Vec<u64>,
    history_for_new_members: bool,
    done: impl FnOnce(&mut App, &mut dyn Ctx<Completion>, Result<Value, Failure>) + Send + 'static,
) -> bool {
    let max = app.config.chat.max_group_members;
    app.job(
        ctx,
        move |s| -> Result<(store::Group, Vec<u64>), Failure> {
            let mut wanted: Vec<u64> = members.clone();
            wanted.push(owner);
            wanted.sort_unstable();
            wanted.dedup();
            if wanted.len() > max {
                return Err(Failure(
                    code::BAD_REQUEST,
                    format!("a group has at most {max} members"),
                ));
            }
            let existing = s.existing_users(&wanted).map_err(Failure::from)?;
            if existing.len() != wanted.len() {
                return Err(Failure(
                    code::NOT_FOUND,
                    "some of those users do not exist".into(),
                ));
            }
            let g = s
                .create_group(owner, &name, &wanted, history_for_new_members)
                .map_err(Failure::from)?;
            Ok((g, wanted))
        },
        move |app, ctx, r| match r {
            Ok((g, members)) => {
                app.chat
                    .groups
                    .insert(g.group_id, Arc::new(members.clone()));
                push_group_event(app, ctx, g.group_id, "created", &members, &members);
                done(app, ctx, Ok(json!({ "group": g, "members": members })));
            }
            Err(e) => done(app, ctx, Err(e)),
        },
    )
}

pub(crate) fn cmd_group_create(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let name = cmd
        .str("name")
        .map_err(Failure::bad_request)?
        .trim()
        .to_string();
    if name.is_empty() || name.len() > 128 {
        return Err(Failure::bad_request("name must be 1-128 bytes"));
    }
    let members = cmd.u64_list("members").map_err(Failure::bad_request)?;
    let history = membership::history_option(cmd.fields.get("history_for_new_members"))
        .map_err(Failure::bad_request)?;
    let p2 = p.clone();
    if create_group(
        app,
        ctx,
        uid,
        name,
        members,
        history,
        move |_app, ctx, r| match r {
            Ok(v) => p2.reply_ok(ctx, &v),
            Err(Failure(c, m)) => p2.reply_err(ctx, c, &m),
        },
    ) {
        Ok(())
    } else {
        Err(Failure::busy())
    }
}

pub(crate) fn cmd_group_members(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let gid = cmd.u64("group_id").map_err(Failure::bad_request)?;
    with_members(app, ctx, p, gid, move |app, ctx, p, members| {
        if members.binary_search(&uid).is_err() {
            return p.reply_err(ctx, code::FORBIDDEN, "not a member of this group");
        }
        let ids = members.to_vec();
        let r = conn_job(
            app,
            ctx,
            p,
            move |s| with_profiles(&**s, ids),
            move |app, ctx, p, r| match r {
                Ok(list) => {
                    let p = p.clone();
                    let uids: Vec<u64> = list.iter().map(|(u, _)| *u).collect();
                    presence::lookup_or_local(app, ctx, uids, move |_app, ctx, online| {
                        let items: Vec<Value> = list
                            .iter()
                            .map(|(m, user)| person(*m, user, online.contains(m)))
                            .collect();
                        p.reply_ok(ctx, &json!({ "group_id": gid, "members": items }));
                    });
                }
                Err(e) => p.reply_store_err(ctx, &e),
            },
        );
        p.reply_if_err(ctx, r);
    })
}

pub(crate) fn cmd_group_invite(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let gid = cmd.u64("group_id").map_err(Failure::bad_request)?;
    let uids = cmd.u64_list("uids").map_err(Failure::bad_request)?;
    if uids.is_empty() {
        return Err(Failure::bad_request("uids is empty"));
    }
    with_members(app, ctx, p, gid, move |app, ctx, p, members| {
        if members.binary_search(&uid).is_err() {
            p.reply_err(ctx, code::FORBIDDEN, "not a member of this group");
            return;
        }
        if members.len() + uids.len() > app.config.chat.max_group_members {
            p.reply_err(
                ctx,
                code::BAD_REQUEST,
                "the group would be over its member limit",
            );
            return;
        }
        add_members(app, ctx, gid, uids, p.clone());
    })
}

pub(crate) fn add_members(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    gid: u64,
    uids: Vec<u64>,
    p: Pending,
) {
    let uids2 = uids.clone();
    let r = conn_job(
        app,
        ctx,
        &p,
        move |s| -> StoreResult<Vec<u64>> {
            let existing = s.existing_users(&uids2)?;
            s.add_group_members(gid, &existing)?;
            Ok(existing)
        },
        move |app, ctx, p, r| match r {
            Ok(added) => {
                app.chat.groups.remove(&gid);
                p.reply_ok(ctx, &json!({ "group_id": gid, "added": added }));
                notify_membership(app, ctx, gid, "joined", added);
            }
            Err(e) => p.reply_store_err(ctx, &e),
        },
    );
    if let Err(Failure(c, m)) = r {
        p.reply_err(ctx, c, &m);
    }
}

/// Reloads the member list, then tells every member (including those who just left) what changed.
pub(crate) fn notify_membership(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    gid: u64,
    event: &'static str,
    uids: Vec<u64>,
) {
    app.chat.groups.remove(&gid);
    // The other nodes' cached lists too.
    if let Some(bus) = &app.bus {
        bus.publish(Target::Group(gid), "");
    }
    app.job(
        ctx,
        move |s| s.group_members(gid),
        move |app, ctx, r| {
            if let Ok(Some(members)) = r {
                let notify = membership::audience(&members, &uids);
                app.chat.groups.insert(gid, Arc::new(members));
                push_group_event(app, ctx, gid, event, &uids, &notify);
            }
        },
    );
}

pub(crate) fn cmd_group_leave(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let gid = cmd.u64("group_id").map_err(Failure::bad_request)?;
    conn_job(
        app,
        ctx,
        p,
        move |s| s.remove_group_member(gid, uid),
        move |app, ctx, p, r| match r {
            Ok(()) => {
                p.reply_ok(ctx, &json!({ "group_id": gid }));
                notify_membership(app, ctx, gid, "left", vec![uid]);
            }
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}
