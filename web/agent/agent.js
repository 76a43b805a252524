// The agent console: the customer-service desk of protocol-spec 2.10 (queue, sessions, transfer,
// close, ratings) and timed consultations of 2.11, on the wxchat SDK.

import { WxChat, getMe, logout } from '/sdk/index.js';
import { h, chatUrl, randomId, MessageList, uploadAsMessage, setStatus, demoLogin, summary, formatDuration, wireComposer } from '/common/ui.js';

const TOKEN_KEY = 'wxchat-agent-token';
const $ = (id) => document.getElementById(id);

const state = {
  chat: null,
  me: null, // {uid, name, user_type}
  token: null,
  status: 'available',
  customers: new Map(), // uid -> {uid, name, unread, last}
  waiting: [], // uids, first = next
  names: new Map(), // uid -> name (peer profiles)
  consults: new Map(), // consult_id -> {consult_id, user, consultant, remaining_s, total_s, running, ended, at, unread}
  closed: [], // {customer, session_id, by, rating?, comment?}
  active: null, // {kind: 'service' | 'waiting' | 'consult', id, conv}
  hasMore: false,
  loadingOlder: false,
  typingTimer: null,
  maxSessions: 0, // [service] max_sessions_per_agent, from service_info
  deliveries: new Map(), // msg_id -> "delivered to WeChat" / why not (wx_delivery)
  who: new Map(), // uid -> {kind, name, head_img, ...} (service_customer)
  asked: new Set(), // uids whose service_customer is on its way or answered
};

const list = new MessageList($('messages'), {
  me: () => (state.me ? state.me.uid : 0),
  nameOf: (uid) => nameOf(uid),
  // Replies to WeChat users leave through WeChat's customer-service API: its verdict per message.
  status: (m) => state.deliveries.get(m.msg_id) || '',
});

function nameOf(uid) {
  const n = state.names.get(uid);
  return n ? `${n} (#${uid})` : `#${uid}`;
}

// ------------------------------------------------------------------------------------------
// Login

async function start(token) {
  setStatus($('login-status'), 'Checking the token…');
  let me;
  try {
    me = await getMe({ baseUrl: location.origin, token });
  } catch (err) {
    localStorage.removeItem(TOKEN_KEY);
    setStatus($('login-status'), `Cannot log in: ${err.message}`, 'error');
    return;
  }
  state.me = me;
  state.token = token;
  localStorage.setItem(TOKEN_KEY, token);
  state.names.set(me.uid, me.name);
  $('me-name').textContent = `${me.name || 'agent'} (#${me.uid})${me.user_type === 1 ? '' : me.user_type === 2 ? ' · consultant' : ' · not an agent'}`;
  $('login').hidden = true;
  $('who').hidden = false;
  $('desk').hidden = false;
  connect(token);
}

function connect(token) {
  const chat = new WxChat({ url: chatUrl(), token, storageKey: 'wxchat-agent' });
  state.chat = chat;
  chat.on('state', (s, info) => {
    const text = { connecting: 'Connecting…', connected: 'Online', disconnected: 'Reconnecting…', closed: 'Offline' }[s] || s;
    setStatus($('conn'), info && info.code >= 4000 && s === 'closed' ? `Offline (${info.reason || info.code})` : text, s === 'connected' ? 'ok' : s === 'closed' ? 'error' : '');
    if (s === 'connected') refreshDesk();
  });
  chat.on('message', onMessage);
  chat.on('service', onService);
  chat.on('consult', onConsult);
  chat.on('typing', onTyping);
  chat.on('wx_delivery', (d) => {
    if (!d || !d.msg_id) return;
    state.deliveries.set(d.msg_id, d.ok ? 'delivered to WeChat' : `not delivered to WeChat: ${d.msg || d.code}${d.errcode ? ` (errcode ${d.errcode})` : ''}`);
    if (state.active && d.conv_id === state.active.conv) list.refreshStatus();
  });
  chat.on('profile', (p) => {
    if (p && p.uid) state.names.set(p.uid, p.name);
    renderSide();
  });
  chat.on('send_failed', ({ client_msg_id, error }) => list.failPending(client_msg_id, error.message));
  chat.connect().catch((err) => setStatus($('conn'), `Offline: ${err.message}`, 'error'));
}

