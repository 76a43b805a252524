// Customer service (protocol-spec 2.10) as a logged-in user: the conversation s_<uid>, queue
// position and "agent joined" from the service pushes, a rating when the agent closes.

const thread = require('../../utils/thread');

Page({
  behaviors: [thread],
  data: { status: '有问题请直接留言，客服会尽快回复', open: false, rateFor: null, rating: 0 },

  async onLoad() {
    const chat = getApp().chat();
    this.offService = chat.on('service', (ev) => this.onService(ev));
    try {
      await chat.connect();
    } catch {
      wx.reLaunch({ url: '/pages/login/login' });
      return;
    }
    this.startThread(`s_${chat.uid}`, { chat_type: 2, to_id: 0 });
    const info = await chat.serviceInfo().catch(() => null);
    const s = info && info.session;
    if (s) this.setData({ open: true, status: s.agent ? '客服正在为您服务' : `排队中，前面还有 ${Math.max(0, (s.position || 1) - 1)} 人` });
  },

  onUnload() {
    this.stopThread();
    if (this.offService) this.offService();
  },

  onService(ev) {
    if (ev.event === 'queued') this.setData({ open: true, status: `排队中，您是第 ${ev.position} 位` });
    else if (ev.event === 'assigned') this.setData({ open: true, status: '客服已接入，正在为您服务' });
    else if (ev.event === 'closed') {
      this.setData({ open: false, status: '会话已结束', rateFor: ev.rate ? ev.session_id : null, rating: 0 });
    }
  },

  async endChat() {
    try {
      await this.chat.serviceClose();
    } catch (err) {
      wx.showToast({ title: err.message, icon: 'none' });
    }
  },

  pick(e) {
    this.setData({ rating: Number(e.currentTarget.dataset.n) });
  },

  async rate() {
    try {
      await this.chat.serviceRate(this.data.rateFor, this.data.rating);
      this.setData({ rateFor: null });
      wx.showToast({ title: '感谢您的评价' });
    } catch (err) {
      wx.showToast({ title: err.message, icon: 'none' });
    }
  },
});
