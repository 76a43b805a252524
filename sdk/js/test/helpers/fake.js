// Test doubles for unit tests: a manual clock, and a fake transport whose sockets are driven
// by a scripted in-memory server (auth, conversations, sync, send with dedupe by
// client_msg_id, ping). Tests can hold replies, inject pushes and close sockets with any code.

export class FakeClock {
  constructor() {
    this.t = 1_000_000;
    this.timers = new Map();
    this.nextId = 1;
  }
  now() {
    return this.t;
  }
  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn, id });
    return id;
  }
  clearTimeout(id) {
    this.timers.delete(id);
  }
  /** Delays of the pending timers, soonest first (to assert backoff and heartbeat). */
  pending() {
    return [...this.timers.values()].map((t) => t.at - this.t).sort((a, b) => a - b);
  }
  /** Fires the soonest timer (moving time to it); false when none is pending. */
  async runNext() {
    let next = null;
    for (const t of this.timers.values()) if (!next || t.at < next.at || (t.at === next.at && t.id < next.id)) next = t;
    if (!next) return false;
    this.t = next.at;
    this.timers.delete(next.id);
    next.fn();
    await flush();
    return true;
  }
  /** Moves time forward, firing due timers in order (and flushing promises between them). */
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const t of this.timers.values()) if (t.at <= end && (!next || t.at < next.at || (t.at === next.at && t.id < next.id))) next = t;
      if (!next) break;
      this.t = next.at;
      this.timers.delete(next.id);
      next.fn();
      await flush();
    }
    this.t = end;
    await flush();
  }
}