/** The desk as the server sees it, after every (re)connection. */
async function refreshDesk() {
  const chat = state.chat;
  try {
    const [info, convs] = await Promise.all([chat.serviceInfo(), chat.conversations()]);
    state.status = info.status === 'away' ? 'away' : 'available';
    $('status').value = state.status;
    state.waiting = info.waiting || [];
    setQueueCount(info.queue_length || 0);
    state.maxSessions = info.max_sessions;
    const byConv = new Map(convs.map((c) => [c.conv_id, c]));
    for (const c of convs) if (c.peer && c.peer.uid) state.names.set(c.peer.uid, c.peer.name);
    const keep = new Map();
    for (const uid of info.customers || []) {
      const c = byConv.get(`s_${uid}`);
      const old = state.customers.get(uid);
      keep.set(uid, { uid, unread: c ? c.unread : old ? old.unread : 0, last: c && c.last ? c.last : old && old.last });
    }
    state.customers = keep;
    for (const c of convs) {
      if (!c.conv_id.startsWith('c_')) continue;
      const id = Number(c.conv_id.slice(2));
      const k = state.consults.get(id);
      if (k) k.unread = c.unread;
    }
  } catch (err) {
    setStatus($('chat-status'), `Cannot load the desk: ${err.message}`, 'error');
  }
  renderSide();
}

/** Profile names of customers we have not seen yet: the conversation list carries them. */
async function learnNames() {
  try {
    const convs = await state.chat.conversations();
    for (const c of convs) if (c.peer && c.peer.uid) state.names.set(c.peer.uid, c.peer.name);
    renderSide();
    if (state.active) renderHead();
  } catch {
    // Names are a nicety: the uid is shown meanwhile.
  }
}

// ------------------------------------------------------------------------------------------
// Pushes

function onService(ev) {
  if (!ev) return;
  switch (ev.event) {
    case 'queue':
      state.waiting = ev.waiting || [];
      setQueueCount(ev.length || 0);
      break;
    case 'assigned':
      state.customers.set(ev.customer, { uid: ev.customer, unread: 0, last: null });
      state.waiting = state.waiting.filter((u) => u !== ev.customer);
      // A customer we were looking at (waiting, or back after a closed session): reopen live.
      if (state.active && ['waiting', 'ended'].includes(state.active.kind) && state.active.id === ev.customer) openService(ev.customer);
      notice(ev.from ? `Customer #${ev.customer} was transferred to you by #${ev.from}` : `New customer #${ev.customer}`);
      learnNames();
      break;
    case 'transferred':
    case 'requeued':
      state.customers.delete(ev.customer);
      if (state.active && state.active.id === ev.customer && state.active.kind === 'service') {
        endActive(ev.event === 'transferred' ? `Transferred to agent #${ev.to}.` : 'You were away too long: the customer went back to the queue.');
      }
      break;
    case 'closed': {
      state.customers.delete(ev.customer);
      state.closed.unshift({ customer: ev.customer, session_id: ev.session_id, by: ev.by });
      if (state.active && state.active.kind === 'service' && state.active.id === ev.customer) {
        endActive(`Session closed by the ${ev.by}.`);
      }
      break;
    }
    case 'rated': {
      // The customer rated a session this agent served (2.10 `rated`).
      onRated(ev);
      break;
    }
    case 'converted': {
      const old = state.customers.get(ev.visitor);
      state.customers.delete(ev.visitor);
      state.customers.set(ev.customer, { ...(old || { unread: 0 }), uid: ev.customer });
      // Opening the conversation clears the status line: the notice comes after.
      if (state.active && state.active.kind === 'service' && state.active.id === ev.visitor) openService(ev.customer);
      notice(`Visitor #${ev.visitor} logged in as user #${ev.customer}`);
      learnNames();
      break;
    }
    default:
      break;
  }
  renderSide();
}

