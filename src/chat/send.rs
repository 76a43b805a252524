//! Sending: admission of a `send`, authorisation per chat type, the persister, the ack after
//! the commit, and delivery to every connection of every recipient (serialised once).

use super::admission::{after_commit, friend_route, service_route, FriendRoute, ServiceRoute};
use super::consult;
use super::push::push_users;
use super::request::{conn_job, CmdResult, Pending};
use super::service_desk;
use super::session::*;
use super::social::*;
use crate::cluster::bus::{Envelope, Target};
use crate::feed::metrics::METRICS;
use crate::feed::Topic;
use crate::net::{ConnId, Ctx, Frame};
use crate::proto::Failure;
use crate::proto::{self, chat_type, code, Command, ConvRef, SendArgs};
use crate::rt::{App, Completion};
use crate::store::{self, Appended, NewMessage, StoreResult};
use serde_json::{json, Value};
use std::sync::Arc;

/// Tells a user's online friends that they came online or went offline.
pub(crate) fn push_presence(app: &mut App, ctx: &mut dyn Ctx<Completion>, uid: u64, online: bool) {
    let Some(friends) = app.chat.friends.get(&uid) else {
        return;
    };
    let friends: Vec<u64> = friends.iter().copied().collect();
    let payload = proto::push("presence", &json!({ "uid": uid, "online": online }));
    push_users(app, ctx, &friends, &payload);
}

/// Delivers a message committed outside a chat connection's `send` (a WeChat user's message).
pub fn deliver_committed(app: &mut App, ctx: &mut dyn Ctx<Completion>, m: &store::StoredMessage) {
    fan_out(app, ctx, m, None);
}

/// A push published by another process: deliver it to the connections held here.
pub fn deliver_remote(app: &mut App, ctx: &mut dyn Ctx<Completion>, env: Envelope) {
    let frame = Frame::text(env.payload.as_bytes());
    match env.target {
        Target::Users(uids) => {
            for uid in uids {
                for c in app.chat.conns_of(uid) {
                    ctx.send(*c, &frame);
                }
            }
        }
        Target::Conv(conv_id) => {
            // A service or consultation conversation's message committed on another node: the
            // desk's node knows its recipients and sends it on to their nodes.
            let publish = matches!(
                proto::parse_conv(&conv_id),
                Some(ConvRef::Service(_) | ConvRef::Consult(_))
            )
            .then(|| env.payload.clone());
            deliver_to_conv_and_bus(app, ctx, conv_id, frame, None, publish);
        }
        Target::Kick(uid) => {
            kick_local(app, ctx, uid);
        }
        Target::Logout(uid, hash) => {
            close_token_local(app, ctx, uid, &hash);
        }
        // A QR-code login's browser: the composition root routes these to `login::qr`.
        Target::Qr(_) => {}
        Target::Resync => resync_local(app, ctx),
        Target::Friends(uids) => reload_friends(app, ctx, uids),
        Target::Group(gid) => {
            app.chat.groups.remove(&gid);
        }
        // A forwarded command's reply.
        Target::Reply(fid) => super::push::forwarded_reply(app, ctx, fid, &env.payload),
        // The composition root hands these to `chat::desk_op`.
        Target::Desk => {}
    }
}

/// This process's bus stream lost pushes: every local chat connection is told
/// `{"cmd":"resync","data":{}}` (its client runs `sync`), and presence is reported again (a
/// Redis restart without persistence lost it too).
fn resync_local(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    let frame = Frame::text(proto::push("resync", &json!({})).as_bytes());
    for conns in app.chat.online.values() {
        for c in conns {
            ctx.send(*c, &frame);
        }
    }
    super::presence::report_all(app, ctx);
}

/// Friend lists changed on another node: the ones cached here (users online here) are loaded
/// again, so a removal elsewhere stops a send here at once.
fn reload_friends(app: &mut App, ctx: &mut dyn Ctx<Completion>, uids: Vec<u64>) {
    for uid in uids {
        if !app.chat.friends.contains_key(&uid) {
            continue;
        }
        app.job(
            ctx,
            move |s| s.friends(uid),
            move |app, _ctx, r| match r {
                // Still online here (the entry is dropped with the last connection).
                Ok(list) if app.chat.friends.contains_key(&uid) => {
                    app.chat.friends.insert(uid, list.into_iter().collect());
                }
                Ok(_) => {}
                // Not knowing is refusing: the store is asked on the next send.
                Err(_) => {
                    if let Some(f) = app.chat.friends.get_mut(&uid) {
                        f.clear();
                    }
                }
            },
        );
    }
}

