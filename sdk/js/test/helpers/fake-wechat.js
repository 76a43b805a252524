// A fake WeChat API server for the wxchat server to call (api_base in [[wechat.apps]]), like
// tests/common/fake_wechat.rs: GET /sns/jscode2session answers by js_code, `ok-<openid>` ->
// {"openid","session_key"}, anything else -> errcode 40029 (invalid code). For official-account
// QR login: cgi-bin/token and stable_token issue TOKEN-<n>, qrcode/create records the scene
// (the server's single-use ticket) and answers a WeChat ticket, user/info knows every openid.
import http from 'node:http';

export const APPID = 'wx0123456789abcdef';
export const SECRET = 'fake-app-secret-0042';
/** 16 bytes, base64: the AES-128 key of /api/wx/decrypt (WeChat's session_key). */
export const SESSION_KEY = 'AAECAwQFBgcICQoLDA0ODw==';

export async function startFakeWechat() {
  const calls = [];
  const scenes = [];
  let tokens = 0;
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://fake');
    calls.push(url.pathname);
    let body = '';
    for await (const chunk of req) body += chunk;
    res.setHeader('Content-Type', 'application/json');
    if (url.pathname === '/cgi-bin/token' || url.pathname === '/cgi-bin/stable_token') {
      const creds = url.pathname === '/cgi-bin/token' ? Object.fromEntries(url.searchParams) : JSON.parse(body || '{}');
      if (creds.appid !== APPID || creds.secret !== SECRET) {
        res.end(JSON.stringify({ errcode: 40125, errmsg: 'invalid appsecret' }));
        return;
      }
      tokens++;
      res.end(JSON.stringify({ access_token: `TOKEN-${tokens}`, expires_in: 7200 }));
      return;
    }
    if (url.pathname === '/cgi-bin/qrcode/create') {
      const v = JSON.parse(body || '{}');
      const scene = v.action_info && v.action_info.scene && v.action_info.scene.scene_str;
      if (v.action_name !== 'QR_STR_SCENE' || !scene) {
        res.end(JSON.stringify({ errcode: 40097, errmsg: 'invalid args' }));
        return;
      }
      scenes.push(scene);
      res.end(JSON.stringify({ ticket: `gQ+${scene}/=`, expire_seconds: v.expire_seconds || 60, url: `http://weixin.qq.com/q/${scene}` }));
      return;
    }
    if (url.pathname === '/cgi-bin/user/info') {
      res.end(JSON.stringify({ subscribe: 1, openid: url.searchParams.get('openid') }));
      return;
    }
    if (url.pathname === '/sns/jscode2session') {
      const q = url.searchParams;
      if (q.get('appid') !== APPID || q.get('secret') !== SECRET) {
        res.end(JSON.stringify({ errcode: 40013, errmsg: 'invalid appid' }));
        return;
      }
      const code = q.get('js_code') || '';
      if (code.startsWith('ok-')) {
        res.end(JSON.stringify({ openid: code.slice(3), session_key: SESSION_KEY }));
      } else {
        res.end(JSON.stringify({ errcode: 40029, errmsg: 'invalid code' }));
      }
      return;
    }
    res.statusCode = 404;
    res.end(JSON.stringify({ errcode: 404, errmsg: 'not faked' }));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    calls,
    scenes,
    base: `http://127.0.0.1:${port}`,
    appToml(name) {
      return `[[wechat.apps]]\nname = "${name}"\nkind = "miniprogram"\nappid = "${APPID}"\nsecret = "${SECRET}"\napi_base = "http://127.0.0.1:${port}"\n`;
    },
    officialToml(name, token) {
      return `[[wechat.apps]]\nname = "${name}"\nkind = "official"\nappid = "${APPID}"\nsecret = "${SECRET}"\napi_base = "http://127.0.0.1:${port}"\ntoken = "${token}"\n`;
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}