function onRated(ev) {
  const entry = state.closed.find((c) => c.session_id === ev.session_id);
  if (entry) Object.assign(entry, { rating: ev.rating, comment: ev.comment });
  else state.closed.unshift({ customer: ev.customer, session_id: ev.session_id, rating: ev.rating, comment: ev.comment });
  if (state.active && state.active.id === ev.customer) {
    setStatus($('chat-status'), `Rated ${'★'.repeat(ev.rating)}${'☆'.repeat(5 - ev.rating)}${ev.comment ? `: “${ev.comment}”` : ''}`, 'ok');
  }
  renderSide();
}

function onConsult(ev) {
  if (!ev || !ev.consult_id) return;
  const k = state.consults.get(ev.consult_id) || { consult_id: ev.consult_id, unread: 0 };
  Object.assign(k, {
    remaining_s: ev.remaining_s,
    total_s: ev.total_s,
    at: performance.now(),
  });
  if (ev.user !== undefined) k.user = ev.user;
  if (ev.consultant !== undefined) k.consultant = ev.consultant;
  if (ev.event === 'running') k.running = true;
  else if (ev.event === 'paused') k.running = false;
  else if (ev.event === 'ended') Object.assign(k, { running: false, ended: true });
  else if (ev.event === 'extended') k.ended = false;
  else if (ev.event === 'state') Object.assign(k, { running: !!ev.running, ended: !!ev.ended });
  else if (ev.event === 'warning') notice(`Consultation #${ev.consult_id}: ${formatDuration(ev.remaining_s)} left`);
  state.consults.set(ev.consult_id, k);
  if (k.user === undefined && state.chat) {
    state.chat.consultGet(ev.consult_id).then((d) => {
      Object.assign(k, { user: d.user, consultant: d.consultant });
      renderSide();
    }).catch(() => {});
  }
  renderSide();
  if (state.active && state.active.kind === 'consult' && state.active.id === ev.consult_id) renderConsultBar();
}

/** The time left of a consultation now: counted down locally between the server's reports. */
function remaining(k) {
  if (!k.running) return k.remaining_s;
  return Math.max(0, k.remaining_s - (performance.now() - k.at) / 1000);
}

function onMessage(m) {
  const active = state.active;
  if (active && m.conv_id === active.conv) {
    list.add(m);
    if (m.from_id !== state.me.uid && document.visibilityState === 'visible') state.chat.read(m.conv_id, m.seq).catch(() => {});
    if (m.from_id !== 0 && m.from_id !== state.me.uid) $('typing').textContent = '';
    if (m.msg_type === 101 || (m.msg && m.msg.media_id)) renderHead();
    return;
  }
  if (m.from_id === state.me.uid) return;
  if (m.from_id !== 0 && !state.names.has(m.from_id)) learnNamesSoon();
  if (m.conv_id.startsWith('s_')) {
    const c = state.customers.get(Number(m.conv_id.slice(2)));
    if (c) {
      c.unread += 1;
      c.last = m;
    }
  } else if (m.conv_id.startsWith('c_')) {
    const k = state.consults.get(Number(m.conv_id.slice(2)));
    if (k) k.unread = (k.unread || 0) + 1;
  }
  renderSide();
}

let namesTimer = null;
/** One conversation list for a burst of messages from customers we cannot name yet. */
function learnNamesSoon() {
  if (namesTimer) return;
  namesTimer = setTimeout(() => {
    namesTimer = null;
    learnNames();
  }, 500);
}

function onTyping(t) {
  if (!t || !state.active || t.conv_id !== state.active.conv || t.uid === state.me.uid) return;
  $('typing').textContent = `${nameOf(t.uid)} is typing…`;
  clearTimeout(state.typingTimer);
  // A typing push is a hint with no "stopped" counterpart: it fades after a few seconds.
  state.typingTimer = setTimeout(() => { $('typing').textContent = ''; }, 4000);
}

function setQueueCount(n) {
  $('queue-count').textContent = String(n);
  $('queue-count').classList.toggle('zero', n === 0);
}

function notice(text) {
  setStatus($('chat-status'), text);
}

// ------------------------------------------------------------------------------------------
// Side lists

