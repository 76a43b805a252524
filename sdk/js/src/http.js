// The HTTP side of wxchat (protocol-spec 3.x) for the SDK: WeChat mini-program login, anonymous
// visitors, the session endpoints and uploads. Each helper works with `fetch` (browsers,
// Node 18+) or, given `wx` / `uni`, with their request / uploadFile APIs, since mini-programs
// have no fetch.

import { WxChatError } from './errors.js';

function trimBase(baseUrl) {
  return String(baseUrl || '').replace(/\/+$/, '');
}

/** The body's `msg` / `errmsg`, or the status when the body is not JSON. */
function failure(status, body) {
  const msg = (body && (body.msg || body.errmsg)) || `HTTP ${status}`;
  const extra = { status };
  if (body && body.errcode !== undefined) extra.errcode = body.errcode;
  return new WxChatError(status, msg, extra);
}

function parseBody(data) {
  if (typeof data !== 'string') return data;
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}

/**
 * One JSON request; resolves with the reply's `data`, rejects with a WxChatError carrying the
 * HTTP status (and WeChat's errcode when the server passed one on).
 */
export async function httpJson({ method = 'POST', url, body, token, wx, fetch: fetchFn }) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (wx && typeof wx.request === 'function') {
    const res = await new Promise((resolve, reject) => {
      wx.request({
        url,
        method,
        header: headers,
        data: body === undefined ? undefined : JSON.stringify(body),
        dataType: 'text',
        success: resolve,
        fail: (err) => reject(new WxChatError('network', (err && err.errMsg) || 'request failed')),
      });
    });
    const parsed = parseBody(res.data);
    if (res.statusCode !== 200 || !parsed || parsed.code !== 200) throw failure(res.statusCode, parsed);
    return parsed.data;
  }
  const f = fetchFn || globalThis.fetch;
  if (typeof f !== 'function') throw new TypeError('no fetch: pass fetch or wx');
  let res;
  try {
    res = await f(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
    });
  } catch (err) {
    throw new WxChatError('network', `request to ${url} failed: ${err && err.message}`, { cause: err });
  }
  const parsed = parseBody(await res.text());
  if (res.status !== 200 || !parsed || parsed.code !== 200) throw failure(res.status, parsed);
  return parsed.data;
}

/**
 * Mini-program login: wx.login for a code, then POST /api/wx/login (protocol-spec 3.5).
 * Resolves with {uid, token, expires_in, is_new}. A 400 with errcode 40029/40163 means the code
 * was bad or used: call it again.
 */
export async function wxLogin({ wx, baseUrl, app, userInfo }) {
  if (!wx || typeof wx.login !== 'function') throw new TypeError('wxLogin needs the wx (or uni) object');
  const code = await new Promise((resolve, reject) => {
    wx.login({
      success: (r) => (r && r.code ? resolve(r.code) : reject(new WxChatError('wx_login', 'wx.login gave no code'))),
      fail: (err) => reject(new WxChatError('wx_login', (err && err.errMsg) || 'wx.login failed')),
    });
  });
  const body = { code };
  if (app) body.app = app;
  if (userInfo) body.userInfo = userInfo;
  return httpJson({ url: `${trimBase(baseUrl)}/api/wx/login`, body, wx });
}

/**
 * Decrypts what wx.getPhoneNumber-style APIs return ({encryptedData, iv}) with the session key
 * of the user's latest login to the app (3.5); resolves with the decrypted JSON. A 400 most
 * often means the session key changed since: wxLogin again, then retry.
 */
export function wxDecrypt({ baseUrl, token, encryptedData, iv, app, wx, fetch }) {
  const body = { encryptedData, iv };
  if (app) body.app = app;
  return httpJson({ url: `${trimBase(baseUrl)}/api/wx/decrypt`, token, body, wx, fetch });
}

/** An anonymous customer-service visitor: {uid, token, expires_in, user_type: 3} (3.6). */
export function createVisitor({ baseUrl, fetch, wx }) {
  return httpJson({ url: `${trimBase(baseUrl)}/api/service/visitor`, wx, fetch });
}

/** Makes a visitor the logged-in user of `token` (3.6): {visitor, uid, messages}. */
export function convertVisitor({ baseUrl, token, visitor_token, fetch, wx }) {
  return httpJson({ url: `${trimBase(baseUrl)}/api/service/visitor/convert`, token, body: { visitor_token }, wx, fetch });
}

/** The user of a token (or of the wxchat_token cookie when `token` is left out) (3.3). */
export function getMe({ baseUrl, token, fetch, wx }) {
  return httpJson({ method: 'GET', url: `${trimBase(baseUrl)}/api/me`, token, wx, fetch });
}

/** Sets your own name and/or avatar; contacts get a `profile` push (3.3). */
export function updateMe({ baseUrl, token, name, head_img, fetch, wx }) {
  const body = {};
  if (name !== undefined) body.name = name;
  if (head_img !== undefined) body.head_img = head_img;
  return httpJson({ url: `${trimBase(baseUrl)}/api/me`, token, body, wx, fetch });
}

/** Revokes the token; its chat sockets close with 4003 (3.3). */
export function logout({ baseUrl, token, fetch, wx }) {
  return httpJson({ url: `${trimBase(baseUrl)}/api/logout`, token, body: {}, wx, fetch });
}

/**
 * POST /api/upload (3.4). In a mini-program (`wx` / `uni` given) `file` is a temp file path
 * and the token travels as the form field `token`, the way wx.uploadFile can carry it;
 * elsewhere `file` is a Blob / File sent as multipart with a Bearer header.
 * Resolves with {url, size, mime}; `url` goes into an image / voice / video / file message.
 */
export async function uploadFile({ baseUrl, token, file, name, wx, fetch: fetchFn }) {
  const url = `${trimBase(baseUrl)}/api/upload`;
  if (wx && typeof wx.uploadFile === 'function') {
    const res = await new Promise((resolve, reject) => {
      wx.uploadFile({
        url,
        filePath: file,
        name: 'file',
        formData: token ? { token } : {},
        success: resolve,
        fail: (err) => reject(new WxChatError('network', (err && err.errMsg) || 'uploadFile failed')),
      });
    });
    const parsed = parseBody(res.data);
    if (res.statusCode !== 200 || !parsed || parsed.code !== 200) throw failure(res.statusCode, parsed);
    return parsed.data;
  }
  const f = fetchFn || globalThis.fetch;
  if (typeof f !== 'function' || typeof FormData !== 'function') {
    throw new TypeError('uploadFile needs fetch and FormData, or wx');
  }
  const form = new FormData();
  const fileName = name || (file && file.name) || 'file';
  form.append('file', file, fileName);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  let res;
  try {
    res = await f(url, { method: 'POST', headers, body: form, credentials: 'same-origin' });
  } catch (err) {
    throw new WxChatError('network', `upload to ${url} failed: ${err && err.message}`, { cause: err });
  }
  const parsed = parseBody(await res.text());
  if (res.status !== 200 || !parsed || parsed.code !== 200) throw failure(res.status, parsed);
  return parsed.data;
}