/// Where a send's fields come from.
pub(crate) enum SendInput<'a> {
    /// The hot path's typed decode (`proto::parse_send`): every field present and well-formed.
    Decoded(SendArgs),
    /// The general decoder's command, whose fields are checked here.
    Command(&'a Command),
}

/// A general command's send fields, checked in the order their errors are reported.
pub(crate) fn send_args(app: &App, p: &Pending, cmd: &Command) -> Result<SendArgs, Failure> {
    let chat_type = cmd.u64("chat_type").map_err(Failure::bad_request)?;
    refuse_visitor(app, p, chat_type)?;
    let to_id = cmd.u64("to_id").map_err(Failure::bad_request)?;
    let msg_type = cmd.u64("msg_type").map_err(Failure::bad_request)?;
    let client_msg_id = proto::client_msg_id_of(cmd.fields.get("client_msg_id").cloned())
        .map_err(Failure::bad_request)?;
    let msg = cmd.fields.get("msg").cloned().unwrap_or(Value::Null);
    Ok(SendArgs {
        chat_type,
        to_id,
        msg_type,
        client_msg_id,
        msg,
    })
}

/// Visitors write to customer service only.
pub(crate) fn refuse_visitor(app: &App, p: &Pending, chat_type: u64) -> CmdResult {
    if chat_type != u64::from(chat_type::SERVICE)
        && app.chat.sessions.get(&p.conn).is_some_and(|s| s.visitor)
    {
        return Err(Failure(
            code::FORBIDDEN,
            "visitors may only write to customer service (chat_type 2)".into(),
        ));
    }
    Ok(())
}

pub(crate) fn cmd_send(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    input: SendInput<'_>,
) -> CmdResult {
    let limit = app.config.chat.max_msgs_per_sec;
    if let Some(s) = app.chat.sessions.get_mut(&p.conn) {
        s.rate.hit(ctx.now(), limit)?;
    }
    let args = match input {
        SendInput::Decoded(args) => {
            refuse_visitor(app, p, args.chat_type)?;
            args
        }
        SendInput::Command(cmd) => send_args(app, p, cmd)?,
    };
    if p.origin.is_none() && super::push::runs_on_desk(app, "send", Some(args.chat_type), None) {
        let command = json!({
            "cmd": "send", "req_id": p.req_id, "chat_type": args.chat_type, "to_id": args.to_id,
            "msg_type": args.msg_type, "client_msg_id": args.client_msg_id, "msg": args.msg,
        });
        super::push::forward_to_desk(app, ctx, p, uid, command);
        return Ok(());
    }
    let (ct, to_id, client_msg_id) = (args.chat_type, args.to_id, args.client_msg_id);
    let mt = u8::try_from(args.msg_type).map_err(|_| Failure::bad_request("unknown msg_type"))?;
    let body = proto::validate_body(mt, &args.msg, &app.chat.body_limits)?;
    let base = NewMessage {
        conv_id: String::new(),
        chat_type: 0,
        from_id: uid,
        to_id,
        msg_type: mt,
        body,
        client_msg_id,
        created_at: store::now_ms(),
    };
    match u8::try_from(ct).unwrap_or(u8::MAX) {
        chat_type::FRIEND => {
            let friends = app
                .chat
                .friends
                .get(&uid)
                .is_some_and(|f| f.contains(&to_id));
            let route = friend_route(uid, to_id, friends, app.config.chat.allow_strangers)?;
            let message = NewMessage {
                conv_id: proto::friend_conv(uid, to_id),
                ..base
            };
            match route {
                FriendRoute::Submit => {
                    submit(app, ctx, p, message);
                    Ok(())
                }
                FriendRoute::CheckRecipient => submit_if_user_exists(app, ctx, p, to_id, message),
                FriendRoute::CheckFriendship => conn_job(
                    app,
                    ctx,
                    p,
                    move |s| s.friends(uid),
                    move |app, ctx, p, r| match r {
                        Ok(list) if list.contains(&to_id) => {
                            app.chat.friends.insert(uid, list.into_iter().collect());
                            submit(app, ctx, p, message);
                        }
                        Ok(_) => p.reply_err(ctx, code::FORBIDDEN, "not friends"),
                        Err(e) => p.reply_store_err(ctx, &e),
                    },
                ),
            }
        }
        chat_type::GROUP => with_members(app, ctx, p, to_id, move |app, ctx, p, members| {
            let m = NewMessage {
                conv_id: proto::group_conv(to_id),
                chat_type: chat_type::GROUP,
                ..base
            };
            if members.binary_search(&uid).is_ok() {
                submit(app, ctx, p, m);
                return;
            }
            // The cached list may miss a member added through another process: reload once.
            let reloaded = conn_job(
                app,
                ctx,
                p,
                move |s| s.group_members(to_id),
                move |app, ctx, p, r| match r {
                    Ok(Some(fresh)) => {
                        let member = fresh.binary_search(&uid).is_ok();
                        app.chat.groups.insert(to_id, Arc::new(fresh));
                        if member {
                            submit(app, ctx, p, m);
                        } else {
                            p.reply_err(ctx, code::FORBIDDEN, "not a member of this group");
                        }
                    }
                    Ok(None) => p.reply_err(ctx, code::NOT_FOUND, "no such group"),
                    Err(e) => p.reply_store_err(ctx, &e),
                },
            );
            p.reply_if_err(ctx, reloaded);
        }),
        chat_type::SERVICE => match service_route(uid, app.chat.is_agent(uid), to_id, mt)? {
            ServiceRoute::Customer => {
                let message = NewMessage {
                    conv_id: proto::service_conv(uid),
                    chat_type: chat_type::SERVICE,
                    to_id: 0,
                    ..base
                };
                service_desk::customer_send(app, ctx, p, uid, message)
            }
            ServiceRoute::Agent { customer } => {
                service_desk::check_serves(&app.chat.desk, uid, customer)?;
                let message = NewMessage {
                    conv_id: proto::service_conv(customer),
                    chat_type: chat_type::SERVICE,
                    ..base
                };
                submit(app, ctx, p, message);
                Ok(())
            }
        },
        chat_type::CONSULT => {
            if mt >= proto::msg_type::RECALL {
                return Err(Failure::bad_request("unknown msg_type"));
            }
            // to_id names the consultation; the stored message's to_id is the other side.
            consult::with_live(app, ctx, p, to_id, move |app, ctx, p, sides| {
                if !sides.contains(&uid) {
                    return p.reply_err(ctx, code::FORBIDDEN, "not your consultation");
                }
                if let Err(Failure(c, m)) = consult::check_open(app, to_id) {
                    return p.reply_err(ctx, c, &m);
                }
                let other = if sides[0] == uid { sides[1] } else { sides[0] };
                let message = NewMessage {
                    conv_id: proto::consult_conv(to_id),
                    chat_type: chat_type::CONSULT,
                    to_id: other,
                    ..base
                };
                submit(app, ctx, p, message);
            })
        }
        _ => Err(Failure::bad_request("unknown chat_type")),
    }
}

