// The visitor side of customer service, inside the iframe that /widget.js puts on a website.
// Anonymous visitors get a temporary identity (POST /api/service/visitor, protocol-spec 3.6),
// kept in localStorage so a returning visitor finds their conversation; the host page may log
// them in (postMessage {type: 'wxchat:login', token}), which moves the conversation to that
// user (/api/service/visitor/convert).

import { WxChat, createVisitor, convertVisitor } from '/sdk/index.js';
import { chatUrl, MessageList, uploadAsMessage, randomId, wireComposer } from '/common/ui.js';

const VISITOR_KEY = 'wxchat-visitor';
const USER_KEY = 'wxchat-widget-user';
const $ = (id) => document.getElementById(id);
const framed = window.parent !== window;

const state = {
  chat: null,
  identity: null, // {uid, token, visitor: bool}
  session: null, // null | {agent, position}
  rateFor: null, // session_id waiting for a rating
  visible: !framed,
  unread: 0,
  hasMore: false,
  loadingOlder: false,
  typingTimer: null,
};

const list = new MessageList($('messages'), {
  me: () => (state.identity ? state.identity.uid : -1),
  nameOf: () => 'Agent',
});

/** The embedding page's origin, learnt from the loader's 'wxchat:init'. */
let hostOrigin = null;

function toHost(msg) {
  // Before the loader answered we only say 'ready' (to whoever frames us); afterwards, only to
  // the origin that answered, so nothing reaches a page the parent navigated to since.
  if (framed) window.parent.postMessage(msg, hostOrigin || '*');
}

/**
 * Web storage when this frame may use it. Browsers that block third-party storage (Safari,
 * Chromium with third-party cookies off) throw on access in a cross-site iframe: then the
 * visitor's identity is kept by the loader in the host page's own storage (see hostVisitor).
 */
function usable(get) {
  try {
    const s = get();
    s.getItem('wxchat-probe');
    return s;
  } catch {
    return null;
  }
}
const local = usable(() => localStorage);
const session = usable(() => sessionStorage);
/** The visitor the loader kept for us, when our own storage is blocked. */
let hostVisitor = null;

function readJson(storage, key) {
  if (!storage) return null;
  try {
    return JSON.parse(storage.getItem(key) || 'null');
  } catch {
    return null;
  }
}

function saveVisitor(v) {
  if (local) {
    if (v) local.setItem(VISITOR_KEY, JSON.stringify(v));
    else local.removeItem(VISITOR_KEY);
  } else if (hostOrigin) {
    hostVisitor = v;
    toHost({ type: 'wxchat:visitor', visitor: v });
  } else {
    hostVisitor = v; // no loader to keep it: this visit only
  }
}

function setState(text) {
  $('state').textContent = text;
}

function describeSession() {
  const s = state.session;
  $('end').hidden = !s;
  if (!s) return;
  if (s.agent) setState('An agent is with you.');
  else if (s.position) setState(`You are number ${s.position} in the queue. An agent will be with you shortly.`);
  else setState('Waiting for an agent…');
}

function systemNote(text) {
  const li = document.createElement('li');
  li.className = 'msg system note';
  const b = document.createElement('div');
  b.className = 'bubble';
  b.textContent = text;
  li.append(b);
  $('messages').append(li);
  list.scrollToEnd();
}

// ------------------------------------------------------------------------------------------
// Identity and connection

/** The stored identity: a logged-in user handed over by the host, else a visitor. */
function storedIdentity() {
  const user = readJson(session, USER_KEY);
  if (user && user.token) return { ...user, visitor: false };
  const v = local ? readJson(local, VISITOR_KEY) : hostVisitor;
  if (v && v.token && (!v.expires_at || v.expires_at > Date.now())) return { ...v, visitor: true };
  return null;
}

async function newVisitor() {
  const v = await createVisitor({ baseUrl: location.origin });
  const stored = { uid: v.uid, token: v.token, expires_at: Date.now() + v.expires_in * 1000 };
  saveVisitor(stored);
  return { ...stored, visitor: true };
}

