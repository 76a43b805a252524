const app = getApp();

/** A message as the page shows it: media messages' URL made absolute for <image>. */
function view(m) {
  const body = typeof m.msg === 'object' && m.msg ? m.msg : {};
  let url = body.url || '';
  if (url.startsWith('/')) url = require('../../config').httpUrl + url;
  return { ...m, url };
}

Page({
  data: { messages: [], draft: '', uid: 0, bottom: '' },

  onLoad(q) {
    this.conv = { conv_id: q.conv_id, chat_type: Number(q.chat_type), to_id: Number(q.to_id) };
    wx.setNavigationBarTitle({ title: decodeURIComponent(q.title || '聊天') });
    this.setData({ uid: app.globalData.uid });
    const chat = app.globalData.chat;
    // Each message is emitted once, in seq order per conversation, own sends included.
    this.onMessage = (m) => {
      if (m.conv_id === this.conv.conv_id) this.show([view(m)], true);
    };
    chat.on('message', this.onMessage);
    this.older();
  },

  onUnload() { app.globalData.chat.off('message', this.onMessage); },

  /** Adds messages (by seq, once each), keeps them in order, marks the newest read. */
  show(ms, scroll) {
    const bySeq = new Map(this.data.messages.map((m) => [m.seq, m]));
    ms.forEach((m) => bySeq.set(m.seq, m));
    const messages = [...bySeq.values()].sort((a, b) => a.seq - b.seq);
    const last = messages[messages.length - 1];
    this.setData({ messages, bottom: scroll && last ? `m${last.seq}` : this.data.bottom });
    if (last && last.seq) app.globalData.chat.read(this.conv.conv_id, last.seq).catch(() => {});
  },

  /** The page before the oldest shown (history, newest first). */
  older() {
    if (this.loading || this.done) return;
    this.loading = true;
    const first = this.data.messages[0];
    app.globalData.chat
      .history(this.conv.conv_id, first ? first.seq : 0, 30)
      .then((page) => {
        this.done = !page.has_more;
        this.show(page.messages.map(view), !first);
      })
      .catch(() => {})
      .then(() => { this.loading = false; });
  },

  typing(e) { this.setData({ draft: e.detail.value }); },

  send() {
    const text = this.data.draft.trim();
    if (!text) return;
    this.setData({ draft: '' });
    // Resolves after the server committed it; resent with the same client_msg_id until then.
    app.globalData.chat
      .send({ ...this.target(), msg_type: 0, msg: text })
      .catch((e) => wx.showToast({ title: e.message, icon: 'none' }));
  },

  image() {
    wx.chooseMedia({
      count: 1,
      mediaType: ['image'],
      success: (res) => {
        const file = res.tempFiles[0];
        const chat = app.globalData.chat;
        chat
          .upload(file.tempFilePath)
          .then((up) => chat.send({ ...this.target(), msg_type: 1, msg: { url: up.url, size: up.size, mime: up.mime } }))
          .catch((e) => wx.showToast({ title: e.message, icon: 'none' }));
      },
    });
  },

  preview(e) { wx.previewImage({ urls: [e.currentTarget.dataset.url] }); },

  target() { return { chat_type: this.conv.chat_type, to_id: this.conv.to_id }; },
});