function item({ title, sub, badge, current, onclick, testid }) {
  return h('li', {}, h('button', { type: 'button', class: 'item', 'aria-current': current ? 'true' : 'false', onclick, dataset: { testid } },
    h('span', { class: 'left' }, h('span', { class: 'name' }, title), sub ? h('span', { class: 'sub' }, sub) : null),
    badge ? h('span', { class: 'badge', 'aria-label': `${badge} unread` }, String(badge)) : null));
}

function renderSide() {
  // Queued and served customers are named as soon as the server says who they are.
  for (const uid of [...state.customers.keys(), ...state.waiting]) {
    if (!state.names.has(uid)) learnCustomer(uid);
  }
  const a = state.active;
  $('session-count').textContent = state.maxSessions ? `${state.customers.size}/${state.maxSessions}` : String(state.customers.size);
  $('queue').replaceChildren(...(state.waiting.length ? state.waiting.map((uid, i) => item({
    title: `${i + 1}. ${nameOf(uid)}`,
    sub: 'waiting',
    current: a && a.id === uid && a.kind === 'waiting',
    onclick: () => openWaiting(uid),
    testid: `waiting-${uid}`,
  })) : [h('li', { class: 'none' }, 'Nobody is waiting')]));
  $('sessions').replaceChildren(...(state.customers.size ? [...state.customers.values()].map((c) => item({
    title: nameOf(c.uid),
    sub: c.last ? summary(c.last) : '',
    badge: c.unread,
    current: a && a.kind === 'service' && a.id === c.uid,
    onclick: () => openService(c.uid),
    testid: `customer-${c.uid}`,
  })) : [h('li', { class: 'none' }, 'No open sessions')]));
  renderConsults();
  renderClosed();
}

/** Only the consultations: re-rendered every second for the countdown. */
function renderConsults() {
  const a = state.active;
  $('consults').replaceChildren(...(state.consults.size ? [...state.consults.values()].map((k) => item({
    title: `#${k.consult_id} with ${nameOf(peerOf(k))}`,
    sub: consultSub(k),
    badge: k.unread,
    current: a && a.kind === 'consult' && a.id === k.consult_id,
    onclick: () => openConsult(k.consult_id),
    testid: `consult-${k.consult_id}`,
  })) : [h('li', { class: 'none' }, 'None')]));
}

function renderClosed() {
  $('closed').replaceChildren(...(state.closed.length ? state.closed.slice(0, 20).map((c) => h('li', { class: 'closed-item', dataset: { session: c.session_id } },
    h('span', {}, `${nameOf(c.customer)} · session ${c.session_id ?? '?'} · by ${c.by || '?'} · `),
    c.rating ? h('span', { class: 'stars', 'aria-label': `rated ${c.rating} of 5` }, '★'.repeat(c.rating) + '☆'.repeat(5 - c.rating)) : h('span', { class: 'muted' }, 'not rated yet'),
    c.comment ? h('span', { class: 'comment' }, ` “${c.comment}”`) : null)) : [h('li', { class: 'none' }, 'None yet')]));
}

function consultSub(k) {
  return k.ended ? 'time used up' : `${formatDuration(remaining(k))} left${k.running ? '' : ' · paused'}`;
}

function peerOf(k) {
  if (!state.me) return k.user;
  return k.user === state.me.uid ? k.consultant : k.user;
}

// ------------------------------------------------------------------------------------------
// The open conversation

async function openConversation(active) {
  state.active = active;
  list.clear();
  $('empty').hidden = true;
  $('typing').textContent = '';
  setStatus($('chat-status'), '');
  $('desk').classList.add('open');
  renderHead();
  renderSide();
  await loadOlder(true);
}

function openService(uid) {
  const c = state.customers.get(uid);
  if (c) c.unread = 0;
  return openConversation({ kind: 'service', id: uid, conv: `s_${uid}` });
}

function openWaiting(uid) {
  return openConversation({ kind: 'waiting', id: uid, conv: `s_${uid}` });
}

function openConsult(id) {
  const k = state.consults.get(id);
  if (k) k.unread = 0;
  return openConversation({ kind: 'consult', id, conv: `c_${id}` });
}

