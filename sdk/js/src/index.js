// wxchat-sdk: the public API. See README.md and index.d.ts.
export { WxChat, httpBaseOf, newClientMsgId } from './client.js';
export { WxChatError } from './errors.js';
export { PERMANENT_SEND_CODES } from './rules.js';
export { fullJitter } from './backoff.js';
export { memoryStorage, webStorage, miniProgramStorage } from './storage.js';
export { webSocketTransport, socketTaskTransport } from './transport.js';
export { wxLogin, wxDecrypt, createVisitor, convertVisitor, getMe, updateMe, logout, uploadFile, httpJson } from './http.js';
export { QrLogin } from './qrlogin.js';
