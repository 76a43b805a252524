// Login: wx.login through the SDK's wxLogin (POST /api/wx/login), then the profile the user
// picked (avatar uploaded with /api/upload, nickname) set with POST /api/me.

const { uploadFile, updateMe } = require('wxchat-sdk');
const config = require('../../config');

const app = getApp();

Page({
  data: { avatar: '', nickName: '', busy: false, error: '' },

  onLoad() {
    // A cached token: straight to the conversations (the SDK logs in again if it expired).
    if (app.hasToken()) wx.reLaunch({ url: '/pages/conversations/conversations' });
  },

  onChooseAvatar(e) {
    this.setData({ avatar: e.detail.avatarUrl });
  },

  onNickname(e) {
    this.setData({ nickName: e.detail.value });
  },

  async onLogin() {
    this.setData({ busy: true, error: '' });
    try {
      const token = await app.login();
      const profile = {};
      if (this.data.nickName) profile.name = this.data.nickName;
      if (this.data.avatar) {
        // The picked avatar is a temporary local file: upload it, keep the server's URL.
        const up = await uploadFile({ wx, baseUrl: config.baseUrl, token, file: this.data.avatar });
        profile.head_img = up.url;
      }
      if (profile.name || profile.head_img) {
        await updateMe({ wx, baseUrl: config.baseUrl, token, ...profile });
      }
      app.chat().connect().catch(() => {});
      wx.reLaunch({ url: '/pages/conversations/conversations' });
    } catch (err) {
      // 40029 / 40163: the code was bad or used; pressing again gets a new one.
      this.setData({ error: `登录失败：${err.message}` });
    } finally {
      this.setData({ busy: false });
    }
  },
});
