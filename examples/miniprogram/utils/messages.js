// Messages (protocol-spec 2.4) as the pages' templates want them.

const config = require('../config');

/** A /files/... path of the server as a full URL (mini-programs need absolute URLs). */
function absolute(url) {
  if (typeof url !== 'string') return '';
  return url.startsWith('/') ? config.baseUrl + url : url;
}

function media(msg) {
  if (typeof msg === 'string') return { url: msg };
  return msg && typeof msg === 'object' ? msg : {};
}

function summary(m) {
  if (!m) return '';
  if (m.msg === null || m.msg_type === 100) return '[消息已撤回]';
  switch (m.msg_type) {
    case 0: return String(m.msg);
    case 1: return '[图片]';
    case 2: return '[语音]';
    case 3: return '[视频]';
    case 5: return `[文件] ${media(m.msg).name || ''}`;
    case 6: return `[链接] ${media(m.msg).title || ''}`;
    case 7: return `[小程序] ${media(m.msg).title || ''}`;
    default: return '[消息]';
  }
}

function pad(n) {
  return n < 10 ? `0${n}` : String(n);
}

function time(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** The view of one message: {seq, kind: text|image|file|other, text, url, side}. */
function view(m, me) {
  const o = media(m.msg);
  let kind = 'other';
  if (m.msg === null && m.msg_type !== 100) kind = 'recalled';
  else if (m.msg_type === 0) kind = 'text';
  else if (m.msg_type === 1) kind = 'image';
  else if (m.msg_type === 5) kind = 'file';
  return {
    id: `m${m.seq}`,
    seq: m.seq,
    kind,
    text: kind === 'text' ? String(m.msg) : summary(m),
    url: absolute(o.url),
    name: o.name || '',
    side: m.from_id === 0 ? 'system' : m.from_id === me ? 'mine' : 'theirs',
    time: time(m.time),
  };
}

/**
 * Adds messages to a page's list, one entry per seq, in seq order (pushes, our own acks and
 * history pages may bring the same message twice); recall events (100) mark their original.
 */
function merge(list, msgs, me) {
  const bySeq = new Map(list.map((v) => [v.seq, v]));
  for (const m of msgs) {
    if (m.msg_type === 100) {
      const target = m.msg && bySeq.get(m.msg.seq);
      if (target) bySeq.set(target.seq, { ...target, kind: 'recalled', text: '[消息已撤回]' });
      continue;
    }
    bySeq.set(m.seq, view(m, me));
  }
  return [...bySeq.values()].sort((a, b) => a.seq - b.seq);
}

module.exports = { absolute, summary, view, merge };
