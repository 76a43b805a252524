const app = getApp();

Page({
  data: { busy: false, error: '' },

  onShow() {
    // Logged in before: straight to the list.
    if (wx.getStorageSync('wxchat_token')) this.enter();
  },

  // getUserProfile needs the user's tap; the nickname and avatar then name the user on the
  // server (protocol-spec 3.5). Refusing it still logs in, as an unnamed user.
  login() {
    this.setData({ busy: true, error: '' });
    wx.getUserProfile({
      desc: '用于显示你的昵称和头像',
      success: (res) => wx.setStorageSync('userInfo', res.userInfo),
      complete: () => {
        app
          .login()
          .then(() => this.enter())
          .catch((e) => this.setData({ busy: false, error: `登录失败：${e.message}` }));
      },
    });
  },

  enter() {
    app.globalData.chat.connect().catch(() => {});
    wx.reLaunch({ url: '/pages/conversations/conversations' });
  },
});