function connect(identity) {
  if (state.chat) state.chat.close();
  state.identity = identity;
  list.clear();
  const chat = new WxChat({ url: chatUrl(), token: identity.token, storageKey: 'wxchat-widget' });
  state.chat = chat;
  chat.on('state', (s, info) => {
    if (chat !== state.chat) return;
    if (s === 'connected') onConnected();
    else if (s === 'disconnected') setState('Reconnecting…');
    else if (s === 'closed' && info && info.code === 4001) {
      // The stored identity expired or was purged: start afresh at the next message.
      forget(identity);
      state.chat = null;
      state.identity = null;
      setState('Ask us anything: we usually answer within minutes.');
    } else if (s === 'closed' && info && info.code === 4004) {
      setState('You logged in: reconnecting…');
    }
  });
  chat.on('message', (m) => {
    if (chat !== state.chat) return;
    list.add(m);
    if (m.from_id !== identity.uid) {
      $('typing').textContent = '';
      if (state.visible) chat.read(m.conv_id, m.seq).catch(() => {});
      else {
        state.unread += 1;
        toHost({ type: 'wxchat:unread', count: state.unread });
      }
    }
  });
  chat.on('service', (ev) => chat === state.chat && onService(ev));
  chat.on('typing', (t) => {
    if (chat !== state.chat || !t || t.uid === identity.uid) return;
    $('typing').textContent = 'The agent is typing…';
    clearTimeout(state.typingTimer);
    // Typing pushes have no "stopped": the hint fades by itself.
    state.typingTimer = setTimeout(() => { $('typing').textContent = ''; }, 4000);
  });
  chat.on('send_failed', ({ client_msg_id, error }) => list.failPending(client_msg_id, error.message));
  chat.connect().catch(() => {});
}

function forget(identity) {
  if (identity.visitor) saveVisitor(null);
  else if (session) session.removeItem(USER_KEY);
}

async function onConnected() {
  const chat = state.chat;
  try {
    const info = await chat.serviceInfo();
    state.session = info.session;
    if (state.session) describeSession();
    else setState('Ask us anything: we usually answer within minutes.');
    $('end').hidden = !state.session;
  } catch {
    // service_info is a nicety; the pushes keep us informed anyway.
  }
  await loadOlder(true);
}

async function ensureConnected() {
  if (state.chat) return state.chat;
  setState('Connecting…');
  connect(await newVisitor());
  return state.chat;
}

// ------------------------------------------------------------------------------------------
// Customer service pushes

function onService(ev) {
  if (!ev) return;
  switch (ev.event) {
    case 'queued':
      state.session = { agent: null, position: ev.position };
      describeSession();
      break;
    case 'assigned':
      state.session = { agent: ev.agent, position: null };
      systemNote('An agent joined the chat.');
      describeSession();
      break;
    case 'closed':
      state.session = null;
      $('end').hidden = true;
      systemNote(ev.by === 'agent' ? 'The agent ended the chat.' : 'You ended the chat.');
      setState('The chat has ended. Write again any time.');
      if (ev.rate && ev.session_id) {
        state.rateFor = ev.session_id;
        $('rate').hidden = false;
        $('rate').reset();
        list.scrollToEnd();
      }
      break;
    default:
      break;
  }
}

// ------------------------------------------------------------------------------------------
// History and sending

async function loadOlder(first = false) {
  const chat = state.chat;
  if (!chat || state.loadingOlder || (!first && !state.hasMore)) return;
  state.loadingOlder = true;
  const scroll = $('scroll');
  const before = scroll.scrollHeight - scroll.scrollTop;
  try {
    const conv = `s_${state.identity.uid}`;
    const page = await chat.history(conv, first ? 0 : list.oldest, 30);
    for (const m of page.messages) list.add(m);
    for (const m of page.messages) if (m.msg_type === 100 && m.msg) list.recalled(m.msg.seq);
    state.hasMore = page.has_more;
    if (first) list.scrollToEnd();
    else scroll.scrollTop = scroll.scrollHeight - before;
    if (first && list.newest && state.visible) chat.read(conv, list.newest).catch(() => {});
  } catch {
    // An empty or failed page leaves what is shown; scrolling up tries again.
  } finally {
    state.loadingOlder = false;
  }
}

async function send(body, label) {
  const clientMsgId = randomId();
  list.addPending(clientMsgId, label);
  try {
    const chat = await ensureConnected();
    if (!state.session) {
      state.session = { agent: null, position: null };
      describeSession();
    }
    await chat.send({ chat_type: 2, to_id: 0, ...body, client_msg_id: clientMsgId });
  } catch (err) {
    list.failPending(clientMsgId, err.message);
  }
}

// ------------------------------------------------------------------------------------------
// The host page

