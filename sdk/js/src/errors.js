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

/**
 * Send errors that will never succeed however often the message is resent: the outbox drops
 * them and the promise rejects. Everything else (429, 500, 503, timeouts, lost connections)
 * is retried with the same client_msg_id, which the server deduplicates.
 */
export const PERMANENT_SEND_CODES = new Set([400, 403, 404, 409, 410, 413, 415]);
