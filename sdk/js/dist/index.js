var __defProp = Object.defineProperty;
var __defProps = Object.defineProperties;
var __getOwnPropDesc = Object.getOwnPropertyDescriptor;
var __getOwnPropDescs = Object.getOwnPropertyDescriptors;
var __getOwnPropNames = Object.getOwnPropertyNames;
var __getOwnPropSymbols = Object.getOwnPropertySymbols;
var __hasOwnProp = Object.prototype.hasOwnProperty;
var __propIsEnum = Object.prototype.propertyIsEnumerable;
var __defNormalProp = (obj, key, value) => key in obj ? __defProp(obj, key, { enumerable: true, configurable: true, writable: true, value }) : obj[key] = value;
var __spreadValues = (a, b) => {
  for (var prop in b || (b = {}))
    if (__hasOwnProp.call(b, prop))
      __defNormalProp(a, prop, b[prop]);
  if (__getOwnPropSymbols)
    for (var prop of __getOwnPropSymbols(b)) {
      if (__propIsEnum.call(b, prop))
        __defNormalProp(a, prop, b[prop]);
    }
  return a;
};
var __spreadProps = (a, b) => __defProps(a, __getOwnPropDescs(b));
var __objRest = (source, exclude) => {
  var target = {};
  for (var prop in source)
    if (__hasOwnProp.call(source, prop) && exclude.indexOf(prop) < 0)
      target[prop] = source[prop];
  if (source != null && __getOwnPropSymbols)
    for (var prop of __getOwnPropSymbols(source)) {
      if (exclude.indexOf(prop) < 0 && __propIsEnum.call(source, prop))
        target[prop] = source[prop];
    }
  return target;
};
var __export = (target, all) => {
  for (var name in all)
    __defProp(target, name, { get: all[name], enumerable: true });
};
var __copyProps = (to, from, except, desc) => {
  if (from && typeof from === "object" || typeof from === "function") {
    for (let key of __getOwnPropNames(from))
      if (!__hasOwnProp.call(to, key) && key !== except)
        __defProp(to, key, { get: () => from[key], enumerable: !(desc = __getOwnPropDesc(from, key)) || desc.enumerable });
  }
  return to;
};
var __toCommonJS = (mod) => __copyProps(__defProp({}, "__esModule", { value: true }), mod);

// src/index.js
var index_exports = {};
__export(index_exports, {
  PERMANENT_SEND_CODES: () => PERMANENT_SEND_CODES,
  QrLogin: () => QrLogin,
  WxChat: () => WxChat,
  WxChatError: () => WxChatError,
  convertVisitor: () => convertVisitor,
  createVisitor: () => createVisitor,
  fullJitter: () => fullJitter,
  getMe: () => getMe,
  httpBaseOf: () => httpBaseOf,
  httpJson: () => httpJson,
  logout: () => logout,
  memoryStorage: () => memoryStorage,
  miniProgramStorage: () => miniProgramStorage,
  newClientMsgId: () => newClientMsgId,
  socketTaskTransport: () => socketTaskTransport,
  updateMe: () => updateMe,
  uploadFile: () => uploadFile,
  webSocketTransport: () => webSocketTransport,
  webStorage: () => webStorage,
  wxDecrypt: () => wxDecrypt,
  wxLogin: () => wxLogin
});
module.exports = __toCommonJS(index_exports);

// src/emitter.js
var Emitter = class {
  constructor() {
    this._listeners = /* @__PURE__ */ new Map();
  }
  /** Adds a listener; returns a function that removes it (handy in page `onUnload`). */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) {
      set = /* @__PURE__ */ new Set();
      this._listeners.set(event, set);
    }
    set.add(fn);
    return () => this.off(event, fn);
  }
  /** Like `on`, for one call only. */
  once(event, fn) {
    const off = this.on(event, (...args) => {
      off();
      fn(...args);
    });
    return off;
  }
  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) set.delete(fn);
  }
  /**
   * Calls the listeners in the order they were added. A listener that throws must not break
   * the SDK's own state updates (the caller of emit is usually in the middle of one), so the
   * error is reported on the next tick instead of propagating.
   */
  emit(event, ...args) {
    const set = this._listeners.get(event);
    if (!set || set.size === 0) return false;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (err) {
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
    return true;
  }
};

// src/backoff.js
function fullJitter(attempt, base, cap, random = Math.random) {
  const ceiling = Math.min(cap, base * Math.pow(2, Math.min(attempt, 52)));
  return Math.floor(random() * ceiling);
}

// src/errors.js
var WxChatError = class extends Error {
  /**
   * @param {number|string} code
   * @param {string} message
   * @param {object} [extra] fields copied onto the error (cmd, errcode, data...)
   */
  constructor(code, message, extra) {
    super(message);
    this.name = "WxChatError";
    this.code = code;
    if (extra) Object.assign(this, extra);
  }
};

// src/rules.js
function newTracker(held) {
  return { held, buffer: /* @__PURE__ */ new Map() };
}
function takeRun(t) {
  const run = [];
  if (t.held === void 0) return run;
  while (t.buffer.has(t.held + 1)) {
    t.held += 1;
    run.push(t.buffer.get(t.held));
    t.buffer.delete(t.held);
  }
  for (const seq of t.buffer.keys()) if (seq <= t.held) t.buffer.delete(seq);
  return run;
}
function addMessage(t, msg) {
  if (t.held !== void 0 && msg.seq <= t.held) return [];
  if (!t.buffer.has(msg.seq)) t.buffer.set(msg.seq, msg);
  return takeRun(t);
}
function holdMessage(t, msg) {
  if (t.held !== void 0 && msg.seq <= t.held) return;
  if (!t.buffer.has(msg.seq)) t.buffer.set(msg.seq, msg);
}
function hasHole(t) {
  return t.buffer.size > 0;
}
function addPage(t, messages) {
  if (messages.length && messages[0].seq > t.held + 1) t.held = messages[0].seq - 1;
  for (const m of messages) if (m.seq > t.held && !t.buffer.has(m.seq)) t.buffer.set(m.seq, m);
  return takeRun(t);
}
function skipHole(t) {
  if (t.buffer.size === 0) return [];
  t.held = Math.min(...t.buffer.keys()) - 1;
  return takeRun(t);
}
function startSeq({ firstConnect, initialSync, lastSeq }) {
  return firstConnect && initialSync === "latest" ? lastSeq : 0;
}
function afterClose({ code, authFailed, canRefreshToken, suspended }) {
  if (code === 4003 || code === 4004) return "stop";
  if (authFailed || code === 4001) return canRefreshToken ? "refresh_and_retry" : "stop_auth";
  return suspended ? "wait" : "retry";
}
function sendOutcome(code) {
  if (code === 200) return "ack";
  return PERMANENT_SEND_CODES.has(code) ? "drop" : "retry";
}
var PERMANENT_SEND_CODES = /* @__PURE__ */ new Set([400, 403, 404, 409, 410, 413, 415]);
var RETRIED_REQUESTS = /* @__PURE__ */ new Set(["service_info", "service_customer", "consult_get", "read"]);
function requestOutcome(cmd, code) {
  return code === 503 && RETRIED_REQUESTS.has(cmd) ? "retry" : "settle";
}

