//! Profile changes reach the people who see them: a user's new name or avatar is pushed to their
//! friends, the members of their groups and their own other devices (`profile` push,
//! protocol-spec 2.6).

use crate::net::Ctx;
use crate::proto;
use crate::rt::{App, Completion};
use crate::store::{SocialStore, StoreResult, User};
use serde_json::json;
use std::collections::BTreeSet;

/// The `profile` push's `data`.
pub fn view(u: &User) -> serde_json::Value {
    json!({ "uid": u.uid, "name": u.name, "head_img": u.head_img })
}

/// Everyone who shows this user: the user, their friends and every member of their groups.
fn audience(b: &dyn SocialStore, uid: u64) -> StoreResult<Vec<u64>> {
    let mut who: BTreeSet<u64> = b.friends(uid)?.into_iter().collect();
    who.insert(uid);
    for g in b.groups_of(uid)? {
        if let Some(members) = b.group_members(g.group_id)? {
            who.extend(members);
        }
    }
    Ok(who.into_iter().collect())
}

/// The user's name or avatar changed: tell everyone who shows them (looked up on a worker).
/// A lost push costs a stale name until the next `conversations`; nothing else.
pub fn changed(app: &mut App, ctx: &mut dyn Ctx<Completion>, user: &User) {
    let uid = user.uid;
    let payload = proto::push("profile", &view(user));
    app.job(
        ctx,
        move |b| audience(&**b, uid),
        move |app, ctx, r| match r {
            Ok(uids) => super::push_to_users(app, ctx, &uids, &payload),
            Err(e) => log::warn!("profile push for uid={uid} not sent: {e}"),
        },
    );
}