function endActive(text) {
  const a = state.active;
  if (!a) return;
  state.active = { ...a, kind: 'ended' };
  renderHead();
  setStatus($('chat-status'), text);
}

const KIND_TEXT = { visitor: 'Web visitor (anonymous)', wechat: 'WeChat user', user: 'Registered user' };

/** A customer's kind as the server says it (service_customer), once known. */
function customerKind(uid) {
  const who = state.who.get(uid);
  if (!who) {
    learnCustomer(uid);
    return 'Customer';
  }
  return KIND_TEXT[who.kind] || 'Customer';
}

/** Asks the server who a customer is (profile and kind), once; re-renders the header. */
function learnCustomer(uid) {
  if (state.asked.has(uid) || !state.chat) return;
  state.asked.add(uid);
  state.chat.request('service_customer', { customer: uid })
    .then((who) => {
      state.who.set(uid, who);
      if (who.name) state.names.set(uid, who.name);
      renderSide();
      if (state.active && state.active.id === uid) renderHead();
    })
    .catch(() => state.asked.delete(uid));
}

function renderHead() {
  const a = state.active;
  $('actions').hidden = !a;
  $('composer').hidden = !a || a.kind === 'waiting' || a.kind === 'ended';
  $('accept').hidden = !a || a.kind !== 'waiting';
  $('transfer').hidden = !a || a.kind !== 'service';
  $('close').hidden = !a || a.kind !== 'service';
  $('consult-bar').hidden = !a || a.kind !== 'consult';
  if (!a) return;
  if (a.kind === 'consult') {
    const k = state.consults.get(a.id) || {};
    $('chat-title').textContent = `Consultation #${a.id}`;
    $('chat-info').textContent = `with ${nameOf(peerOf(k))}`;
    renderConsultBar();
  } else {
    $('chat-title').textContent = nameOf(a.id);
    $('chat-info').textContent = `${customerKind(a.id)} · uid ${a.id}${a.kind === 'waiting' ? ' · waiting in the queue' : a.kind === 'ended' ? ' · session ended' : ''}`;
  }
}

function renderConsultBar() {
  const a = state.active;
  const k = a && state.consults.get(a.id);
  const bar = $('consult-bar');
  if (!k) return;
  const left = remaining(k);
  bar.dataset.kind = k.ended ? 'ended' : '';
  bar.textContent = k.ended
    ? 'The consultation time is used up: messages are refused until it is extended.'
    : `Time left ${formatDuration(left)} of ${formatDuration(k.total_s)}${k.running ? ' · running' : ' · paused (the time runs while both sides are online)'}`;
}

/** One page of history above what is shown (`first`: the newest page). */
async function loadOlder(first = false) {
  const a = state.active;
  if (!a || state.loadingOlder || (!first && !state.hasMore)) return;
  state.loadingOlder = true;
  const scroll = $('scroll');
  const before = scroll.scrollHeight - scroll.scrollTop;
  try {
    const page = await state.chat.history(a.conv, first ? 0 : list.oldest, 30);
    if (state.active !== a && !(state.active && state.active.conv === a.conv)) return;
    for (const m of page.messages) list.add(m);
    for (const m of page.messages) if (m.msg_type === 100 && m.msg) list.recalled(m.msg.seq);
    state.hasMore = page.has_more;
    if (first) {
      list.scrollToEnd();
      if (list.newest && a.kind !== 'waiting') {
        // Our read cursor puts the conversation in our list, which carries the customer's
        // profile (an agent's conversations hold only those they have a cursor in).
        state.chat.read(a.conv, list.newest).then(() => {
          if (a.kind === 'service' && !state.names.has(a.id)) learnNames();
        }).catch(() => {});
      }
    } else {
      scroll.scrollTop = scroll.scrollHeight - before;
    }
    renderHead();
  } catch (err) {
    setStatus($('chat-status'), `History: ${err.message}`, 'error');
  } finally {
    state.loadingOlder = false;
  }
}

