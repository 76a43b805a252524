// A fake WeChat API server for the wxchat server to call (api_base in [[wechat.apps]]), like
// tests/common/fake_wechat.rs: GET /sns/jscode2session answers by js_code, `ok-<openid>` ->
// {"openid","session_key"}, anything else -> errcode 40029 (invalid code).
import http from 'node:http';

export const APPID = 'wx0123456789abcdef';
export const SECRET = 'fake-app-secret-0042';

export async function startFakeWechat() {
  const calls = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://fake');
    calls.push(url.pathname);
    res.setHeader('Content-Type', 'application/json');
    if (url.pathname === '/sns/jscode2session') {
      const q = url.searchParams;
      if (q.get('appid') !== APPID || q.get('secret') !== SECRET) {
        res.end(JSON.stringify({ errcode: 40013, errmsg: 'invalid appid' }));
        return;
      }
      const code = q.get('js_code') || '';
      if (code.startsWith('ok-')) {
        res.end(JSON.stringify({ openid: code.slice(3), session_key: 'c2Vzc2lvbi1rZXktMTIzNA==' }));
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
    base: `http://127.0.0.1:${port}`,
    appToml(name) {
      return `[[wechat.apps]]\nname = "${name}"\nkind = "miniprogram"\nappid = "${APPID}"\nsecret = "${SECRET}"\napi_base = "http://127.0.0.1:${port}"\n`;
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}