// src/storage.js
function memoryStorage() {
  const map = /* @__PURE__ */ new Map();
  return {
    get: (key) => map.has(key) ? map.get(key) : null,
    set: (key, value) => void map.set(key, String(value)),
    remove: (key) => void map.delete(key)
  };
}
function webStorage(store) {
  return {
    get: (key) => store.getItem(key),
    set: (key, value) => store.setItem(key, value),
    remove: (key) => store.removeItem(key)
  };
}
function miniProgramStorage(api) {
  return {
    get: (key) => {
      const v = api.getStorageSync(key);
      return v === "" || v === void 0 || v === null ? null : String(v);
    },
    set: (key, value) => api.setStorageSync(key, value),
    remove: (key) => api.removeStorageSync(key)
  };
}
function readJson(storage, key, fallback) {
  let text;
  try {
    text = storage.get(key);
  } catch (e) {
    return fallback;
  }
  if (text === null || text === void 0 || text === "") return fallback;
  try {
    return JSON.parse(text);
  } catch (e) {
    return fallback;
  }
}

// src/transport.js
function webSocketTransport(WebSocketCtor) {
  if (typeof WebSocketCtor !== "function") {
    throw new TypeError("webSocketTransport needs a WebSocket constructor");
  }
  return {
    kind: "websocket",
    open(url, h) {
      const ws = new WebSocketCtor(url);
      let closed = false;
      ws.onopen = () => h.onOpen();
      ws.onmessage = (ev) => {
        if (typeof ev.data === "string") h.onMessage(ev.data);
      };
      ws.onerror = (ev) => h.onError(ev && ev.error ? ev.error : new Error("WebSocket error"));
      ws.onclose = (ev) => {
        if (closed) return;
        closed = true;
        h.onClose(ev.code, ev.reason || "");
      };
      return {
        send(text) {
          if (ws.readyState !== 1) return false;
          ws.send(text);
          return true;
        },
        close(code, reason) {
          try {
            ws.close(code, reason);
          } catch (e) {
            try {
              ws.close();
            } catch (e2) {
            }
          }
        }
      };
    }
  };
}
function socketTaskTransport(api, extra = {}) {
  if (!api || typeof api.connectSocket !== "function") {
    throw new TypeError("socketTaskTransport needs the wx or uni object");
  }
  return {
    kind: "sockettask",
    open(url, h) {
      let open = false;
      let closed = false;
      const req = { url, complete: () => {
      } };
      if (extra.header) req.header = extra.header;
      const task = api.connectSocket(req);
      const fail = (err) => {
        if (closed) return;
        closed = true;
        h.onError(err);
        h.onClose(1006, err && err.errMsg || "connectSocket failed");
      };
      if (!task) {
        Promise.resolve().then(() => fail(new Error("connectSocket returned no SocketTask")));
        return { send: () => false, close: () => {
        } };
      }
      task.onOpen(() => {
        open = true;
        h.onOpen();
      });
      task.onMessage((res) => {
        if (typeof res.data === "string") h.onMessage(res.data);
      });
      task.onError((err) => h.onError(err));
      task.onClose((res) => {
        if (closed) return;
        closed = true;
        h.onClose(res && res.code ? res.code : 1006, res && res.reason || "");
      });
      return {
        send(text) {
          if (!open || closed) return false;
          task.send({
            data: text,
            // A failed send means the socket is dying; its onClose follows and the core
            // resends whatever was not acknowledged.
            fail: () => {
            }
          });
          return true;
        },
        close(code, reason) {
          task.close({ code, reason, fail: () => {
          } });
        }
      };
    }
  };
}

// src/http.js
function trimBase(baseUrl) {
  return String(baseUrl || "").replace(/\/+$/, "");
}
function failure(status, body) {
  const msg = body && (body.msg || body.errmsg) || `HTTP ${status}`;
  const extra = { status };
  if (body && body.errcode !== void 0) extra.errcode = body.errcode;
  return new WxChatError(status, msg, extra);
}
function parseBody(data) {
  if (typeof data !== "string") return data;
  try {
    return JSON.parse(data);
  } catch (e) {
    return data;
  }
}
async function httpJson({ method = "POST", url, body, token, wx, fetch: fetchFn }) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (wx && typeof wx.request === "function") {
    const res2 = await new Promise((resolve, reject) => {
      wx.request({
        url,
        method,
        header: headers,
        data: body === void 0 ? void 0 : JSON.stringify(body),
        dataType: "text",
        success: resolve,
        fail: (err) => reject(new WxChatError("network", err && err.errMsg || "request failed"))
      });
    });
    const parsed2 = parseBody(res2.data);
    if (res2.statusCode !== 200 || !parsed2 || parsed2.code !== 200) throw failure(res2.statusCode, parsed2);
    return parsed2.data;
  }
  const f = fetchFn || globalThis.fetch;
  if (typeof f !== "function") throw new TypeError("no fetch: pass fetch or wx");
  let res;
  try {
    res = await f(url, {
      method,
      headers,
      body: body === void 0 ? void 0 : JSON.stringify(body),
      credentials: "same-origin"
    });
  } catch (err) {
    throw new WxChatError("network", `request to ${url} failed: ${err && err.message}`, { cause: err });
  }
  const parsed = parseBody(await res.text());
  if (res.status !== 200 || !parsed || parsed.code !== 200) throw failure(res.status, parsed);
  return parsed.data;
}
async function wxLogin({ wx, baseUrl, app, userInfo }) {
  if (!wx || typeof wx.login !== "function") throw new TypeError("wxLogin needs the wx (or uni) object");
  const code = await new Promise((resolve, reject) => {
    wx.login({
      success: (r) => r && r.code ? resolve(r.code) : reject(new WxChatError("wx_login", "wx.login gave no code")),
      fail: (err) => reject(new WxChatError("wx_login", err && err.errMsg || "wx.login failed"))
    });
  });
  const body = { code };
  if (app) body.app = app;
  if (userInfo) body.userInfo = userInfo;
  return httpJson({ url: `${trimBase(baseUrl)}/api/wx/login`, body, wx });
}
function wxDecrypt({ baseUrl, token, encryptedData, iv, app, wx, fetch }) {
  const body = { encryptedData, iv };
  if (app) body.app = app;
  return httpJson({ url: `${trimBase(baseUrl)}/api/wx/decrypt`, token, body, wx, fetch });
}
function createVisitor({ baseUrl, fetch, wx }) {
  return httpJson({ url: `${trimBase(baseUrl)}/api/service/visitor`, wx, fetch });
}
function convertVisitor({ baseUrl, token, visitor_token, fetch, wx }) {
  return httpJson({ url: `${trimBase(baseUrl)}/api/service/visitor/convert`, token, body: { visitor_token }, wx, fetch });
}
function getMe({ baseUrl, token, fetch, wx }) {
  return httpJson({ method: "GET", url: `${trimBase(baseUrl)}/api/me`, token, wx, fetch });
}
function updateMe({ baseUrl, token, name, head_img, fetch, wx }) {
  const body = {};
  if (name !== void 0) body.name = name;
  if (head_img !== void 0) body.head_img = head_img;
  return httpJson({ url: `${trimBase(baseUrl)}/api/me`, token, body, wx, fetch });
}
function logout({ baseUrl, token, fetch, wx }) {
  return httpJson({ url: `${trimBase(baseUrl)}/api/logout`, token, body: {}, wx, fetch });
}
async function uploadFile({ baseUrl, token, file, name, wx, fetch: fetchFn }) {
  const url = `${trimBase(baseUrl)}/api/upload`;
  if (wx && typeof wx.uploadFile === "function") {
    const res2 = await new Promise((resolve, reject) => {
      wx.uploadFile({
        url,
        filePath: file,
        name: "file",
        formData: token ? { token } : {},
        success: resolve,
        fail: (err) => reject(new WxChatError("network", err && err.errMsg || "uploadFile failed"))
      });
    });
    const parsed2 = parseBody(res2.data);
    if (res2.statusCode !== 200 || !parsed2 || parsed2.code !== 200) throw failure(res2.statusCode, parsed2);
    return parsed2.data;
  }
  const f = fetchFn || globalThis.fetch;
  if (typeof f !== "function" || typeof FormData !== "function") {
    throw new TypeError("uploadFile needs fetch and FormData, or wx");
  }
  const form = new FormData();
  const fileName = name || file && file.name || "file";
  form.append("file", file, fileName);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  let res;
  try {
    res = await f(url, { method: "POST", headers, body: form, credentials: "same-origin" });
  } catch (err) {
    throw new WxChatError("network", `upload to ${url} failed: ${err && err.message}`, { cause: err });
  }
  const parsed = parseBody(await res.text());
  if (res.status !== 200 || !parsed || parsed.code !== 200) throw failure(res.status, parsed);
  return parsed.data;
}

