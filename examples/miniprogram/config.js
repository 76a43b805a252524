// Where the wxchat server is. Mini-programs may only reach https:// and wss:// URLs on domains
// listed in the console (开发管理 → 开发设置 → 服务器域名: request, socket, uploadFile and
// downloadFile domains), so this is nginx in front of wxchat, not the server itself.
module.exports = {
  baseUrl: 'https://chat.example.com',
  wsUrl: 'wss://chat.example.com/ws',
  // The [[wechat.apps]] name of this mini-program in the server's config (may be left out when
  // the server has only one mini-program).
  app: 'mp',
};
