// One WxChat for the whole app (WeChat allows five sockets per app; the SDK keeps one), created
// here and shared by the pages through getApp().chat(). The token is cached in storage so a
// launch needs no login; when it expires the SDK asks getToken, which logs in again.

const { WxChat, wxLogin } = require('wxchat-sdk');
const config = require('./config');

const TOKEN_KEY = 'wxchat-token';

App({
  _chat: null,

  /** The app's WxChat (created on first use). */
  chat() {
    if (!this._chat) {
      this._chat = new WxChat({
        url: config.wsUrl,
        wx,
        token: wx.getStorageSync(TOKEN_KEY) || undefined,
        // No token yet, or it expired (close 4001): wx.login again.
        getToken: () => this.login(),
      });
    }
    return this._chat;
  },

  hasToken() {
    return !!wx.getStorageSync(TOKEN_KEY);
  },

  /** wx.login + POST /api/wx/login (protocol-spec 3.5); resolves with the token. */
  async login(userInfo) {
    const r = await wxLogin({ wx, baseUrl: config.baseUrl, app: config.app, userInfo });
    wx.setStorageSync(TOKEN_KEY, r.token);
    if (this._chat) this._chat.setToken(r.token);
    return r.token;
  },

  token() {
    return wx.getStorageSync(TOKEN_KEY) || null;
  },

  logout() {
    wx.removeStorageSync(TOKEN_KEY);
    if (this._chat) this._chat.close();
    this._chat = null;
  },
});
