// A faithful fake of the parts of WeChat's `wx` the SDK uses, over real sockets and HTTP:
// - connectSocket -> a SocketTask (onOpen/onMessage/onClose/onError, send({data, success,
//   fail}), close({code, reason})) backed by Node's `ws`; at most 5 open at once, as WeChat
//   enforces, and the test can check the SDK never holds more than one;
// - getStorageSync ('' for a missing key) / setStorageSync / removeStorageSync;
// - onAppHide / onAppShow with hide() / show() to trigger them;
// - login -> {code: 'ok-<openid>'}; request; uploadFile doing a real multipart POST of a file
//   read from disk, answering {statusCode, data: <text>} as WeChat does.
import fs from 'node:fs';
import path from 'node:path';
import WebSocket from 'ws';

export function createFakeWx({ openid = 'openid-1' } = {}) {
  const storage = new Map();
  const hooks = { hide: [], show: [] };
  const tasks = [];
  let openNow = 0;
  let maxOpen = 0;

  function connectSocket({ url, header }) {
    if (openNow >= 5) throw new Error('connectSocket:fail exceeded max task count');
    const ws = new WebSocket(url, { headers: header || {} });
    openNow++;
    maxOpen = Math.max(maxOpen, openNow);
    const cb = { open: [], message: [], close: [], error: [] };
    let done = false;
    const finish = () => {
      if (!done) {
        done = true;
        openNow--;
      }
    };
    ws.on('open', () => cb.open.forEach((f) => f({ header: {} })));
    ws.on('message', (data, isBinary) => {
      const payload = isBinary ? data : data.toString();
      cb.message.forEach((f) => f({ data: payload }));
    });
    ws.on('error', (err) => cb.error.forEach((f) => f({ errMsg: `socket error: ${err.message}` })));
    ws.on('close', (code, reason) => {
      finish();
      cb.close.forEach((f) => f({ code, reason: reason.toString() }));
    });
    const task = {
      url,
      closedWith: null,
      onOpen: (f) => cb.open.push(f),
      onMessage: (f) => cb.message.push(f),
      onClose: (f) => cb.close.push(f),
      onError: (f) => cb.error.push(f),
      send({ data, success, fail }) {
        if (ws.readyState !== WebSocket.OPEN) {
          if (fail) fail({ errMsg: 'sendSocketMessage:fail WebSocket is not connected' });
          return;
        }
        ws.send(data, (err) => (err ? fail && fail({ errMsg: err.message }) : success && success({})));
      },
      close({ code = 1000, reason = '', success, fail } = {}) {
        task.closedWith = { code, reason };
        try {
          ws.close(code, reason);
          if (success) success({});
        } catch (err) {
          if (fail) fail({ errMsg: err.message });
        }
      },
    };
    tasks.push(task);
    return task;
  }

  function request({ url, method = 'GET', header = {}, data, success, fail }) {
    fetch(url, { method, headers: header, body: method === 'GET' ? undefined : data })
      .then(async (res) => success({ statusCode: res.status, data: await res.text(), header: {} }))
      .catch((err) => fail && fail({ errMsg: `request:fail ${err.message}` }));
  }

  function uploadFile({ url, filePath, name, formData = {}, success, fail }) {
    let bytes;
    try {
      bytes = fs.readFileSync(filePath);
    } catch (err) {
      if (fail) fail({ errMsg: `uploadFile:fail ${err.message}` });
      return;
    }
    const form = new FormData();
    for (const [k, v] of Object.entries(formData)) form.append(k, String(v));
    form.append(name, new Blob([bytes]), path.basename(filePath));
    fetch(url, { method: 'POST', body: form })
      .then(async (res) => success({ statusCode: res.status, data: await res.text() }))
      .catch((err) => fail && fail({ errMsg: `uploadFile:fail ${err.message}` }));
  }

  return {
    connectSocket,
    request,
    uploadFile,
    login: ({ success }) => setImmediate(() => success({ code: `ok-${openid}`, errMsg: 'login:ok' })),
    getStorageSync: (k) => (storage.has(k) ? storage.get(k) : ''),
    setStorageSync: (k, v) => void storage.set(k, v),
    removeStorageSync: (k) => void storage.delete(k),
    onAppHide: (f) => hooks.hide.push(f),
    onAppShow: (f) => hooks.show.push(f),
    hide: () => hooks.hide.forEach((f) => f()),
    show: () => hooks.show.forEach((f) => f()),
    storage,
    tasks,
    get openSockets() {
      return openNow;
    },
    get maxOpenSockets() {
      return maxOpen;
    },
  };
}
