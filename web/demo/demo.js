// The chat demo: friend and group chat on the wxchat SDK (protocol-spec 2.3-2.9) with demo
// logins. Conversation list with unread counts and names, history on scroll, read receipts,
// typing, presence, recall and uploads.

import { WxChat, getMe, logout } from '/sdk/index.js';
import { h, chatUrl, randomId, MessageList, uploadAsMessage, setStatus, demoLogin, summary, formatTime, wireComposer } from '/common/ui.js';

// Per tab (sessionStorage): two tabs of one browser can be two users.
const TOKEN_KEY = 'wxchat-demo-token';
const RECALL_WINDOW_MS = 120 * 1000;
const $ = (id) => document.getElementById(id);

const state = {
  chat: null,
  me: null,
  token: null,
  convs: new Map(), // conv_id -> {conv_id, chat_type, unread, last, peer, group}
  friends: new Map(), // uid -> {uid, online}
  groups: new Map(), // group_id -> {group_id, name}
  names: new Map(), // uid -> name
  peerRead: new Map(), // conv_id -> the peer's read seq (one-to-one), or {seq: text} (groups)
  groupRead: new Map(), // conv_id -> Map(seq -> "read by n/m")
  active: null, // conv_id
  hasMore: false,
  loadingOlder: false,
  typingTimer: null,
};

const list = new MessageList($('messages'), {
  me: () => (state.me ? state.me.uid : 0),
  nameOf: (uid) => nameOf(uid),
  status: (m) => receipt(m),
  onRecall: (m) => recall(m),
});

function nameOf(uid) {
  return state.names.get(uid) || `User #${uid}`;
}

function pConv(a, b) {
  return a < b ? `p_${a}_${b}` : `p_${b}_${a}`;
}

/** The other user of a one-to-one conversation id. */
function peerOfConv(convId) {
  const [, a, b] = convId.split('_').map(Number);
  return a === state.me.uid ? b : a;
}

function titleOf(convId) {
  if (convId.startsWith('g_')) {
    const g = state.groups.get(Number(convId.slice(2)));
    return g ? `${g.name} (group)` : `Group #${convId.slice(2)}`;
  }
  if (convId.startsWith('p_')) return nameOf(peerOfConv(convId));
  return convId;
}

function receipt(m) {
  if (!state.me || m.from_id !== state.me.uid || m.msg === null) return '';
  if (m.conv_id.startsWith('p_')) return (state.peerRead.get(m.conv_id) || 0) >= m.seq ? 'Read' : 'Sent';
  const g = state.groupRead.get(m.conv_id);
  return (g && g.get(m.seq)) || 'Sent';
}

// ------------------------------------------------------------------------------------------
// Login and connection

async function start(token) {
  let me;
  try {
    me = await getMe({ baseUrl: location.origin, token });
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    setStatus($('login-status'), `Cannot log in: ${err.message}`, 'error');
    return;
  }
  state.me = me;
  state.token = token;
  state.names.set(me.uid, me.name);
  sessionStorage.setItem(TOKEN_KEY, token);
  $('me-name').textContent = `${me.name} (#${me.uid})`;
  $('login').hidden = true;
  $('who').hidden = false;
  $('desk').hidden = false;

  // Seqs and the outbox per user: two users in two tabs of one browser share localStorage.
  const chat = new WxChat({ url: chatUrl(), token, storageKey: `wxchat-demo:${me.uid}` });
  state.chat = chat;
  chat.on('state', (s) => {
    setStatus($('conn'), { connecting: 'Connecting…', connected: 'Online', disconnected: 'Reconnecting…', closed: 'Offline' }[s] || s, s === 'connected' ? 'ok' : s === 'closed' ? 'error' : '');
    if (s === 'connected') refresh();
  });
  chat.on('message', onMessage);
  chat.on('read', (r) => {
    if (!r || r.uid === state.me.uid) return;
    state.peerRead.set(r.conv_id, Math.max(state.peerRead.get(r.conv_id) || 0, r.seq));
    if (r.conv_id === state.active) list.refreshStatus();
  });
  chat.on('typing', (t) => {
    if (!t || t.conv_id !== state.active || t.uid === state.me.uid) return;
    $('typing').textContent = `${nameOf(t.uid)} is typing…`;
    clearTimeout(state.typingTimer);
    // Typing has no "stopped" push: the hint fades by itself.
    state.typingTimer = setTimeout(() => { $('typing').textContent = ''; }, 4000);
  });
  chat.on('presence', (p) => {
    if (!p || p.uid === undefined) return;
    const f = state.friends.get(p.uid);
    if (f) f.online = p.online;
    renderSide();
    if (state.active && state.active.startsWith('p_') && peerOfConv(state.active) === p.uid) renderHead();
  });
  chat.on('profile', (p) => {
    if (p && p.uid) state.names.set(p.uid, p.name);
    renderSide();
  });
  chat.on('friend_added', () => refresh());
  chat.on('friend_removed', () => refresh());
  chat.on('group_event', () => refresh());
  chat.on('send_failed', ({ client_msg_id, error }) => list.failPending(client_msg_id, error.message));
  chat.connect().catch((err) => setStatus($('conn'), `Offline: ${err.message}`, 'error'));
}

