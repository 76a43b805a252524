//! A chat command on its way: the connection and the command's name and id it is answered
//! with, and the job helper that counts it against the connection's limit. Every command
//! handler in `chat/` takes a [`Pending`] and returns a [`CmdResult`].

use crate::feed::metrics::METRICS;
use crate::net::{ConnId, Ctx};
use crate::proto::Failure;
use crate::proto::{self};
use crate::rt::{App, Completion};
use crate::store::{Backends, StoreError};
use serde_json::Value;
use std::time::Instant;

/// Runs a frame through the command dispatch (`chat::on_message`), handed down to the code that
/// holds frames back while a connection authenticates, so that it need not import the dispatch.
pub type Replay = fn(&mut App, &mut dyn Ctx<Completion>, ConnId, &str);

/// A command's failure: its `code` and `msg`.
pub type CmdResult = Result<(), Failure>;

/// A request waiting for a reply: the connection and the command's name and id.
#[derive(Clone)]
pub struct Pending {
    pub conn: ConnId,
    pub cmd: String,
    pub req_id: Option<Value>,
    /// When the command arrived (for the ack latency histogram).
    pub at: Instant,
}

impl Pending {
    pub fn reply_ok<C>(&self, ctx: &mut dyn Ctx<C>, data: &Value) {
        ctx.send_text(self.conn, &proto::ok(&self.cmd, &self.req_id, data));
    }
    pub fn reply_raw<C>(&self, ctx: &mut dyn Ctx<C>, data: &str) {
        ctx.send_text(self.conn, &proto::ok_raw(&self.cmd, &self.req_id, data));
    }
    pub fn reply_err<C>(&self, ctx: &mut dyn Ctx<C>, c: u16, msg: &str) {
        if self.cmd == "send" {
            METRICS.messages_rejected.inc();
        }
        ctx.send_text(self.conn, &proto::fail(&self.cmd, &self.req_id, c, msg));
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
        if let Some(s) = app.chat.sessions.get_mut(&conn) {
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
