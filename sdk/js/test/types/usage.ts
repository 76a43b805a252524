// Compiled with tsc --noEmit --strict by test/unit/types.test.js: the declarations must
// describe the documented usage, and reject misuse (the @ts-expect-error lines).
import {
  WxChat, WxChatError, QrLogin, wxLogin, createVisitor, memoryStorage, webSocketTransport,
  type Message, type SendAck, type State, type Conversation,
} from 'wxchat-sdk';

declare const WS: any;
declare const wx: any;

async function main() {
  const chat = new WxChat({ url: 'ws://127.0.0.1:9501/ws', token: 't', WebSocket: WS, storage: memoryStorage() });
  chat.on('message', (m: Message) => m.seq + 1);
  chat.on('state', (s: State) => s === 'connected');
  chat.on('state', (s, info) => info.code === 4003 && s === 'closed');
  // @ts-expect-error not a state
  chat.on('state', (s) => s === 'open');
  chat.on('sent', (a) => a.args.to_id);
  chat.on('profile', (p) => p.head_img.length);
  chat.on('consult', (c) => c.remaining_s);
  await chat.connect();
  const ack: SendAck = await chat.send({ chat_type: 0, to_id: 2, msg_type: 0, msg: 'hi' });
  const convs: Conversation[] = await chat.conversations();
  const page = await chat.sync(convs[0].conv_id, ack.seq);
  page.messages.forEach((m) => m.msg_id);
  await chat.groupCreate('g', [1, 2], { history_for_new_members: true });
  await chat.serviceRate(1, 5, 'good');
  const c = await chat.consultGet(3);
  c.running;
  const left: number = c.remaining_ms;
  // @ts-expect-error chat_type is required
  await chat.send({ to_id: 2, msg_type: 0, msg: 'hi' });
  // @ts-expect-error ratings are 1-5
  await chat.serviceRate(1, 6);
  chat.close();

  const mini = new WxChat({ url: 'wss://chat.example.com/ws', wx, getToken: async () => (await wxLogin({ wx, baseUrl: 'https://chat.example.com', app: 'mp' })).token });
  await mini.upload('wxfile://tmp.png');
  const v = await createVisitor({ baseUrl: 'https://chat.example.com' });
  v.user_type === 3;
  const custom = new WxChat({ url: 'ws://x/ws', transport: webSocketTransport(WS) });
  custom.suspend();
  custom.resume();

  const qr = new QrLogin({ url: 'ws://x/ws/qrlogin', WebSocket: WS });
  qr.on('qrcode_url', (e) => e.url);
  const ok = await qr.start();
  ok.token;
  try {
    await chat.friends();
  } catch (e) {
    if (e instanceof WxChatError && e.code === 'timeout') return;
  }
}
main();