/** Conversations, friends and groups as the server has them (after every connection). */
async function refresh() {
  const chat = state.chat;
  try {
    const [convs, friends, groups] = await Promise.all([chat.conversations(), chat.friends(), chat.groups()]);
    for (const g of groups) state.groups.set(g.group_id, g);
    state.friends = new Map(friends.map((f) => [f.uid, f]));
    for (const c of convs) {
      if (c.peer && c.peer.uid) state.names.set(c.peer.uid, c.peer.name);
      const old = state.convs.get(c.conv_id);
      // The open conversation is read as messages arrive: keep it at zero.
      state.convs.set(c.conv_id, { ...c, unread: c.conv_id === state.active ? 0 : c.unread, last: c.last || (old && old.last) });
    }
    for (const g of groups) {
      const id = `g_${g.group_id}`;
      if (!state.convs.has(id)) state.convs.set(id, { conv_id: id, chat_type: 1, unread: 0, last: null });
    }
  } catch (err) {
    setStatus($('chat-status'), `Cannot load the chats: ${err.message}`, 'error');
  }
  renderSide();
  if (!state.active && location.hash.length > 1) openConv(decodeURIComponent(location.hash.slice(1)));
  else if (state.active) renderHead();
}

// ------------------------------------------------------------------------------------------
// Incoming

function onMessage(m) {
  const c = state.convs.get(m.conv_id) || { conv_id: m.conv_id, chat_type: m.chat_type, unread: 0 };
  c.last = m.msg_type === 100 ? { ...m, msg: null } : m;
  state.convs.set(m.conv_id, c);
  if (m.conv_id === state.active) {
    list.add(m);
    if (m.from_id !== state.me.uid) {
      $('typing').textContent = '';
      if (document.visibilityState === 'visible') state.chat.read(m.conv_id, m.seq).catch(() => {});
    }
  } else if (m.from_id !== state.me.uid && m.msg_type !== 100) {
    c.unread += 1;
  }
  if (m.from_id !== 0 && !state.names.has(m.from_id)) learnNamesSoon();
  // Friends come without names (2.8): a one-to-one conversation's list entry carries the peer's.
  if (m.conv_id.startsWith('p_') && !state.names.has(peerOfConv(m.conv_id))) learnNamesSoon();
  renderSide();
}

let namesTimer = null;
/** Names of senders we do not know come with the conversation list (peer profiles). */
function learnNamesSoon() {
  if (namesTimer) return;
  namesTimer = setTimeout(async () => {
    namesTimer = null;
    try {
      // A new correspondent may be a friend made since we loaded the list (a demo login
      // befriends the earlier users without a push): fetch the friends again too.
      const [convs, friends] = await Promise.all([state.chat.conversations(), state.chat.friends()]);
      for (const c of convs) if (c.peer && c.peer.uid) state.names.set(c.peer.uid, c.peer.name);
      for (const f of friends) if (!state.friends.has(f.uid)) state.friends.set(f.uid, f);
      renderSide();
      if (state.active) renderHead();
    } catch {
      // The uid is shown meanwhile.
    }
  }, 300);
}