/// Submits `message` once the store confirms its recipient `to_id` exists (404 otherwise).
pub(crate) fn submit_if_user_exists(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    to_id: u64,
    message: NewMessage,
) -> CmdResult {
    conn_job(
        app,
        ctx,
        p,
        move |s| s.existing_users(&[to_id]),
        move |app, ctx, p, r| match r {
            Ok(found) if !found.is_empty() => submit(app, ctx, p, message),
            Ok(_) => p.reply_err(ctx, code::NOT_FOUND, "no such user"),
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

/// Hands a validated, authorised message to the persister; the ack and the deliveries follow
/// the commit.
pub(crate) fn submit(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    message: NewMessage,
) {
    let p2 = p.clone();
    let r = app.persist(message, move |app, ctx, r| {
        if let Some(s) = app.chat.sessions.get_mut(&p2.conn) {
            s.pending = s.pending.saturating_sub(1);
        }
        acked(app, ctx, Some(&p2), r);
    });
    match r {
        Ok(()) => {
            if let Some(s) = app.chat.sessions.get_mut(&p.conn) {
                s.pending += 1;
            }
        }
        Err(_) => p.reply_err(
            ctx,
            code::UNAVAILABLE,
            "server busy, retry with the same client_msg_id",
        ),
    }
}

pub(crate) fn ack_data(m: &store::StoredMessage, duplicate: bool) -> Value {
    json!({ "msg_id": m.msg_id, "conv_id": m.conv_id, "seq": m.seq, "time": m.created_at, "duplicate": duplicate })
}

/// After the commit: ack the sender, deliver to everyone online (serialised once).
pub(crate) fn acked(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: Option<&Pending>,
    r: StoreResult<Appended>,
) {
    let a = match r {
        Ok(a) => a,
        Err(e) => {
            app.feed.emit(
                ctx,
                Topic::Error,
                || json!({ "kind": "persist", "msg": e.to_string() }),
            );
            if let Some(p) = p {
                p.reply_err(
                    ctx,
                    proto::store_code(&e),
                    &format!("{e}; retry with the same client_msg_id"),
                );
            }
            return;
        }
    };
    if let Some(p) = p {
        p.reply_raw(ctx, &proto::ack_json(&a.message, a.duplicate));
        METRICS
            .ack_seconds
            .observe_duration(ctx.now().saturating_duration_since(p.at));
    }
    let next = after_commit(&a.message, a.duplicate);
    if next.fan_out {
        fan_out(app, ctx, &a.message, p.map(|p| p.conn));
    }
    if next.to_wechat {
        crate::chat::wechat_out::outbound(app, ctx, &a.message);
    }
}

pub(crate) fn fan_out(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    m: &store::StoredMessage,
    except: Option<ConnId>,
) {
    if let Some(c) = METRICS.messages.get(usize::from(m.chat_type)) {
        c.inc();
    }
    let bodies = app.feed.message_bodies();
    app.feed
        .emit(ctx, Topic::Message, || message_event(m, bodies));
    let payload = proto::message_push(m);
    let frame = Frame::text(payload.as_bytes());
    let publish = app.bus.is_some().then_some(payload);
    deliver_to_conv_and_bus(app, ctx, m.conv_id.clone(), frame, except, publish);
}

/// The `message` info topic's event: ids, conversation, sender, receiver, type and size; the
/// body only when `[admin] message_bodies` is on. A group message's `to_id` is the group, so it
/// goes out as `group_id`: `to_id` stays a user, and a subscriber's `uid=` (which matches `to_id`)
/// never picks up a group that happens to share a user's number.
pub(crate) fn message_event(m: &store::StoredMessage, with_body: bool) -> Value {
    let mut v = json!({
        "msg_id": m.msg_id,
        "conv_id": m.conv_id,
        "seq": m.seq,
        "chat_type": m.chat_type,
        "msg_type": m.msg_type,
        "from_id": m.from_id,
        "size": m.body.len(),
        "created_at": m.created_at,
    });
    let to = if m.chat_type == proto::chat_type::GROUP {
        "group_id"
    } else {
        "to_id"
    };
    v[to] = json!(m.to_id);
    if with_body {
        v["body"] = Value::String(m.body.clone());
    }
    v
}

/// Delivers to the conversation's members here and, with `publish` (the push's text), over the
/// bus to the nodes of the members known here: a friend conversation's two users, a group's
/// members (loaded first when not cached). A service or consultation conversation's recipients
/// live with the desk or the consultation, possibly on another node: those go to every live
/// node (`Bus::publish`'s route for them).
fn deliver_to_conv_and_bus(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conv_id: String,
    frame: Frame,
    except: Option<ConnId>,
    publish: Option<String>,
) {
    let Some(conv) = proto::parse_conv(&conv_id) else {
        return;
    };
    let desk_conv = matches!(conv, ConvRef::Service(_) | ConvRef::Consult(_));
    if desk_conv && !app.chat.role.mine {
        // Who receives it is known on the desk's node only: it delivers (here too).
        if let (Some(bus), Some(payload), Some(owner)) =
            (&app.bus, &publish, app.chat.role.owner.as_deref())
        {
            bus.publish_to_node(Target::Conv(conv_id), payload, owner);
        }
        return;
    }
    // A group's cached list is shared, not copied: this runs once per message.
    let recipients: Arc<Vec<u64>> = match conv {
        ConvRef::Friend(a, b) => Arc::new(vec![a, b]),
        ConvRef::Service(c) => Arc::new(app.chat.service_recipients(c)),
        // Loaded while either side is connected here.
        ConvRef::Consult(id) => Arc::new(
            app.chat
                .consults
                .sides(id)
                .map_or_else(Vec::new, |s| s.to_vec()),
        ),
        ConvRef::Group(g) => match app.chat.groups.get(&g) {
            Some(members) => members.clone(),
            None => {
                // Not cached (evicted or never loaded here): load, then deliver.
                app.job(
                    ctx,
                    move |s| s.group_members(g),
                    move |app, ctx, r| {
                        if let Ok(Some(members)) = r {
                            app.chat.groups.insert(g, Arc::new(members));
                            deliver_to_conv_and_bus(app, ctx, conv_id, frame, except, publish);
                        }
                    },
                );
                return;
            }
        },
    };
    if let (Some(bus), Some(payload)) = (&app.bus, &publish) {
        if desk_conv {
            // Computed by the desk's node: straight to the recipients' nodes.
            bus.publish_to(
                Target::Users(recipients.to_vec()),
                payload,
                recipients.to_vec(),
            );
        } else {
            bus.publish_to(Target::Conv(conv_id.clone()), payload, recipients.to_vec());
        }
    }
    let mut delivered = 0;
    for &uid in recipients.iter() {
        for c in app.chat.conns_of(uid) {
            if Some(*c) != except && ctx.send(*c, &frame) {
                delivered += 1;
            }
        }
    }
    METRICS.deliveries.add(delivered);
}
