//! Reading a conversation: `sync`, `history`, `conversations`, `read`, `read_count`,
//! `recall`, `typing`, `presence`.

use super::consult;
use super::membership;
use super::presence;
use super::profile;
use super::push::*;
use super::request::{conn_job, CmdResult, Pending};
use super::send::*;
use super::service_desk;
use super::social::*;
use crate::net::Ctx;
use crate::proto::Failure;
use crate::proto::{self, code, Command, ConvRef};
use crate::rt::{App, Completion};
use crate::store::{self, NewMessage, StoreResult};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Most messages one `sync` / `history` returns.
const MAX_PAGE: u64 = 200;

/// Checks that `uid` may read `conv_id`, then calls `then`.
pub(crate) fn with_conv_access(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    conv_id: &str,
    then: impl FnOnce(&mut App, &mut dyn Ctx<Completion>, &Pending, Vec<u64>) + Send + 'static,
) -> CmdResult {
    match proto::parse_conv(conv_id) {
        Some(ConvRef::Friend(a, b)) if a == uid || b == uid => {
            then(app, ctx, p, vec![a, b]);
            Ok(())
        }
        Some(ConvRef::Group(g)) => with_members(app, ctx, p, g, move |app, ctx, p, members| {
            if members.binary_search(&uid).is_ok() {
                then(app, ctx, p, members.to_vec());
            } else {
                p.reply_err(ctx, code::FORBIDDEN, "not a member of this group");
            }
        }),
        Some(ConvRef::Service(c)) if c == uid || app.chat.is_agent(uid) => {
            let members = app.chat.service_recipients(c);
            then(app, ctx, p, members);
            Ok(())
        }
        Some(ConvRef::Consult(id)) => {
            consult::with_live(app, ctx, p, id, move |app, ctx, p, sides| {
                if sides.contains(&uid) {
                    then(app, ctx, p, sides.to_vec());
                } else {
                    p.reply_err(ctx, code::FORBIDDEN, "not your consultation");
                }
            })
        }
        Some(_) => Err(Failure(code::FORBIDDEN, "not your conversation".into())),
        None => Err(Failure::bad_request("bad conv_id")),
    }
}

pub(crate) fn cmd_page(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
    forward: bool,
) -> CmdResult {
    let conv_id = cmd
        .str("conv_id")
        .map_err(Failure::bad_request)?
        .to_string();
    let limit = cmd
        .u64_or("limit", 50)
        .map_err(Failure::bad_request)?
        .clamp(1, MAX_PAGE) as u32;
    let cursor = if forward {
        cmd.u64_or("after_seq", 0).map_err(Failure::bad_request)?
    } else {
        cmd.u64_or("before_seq", 0).map_err(Failure::bad_request)?
    };
    let conv = conv_id.clone();
    // A group member added later reads from their join on (unless the group shows its history).
    let group = match proto::parse_conv(&conv_id) {
        Some(ConvRef::Group(g)) => Some(g),
        _ => None,
    };
    with_conv_access(app, ctx, p, uid, &conv, move |app, ctx, p, _| {
        let conv = conv_id.clone();
        let r = conn_job(
            app,
            ctx,
            p,
            move |s| {
                let floor = match group {
                    Some(g) => s.group_history_floor(g, uid)?,
                    None => 0,
                };
                if forward {
                    s.sync(&conv, membership::sync_after(cursor, floor), limit + 1)
                } else {
                    let mut page = s.history(&conv, cursor, limit + 1)?;
                    membership::trim_history(&mut page, floor);
                    Ok(page)
                }
            },
            move |_app, ctx, p, r| match r {
                Ok(mut ms) => {
                    let has_more = ms.len() > limit as usize;
                    ms.truncate(limit as usize);
                    let data = format!(
                        "{{\"conv_id\":{},\"messages\":{},\"has_more\":{has_more}}}",
                        Value::from(conv_id.as_str()),
                        proto::messages_json(&ms)
                    );
                    p.reply_raw(ctx, &data);
                }
                Err(e) => p.reply_store_err(ctx, &e),
            },
        );
        p.reply_if_err(ctx, r);
    })
}

