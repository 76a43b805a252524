// The conversation list (protocol-spec 2.5): names and avatars from each entry's peer, unread
// counts, kept current by the SDK's message events.

const { summary, absolute } = require('../../utils/messages');

const app = getApp();
const STATE_TEXT = { connecting: '连接中…', disconnected: '网络断开，正在重连…', closed: '未连接' };

function pad(n) {
  return n < 10 ? `0${n}` : String(n);
}

Page({
  data: { convs: [], state: 'connecting', stateText: STATE_TEXT.connecting },

  onShow() {
    const chat = app.chat();
    this.offs = [
      chat.on('state', (s) => this.setData({ state: s, stateText: STATE_TEXT[s] || '' })),
      // A message anywhere changes the order, the summary and the unread counts.
      chat.on('message', () => this.reloadSoon()),
    ];
    this.setData({ state: chat.state, stateText: STATE_TEXT[chat.state] || '' });
    chat.connect().then(() => this.reload()).catch(() => wx.reLaunch({ url: '/pages/login/login' }));
  },

  onHide() {
    this.unlisten();
  },

  onUnload() {
    this.unlisten();
  },

  unlisten() {
    (this.offs || []).forEach((off) => off());
    this.offs = [];
    clearTimeout(this.timer);
  },

  onPullDownRefresh() {
    this.reload().then(() => wx.stopPullDownRefresh());
  },

  reloadSoon() {
    clearTimeout(this.timer);
    // One list request for a burst of messages.
    this.timer = setTimeout(() => this.reload(), 300);
  },

  async reload() {
    const chat = app.chat();
    try {
      const list = await chat.conversations();
      const convs = list
        .filter((c) => c.conv_id.startsWith('p_') || c.conv_id.startsWith('g_'))
        .map((c) => {
          const title = c.peer ? c.peer.name || `用户${c.peer.uid}` : `群聊 ${c.conv_id.slice(2)}`;
          const d = c.last ? new Date(c.last.time) : null;
          return {
            conv_id: c.conv_id,
            title,
            initial: title.slice(0, 1),
            avatar: c.peer && c.peer.head_img ? absolute(c.peer.head_img) : '',
            summary: summary(c.last),
            unread: c.unread,
            time: d ? `${pad(d.getHours())}:${pad(d.getMinutes())}` : '',
          };
        });
      this.setData({ convs });
    } catch (err) {
      wx.showToast({ title: '加载失败', icon: 'none' });
    }
  },

  open(e) {
    const conv = e.currentTarget.dataset.conv;
    const item = this.data.convs.find((c) => c.conv_id === conv);
    wx.navigateTo({ url: `/pages/chat/chat?conv_id=${conv}&title=${encodeURIComponent(item ? item.title : '')}` });
  },

  openService() {
    wx.navigateTo({ url: '/pages/service/service' });
  },

  logout() {
    app.logout();
    wx.reLaunch({ url: '/pages/login/login' });
  },
});