// src/client.js
var AUTH_FAILED = 4001;
var IDEMPOTENT = /* @__PURE__ */ new Set([
  "sync",
  "history",
  "conversations",
  "read",
  "read_count",
  "presence",
  "friends",
  "friend_requests",
  "groups",
  "group_members",
  "service_info",
  "service_customer",
  "consult_get",
  "ping"
]);
var DEFAULTS = {
  heartbeatInterval: 2e4,
  heartbeatTimeout: 1e4,
  requestTimeout: 15e3,
  connectTimeout: 1e4,
  backoffBase: 500,
  backoffCap: 3e4,
  syncLimit: 200,
  // The server answers 503 past [chat] max_pending_per_conn (64) requests in flight on one
  // connection; a long outbox after a day offline goes out in windows below that.
  maxInflightSends: 32,
  // Catch-up after a day offline may find hundreds of conversations behind: a few syncs at a
  // time, for the same reason.
  maxParallelSyncs: 4,
  storageKey: "wxchat",
  initialSync: "latest"
};
var defaultClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id)
};
function newClientMsgId(nowMs, random) {
  const ms = Number.isFinite(nowMs) ? Math.max(0, Math.floor(nowMs)) : 0;
  const time = ms.toString(16).padStart(12, "0").slice(-12);
  const c = globalThis.crypto;
  if (c && typeof c.getRandomValues === "function") {
    const b = new Uint8Array(10);
    c.getRandomValues(b);
    return time + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }
  let s = time;
  for (let i = 0; i < 20; i++) s += Math.floor(random() * 16).toString(16);
  return s;
}
function pickTransport(o) {
  if (o.transport && typeof o.transport === "object") return o.transport;
  if (o.transport === "wx") return socketTaskTransport(o.wx || globalThis.wx);
  if (o.transport === "uni") return socketTaskTransport(o.uni || globalThis.uni);
  if (o.wx) return socketTaskTransport(o.wx);
  if (o.uni) return socketTaskTransport(o.uni);
  if (o.WebSocket) return webSocketTransport(o.WebSocket);
  if (typeof globalThis.WebSocket === "function") return webSocketTransport(globalThis.WebSocket);
  throw new TypeError("WxChat: no transport: pass WebSocket, wx, uni or transport");
}
function pickPlatform(o) {
  if (o.wx) return o.wx;
  if (o.uni) return o.uni;
  if (o.transport === "wx") return globalThis.wx;
  if (o.transport === "uni") return globalThis.uni;
  return null;
}
function pickStorage(o, platform) {
  if (o.storage) return o.storage;
  if (platform && typeof platform.getStorageSync === "function") return miniProgramStorage(platform);
  try {
    if (globalThis.localStorage) return webStorage(globalThis.localStorage);
  } catch (e) {
  }
  return memoryStorage();
}
function httpBaseOf(wsUrl) {
  const m = /^(ws|wss|http|https):\/\/([^/?#]+)/i.exec(wsUrl);
  if (!m) return "";
  const scheme = m[1].toLowerCase();
  return (scheme === "wss" || scheme === "https" ? "https://" : "http://") + m[2];
}
var WxChat = class extends Emitter {
  /** @param {object} options see WxChatOptions in index.d.ts */
  constructor(options) {
    super();
    if (!options || typeof options.url !== "string") {
      throw new TypeError("WxChat: options.url (the chat WebSocket URL) is required");
    }
    this.options = __spreadValues(__spreadValues({}, DEFAULTS), options);
    this.url = options.url;
    this.httpUrl = options.httpUrl || httpBaseOf(options.url);
    this._token = options.token || null;
    this._getToken = typeof options.getToken === "function" ? options.getToken : null;
    this._clock = options.clock || defaultClock;
    this._random = options.random || Math.random;
    this._platform = pickPlatform(options);
    this._transport = pickTransport(options);
    this._storage = pickStorage(options, this._platform);
    this._keys = {
      outbox: `${this.options.storageKey}:outbox`,
      seqs: (uid) => `${this.options.storageKey}:seqs:${uid}`
    };
    this.state = "closed";
    this.uid = null;
    this.lastClose = null;
    this._want = false;
    this._suspended = false;
    this._gen = 0;
    this._socket = null;
    this._authed = false;
    this._authReqId = null;
    this._authFailed = false;
    this._ready = false;
    this._attempt = 0;
    this._timers = { reconnect: null, connect: null, heartbeat: null };
    this._reqSeq = 0;
    this._inflight = /* @__PURE__ */ new Map();
    this._queue = [];
    this._connectWaiters = [];
    this._waiters = /* @__PURE__ */ new Map();
    this._retryTimers = /* @__PURE__ */ new Map();
    this._convs = /* @__PURE__ */ new Map();
    this._syncsRunning = 0;
    this._syncsWaiting = [];
    this._seqsUid = null;
    this._firstConnect = false;
    const stored = readJson(this._storage, this._keys.outbox, null);
    this._outbox = stored && Array.isArray(stored.items) ? stored : { uid: null, items: [] };
    for (const item of this._outbox.items) item.sending = 0;
    if (this._platform && options.lifecycle !== false) this._hookLifecycle(this._platform);
    else if (!this._platform && options.lifecycle !== false) this._hookBrowser();
  }
  // ---------------------------------------------------------------------------------------
  // Public: connection
  /**
   * Starts connecting (if not already) and resolves once connected: authenticated and the
   * conversation list fetched. Rejects only when the client ends 'closed' first (bad token and
   * no getToken, kicked, close()); network failures are retried without rejecting.
   */
  connect() {
    if (this.state === "connected") return Promise.resolve();
    const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (!this._want) {
      this._want = true;
      this._attempt = 0;
      this._open();
    }
    return p;
  }
  /**
   * Closes the connection and stops reconnecting. Queued and in-flight requests reject with
   * code 'closed'. Unacknowledged sends stay in the outbox (their promises stay pending) and go
   * out on the next connect(), also from a new instance on the same storage.
   */
  close() {
    this._want = false;
    this._suspended = false;
    this._clearTimer("reconnect");
    this._teardown(1e3, "client closed");
    this._enter("closed", { code: 1e3, reason: "client closed" });
    this._rejectAll(new WxChatError("closed", "WxChat: closed"));
  }
  /** Replaces the token used by the next connection (e.g. after a new login). */
  setToken(token) {
    this._token = token || null;
  }
  /**
   * Closes the socket cleanly and waits for resume(). Called on wx.onAppHide automatically;
   * call it yourself from uni-app's App.vue onHide or a browser's pagehide if you like.
   */
  suspend() {
    if (!this._want || this._suspended) return;
    this._suspended = true;
    this._clearTimer("reconnect");
    this._teardown(1e3, "app hidden");
    this._enter("disconnected", { code: 1e3, reason: "suspended" });
  }
  /**
   * Skips the rest of the backoff delay: when the network is known to be back (the browser's
   * `online` event and wx.onNetworkStatusChange call it), or from a "retry now" button.
   */
  reconnectNow() {
    if (!this._want || this._suspended || this.state !== "disconnected") return;
    this._attempt = 0;
    this._open();
  }
  /** Reconnects at once after suspend() and catches up (wx.onAppShow calls it). */
  resume() {
    if (!this._suspended) return;
    this._suspended = false;
    if (!this._want) return;
    this._attempt = 0;
    this._open();
  }
  // ---------------------------------------------------------------------------------------
  // Public: sending (exactly-once)
  /**
   * Sends a message. It is stored in the outbox first and resent (same client_msg_id) until
   * the server acknowledges it; resolves with {msg_id, conv_id, seq, time, duplicate,
   * client_msg_id} once the server committed it. Rejects (and forgets the message) on codes
   * that can never succeed: 400, 403, 404, 409, 410, 413, 415.
   */
  send(args) {
    if (!args || typeof args !== "object") {
      return Promise.reject(new TypeError("send({chat_type, to_id, msg_type, msg})"));
    }
    const _a = args, { client_msg_id } = _a, fields = __objRest(_a, ["client_msg_id"]);
    const id = client_msg_id || newClientMsgId(this._clock.now(), this._random);
    const item = { client_msg_id: id, args: fields, created: this._clock.now(), sending: 0 };
    const promise = new Promise((resolve, reject) => this._waiters.set(id, { resolve, reject }));
    this._outbox.items.push(item);
    this._saveOutbox();
    this._pumpOutbox();
    return promise;
  }
  /** Sends not yet acknowledged (also those restored from storage), oldest first. */
  pending() {
    return this._outbox.items.map((i) => ({
      client_msg_id: i.client_msg_id,
      args: __spreadValues({}, i.args),
      created: i.created
    }));
  }
  /** Gives up on every unacknowledged send: their promises reject with code 'cancelled'. */
  clearOutbox() {
    const items = this._outbox.items;
    this._outbox.items = [];
    this._saveOutbox();
    for (const item of items) {
      this._failItem(item, new WxChatError("cancelled", "send cancelled by clearOutbox()"), false);
    }
  }
  // ---------------------------------------------------------------------------------------
  // Public: requests
  /**
   * Sends any command and resolves with its reply's `data`, rejecting with a WxChatError
   * carrying the reply's code. Made while not connected, it waits for the connection; either
   * way it rejects with code 'timeout' after `timeout` ms (default options.requestTimeout)
   * from the call. A lost connection resends idempotent commands and rejects the others with
   * code 'disconnected'. The customer-service reads that may run on another node
   * (RETRIED_REQUESTS in rules.js) are also sent again after a 503 (after a backoff delay) and
   * when unanswered for a third of requestTimeout; when the time is up after a 503, they
   * reject with that 503.
   */
  request(cmd, fields = {}, { timeout } = {}) {
    return new Promise((resolve, reject) => {
      if (this.state === "closed" && !this._want) {
        reject(new WxChatError("closed", `WxChat: ${cmd}: not connected (call connect() first)`));
        return;
      }
      const entry = { cmd, fields, resolve, reject, reqId: 0, timer: null, retry: null, attempt: null, refusals: 0, lastError: null };
      entry.timer = this._clock.setTimeout(() => {
        entry.timer = null;
        this._inflight.delete(entry.reqId);
        const i = this._queue.indexOf(entry);
        if (i >= 0) this._queue.splice(i, 1);
        this._endRequest(entry);
        reject(entry.lastError || new WxChatError("timeout", `WxChat: ${cmd}: no reply in time`, { cmd }));
      }, timeout || this.options.requestTimeout);
      if (this.state === "connected") this._dispatch(entry);
      else this._queue.push(entry);
    });
  }
  ping() {
    return this.request("ping");
  }
  sync(conv_id, after_seq = 0, limit = 50) {
    return this.request("sync", { conv_id, after_seq, limit });
  }
  history(conv_id, before_seq = 0, limit = 50) {
    return this.request("history", { conv_id, before_seq, limit });
  }
  conversations() {
    return this.request("conversations").then((d) => d.conversations);
  }
  read(conv_id, seq) {
    return this.request("read", { conv_id, seq });
  }
  typing(conv_id) {
    return this.request("typing", { conv_id });
  }
  readCount(conv_id, seq) {
    return this.request("read_count", { conv_id, seq });
  }
  presence(uids) {
    return this.request("presence", { uids }).then((d) => d.online);
  }
  /**
   * Recalls one of your messages. The recall event takes the conversation's next seq; the
   * server does not push it to this connection, so the SDK fetches it with sync and emits it
   * as a 'message' (msg_type 100) like every other.
   */
  recall(conv_id, msg_id) {
    return this.request("recall", { conv_id, msg_id }).then((ack) => {
      this._expect(ack.conv_id || conv_id, ack.seq);
      return ack;
    });
  }
  friends() {
    return this.request("friends").then((d) => d.friends);
  }
  friendRequest(to_id, note) {
    return this.request("friend_request", note === void 0 ? { to_id } : { to_id, note });
  }
  friendAccept(from_id) {
    return this.request("friend_accept", { from_id });
  }
  friendRequests() {
    return this.request("friend_requests").then((d) => d.requests);
  }
  friendRemove(uid) {
    return this.request("friend_remove", { uid });
  }
  groups() {
    return this.request("groups").then((d) => d.groups);
  }
  groupCreate(name, members = [], opts = {}) {
    const fields = { name, members };
    if (opts.history_for_new_members !== void 0) fields.history_for_new_members = !!opts.history_for_new_members;
    return this.request("group_create", fields);
  }
  groupMembers(group_id) {
    return this.request("group_members", { group_id }).then((d) => d.members);
  }
  groupInvite(group_id, uids) {
    return this.request("group_invite", { group_id, uids });
  }
  groupLeave(group_id) {
    return this.request("group_leave", { group_id });
  }
  serviceStatus(status) {
    return this.request("service_status", { status });
  }
  serviceAccept(customer) {
    return this.request("service_accept", { customer });
  }
  serviceTransfer(customer, to) {
    return this.request("service_transfer", { customer, to });
  }
  /** Agents pass the customer; customers pass nothing. */
  serviceClose(customer) {
    return this.request("service_close", customer === void 0 ? {} : { customer });
  }
  serviceRate(session_id, rating, comment) {
    return this.request("service_rate", comment === void 0 ? { session_id, rating } : { session_id, rating, comment });
  }
  serviceInfo() {
    return this.request("service_info");
  }
  /** Agents: who a customer is (profile, kind 'visitor' | 'wechat' | 'user'). */
  serviceCustomer(customer) {
    return this.request("service_customer", { customer });
  }
  consultGet(consult_id) {
    return this.request("consult_get", { consult_id });
  }
  /**
   * Uploads a file for a media message (protocol-spec 3.4) and resolves with {url, size,
   * mime}. In a mini-program `file` is a temp file path (wx.chooseMedia); elsewhere a Blob or
   * File. Uses this client's token (or getToken()).
   */
  async upload(file, opts = {}) {
    let token = this._token;
    if (!token && this._getToken) token = this._token = await this._getToken();
    return uploadFile({
      baseUrl: this.httpUrl,
      token,
      file,
      name: opts.name,
      wx: this._platform || void 0,
      fetch: this.options.fetch
    });
  }
  // ---------------------------------------------------------------------------------------
  // Connection internals
  _enter(state, info) {
    if (info) this.lastClose = info.code !== void 0 ? { code: info.code, reason: info.reason } : this.lastClose;
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state, info || {});
  }
  _clearTimer(name) {
    if (this._timers[name] !== null) {
      this._clock.clearTimeout(this._timers[name]);
      this._timers[name] = null;
    }
  }
  async _open() {
    this._clearTimer("reconnect");
    if (!this._want || this._suspended) return;
    const gen = ++this._gen;
    this._enter("connecting");
    let token = this._token;
    if (!token && this._getToken) {
      try {
        token = await this._getToken();
      } catch (err) {
        if (gen !== this._gen) return;
        this.emit("error", new WxChatError("auth", `getToken failed: ${err && err.message}`, { cause: err }));
        this._retryLater({ code: 0, reason: "getToken failed" });
        return;
      }
      if (gen !== this._gen || !this._want || this._suspended) return;
      this._token = token || null;
    }
    this._authed = false;
    this._authFailed = false;
    this._authReqId = null;
    this._ready = false;
    this._timers.connect = this._clock.setTimeout(() => {
      if (gen === this._gen) this._lost(4e3, "connect timeout");
    }, this.options.connectTimeout);
    try {
      this._socket = this._transport.open(this.url, {
        onOpen: () => gen === this._gen && this._onOpen(token),
        onMessage: (text) => gen === this._gen && this._onFrame(text),
        onClose: (code, reason) => gen === this._gen && this._onClose(code, reason),
        onError: () => {
        }
      });
    } catch (err) {
      this._clearTimer("connect");
      this.emit("error", new WxChatError("transport", `cannot open ${this.url}: ${err && err.message}`, { cause: err }));
      this._retryLater({ code: 0, reason: "transport failed" });
    }
  }
  _onOpen(token) {
    if (token) {
      this._authReqId = this._nextReqId();
      this._sendRaw({ cmd: "auth", req_id: this._authReqId, token });
    } else {
      this._internal("conversations").catch((err) => {
        if (err.code === 401 && !this._authed) this._authFailed = true;
        if (err.code === 401) this._lost(AUTH_FAILED, "no token and no usable cookie");
      });
    }
  }
  _onFrame(text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch (e) {
      return;
    }
    if (!f || typeof f !== "object") return;
    if (this._authed) this._armHeartbeat();
    if (f.cmd === "auth" && f.code !== void 0 && (f.req_id === void 0 || f.req_id === this._authReqId)) {
      if (f.code === 200) this._onAuthed(f.data && f.data.uid);
      else this._authFailed = true;
      return;
    }
    if (f.code !== void 0) {
      if (f.req_id !== void 0 && this._inflight.has(f.req_id)) {
        const entry = this._inflight.get(f.req_id);
        this._inflight.delete(f.req_id);
        entry.onReply(f);
      } else if (f.cmd === "error") {
        this.emit("error", new WxChatError(f.code, f.msg || "server error", { cmd: "error" }));
      }
      return;
    }
    if (f.cmd === "message") {
      if (f.data && typeof f.data.conv_id === "string") this._ingest(f.data);
      return;
    }
    if (f.cmd === "resync") {
      this._resync();
      this.emit("resync", f.data);
      return;
    }
    if (typeof f.cmd === "string") this.emit(f.cmd, f.data);
  }
  /** `conversations`, then a sync of every conversation whose last seq is past what we hold. */
  async _resync() {
    const gen = this._gen;
    if (!this._ready) return;
    let list;
    try {
      list = (await this._internal("conversations")).conversations || [];
    } catch (_) {
      return;
    }
    if (gen !== this._gen) return;
    for (const c of list) {
      const st = this._conv(c.conv_id);
      if (st.held === void 0) st.held = 0;
      if (c.last_seq > st.held) this._syncConv(c.conv_id);
    }
  }
  async _onAuthed(uid) {
    const gen = this._gen;
    this._authed = true;
    this._clearTimer("connect");
    this.uid = uid;
    this._adoptOutbox(uid);
    this._loadSeqs(uid);
    this._armHeartbeat();
    this.emit("auth", { uid });
    let list;
    try {
      list = (await this._internal("conversations")).conversations || [];
    } catch (err) {
      if (gen === this._gen) this._lost(4e3, `conversations failed: ${err.message}`);
      return;
    }
    if (gen !== this._gen) return;
    for (const c of list) {
      const st = this._conv(c.conv_id);
      if (st.held === void 0) {
        st.held = startSeq({ firstConnect: this._firstConnect, initialSync: this.options.initialSync, lastSeq: c.last_seq });
      }
    }
    this._firstConnect = false;
    this._ready = true;
    this._attempt = 0;
    for (const st of this._convs.values()) {
      if (st.held === void 0) st.held = 0;
      this._emit(takeRun(st));
      if (hasHole(st)) this._syncConv(st.id);
    }
    this._saveSeqs();
    this._enter("connected");
    for (const w of this._connectWaiters.splice(0)) w.resolve();
    this._pumpOutbox();
    for (const entry of this._queue.splice(0)) this._dispatch(entry);
    for (const c of list) {
      const st = this._conv(c.conv_id);
      if (c.last_seq > st.held) this._syncConv(c.conv_id);
    }
  }
  _onClose(code, reason) {
    this._lost(code, reason, true);
  }
  /**
   * The socket is gone (closed by the peer, or abandoned by us: connect or heartbeat timeout).
   * Decides between reconnecting and stopping.
   */
  _lost(code, reason, byPeer = false) {
    const authFailed = this._authFailed;
    this._teardown(byPeer ? null : 1e3, reason);
    const info = { code, reason };
    if (!this._want) return;
    switch (afterClose({ code, authFailed, canRefreshToken: !!this._getToken, suspended: this._suspended })) {
      case "stop":
        this._stop(new WxChatError(code, code === 4004 ? "visitor converted: log in again" : `closed by the server: ${reason || "kicked"}`), info);
        return;
      case "stop_auth":
        this._stop(new WxChatError(401, "bad or expired token"), { code: AUTH_FAILED, reason: reason || "authentication failed" });
        return;
      case "refresh_and_retry":
        this._token = null;
        if (this._suspended) this._enter("disconnected", info);
        else this._retryLater(info);
        return;
      case "wait":
        this._enter("disconnected", info);
        return;
      default:
        this._retryLater(info);
    }
  }
  _retryLater(info) {
    this._enter("disconnected", info);
    const delay = fullJitter(this._attempt++, this.options.backoffBase, this.options.backoffCap, this._random);
    this._clearTimer("reconnect");
    this._timers.reconnect = this._clock.setTimeout(() => {
      this._timers.reconnect = null;
      this._open();
    }, delay);
  }
  _stop(err, info) {
    this._want = false;
    this._clearTimer("reconnect");
    this._enter("closed", info);
    this._rejectAll(err);
  }
  _rejectAll(err) {
    for (const w of this._connectWaiters.splice(0)) w.reject(err);
    for (const entry of this._queue.splice(0)) {
      this._endRequest(entry);
      entry.reject(err);
    }
  }
  /** Stops a public request's timers (it is being settled). */
  _endRequest(entry) {
    for (const name of ["timer", "retry", "attempt"]) {
      if (entry[name] !== null) this._clock.clearTimeout(entry[name]);
      entry[name] = null;
    }
  }
  /**
   * Forgets the current socket (closing it with `closeCode` unless the peer already did) and
   * settles what was in flight on it.
   */
  _teardown(closeCode, reason) {
    this._gen++;
    this._clearTimer("connect");
    this._clearTimer("heartbeat");
    const socket = this._socket;
    this._socket = null;
    this._authed = false;
    this._ready = false;
    if (socket && closeCode) socket.close(closeCode, reason);
    const inflight = [...this._inflight.values()];
    this._inflight.clear();
    for (const entry of inflight) entry.onLost();
    for (const st of this._convs.values()) {
      st.syncing = false;
      if (st.retry) this._clock.clearTimeout(st.retry);
      st.retry = null;
    }
    this._syncsRunning = 0;
    this._syncsWaiting = [];
  }
  _armHeartbeat() {
    this._clearTimer("heartbeat");
    const gen = this._gen;
    this._timers.heartbeat = this._clock.setTimeout(() => {
      if (gen !== this._gen) return;
      this._sendRaw({ cmd: "ping", req_id: this._nextReqId() });
      this._timers.heartbeat = this._clock.setTimeout(() => {
        if (gen === this._gen) this._lost(4e3, "heartbeat timeout");
      }, this.options.heartbeatTimeout);
    }, this.options.heartbeatInterval);
  }
  _hookLifecycle(api) {
    if (typeof api.onAppHide === "function") api.onAppHide(() => this.suspend());
    if (typeof api.onAppShow === "function") api.onAppShow(() => this.resume());
    if (typeof api.onNetworkStatusChange === "function") {
      api.onNetworkStatusChange((res) => res && res.isConnected && this.reconnectNow());
    }
  }
  /** A page: reconnect as soon as the browser says the network is back. */
  _hookBrowser() {
    const w = globalThis.window;
    if (w && typeof w.addEventListener === "function") w.addEventListener("online", () => this.reconnectNow());
  }
  _nextReqId() {
    this._reqSeq += 1;
    return this._reqSeq;
  }
  _sendRaw(frame) {
    return !!this._socket && this._socket.send(JSON.stringify(frame)) !== false;
  }
  /** A request of the SDK itself on the current socket, before or after 'connected'. */
  _internal(cmd, fields = {}) {
    return new Promise((resolve, reject) => {
      const reqId = this._nextReqId();
      const timer = this._clock.setTimeout(() => {
        this._inflight.delete(reqId);
        reject(new WxChatError("timeout", `${cmd}: no reply in time`, { cmd }));
      }, this.options.requestTimeout);
      this._inflight.set(reqId, {
        onReply: (f) => {
          this._clock.clearTimeout(timer);
          if (f.code === 200) resolve(f.data || {});
          else reject(new WxChatError(f.code, f.msg || `${cmd} failed`, { cmd }));
        },
        onLost: () => {
          this._clock.clearTimeout(timer);
          reject(new WxChatError("disconnected", `${cmd}: connection lost`, { cmd }));
        }
      });
      if (!this._sendRaw(__spreadValues({ cmd, req_id: reqId }, fields))) {
        this._inflight.delete(reqId);
        this._clock.clearTimeout(timer);
        reject(new WxChatError("disconnected", `${cmd}: not connected`, { cmd }));
      }
    });
  }
  /** Sends a public request on the connected socket. */
  _dispatch(entry) {
    if (entry.retry !== null) {
      this._clock.clearTimeout(entry.retry);
      entry.retry = null;
    }
    const reqId = this._nextReqId();
    entry.reqId = reqId;
    const clearAttempt = () => {
      if (entry.attempt !== null) this._clock.clearTimeout(entry.attempt);
      entry.attempt = null;
    };
    const inflight = {
      onReply: (f) => {
        clearAttempt();
        if (requestOutcome(entry.cmd, f.code) === "retry") {
          entry.lastError = new WxChatError(f.code, f.msg || `${entry.cmd} failed`, { cmd: entry.cmd, data: f });
          this._retryRequest(entry);
          return;
        }
        this._endRequest(entry);
        if (f.code === 200) entry.resolve(f.data || {});
        else entry.reject(new WxChatError(f.code, f.msg || `${entry.cmd} failed`, { cmd: entry.cmd, data: f }));
      },
      onLost: () => {
        clearAttempt();
        if (IDEMPOTENT.has(entry.cmd)) {
          this._queue.push(entry);
        } else {
          this._endRequest(entry);
          entry.reject(new WxChatError("disconnected", `${entry.cmd}: connection lost before the reply; it may or may not have run`, { cmd: entry.cmd }));
        }
      }
    };
    this._inflight.set(reqId, inflight);
    if (!this._sendRaw(__spreadProps(__spreadValues({}, entry.fields), { cmd: entry.cmd, req_id: reqId }))) {
      this._inflight.delete(reqId);
      this._queue.push(entry);
      return;
    }
    if (RETRIED_REQUESTS.has(entry.cmd)) {
      entry.attempt = this._clock.setTimeout(() => {
        entry.attempt = null;
        if (this._inflight.get(reqId) !== inflight) return;
        this._inflight.delete(reqId);
        this._dispatch(entry);
      }, Math.max(1, Math.floor(this.options.requestTimeout / 3)));
    }
  }
  /**
   * A request refused with 503 goes out again after a full-jitter delay; it waits in the queue
   * meanwhile, so a lost connection, close() and its timeout treat it like any waiting request.
   */
  _retryRequest(entry) {
    const delay = fullJitter(entry.refusals++, this.options.backoffBase, this.options.backoffCap, this._random);
    this._queue.push(entry);
    entry.retry = this._clock.setTimeout(() => {
      entry.retry = null;
      if (this.state !== "connected") return;
      const i = this._queue.indexOf(entry);
      if (i < 0) return;
      this._queue.splice(i, 1);
      this._dispatch(entry);
    }, delay);
  }
  // ---------------------------------------------------------------------------------------
  // Outbox internals
  _saveOutbox() {
    const items = this._outbox.items.map(({ client_msg_id, args, created }) => ({ client_msg_id, args, created }));
    try {
      this._storage.set(this._keys.outbox, JSON.stringify({ uid: this._outbox.uid, items }));
    } catch (err) {
      this.emit("error", new WxChatError("storage", `cannot save the outbox: ${err && err.message}`, { cause: err }));
    }
  }
  /**
   * The outbox belongs to one user: entries written while another user was logged in on this
   * storage must not go out under this one's name.
   */
  _adoptOutbox(uid) {
    if (this._outbox.uid !== null && this._outbox.uid !== uid) {
      const items = this._outbox.items;
      this._outbox.items = [];
      for (const item of items) {
        this._failItem(item, new WxChatError("wrong_user", `queued by uid ${this._outbox.uid}, connected as ${uid}`), true);
      }
    }
    this._outbox.uid = uid;
    this._saveOutbox();
  }
  /** Sends outbox entries in order, keeping at most maxInflightSends unanswered. */
  _pumpOutbox() {
    if (this.state !== "connected") return;
    let inflight = 0;
    for (const item of this._outbox.items) if (item.sending) inflight++;
    for (const item of this._outbox.items) {
      if (inflight >= this.options.maxInflightSends) return;
      if (item.sending || this._retryTimers.has(item.client_msg_id)) continue;
      this._sendItem(item);
      if (item.sending) inflight++;
    }
  }
  _sendItem(item) {
    if (this.state !== "connected" || item.sending || this._retryTimers.has(item.client_msg_id)) return;
    const reqId = this._nextReqId();
    item.sending = reqId;
    const timer = this._clock.setTimeout(() => {
      if (this._inflight.get(reqId) !== entry) return;
      this._inflight.delete(reqId);
      item.sending = 0;
      this._sendItem(item);
    }, this.options.requestTimeout);
    const entry = {
      onReply: (f) => {
        this._clock.clearTimeout(timer);
        item.sending = 0;
        const outcome = sendOutcome(f.code);
        if (outcome === "ack") this._acked(item, f.data);
        else if (outcome === "drop") this._dropItem(item, new WxChatError(f.code, f.msg || "send failed", { cmd: "send" }));
        else this._retryItem(item);
        this._pumpOutbox();
      },
      onLost: () => {
        this._clock.clearTimeout(timer);
        item.sending = 0;
      }
    };
    this._inflight.set(reqId, entry);
    if (!this._sendRaw(__spreadProps(__spreadValues({ cmd: "send", req_id: reqId }, item.args), { client_msg_id: item.client_msg_id }))) {
      this._clock.clearTimeout(timer);
      this._inflight.delete(reqId);
      item.sending = 0;
    }
  }
  /** 429 / 503 / 500: the same message again after a full-jitter delay. */
  _retryItem(item) {
    item.attempts = (item.attempts || 0) + 1;
    const delay = fullJitter(item.attempts, this.options.backoffBase, this.options.backoffCap, this._random);
    const timer = this._clock.setTimeout(() => {
      this._retryTimers.delete(item.client_msg_id);
      this._pumpOutbox();
    }, delay);
    this._retryTimers.set(item.client_msg_id, timer);
  }
  _removeItem(item) {
    const i = this._outbox.items.indexOf(item);
    if (i < 0) return false;
    this._outbox.items.splice(i, 1);
    this._saveOutbox();
    return true;
  }
  _acked(item, data) {
    if (!this._removeItem(item)) return;
    const ack = {
      msg_id: data.msg_id,
      conv_id: data.conv_id,
      seq: data.seq,
      time: data.time,
      duplicate: !!data.duplicate,
      client_msg_id: item.client_msg_id
    };
    const a = item.args;
    this._ingest({
      msg_id: ack.msg_id,
      conv_id: ack.conv_id,
      seq: ack.seq,
      chat_type: a.chat_type,
      from_id: this.uid,
      to_id: a.to_id,
      msg_type: a.msg_type,
      msg: a.msg,
      time: ack.time,
      client_msg_id: item.client_msg_id
    });
    this.emit("sent", __spreadProps(__spreadValues({}, ack), { args: __spreadValues({}, a) }));
    const w = this._waiters.get(item.client_msg_id);
    if (w) {
      this._waiters.delete(item.client_msg_id);
      w.resolve(ack);
    }
  }
  _dropItem(item, err) {
    if (!this._removeItem(item)) return;
    this._failItem(item, err, true);
  }
  _failItem(item, err, emit) {
    const t = this._retryTimers.get(item.client_msg_id);
    if (t !== void 0) {
      this._clock.clearTimeout(t);
      this._retryTimers.delete(item.client_msg_id);
    }
    if (emit) this.emit("send_failed", { client_msg_id: item.client_msg_id, args: __spreadValues({}, item.args), error: err });
    const w = this._waiters.get(item.client_msg_id);
    if (w) {
      this._waiters.delete(item.client_msg_id);
      w.reject(err);
    }
  }
  // ---------------------------------------------------------------------------------------
  // Receiving internals
  _conv(convId) {
    let st = this._convs.get(convId);
    if (!st) {
      st = __spreadProps(__spreadValues({ id: convId }, newTracker(void 0)), { syncing: false, failures: 0, retry: null });
      this._convs.set(convId, st);
    }
    return st;
  }
  _loadSeqs(uid) {
    if (this._seqsUid === uid) return;
    this._seqsUid = uid;
    this._convs = /* @__PURE__ */ new Map();
    const stored = readJson(this._storage, this._keys.seqs(uid), null);
    this._firstConnect = stored === null;
    if (stored && typeof stored === "object") {
      for (const [convId, seq] of Object.entries(stored)) {
        if (typeof seq === "number") this._conv(convId).held = seq;
      }
    }
  }
  _saveSeqs() {
    if (this._seqsUid === null) return;
    const out = {};
    for (const st of this._convs.values()) if (st.held !== void 0) out[st.id] = st.held;
    try {
      this._storage.set(this._keys.seqs(this._seqsUid), JSON.stringify(out));
    } catch (err) {
      this.emit("error", new WxChatError("storage", `cannot save seqs: ${err && err.message}`, { cause: err }));
    }
  }
  /** A message from a push or an ack: buffered, then emitted in seq order. */
  _ingest(msg) {
    if (typeof msg.seq !== "number") return;
    const st = this._conv(msg.conv_id);
    if (!this._ready) {
      holdMessage(st, msg);
      return;
    }
    if (st.held === void 0) st.held = 0;
    this._emit(addMessage(st, msg));
    if (hasHole(st) && !st.syncing) this._syncConv(st.id);
  }
  /** Emits before the new seq is saved: a page killed in between sees the run again after a
   *  reload (at-least-once in that window), never loses it. */
  _emit(run) {
    for (const m of run) this.emit("message", m);
    if (run.length) this._saveSeqs();
  }
  /** After our own recall: make sure we emit the conversation up to `seq`. */
  _expect(convId, seq) {
    if (typeof seq !== "number" || !this._ready) return;
    const st = this._conv(convId);
    if (st.held === void 0) st.held = 0;
    if (seq > st.held && !st.buffer.has(seq) && !st.syncing) this._syncConv(convId);
  }
  /**
   * Fetches everything after `held` until has_more is false and no push waits beyond a hole.
   * At most maxParallelSyncs run at once; the others wait their turn. A sync that fails on a
   * live connection (503: storage down) is retried after a full-jitter delay, so a hole is
   * never left open until the next reconnect.
   */
  _syncConv(convId) {
    const st = this._conv(convId);
    if (st.syncing || st.retry || !this._ready) return;
    st.syncing = true;
    if (this._syncsRunning >= this.options.maxParallelSyncs) {
      this._syncsWaiting.push(convId);
      return;
    }
    this._runSync(st);
  }
  async _runSync(st) {
    const gen = this._gen;
    this._syncsRunning++;
    let failed = false;
    try {
      for (; ; ) {
        const data = await this._internal("sync", { conv_id: st.id, after_seq: st.held, limit: this.options.syncLimit });
        if (gen !== this._gen) return;
        st.failures = 0;
        const msgs = Array.isArray(data.messages) ? data.messages : [];
        this._emit(addPage(st, msgs));
        if (data.has_more) continue;
        if (!hasHole(st)) break;
        if (msgs.length === 0) this._emit(skipHole(st));
        if (!hasHole(st)) break;
      }
    } catch (err) {
      if (gen !== this._gen) return;
      failed = err.code !== 403 && err.code !== 404;
    }
    if (gen !== this._gen) return;
    this._syncsRunning--;
    st.syncing = false;
    if (failed) {
      const delay = fullJitter(st.failures++, this.options.backoffBase, this.options.backoffCap, this._random);
      st.retry = this._clock.setTimeout(() => {
        st.retry = null;
        this._syncConv(st.id);
      }, delay);
    }
    const next = this._syncsWaiting.shift();
    if (next !== void 0) this._runSync(this._conv(next));
  }
};

// src/qrlogin.js
var QrLogin = class extends Emitter {
  /**
   * @param {{url: string, app?: string, WebSocket?: Function, wx?: object, uni?: object,
   *          transport?: object}} options url: ws(s)://host/ws/qrlogin
   */
  constructor(options) {
    super();
    if (!options || typeof options.url !== "string") throw new TypeError("QrLogin: options.url is required");
    let url = options.url;
    if (options.app) url += (url.includes("?") ? "&" : "?") + "app=" + encodeURIComponent(options.app);
    this.url = url;
    this._transport = options.transport || (options.wx ? socketTaskTransport(options.wx) : options.uni ? socketTaskTransport(options.uni) : webSocketTransport(options.WebSocket || globalThis.WebSocket));
    this._socket = null;
    this._done = false;
  }
  /**
   * Opens the socket. Events: 'qrcode_url' {url, expire_seconds} (show it as a QR code),
   * 'scan_success' {user, token, expires_in, is_new}, 'qrcode_expired', 'error' {msg, errcode}.
   * Resolves with the scan_success data; rejects on expiry (code 'expired'), an error push,
   * or a close before any of them.
   */
  start() {
    return new Promise((resolve, reject) => {
      const finish = (err, value) => {
        if (this._done) return;
        this._done = true;
        if (err) reject(err);
        else resolve(value);
      };
      this._socket = this._transport.open(this.url, {
        onOpen: () => {
        },
        onMessage: (text) => {
          let m;
          try {
            m = JSON.parse(text);
          } catch (e) {
            return;
          }
          if (!m || typeof m.message_type !== "string") return;
          this.emit(m.message_type, m);
          if (m.message_type === "scan_success") finish(null, m);
          else if (m.message_type === "qrcode_expired") finish(new WxChatError("expired", "the QR code expired"));
          else if (m.message_type === "error") finish(new WxChatError("qr_error", m.msg || "QR login failed", { errcode: m.errcode }));
        },
        onError: () => {
        },
        onClose: (code, reason) => {
          this._socket = null;
          finish(new WxChatError(code, `QR login socket closed${reason ? `: ${reason}` : ""}`));
        }
      });
    });
  }
  /** Gives up (the user left the page). */
  close() {
    if (this._socket) this._socket.close(1e3, "cancelled");
  }
};
