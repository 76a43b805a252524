// Transports: the one thing that differs between a browser, Node, WeChat and uni-app is how a
// WebSocket is opened and how its events arrive. A transport is
//
//   { open(url, handlers) -> { send(text), close(code, reason) } }
//
// with handlers { onOpen(), onMessage(text), onClose(code, reason), onError(err) }. The core
// (client.js) never touches a platform socket directly, and calls open() again only after the
// previous socket reported its close (or was abandoned and told to close), so a mini-program
// never holds more than one socket for the SDK (WeChat allows five per app).

/**
 * Any constructor with the standard WebSocket interface: the browser's `WebSocket`, Node's
 * `ws` package, Node 22's global WebSocket.
 */
export function webSocketTransport(WebSocketCtor) {
  if (typeof WebSocketCtor !== 'function') {
    throw new TypeError('webSocketTransport needs a WebSocket constructor');
  }
  return {
    kind: 'websocket',
    open(url, h) {
      const ws = new WebSocketCtor(url);
      let closed = false;
      ws.onopen = () => h.onOpen();
      ws.onmessage = (ev) => {
        // Text frames are strings everywhere; a binary frame is not part of the protocol.
        if (typeof ev.data === 'string') h.onMessage(ev.data);
      };
      ws.onerror = (ev) => h.onError(ev && ev.error ? ev.error : new Error('WebSocket error'));
      ws.onclose = (ev) => {
        if (closed) return;
        closed = true;
        h.onClose(ev.code, ev.reason || '');
      };
      return {
        send(text) {
          // readyState 1 = OPEN; sending on a closing socket throws in some implementations.
          if (ws.readyState !== 1) return false;
          ws.send(text);
          return true;
        },
        close(code, reason) {
          try {
            ws.close(code, reason);
          } catch {
            // A socket still CONNECTING throws in some browsers; terminate what we can.
            try {
              ws.close();
            } catch {
              /* nothing left to close */
            }
          }
        },
      };
    },
  };
}

/**
 * WeChat `wx.connectSocket` / uni-app `uni.connectSocket`: both return a SocketTask with
 * onOpen / onMessage / onClose / onError and send({data, success, fail}) / close({code, reason}).
 * Mini-programs require a `wss://` URL whose domain is listed in the console's socket domains.
 */
export function socketTaskTransport(api, extra = {}) {
  if (!api || typeof api.connectSocket !== 'function') {
    throw new TypeError('socketTaskTransport needs the wx or uni object');
  }
  return {
    kind: 'sockettask',
    open(url, h) {
      let open = false;
      let closed = false;
      // uni-app returns the SocketTask only when one of success / fail / complete is passed
      // (otherwise it returns a promise); WeChat returns it always.
      const req = { url, complete: () => {} };
      if (extra.header) req.header = extra.header;
      const task = api.connectSocket(req);
      const fail = (err) => {
        if (closed) return;
        closed = true;
        h.onError(err);
        h.onClose(1006, (err && err.errMsg) || 'connectSocket failed');
      };
      if (!task) {
        // A platform that refuses synchronously leaves us nothing to listen on.
        Promise.resolve().then(() => fail(new Error('connectSocket returned no SocketTask')));
        return { send: () => false, close: () => {} };
      }
      task.onOpen(() => {
        open = true;
        h.onOpen();
      });
      task.onMessage((res) => {
        if (typeof res.data === 'string') h.onMessage(res.data);
      });
      task.onError((err) => h.onError(err));
      task.onClose((res) => {
        if (closed) return;
        closed = true;
        h.onClose(res && res.code ? res.code : 1006, (res && res.reason) || '');
      });
      return {
        send(text) {
          if (!open || closed) return false;
          task.send({
            data: text,
            // A failed send means the socket is dying; its onClose follows and the core
            // resends whatever was not acknowledged.
            fail: () => {},
          });
          return true;
        },
        close(code, reason) {
          task.close({ code, reason, fail: () => {} });
        },
      };
    },
  };
}
