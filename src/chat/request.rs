//! A chat command on its way: the connection and the command's name and id it is answered
//! with, and the job helper that counts it against the connection's limit. Every command
//! handler in `chat/` takes a [`Pending`] and returns a [`CmdResult`].

use crate::cluster::bus::{Publisher, Target};
use crate::feed::metrics::METRICS;
use crate::net::{ConnId, Ctx};
use crate::proto::Failure;
use crate::proto::{self};
use crate::rt::{App, Completion};
use crate::store::{Backends, StoreError};
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// Runs a frame through the command dispatch (`chat::on_message`), handed down to the code that
/// holds frames back while a connection authenticates, so that it need not import the dispatch.
pub type Replay = fn(&mut App, &mut dyn Ctx<Completion>, ConnId, &str);

/// A command's failure: its `code` and `msg`.
pub type CmdResult = Result<(), Failure>;

/// A request waiting for a reply: the connection and the command's name and id.
#[derive(Clone)]
pub struct Pending {
    /// The connection here, or [`REMOTE`] for a command forwarded from another node.
    pub conn: ConnId,
    pub cmd: String,
    pub req_id: Option<Value>,
    /// When the command arrived (for the ack latency histogram).
    pub at: Instant,
    /// A command forwarded by another node to the desk's node: where its replies go.
    pub origin: Option<Arc<Origin>>,
}

/// The connection id of a forwarded command: no connection here has it (the slab never grows
/// that far), so nothing meant for the command's connection reaches a local one.
pub const REMOTE: ConnId = ConnId {
    key: u32::MAX,
    gen: u32::MAX,
};

/// Where a forwarded command came from: its node, that node's number for it (it knows the
/// connection), and the bus back.
pub struct Origin {
    pub node: String,
    pub fid: u64,
    pub bus: Publisher,
}

impl Pending {
    /// A command of a connection here.
    pub fn local(conn: ConnId, cmd: String, req_id: Option<Value>, at: Instant) -> Pending {
        Pending {
            conn,
            cmd,
            req_id,
            at,
            origin: None,
        }
    }

    /// Writes a reply to the command's connection, here or on the node it came from.
    fn answer<C>(&self, ctx: &mut dyn Ctx<C>, text: &str) {
        match &self.origin {
            None => {
                ctx.send_text(self.conn, text);
            }
            Some(o) => o.bus.to_node(Target::Reply(o.fid), text, &o.node),
        }
    }

    pub fn reply_ok<C>(&self, ctx: &mut dyn Ctx<C>, data: &Value) {
        self.answer(ctx, &proto::ok(&self.cmd, &self.req_id, data));
    }
    pub fn reply_raw<C>(&self, ctx: &mut dyn Ctx<C>, data: &str) {
        self.answer(ctx, &proto::ok_raw(&self.cmd, &self.req_id, data));
    }
    pub fn reply_err<C>(&self, ctx: &mut dyn Ctx<C>, c: u16, msg: &str) {
        if self.cmd == "send" {
            METRICS.messages_rejected.inc();
        }
        self.answer(ctx, &proto::fail(&self.cmd, &self.req_id, c, msg));
    }
    pub fn reply_store_err<C>(&self, ctx: &mut dyn Ctx<C>, e: &StoreError) {
        self.reply_err(ctx, proto::store_code(e), &e.to_string());
    }
    /// Reports a command that could not even be started (inside a continuation).
    pub fn reply_if_err<C>(&self, ctx: &mut dyn Ctx<C>, r: CmdResult) {
        if let Err(Failure(c, m)) = r {
            self.reply_err(ctx, c, &m);
        }
    }
}

/// Runs a store job for a connection's request, counting it against the connection's limit.
pub fn conn_job<R: Send + 'static>(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    p: &Pending,
    work: impl FnOnce(&Backends) -> R + Send + 'static,
    then: impl FnOnce(&mut App, &mut dyn Ctx<Completion>, &Pending, R) + Send + 'static,
) -> CmdResult {
    let conn = p.conn;
    let p2 = p.clone();
    let ok = app.job(ctx, work, move |app, ctx, r| {
        if p2.origin.is_some() {
            // Forwarded: the connection is on its own node, which checks it is still there.
            then(app, ctx, &p2, r);
        } else if let Some(s) = app.chat.sessions.get_mut(&conn) {
            s.pending = s.pending.saturating_sub(1);
            then(app, ctx, &p2, r);
        }
    });
    if !ok {
        return Err(Failure::busy());
    }
    if let Some(s) = app.chat.sessions.get_mut(&conn) {
        s.pending += 1;
    }
    Ok(())
}
