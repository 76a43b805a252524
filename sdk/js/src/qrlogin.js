// Official-account QR-code login (protocol-spec 4.2): a WebSocket to /ws/qrlogin on which the
// server pushes {message_type: qrcode_url | scan_success | qrcode_expired | error}. Separate
// from WxChat because it is a one-shot exchange before there is any token.

import { Emitter } from './emitter.js';
import { WxChatError } from './errors.js';
import { webSocketTransport, socketTaskTransport } from './transport.js';

export class QrLogin extends Emitter {
  /**
   * @param {{url: string, app?: string, WebSocket?: Function, wx?: object, uni?: object,
   *          transport?: object}} options url: ws(s)://host/ws/qrlogin
   */
  constructor(options) {
    super();
    if (!options || typeof options.url !== 'string') throw new TypeError('QrLogin: options.url is required');
    let url = options.url;
    if (options.app) url += (url.includes('?') ? '&' : '?') + 'app=' + encodeURIComponent(options.app);
    this.url = url;
    this._transport =
      options.transport ||
      (options.wx ? socketTaskTransport(options.wx)
        : options.uni ? socketTaskTransport(options.uni)
          : webSocketTransport(options.WebSocket || globalThis.WebSocket));
    this._socket = null;
    this._done = false;
  }

  /**
   * Opens the socket. Events: 'qrcode_url' {url, expire_seconds} (show it as a QR code),
   * 'scan_success' {user, token, expires_in, is_new}, 'qrcode_expired', 'error' {msg, errcode}.
   * Resolves with the scan_success data; rejects on expiry (code 'expired'), an error push,
   * or a close before any of them.
   */
  start() {
    return new Promise((resolve, reject) => {
      const finish = (err, value) => {
        if (this._done) return;
        this._done = true;
        if (err) reject(err);
        else resolve(value);
      };
      this._socket = this._transport.open(this.url, {
        onOpen: () => {},
        onMessage: (text) => {
          let m;
          try {
            m = JSON.parse(text);
          } catch {
            return;
          }
          if (!m || typeof m.message_type !== 'string') return;
          this.emit(m.message_type, m);
          if (m.message_type === 'scan_success') finish(null, m);
          else if (m.message_type === 'qrcode_expired') finish(new WxChatError('expired', 'the QR code expired'));
          else if (m.message_type === 'error') finish(new WxChatError('qr_error', m.msg || 'QR login failed', { errcode: m.errcode }));
        },
        onError: () => {},
        onClose: (code, reason) => {
          this._socket = null;
          finish(new WxChatError(code, `QR login socket closed${reason ? `: ${reason}` : ''}`));
        },
      });
    });
  }

  /** Gives up (the user left the page). */
  close() {
    if (this._socket) this._socket.close(1000, 'cancelled');
  }
}
