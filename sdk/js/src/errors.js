// One error type for everything the SDK rejects with, so callers can branch on `code`:
// a number is the server's reply code (protocol-spec 2.1, 3.x HTTP statuses), a string is the
// SDK's own reason ('timeout', 'disconnected', 'closed', 'auth', 'transport').

export class WxChatError extends Error {
  /**
   * @param {number|string} code
   * @param {string} message
   * @param {object} [extra] fields copied onto the error (cmd, errcode, data...)
   */
  constructor(code, message, extra) {
    super(message);
    this.name = 'WxChatError';
    this.code = code;
    if (extra) Object.assign(this, extra);
  }
}