// ------------------------------------------------------------------------------------------
// Lists

function item({ title, sub, badge, current, onclick, testid, online }) {
  return h('li', {}, h('button', { type: 'button', class: 'item', 'aria-current': current ? 'true' : 'false', onclick, dataset: { testid } },
    h('span', { class: 'left' },
      h('span', { class: 'name' }, online !== undefined ? h('span', { class: `dot${online ? ' online' : ''}`, title: online ? 'online' : 'offline' }) : null, title),
      sub ? h('span', { class: 'sub' }, sub) : null),
    badge ? h('span', { class: 'badge', 'aria-label': `${badge} unread` }, String(badge)) : null));
}

function renderSide() {
  const convs = [...state.convs.values()].filter((c) => c.conv_id.startsWith('p_') || c.conv_id.startsWith('g_'))
    .sort((a, b) => ((b.last && b.last.time) || 0) - ((a.last && a.last.time) || 0));
  $('convs').replaceChildren(...(convs.length ? convs.map((c) => item({
    title: titleOf(c.conv_id),
    sub: c.last ? `${summary(c.last)} · ${formatTime(c.last.time)}` : 'no messages yet',
    badge: c.unread,
    current: c.conv_id === state.active,
    onclick: () => openConv(c.conv_id),
    testid: `conv-${c.conv_id}`,
    online: c.conv_id.startsWith('p_') ? !!(state.friends.get(peerOfConv(c.conv_id)) || {}).online : undefined,
  })) : [h('li', { class: 'none' }, 'No chats yet: pick a friend')]));
  const friends = [...state.friends.values()];
  $('friends').replaceChildren(...(friends.length ? friends.map((f) => item({
    title: nameOf(f.uid),
    sub: f.online ? 'online' : 'offline',
    online: !!f.online,
    current: pConv(state.me.uid, f.uid) === state.active,
    onclick: () => openConv(pConv(state.me.uid, f.uid)),
    testid: `friend-${f.uid}`,
  })) : [h('li', { class: 'none' }, 'No friends yet: log in as someone else in another browser')]));
  const checked = new Set([...$('group-members').querySelectorAll('input:checked')].map((i) => Number(i.value)));
  $('group-members').replaceChildren(h('legend', { class: 'muted' }, 'Members'), ...friends.map((f) => h('label', { class: 'check' },
    h('input', { type: 'checkbox', value: f.uid, checked: checked.has(f.uid) }), ` ${nameOf(f.uid)}`)));
}

// ------------------------------------------------------------------------------------------
// The open conversation

async function openConv(convId) {
  if (!/^(p_\d+_\d+|g_\d+)$/.test(convId)) return;
  state.active = convId;
  history.replaceState(null, '', `#${convId}`);
  const c = state.convs.get(convId);
  if (c) c.unread = 0;
  list.clear();
  $('empty').hidden = true;
  $('composer').hidden = false;
  $('typing').textContent = '';
  setStatus($('chat-status'), '');
  $('desk').classList.add('open');
  renderHead();
  renderSide();
  await loadOlder(true);
  await fetchReceipts();
}

function renderHead() {
  const id = state.active;
  if (!id) return;
  $('chat-title').textContent = titleOf(id);
  if (id.startsWith('p_')) {
    const f = state.friends.get(peerOfConv(id));
    $('chat-info').textContent = f ? (f.online ? 'online' : 'offline') : '';
  } else {
    $('chat-info').textContent = 'group chat';
  }
}

/** Where the others have read to: one read_count for our newest message (2.6). */
async function fetchReceipts() {
  const id = state.active;
  const mine = [...list.msgs.values()].filter((m) => m.from_id === state.me.uid && m.msg_type < 100);
  if (!mine.length) return;
  const last = mine[mine.length - 1];
  try {
    const r = await state.chat.readCount(id, last.seq);
    if (id.startsWith('p_')) {
      // Both cursors at or past it: the peer read everything up to it.
      if (r.read >= r.members) state.peerRead.set(id, Math.max(state.peerRead.get(id) || 0, last.seq));
    } else {
      const g = state.groupRead.get(id) || new Map();
      g.set(last.seq, `Read by ${Math.max(0, r.read - 1)}/${Math.max(0, r.members - 1)}`);
      state.groupRead.set(id, g);
    }
    if (state.active === id) list.refreshStatus();
  } catch {
    // Receipts are a nicety.
  }
}

