// The app's one chat connection. WeChat allows five sockets per app; the SDK keeps one, closes
// it when the app is hidden and reconnects (catching up) when it is shown.
const { WxChat, wxLogin } = require('wxchat-sdk');
const config = require('./config');

const TOKEN_KEY = 'wxchat_token';

App({
  globalData: { chat: null, uid: 0 },

  onLaunch() {
    const chat = new WxChat({
      url: config.wsUrl,
      wx,
      // A cached token skips a login per launch; getToken is asked when there is none and when
      // it expired (a 401 or close 4001).
      token: wx.getStorageSync(TOKEN_KEY) || undefined,
      getToken: () => this.login(),
    });
    chat.on('state', (state) => {
      if (state === 'connected') this.globalData.uid = chat.uid;
    });
    this.globalData.chat = chat;
  },

  /** wx.login -> POST /api/wx/login (with the profile the user shared, if any) -> a token. */
  async login() {
    const userInfo = wx.getStorageSync('userInfo') || undefined;
    const r = await wxLogin({ wx, baseUrl: config.httpUrl, app: config.app, userInfo });
    wx.setStorageSync(TOKEN_KEY, r.token);
    this.globalData.uid = r.uid;
    return r.token;
  },
});