/// The other side of a conversation whose profile its line shows: the friend of a one-to-one
/// chat, the customer of a service conversation seen by an agent.
pub(crate) fn peer_of(conv_id: &str, uid: u64) -> Option<u64> {
    match proto::parse_conv(conv_id)? {
        ConvRef::Friend(a, b) => Some(if a == uid { b } else { a }),
        ConvRef::Service(c) if c != uid => Some(c),
        _ => None,
    }
}

pub(crate) fn cmd_conversations(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
) -> CmdResult {
    conn_job(
        app,
        ctx,
        p,
        move |s| -> StoreResult<(Vec<store::ConversationSummary>, HashMap<u64, store::User>)> {
            let list = s.conversations(uid, 500)?;
            let mut peers: Vec<u64> = list
                .iter()
                .filter_map(|c| peer_of(&c.conv_id, uid))
                .collect();
            peers.sort_unstable();
            peers.dedup();
            let users = s.users(&peers)?.into_iter().map(|u| (u.uid, u)).collect();
            Ok((list, users))
        },
        move |_app, ctx, p, r| match r {
            Ok((list, users)) => {
                let items: Vec<String> = list
                .iter()
                .map(|c| {
                    let peer = peer_of(&c.conv_id, uid)
                        .and_then(|u| users.get(&u))
                        .map_or_else(|| "null".to_string(), |u| profile::view(u).to_string());
                    format!(
                        "{{\"conv_id\":{},\"chat_type\":{},\"last_seq\":{},\"read_seq\":{},\"unread\":{},\"last\":{},\"peer\":{}}}",
                        Value::from(c.conv_id.as_str()),
                        c.chat_type,
                        c.last_seq,
                        c.read_seq,
                        c.last_seq - c.read_seq,
                        c.last.as_ref().map_or_else(|| "null".to_string(), proto::message_json),
                        peer
                    )
                })
                .collect();
                p.reply_raw(ctx, &format!("{{\"conversations\":[{}]}}", items.join(",")));
            }
            Err(e) => p.reply_store_err(ctx, &e),
        },
    )
}

pub(crate) fn cmd_read(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let conv_id = cmd
        .str("conv_id")
        .map_err(Failure::bad_request)?
        .to_string();
    let seq = cmd.u64("seq").map_err(Failure::bad_request)?;
    let conv = conv_id.clone();
    with_conv_access(app, ctx, p, uid, &conv, move |app, ctx, p, members| {
        let conv = conv_id.clone();
        let r = conn_job(
            app,
            ctx,
            p,
            move |s| s.mark_read(uid, &conv, seq),
            move |app, ctx, p, r| match r {
                Ok(store::ReadMark { read_seq, moved }) => {
                    p.reply_ok(ctx, &json!({ "conv_id": conv_id, "read_seq": read_seq }));
                    // One-to-one: the peer sees the receipt, once per move of the cursor (a
                    // repeated or backward read tells them nothing new). Groups: counted
                    // (read_count).
                    if moved && members.len() == 2 && conv_id.starts_with("p_") {
                        let payload = proto::push(
                            "read",
                            &json!({ "conv_id": conv_id, "uid": uid, "seq": read_seq }),
                        );
                        let peers: Vec<u64> =
                            members.iter().copied().filter(|m| *m != uid).collect();
                        push_users(app, ctx, &peers, &payload);
                    }
                }
                Err(e) => p.reply_store_err(ctx, &e),
            },
        );
        p.reply_if_err(ctx, r);
    })
}

