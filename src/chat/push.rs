//! Pushes to users wherever they are connected: this process's connections (one frame, shared)
//! and, with the bus, the other processes'.

use crate::cluster::bus::Target;
use crate::net::{Ctx, Frame};
use crate::rt::{App, Completion};

/// Sends one push to these users' connections on this process and, with the bus, on the others.
pub(crate) fn push_users(app: &App, ctx: &mut dyn Ctx<Completion>, uids: &[u64], payload: &str) {
    if uids.is_empty() {
        return;
    }
    let frame = Frame::text(payload.as_bytes());
    for uid in uids {
        for c in app.chat.conns_of(*uid) {
            ctx.send(*c, &frame);
        }
    }
    if let Some(bus) = &app.bus {
        bus.publish(Target::Users(uids.to_vec()), payload);
    }
}

/// Sends one push to these users wherever they are connected (this process and, with the bus,
/// the others).
pub fn push_to_users(app: &App, ctx: &mut dyn Ctx<Completion>, uids: &[u64], payload: &str) {
    push_users(app, ctx, uids, payload);
}

/// Sends one push to one user wherever they are connected.
pub(crate) fn push_to_user(app: &App, ctx: &mut dyn Ctx<Completion>, uid: u64, text: &str) {
    push_users(app, ctx, &[uid], text);
}