/** Lets pending promise callbacks run (the SDK awaits between steps). */
export async function flush() {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

/**
 * The server's state shared by every socket: users by token, conversations with their
 * messages, the dedupe table. A small model of protocol-spec 2.1-2.5, enough for the client.
 */
export class FakeServer {
  constructor() {
    this.tokens = new Map([['tok-7', 7]]);
    this.convs = new Map(); // conv_id -> [{msg...}] (index = seq - 1)
    this.sent = new Map(); // `${uid}/${client_msg_id}` -> ack
    this.sockets = [];
    this.opened = []; // urls
    this.hold = new Set(); // cmds whose replies are withheld
    this.replyOverride = null; // (frame, socket) -> reply object | undefined
    this.nextMsgId = 1000;
    this.cookieUid = null; // a wxchat_token cookie on every upgrade: the uid it authenticates
  }

  /** The transport the WxChat under test uses. */
  transport() {
    return {
      open: (url, h) => {
        const s = new FakeSocket(this, url, h);
        this.sockets.push(s);
        this.opened.push(url);
        return s;
      },
    };
  }

  get last() {
    return this.sockets[this.sockets.length - 1];
  }

  /** Appends a message to a conversation as if someone else sent it; returns it. */
  add(convId, fields = {}) {
    const list = this.convs.get(convId) || [];
    this.convs.set(convId, list);
    const m = {
      msg_id: this.nextMsgId++, conv_id: convId, seq: list.length + 1, chat_type: 0,
      from_id: 8, to_id: 7, msg_type: 0, msg: `m${list.length + 1}`, time: 1, ...fields,
    };
    list.push(m);
    return m;
  }

  answer(socket, f) {
    if (this.replyOverride) {
      const r = this.replyOverride(f, socket);
      if (r !== undefined) return r;
    }
    const ok = (data) => ({ cmd: f.cmd, req_id: f.req_id, code: 200, data });
    if (socket.uid === null && f.cmd !== 'auth' && f.cmd !== 'ping') {
      return { cmd: f.cmd, req_id: f.req_id, code: 401, msg: 'authenticate first' };
    }
    switch (f.cmd) {
      case 'auth': {
        const uid = this.tokens.get(f.token);
        if (!uid) {
          socket.queueClose(4001, 'authentication failed');
          return { cmd: 'auth', req_id: f.req_id, code: 401, msg: 'bad or expired token' };
        }
        socket.uid = uid;
        return ok({ uid });
      }
      case 'ping':
        return ok({ time: 1 });
      case 'conversations':
        return ok({
          conversations: [...this.convs.entries()].map(([conv_id, l]) => ({
            conv_id, chat_type: 0, last_seq: l.length, read_seq: 0, unread: 0, last: l[l.length - 1] || null, peer: null,
          })),
        });
      case 'sync': {
        const list = this.convs.get(f.conv_id) || [];
        const after = list.filter((m) => m.seq > f.after_seq && !m.hidden);
        const page = after.slice(0, f.limit);
        return ok({ conv_id: f.conv_id, messages: page, has_more: after.length > page.length });
      }
      case 'send': {
        const key = `${socket.uid}/${f.client_msg_id}`;
        const first = this.sent.get(key);
        if (first) return ok({ ...first, duplicate: true });
        const convId = f.chat_type === 0 ? `p_${Math.min(socket.uid, f.to_id)}_${Math.max(socket.uid, f.to_id)}` : `g_${f.to_id}`;
        const m = this.add(convId, { from_id: socket.uid, to_id: f.to_id, chat_type: f.chat_type, msg_type: f.msg_type, msg: f.msg });
        const ack = { msg_id: m.msg_id, conv_id: convId, seq: m.seq, time: m.time };
        this.sent.set(key, ack);
        return ok({ ...ack, duplicate: false });
      }
      default:
        return ok({});
    }
  }
}

export class FakeSocket {
  constructor(server, url, h) {
    this.server = server;
    this.url = url;
    this.h = h;
    this.frames = []; // every frame the client sent, parsed
    this.held = []; // frames whose replies were withheld
    this.closedBy = null; // {code, reason} when the client closed it
    this.dead = false;
    this.uid = null;
    this._closeAfterReply = null;
  }
  /** The server accepts the upgrade. */
  accept() {
    // The server starts checking the upgrade's cookie before any frame can arrive; frames sent
    // meanwhile wait for the check.
    if (this.server.cookieUid !== null) this.uid = this.server.cookieUid;
    this.h.onOpen();
    if (this.server.cookieUid !== null) {
      // The check's auth reply has no req_id.
      this.h.onMessage(JSON.stringify({ cmd: 'auth', code: 200, data: { uid: this.uid } }));
    }
  }
  send(text) {
    if (this.dead) return false;
    const f = JSON.parse(text);
    this.frames.push(f);
    if (this.server.hold.has(f.cmd)) {
      this.held.push(f);
      return true;
    }
    this.reply(f);
    return true;
  }
  /** Answers a frame now (asynchronously, as a network would). */
  reply(f) {
    const r = this.server.answer(this, f);
    Promise.resolve().then(() => {
      if (this.dead) return;
      if (r) this.h.onMessage(JSON.stringify(r));
      if (this._closeAfterReply) {
        const { code, reason } = this._closeAfterReply;
        this._closeAfterReply = null;
        this.serverClose(code, reason);
      }
    });
  }
  queueClose(code, reason) {
    this._closeAfterReply = { code, reason };
  }
  /** Releases the withheld replies of `cmd`. */
  release(cmd) {
    const mine = this.held.filter((f) => f.cmd === cmd);
    this.held = this.held.filter((f) => f.cmd !== cmd);
    for (const f of mine) this.reply(f);
  }
  push(cmd, data) {
    if (!this.dead) this.h.onMessage(JSON.stringify({ cmd, data }));
  }
  serverClose(code, reason = '') {
    if (this.dead) return;
    this.dead = true;
    this.h.onClose(code, reason);
  }
  close(code, reason) {
    if (this.dead) return;
    this.dead = true;
    this.closedBy = { code, reason };
  }
  sentOf(cmd) {
    return this.frames.filter((f) => f.cmd === cmd);
  }
}
