// Shared helpers of the pages: DOM building without innerHTML (message bodies are user input),
// rendering of every message type (protocol-spec 2.4), uploads turned into media messages, and
// a message list that keeps one row per seq whatever order pushes, syncs and history arrive in.

import { newClientMsgId } from '/sdk/index.js';

/** Creates an element: h('a', {href, class: 'x', onclick: fn}, 'text', child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A client_msg_id for a send the page shows before its ack: the SDK's format (time, then random). */
export function randomId() {
  return newClientMsgId(Date.now());
}

/** The WebSocket URL of the chat on this page's own server. */
export function chatUrl(path = '/ws') {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${path}`;
}

/**
 * A media URL that is safe to put in src / href: http(s) or a path on this server. Anything
 * else (javascript:, data:) is refused; the server validates too, but history may hold
 * anything an older version accepted.
 */
export function safeUrl(u) {
  if (typeof u !== 'string' || u === '') return null;
  if (u.startsWith('/') && !u.startsWith('//')) return u;
  try {
    const p = new URL(u);
    return p.protocol === 'http:' || p.protocol === 'https:' ? p.href : null;
  } catch {
    return null;
  }
}

export function formatSize(n) {
  if (typeof n !== 'number') return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function formatTime(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  const same = new Date().toDateString() === d.toDateString();
  return same
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

export function formatDuration(s) {
  s = Math.max(0, Math.ceil(s));
  const m = Math.floor(s / 60);
  const r = s % 60;
  return m >= 60 ? `${Math.floor(m / 60)}:${String(m % 60).padStart(2, '0')}:${String(r).padStart(2, '0')}` : `${m}:${String(r).padStart(2, '0')}`;
}

/** The media object of a message: the object form, or online_chat's bare URL string. */
function media(msg) {
  if (typeof msg === 'string') return { url: msg };
  return msg && typeof msg === 'object' ? msg : {};
}

/** A one-line summary for conversation lists and notifications. */
export function summary(m) {
  if (!m) return '';
  if (m.msg === null && m.msg_type !== 100) return 'Message recalled';
  switch (m.msg_type) {
    case 0: return String(m.msg);
    case 1: return '[Image]';
    case 2: return '[Voice]';
    case 3: return '[Video]';
    case 4: return textOfHtml(m.msg);
    case 5: return `[File] ${media(m.msg).name || ''}`;
    case 6: return `[Link] ${media(m.msg).title || ''}`;
    case 7: return `[Mini-program] ${media(m.msg).title || ''}`;
    case 100: return 'Message recalled';
    case 101: return '[WeChat event]';
    default: return `[type ${m.msg_type}]`;
  }
}

/** Rich text (type 4) is shown as its text: the server sanitises it, we still never inject HTML. */
function textOfHtml(html) {
  const doc = new DOMParser().parseFromString(String(html || ''), 'text/html');
  return doc.body.textContent || '';
}

/** The body of a message as DOM nodes, by msg_type. */
export function renderBody(m) {
  if (m.msg === null && m.msg_type !== 100) return h('span', { class: 'recalled' }, 'Message recalled');
  const o = media(m.msg);
  const url = safeUrl(o.url);
  switch (m.msg_type) {
    case 0:
      return h('span', { class: 'text' }, String(m.msg));
    case 1: {
      if (!url) return h('span', {}, '[Image]');
      const img = h('img', { src: safeUrl(o.thumb_url) || url, alt: o.name || 'image', loading: 'lazy', class: 'media-image' });
      if (o.width && o.height) img.style.aspectRatio = `${o.width} / ${o.height}`;
      return h('a', { href: url, target: '_blank', rel: 'noopener' }, img);
    }
    case 2:
      return url
        ? h('span', { class: 'voice' }, h('audio', { src: url, controls: true, preload: 'metadata' }), o.duration ? ` ${o.duration}s` : '')
        : h('span', {}, '[Voice]');
    case 3:
      return url
        ? h('video', { src: url, controls: true, preload: 'metadata', poster: safeUrl(o.thumb_url) || undefined, class: 'media-video', playsinline: true })
        : h('span', {}, '[Video]');
    case 4:
      return h('span', { class: 'text rich' }, textOfHtml(m.msg));
    case 5:
      return url
        ? h('a', { href: url, download: o.name || true, class: 'file', target: '_blank', rel: 'noopener' }, `File: ${o.name || 'file'}`, o.size !== undefined ? ` (${formatSize(o.size)})` : '')
        : h('span', {}, `[File] ${o.name || ''}`);
    case 6:
      return h('a', { href: url || '#', class: 'card', target: '_blank', rel: 'noopener' },
        h('strong', {}, o.title || url || 'link'), o.description ? h('small', {}, o.description) : null);
    case 7:
      return h('span', { class: 'card' }, h('strong', {}, o.title || 'Mini-program page'), h('small', {}, o.pagepath || ''));
    case 101:
      return h('span', { class: 'event' }, `WeChat: ${o.event || 'event'}${o.session_from ? ` (${o.session_from})` : ''}`);
    default:
      return h('span', {}, summary(m));
  }
}

/** Reads a media file's duration and size in the browser (voice needs `duration`, 2.4). */
function mediaMeta(file, tag) {
  return new Promise((resolve) => {
    const el = document.createElement(tag);
    const url = URL.createObjectURL(file);
    const done = (v) => {
      URL.revokeObjectURL(url);
      resolve(v);
    };
    el.preload = 'metadata';
    el.onloadedmetadata = () => done({
      duration: Number.isFinite(el.duration) ? Math.max(1, Math.round(el.duration)) : undefined,
      width: el.videoWidth || undefined,
      height: el.videoHeight || undefined,
    });
    el.onerror = () => done({});
    el.src = url;
  });
}

function imageMeta(file) {
  return new Promise((resolve) => {
    const img = new Image();
    const url = URL.createObjectURL(file);
    img.onload = () => {
      URL.revokeObjectURL(url);
      resolve({ width: img.naturalWidth, height: img.naturalHeight });
    };
    img.onerror = () => {
      URL.revokeObjectURL(url);
      resolve({});
    };
    img.src = url;
  });
}

/**
 * Uploads a picked file (POST /api/upload through the SDK) and returns the message to send:
 * image, voice, video or file by the type the server will serve it with.
 */
export async function uploadAsMessage(chat, file) {
  const up = await chat.upload(file, { name: file.name });
  const mime = up.mime || file.type || '';
  const base = { url: up.url, size: up.size, mime };
  if (mime.startsWith('image/')) {
    return { msg_type: 1, msg: { ...base, name: file.name, ...(await imageMeta(file)) } };
  }
  if (mime.startsWith('audio/')) {
    const meta = await mediaMeta(file, 'audio');
    // A voice message needs a duration; one the browser cannot read travels as a file.
    if (meta.duration) return { msg_type: 2, msg: { ...base, duration: meta.duration } };
  }
  if (mime.startsWith('video/')) {
    const meta = await mediaMeta(file, 'video');
    return { msg_type: 3, msg: { ...base, ...meta } };
  }
  return { msg_type: 5, msg: { url: up.url, name: file.name || 'file', size: up.size, mime } };
}

/**
 * One conversation's messages on screen, in seq order, each seq once: pushes, the SDK's
 * catch-up, our own acks and history pages may all deliver the same message.
 */
export class MessageList {
  /**
   * @param {HTMLElement} el an <ol>
   * @param {{me: () => number, nameOf: (uid: number) => string, status?: (m) => string}} opts
   */
  constructor(el, opts) {
    this.el = el;
    this.opts = opts;
    this.rows = new Map(); // seq -> <li>
    this.msgs = new Map(); // seq -> message
    this.pending = new Map(); // client_msg_id -> <li>
    this.oldest = Infinity;
    this.newest = 0;
  }

  clear() {
    this.el.replaceChildren();
    this.rows.clear();
    this.msgs.clear();
    this.pending.clear();
    this.oldest = Infinity;
    this.newest = 0;
  }

  /** Adds or replaces a message; a recall event (100) marks its original instead of showing. */
  add(m) {
    if (m.msg_type === 100) {
      const target = m.msg && this.msgs.get(m.msg.seq);
      if (target && target.msg !== null) this.add({ ...target, msg: null });
      this.msgs.set(m.seq, m);
      this.oldest = Math.min(this.oldest, m.seq);
      this.newest = Math.max(this.newest, m.seq);
      return;
    }
    let placeholder = null;
    if (m.client_msg_id && this.pending.has(m.client_msg_id)) {
      placeholder = this.pending.get(m.client_msg_id);
      this.pending.delete(m.client_msg_id);
    }
    const stick = this.atBottom();
    const old = this.rows.get(m.seq);
    const row = this.row(m);
    this.msgs.set(m.seq, m);
    this.rows.set(m.seq, row);
    const later = [...this.rows.keys()].some((seq) => seq > m.seq);
    if (old) {
      old.replaceWith(row);
      if (placeholder) placeholder.remove();
    } else if (placeholder && !later) {
      // Where the message was written: notes shown since (an agent joined) stay after it.
      placeholder.replaceWith(row);
    } else {
      if (placeholder) placeholder.remove();
      let before = null;
      for (const [seq, r] of this.rows) if (seq > m.seq && r !== row && (!before || seq < Number(before.dataset.seq))) before = r;
      if (before) this.el.insertBefore(row, before);
      else this.el.insertBefore(row, this.el.querySelector('li.pending'));
    }
    this.oldest = Math.min(this.oldest, m.seq);
    this.newest = Math.max(this.newest, m.seq);
    if (stick && m.seq >= this.newest) this.scrollToEnd();
  }

  /** Marks a seq recalled (after a history page brings a recall event before its original). */
  recalled(seq) {
    const m = this.msgs.get(seq);
    if (m && m.msg !== null) this.add({ ...m, msg: null });
  }

  /** A message of ours not yet acknowledged. */
  addPending(clientMsgId, text) {
    const li = h('li', { class: 'msg mine pending', dataset: { client: clientMsgId } },
      h('div', { class: 'bubble' }, h('span', { class: 'text' }, text)), h('div', { class: 'meta' }, 'sending…'));
    this.pending.set(clientMsgId, li);
    this.el.append(li);
    this.scrollToEnd();
  }

  failPending(clientMsgId, why) {
    const li = this.pending.get(clientMsgId);
    if (li) {
      li.classList.add('failed');
      li.querySelector('.meta').textContent = `not sent: ${why}`;
    }
  }

  /** Refreshes the status line (read receipts) of our own messages. */
  refreshStatus() {
    for (const [seq, m] of this.msgs) {
      const row = this.rows.get(seq);
      const st = row && row.querySelector('.status');
      if (st && this.opts.status) st.textContent = this.opts.status(m);
    }
  }

  row(m) {
    const mine = m.from_id === this.opts.me();
    const system = m.from_id === 0;
    const cls = system ? 'system' : mine ? 'mine' : 'theirs';
    const meta = h('div', { class: 'meta' },
      system ? 'System' : mine ? 'You' : this.opts.nameOf(m.from_id), ' · ', h('time', { datetime: new Date(m.time).toISOString() }, formatTime(m.time)));
    if (mine && this.opts.status) meta.append(h('span', { class: 'status' }, this.opts.status(m)));
    const li = h('li', { class: `msg ${cls} type-${m.msg_type}`, dataset: { seq: m.seq, msgId: m.msg_id } },
      h('div', { class: 'bubble' }, renderBody(m)), meta);
    if (mine && this.opts.onRecall && m.msg !== null && m.msg_type < 100) {
      const btn = h('button', { type: 'button', class: 'link recall', onclick: () => this.opts.onRecall(m) }, 'Recall');
      meta.append(' ', btn);
    }
    return li;
  }

  atBottom() {
    const s = this.el.closest('.scroll') || this.el;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 40;
  }

  scrollToEnd() {
    const s = this.el.closest('.scroll') || this.el;
    s.scrollTop = s.scrollHeight;
  }
}

/** A small status line (role=status so screen readers announce it). */
/**
 * The message box: submitting sends the trimmed text (`onText`, which may refuse by returning
 * false to keep it), Enter submits (Shift+Enter is a new line, an IME composition is left alone),
 * and typing calls `onTyping` at most once every three seconds (enough for "is typing…").
 */
export function wireComposer(form, input, { onText, onTyping }) {
  let lastTyping = 0;
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text || onText(text) === false) return;
    input.value = '';
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  input.addEventListener('input', () => {
    const now = Date.now();
    if (now - lastTyping > 3000 && onTyping() !== false) lastTyping = now;
  });
}

export function setStatus(el, text, kind = '') {
  el.textContent = text;
  el.dataset.kind = kind;
}

/** POST /api/demo/login (1.7): {uid, token, ...}. */
export async function demoLogin(name, userType) {
  const body = { name };
  if (userType !== undefined) body.user_type = userType;
  const res = await fetch('/api/demo/login', {
    method: 'POST',
    // No wxchat_token cookie: the pages pass their token explicitly, and a cookie would
    // authenticate every later WebSocket of this browser as this user (one cookie per site,
    // shared by the agent console, the demo and the widget; see the report on the SDK).
    credentials: 'omit',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok || json.code !== 200) throw new Error(json.msg || `HTTP ${res.status}`);
  return json.data;
}
