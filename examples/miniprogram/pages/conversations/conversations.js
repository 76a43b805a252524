const app = getApp();

const STATE_TEXT = { connecting: '连接中…', disconnected: '网络已断开，正在重连…', closed: '未连接' };

/** A line of the list: who or what, the last message, the unread count. */
function line(c, uid) {
  const title = c.peer ? c.peer.name || `用户 ${c.peer.uid}`
    : c.chat_type === 1 ? `群聊 ${c.conv_id.slice(2)}`
    : c.chat_type === 2 ? '在线客服' : c.conv_id;
  return { ...c, title, preview: preview(c.last), to_id: toId(c, uid) };
}

function preview(m) {
  if (!m) return '';
  if (m.msg_type === 0) return m.msg;
  return { 1: '[图片]', 2: '[语音]', 3: '[视频]', 5: '[文件]', 6: '[链接]', 7: '[小程序]', 100: '[撤回了一条消息]' }[m.msg_type] || '[消息]';
}

/** Where a send in this conversation goes (protocol-spec 2.4). */
function toId(c, uid) {
  if (c.chat_type === 0) return c.peer ? c.peer.uid : Number(c.conv_id.split('_').find((x, i) => i > 0 && Number(x) !== uid));
  if (c.chat_type === 1) return Number(c.conv_id.slice(2));
  return 0;
}

Page({
  data: { list: [], state: 'connecting', stateText: '' },

  onLoad() {
    const chat = app.globalData.chat;
    this.onState = (state) => this.setData({ state, stateText: STATE_TEXT[state] || '' });
    this.onMessage = () => this.refresh();
    chat.on('state', this.onState);
    chat.on('message', this.onMessage);
    chat.connect().then(() => this.refresh()).catch(() => {});
  },

  onUnload() {
    const chat = app.globalData.chat;
    chat.off('state', this.onState);
    chat.off('message', this.onMessage);
  },

  onShow() { this.refresh(); },

  onPullDownRefresh() { this.refresh().then(() => wx.stopPullDownRefresh()); },

  refresh() {
    const chat = app.globalData.chat;
    return chat.conversations()
      .then((list) => this.setData({ list: list.map((c) => line(c, app.globalData.uid)) }))
      .catch(() => {});
  },

  open(e) {
    const c = e.currentTarget.dataset.conv;
    wx.navigateTo({
      url: `/pages/chat/chat?conv_id=${c.conv_id}&chat_type=${c.chat_type}&to_id=${c.to_id}&title=${encodeURIComponent(c.title)}`,
    });
  },

  // A customer's own service conversation is s_<uid>; they write to to_id 0 (protocol-spec 2.10).
  openService() {
    const uid = app.globalData.uid;
    wx.navigateTo({ url: `/pages/chat/chat?conv_id=s_${uid}&chat_type=2&to_id=0&title=${encodeURIComponent('在线客服')}` });
  },
});