/// Recalls one's own message within `[chat] recall_window_s`: the original's body is blanked and
/// a recall event (msg_type 100) takes the next seq, so every member learns of it through the
/// usual delivery or `sync`.
pub(crate) fn cmd_recall(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let conv_id = cmd
        .str("conv_id")
        .map_err(Failure::bad_request)?
        .to_string();
    let msg_id = cmd.u64("msg_id").map_err(Failure::bad_request)?;
    let window_ms = app.config.chat.recall_window_s as i64 * 1000;
    let conv = conv_id.clone();
    with_conv_access(app, ctx, p, uid, &conv, move |app, ctx, p, _| {
        let conv = conv_id.clone();
        let r = conn_job(
            app,
            ctx,
            p,
            move |s| -> Result<store::StoredMessage, Failure> {
                let m = s
                    .message(msg_id)
                    .map_err(Failure::from)?
                    .filter(|m| m.conv_id == conv)
                    .ok_or(Failure(
                        code::NOT_FOUND,
                        "no such message in this conversation".to_string(),
                    ))?;
                if m.from_id != uid {
                    return Err(Failure(
                        code::FORBIDDEN,
                        "only the sender may recall a message".into(),
                    ));
                }
                if m.body == "null" || m.msg_type == proto::msg_type::RECALL {
                    return Err(Failure(code::CONFLICT, "already recalled".into()));
                }
                if store::now_ms() - m.created_at > window_ms {
                    return Err(Failure(
                        code::CONFLICT,
                        "the recall window has passed".into(),
                    ));
                }
                s.blank_message(msg_id).map_err(Failure::from)?;
                Ok(m)
            },
            move |app, ctx, p, r| match r {
                Ok(m) => {
                    let event = NewMessage {
                        conv_id: m.conv_id.clone(),
                        chat_type: m.chat_type,
                        from_id: uid,
                        to_id: m.to_id,
                        msg_type: proto::msg_type::RECALL,
                        body: json!({ "msg_id": m.msg_id, "seq": m.seq }).to_string(),
                        client_msg_id: None,
                        created_at: store::now_ms(),
                    };
                    submit(app, ctx, p, event);
                }
                Err(Failure(c, msg)) => p.reply_err(ctx, c, &msg),
            },
        );
        p.reply_if_err(ctx, r);
    })
}

/// How many members have read a conversation up to `seq` (group read receipts are counted).
pub(crate) fn cmd_read_count(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let conv_id = cmd
        .str("conv_id")
        .map_err(Failure::bad_request)?
        .to_string();
    let seq = cmd.u64("seq").map_err(Failure::bad_request)?;
    let conv = conv_id.clone();
    with_conv_access(app, ctx, p, uid, &conv, move |app, ctx, p, members| {
        let conv = conv_id.clone();
        let total = members.len();
        let r = conn_job(
            app,
            ctx,
            p,
            move |s| s.read_count(&conv, seq),
            move |_app, ctx, p, r| match r {
                Ok(n) => p.reply_ok(
                    ctx,
                    &json!({ "conv_id": conv_id, "seq": seq, "read": n, "members": total }),
                ),
                Err(e) => p.reply_store_err(ctx, &e),
            },
        );
        p.reply_if_err(ctx, r);
    })
}

pub(crate) fn cmd_typing(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let conv_id = cmd
        .str("conv_id")
        .map_err(Failure::bad_request)?
        .to_string();
    let conv = conv_id.clone();
    with_conv_access(app, ctx, p, uid, &conv, move |app, ctx, p, members| {
        if let Some(ConvRef::Service(c)) = proto::parse_conv(&conv_id) {
            if c != uid {
                if let Err(Failure(code, msg)) = service_desk::check_serves(&app.chat.desk, uid, c)
                {
                    return p.reply_err(ctx, code, &msg);
                }
                crate::chat::wechat_out::typing(app, ctx, c);
            }
        }
        let payload = proto::push("typing", &json!({ "conv_id": conv_id, "uid": uid }));
        let others: Vec<u64> = members.iter().copied().filter(|m| *m != uid).collect();
        push_users(app, ctx, &others, &payload);
        p.reply_ok(ctx, &json!({}));
    })
}

pub(crate) fn cmd_presence(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    uid: u64,
    cmd: &Command,
) -> CmdResult {
    let uids = cmd.u64_list("uids").map_err(Failure::bad_request)?;
    let friends = app.chat.friends.get(&uid).cloned().unwrap_or_default();
    let asked: Vec<u64> = uids.into_iter().filter(|u| friends.contains(u)).collect();
    let p = p.clone();
    presence::lookup(app, ctx, asked.clone(), move |_app, ctx, r| match r {
        Ok(online) => {
            let out: serde_json::Map<String, Value> = asked
                .iter()
                .map(|u| (u.to_string(), Value::from(online.contains(u))))
                .collect();
            p.reply_ok(ctx, &json!({ "online": out }));
        }
        Err(e) => p.reply_store_err(ctx, &e),
    });
    Ok(())
}
