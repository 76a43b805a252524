// A friend (p_a_b) or group (g_n) conversation.

const thread = require('../../utils/thread');

Page({
  behaviors: [thread],
  data: { typing: false },

  onLoad(options) {
    const convId = options.conv_id;
    if (options.title) wx.setNavigationBarTitle({ title: decodeURIComponent(options.title) });
    const chat = getApp().chat();
    let target;
    if (convId.startsWith('g_')) {
      target = { chat_type: 1, to_id: Number(convId.slice(2)) };
    } else {
      const [, a, b] = convId.split('_').map(Number);
      target = { chat_type: 0, to_id: a === chat.uid ? b : a };
    }
    this.offTyping = chat.on('typing', (t) => {
      if (t.conv_id !== convId || t.uid === chat.uid) return;
      this.setData({ typing: true });
      clearTimeout(this.typingTimer);
      // Typing pushes have no "stopped": the hint fades by itself.
      this.typingTimer = setTimeout(() => this.setData({ typing: false }), 4000);
    });
    this.startThread(convId, target);
  },

  onUnload() {
    this.stopThread();
    if (this.offTyping) this.offTyping();
    clearTimeout(this.typingTimer);
  },
});