async function loadOlder(first = false) {
  const id = state.active;
  if (!id || state.loadingOlder || (!first && !state.hasMore)) return;
  state.loadingOlder = true;
  const scroll = $('scroll');
  const before = scroll.scrollHeight - scroll.scrollTop;
  try {
    const page = await state.chat.history(id, first ? 0 : list.oldest, 30);
    if (state.active !== id) return;
    for (const m of page.messages) list.add(m);
    for (const m of page.messages) if (m.msg_type === 100 && m.msg) list.recalled(m.msg.seq);
    state.hasMore = page.has_more;
    $('more').hidden = !page.has_more;
    if (first) {
      list.scrollToEnd();
      if (list.newest) state.chat.read(id, list.newest).catch(() => {});
    } else {
      scroll.scrollTop = scroll.scrollHeight - before;
    }
  } catch (err) {
    setStatus($('chat-status'), `History: ${err.message}`, 'error');
  } finally {
    state.loadingOlder = false;
  }
}

function target(convId) {
  if (convId.startsWith('g_')) return { chat_type: 1, to_id: Number(convId.slice(2)) };
  return { chat_type: 0, to_id: peerOfConv(convId) };
}

async function send(body, label) {
  const id = state.active;
  const clientMsgId = randomId();
  list.addPending(clientMsgId, label);
  try {
    await state.chat.send({ ...target(id), ...body, client_msg_id: clientMsgId });
    if (id.startsWith('g_')) fetchReceipts();
  } catch (err) {
    list.failPending(clientMsgId, err.message);
  }
}

async function recall(m) {
  if (Date.now() - m.time > RECALL_WINDOW_MS) {
    setStatus($('chat-status'), 'Messages can be recalled for two minutes only.', 'error');
    return;
  }
  try {
    await state.chat.recall(m.conv_id, m.msg_id);
  } catch (err) {
    setStatus($('chat-status'), `Recall: ${err.message}`, 'error');
  }
}

// ------------------------------------------------------------------------------------------
// Wiring

$('demo-login').addEventListener('submit', async (e) => {
  e.preventDefault();
  try {
    const data = await demoLogin($('login-name').value.trim());
    await start(data.token);
  } catch (err) {
    setStatus($('login-status'), `Demo login failed: ${err.message}`, 'error');
  }
});

$('logout').addEventListener('click', async () => {
  const token = state.token;
  if (state.chat) state.chat.close();
  sessionStorage.removeItem(TOKEN_KEY);
  await logout({ baseUrl: location.origin, token }).catch(() => {});
  history.replaceState(null, '', location.pathname);
  location.reload();
});

$('refresh').addEventListener('click', () => refresh());

$('group-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const members = [...$('group-members').querySelectorAll('input:checked')].map((i) => Number(i.value));
  try {
    const r = await state.chat.groupCreate($('group-name').value.trim(), members, { history_for_new_members: true });
    $('group-name').value = '';
    state.groups.set(r.group.group_id, r.group);
    const id = `g_${r.group.group_id}`;
    if (!state.convs.has(id)) state.convs.set(id, { conv_id: id, chat_type: 1, unread: 0, last: null });
    openConv(id);
  } catch (err) {
    setStatus($('chat-status'), `Group: ${err.message}`, 'error');
  }
});

wireComposer($('composer'), $('text'), {
  onText: (text) => {
    if (!state.active) return false;
    send({ msg_type: 0, msg: text }, text);
  },
  onTyping: () => {
    if (!state.active) return false;
    state.chat.typing(state.active).catch(() => {});
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

$('back').addEventListener('click', () => $('desk').classList.remove('open'));

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible' && state.active && list.newest) state.chat.read(state.active, list.newest).catch(() => {});
});

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) start(saved);