function target() {
  const a = state.active;
  if (a.kind === 'consult') return { chat_type: 3, to_id: a.id };
  return { chat_type: 2, to_id: a.id };
}

async function send(body, label) {
  const a = state.active;
  if (!a) return;
  const clientMsgId = randomId();
  list.addPending(clientMsgId, label);
  try {
    await state.chat.send({ ...target(), ...body, client_msg_id: clientMsgId });
  } catch (err) {
    list.failPending(clientMsgId, err.message);
    if (err.code === 410) renderConsultBar();
  }
}

// ------------------------------------------------------------------------------------------
// Wiring

$('demo-login').addEventListener('submit', async (e) => {
  e.preventDefault();
  try {
    const data = await demoLogin($('login-name').value.trim(), 1);
    await start(data.token);
  } catch (err) {
    setStatus($('login-status'), `Demo login failed: ${err.message}`, 'error');
  }
});

$('token-login').addEventListener('submit', (e) => {
  e.preventDefault();
  start($('login-token').value.trim());
});

$('logout').addEventListener('click', async () => {
  const token = state.token;
  if (state.chat) state.chat.close();
  localStorage.removeItem(TOKEN_KEY);
  await logout({ baseUrl: location.origin, token }).catch(() => {});
  location.reload();
});

$('status').addEventListener('change', async () => {
  const want = $('status').value;
  try {
    const info = await state.chat.serviceStatus(want);
    state.status = info.status;
    notice(want === 'away' ? 'Away: you keep your sessions and take no new customers.' : 'Available for new customers.');
  } catch (err) {
    $('status').value = state.status;
    setStatus($('chat-status'), `Status: ${err.message}`, 'error');
  }
});

$('accept').addEventListener('click', async () => {
  const uid = state.active && state.active.id;
  try {
    await state.chat.serviceAccept(uid);
    state.customers.set(uid, { uid, unread: 0, last: null });
    openService(uid);
  } catch (err) {
    setStatus($('chat-status'), `Accept: ${err.message}`, 'error');
  }
});

$('transfer').addEventListener('submit', async (e) => {
  e.preventDefault();
  const uid = state.active.id;
  const to = Number($('transfer-to').value);
  try {
    await state.chat.serviceTransfer(uid, to);
    $('transfer-to').value = '';
  } catch (err) {
    setStatus($('chat-status'), `Transfer: ${err.message}`, 'error');
  }
});

$('close').addEventListener('click', async () => {
  try {
    await state.chat.serviceClose(state.active.id);
  } catch (err) {
    setStatus($('chat-status'), `Close: ${err.message}`, 'error');
  }
});

wireComposer($('composer'), $('text'), {
  onText: (text) => send({ msg_type: 0, msg: text }, text),
  onTyping: () => {
    if (!state.active) return false;
    state.chat.typing(state.active.conv).catch(() => {});
  },
});

$('file').addEventListener('change', async () => {
  const file = $('file').files[0];
  $('file').value = '';
  if (!file || !state.active) return;
  setStatus($('chat-status'), `Uploading ${file.name}…`);
  try {
    const body = await uploadAsMessage(state.chat, file);
    setStatus($('chat-status'), '');
    await send(body, `[${file.name}]`);
  } catch (err) {
    setStatus($('chat-status'), `Upload failed: ${err.message}`, 'error');
  }
});

$('scroll').addEventListener('scroll', () => {
  if ($('scroll').scrollTop < 40) loadOlder();
});

$('back').addEventListener('click', () => {
  $('desk').classList.remove('open');
});

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible' && state.active && list.newest) state.chat.read(state.active.conv, list.newest).catch(() => {});
});

// The countdown of consultations between the server's reports.
// Updated in place, so a focused item keeps its focus.
setInterval(() => {
  if (state.consults.size === 0) return;
  for (const k of state.consults.values()) {
    const sub = document.querySelector(`[data-testid="consult-${k.consult_id}"] .sub`);
    if (sub) sub.textContent = consultSub(k);
  }
  if (state.active && state.active.kind === 'consult') renderConsultBar();
}, 1000);

const saved = localStorage.getItem(TOKEN_KEY);
if (saved) start(saved);
