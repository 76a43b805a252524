// Where the wxchat server is (through nginx with TLS: mini-programs only open wss:// and
// https:// URLs on the console's listed domains).
module.exports = {
  httpUrl: 'https://chat.example.com',
  wsUrl: 'wss://chat.example.com/ws',
  // The [[wechat.apps]] name of this mini-program in the server's server.toml.
  app: 'mp',
};