async function login(token) {
  const id = state.identity;
  if (id && !id.visitor && id.token === token) return;
  try {
    if (id && id.visitor) {
      await convertVisitor({ baseUrl: location.origin, token, visitor_token: id.token });
      saveVisitor(null);
    }
    const me = await (await fetch('/api/me', { headers: { Authorization: `Bearer ${token}` } })).json();
    if (me.code !== 200) throw new Error(me.msg || me.errmsg || 'bad token');
    const user = { uid: me.data.uid, token };
    if (session) session.setItem(USER_KEY, JSON.stringify(user));
    connect({ ...user, visitor: false });
    toHost({ type: 'wxchat:converted', uid: user.uid });
  } catch (err) {
    systemNote(`Could not log you in here: ${err.message}`);
  }
}

window.addEventListener('message', (e) => {
  // Only the page that embeds us may drive us.
  if (e.source !== window.parent || !e.data || typeof e.data.type !== 'string') return;
  const d = e.data;
  if (d.type === 'wxchat:open') {
    state.visible = true;
    state.unread = 0;
    toHost({ type: 'wxchat:unread', count: 0 });
    if (state.chat && list.newest) state.chat.read(`s_${state.identity.uid}`, list.newest).catch(() => {});
    $('text').focus();
  } else if (d.type === 'wxchat:hidden') {
    state.visible = false;
  } else if (d.type === 'wxchat:init') {
    // The loader's answer to 'ready': what it kept for us in the host page's storage.
    hostOrigin = e.origin;
    if (!local && d.visitor && d.visitor.token) hostVisitor = d.visitor;
    begin();
  } else if (d.type === 'wxchat:login' && typeof d.token === 'string') {
    login(d.token);
  } else if (d.type === 'wxchat:logout') {
    if (session) session.removeItem(USER_KEY);
    if (state.chat) state.chat.close();
    state.chat = null;
    state.identity = null;
    list.clear();
    setState('Ask us anything: we usually answer within minutes.');
  }
});

wireComposer($('composer'), $('text'), {
  onText: (text) => {
    $('rate').hidden = true;
    send({ msg_type: 0, msg: text }, text);
  },
  // Typing is only for a customer with an agent.
  onTyping: () => {
    if (!(state.chat && state.session && state.session.agent)) return false;
    state.chat.typing(`s_${state.identity.uid}`).catch(() => {});
  },
});

$('file').addEventListener('change', async () => {
  const file = $('file').files[0];
  $('file').value = '';
  if (!file) return;
  try {
    const chat = await ensureConnected();
    setState(`Uploading ${file.name}…`);
    const body = await uploadAsMessage(chat, file);
    describeSession();
    await send(body, `[${file.name}]`);
  } catch (err) {
    systemNote(`Upload failed: ${err.message}`);
  }
});

$('end').addEventListener('click', async () => {
  try {
    await state.chat.serviceClose();
  } catch (err) {
    systemNote(`Could not end the chat: ${err.message}`);
  }
});

$('rate').addEventListener('submit', async (e) => {
  e.preventDefault();
  const picked = $('rate').querySelector('input[name="rating"]:checked');
  if (!picked) {
    systemNote('Pick one to five stars first.');
    return;
  }
  const rating = Number(picked.value);
  const comment = $('comment').value.trim();
  try {
    await state.chat.serviceRate(state.rateFor, rating, comment || undefined);
    $('rate').hidden = true;
    state.rateFor = null;
    systemNote(`Thank you for your rating (${rating}/5).`);
  } catch (err) {
    systemNote(`Rating failed: ${err.message}`);
  }
});

$('minimize').addEventListener('click', () => toHost({ type: 'wxchat:minimize' }));
document.addEventListener('keydown', (e) => {
  // Escape closes the box, as it would a dialog (the loader gives the focus back to its button).
  if (e.key === 'Escape' && framed) toHost({ type: 'wxchat:minimize' });
});
$('minimize').hidden = !framed;

$('scroll').addEventListener('scroll', () => {
  if ($('scroll').scrollTop < 40) loadOlder();
});

let begun = false;
/** Connects a returning visitor (or user) once we know who they are. */
function begin() {
  if (begun) return;
  begun = true;
  const known = storedIdentity();
  if (known) connect(known);
}

toHost({ type: 'wxchat:ready' });
// Our own storage answers at once; otherwise wait for the loader's 'wxchat:init' (a page that
// frames /widget/ without the loader never sends one: go on without a stored identity).
if (local || !framed) begin();
else setTimeout(begin, 1500);
