// Type declarations of wxchat-sdk (hand-written; the source is plain ESM JavaScript).
// Field names of protocol data are the server's (snake_case, protocol-spec.md); method names
// are camelCase.

// ---------------------------------------------------------------------------------------------
// Protocol data

/** 0 friend chat, 1 group, 2 customer service, 3 timed consultation. */
export type ChatType = 0 | 1 | 2 | 3;
/** 0 text, 1 image, 2 voice, 3 short video, 4 rich text, 5 file, 6 link card,
 *  7 mini-program page card, 100 recall event, 101 WeChat event. */
export type MsgType = 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 100 | 101;

export interface Message {
  msg_id: number;
  /** `p_<a>_<b>`, `g_<group>`, `s_<customer>`, `c_<consult>` */
  conv_id: string;
  /** 1, 2, 3... per conversation, without gaps */
  seq: number;
  chat_type: ChatType;
  from_id: number;
  to_id: number;
  msg_type: MsgType;
  /** A string (text, rich text), an object (media, cards, events), or null once recalled. */
  msg: any;
  /** Unix milliseconds */
  time: number;
  /** Only on your own messages emitted from an ack on this device. */
  client_msg_id?: string;
}

export interface SendArgs {
  chat_type: ChatType;
  /** user (0), group (1), 0 or the customer (2), consultation (3) */
  to_id: number;
  msg_type: MsgType;
  msg: any;
  /** 1-64 bytes, unique per sender; generated when left out. */
  client_msg_id?: string;
}

export interface SendAck {
  msg_id: number;
  conv_id: string;
  seq: number;
  time: number;
  /** true when the server had the message already (a resend) */
  duplicate: boolean;
  client_msg_id: string;
}

export interface SentEvent extends SendAck {
  args: Omit<SendArgs, 'client_msg_id'>;
}

export interface SendFailedEvent {
  client_msg_id: string;
  args: Omit<SendArgs, 'client_msg_id'>;
  error: WxChatError;
}

export interface PendingSend {
  client_msg_id: string;
  args: Omit<SendArgs, 'client_msg_id'>;
  /** when send() was called (ms) */
  created: number;
}

export interface Profile { uid: number; name: string; head_img: string }

export interface Conversation {
  conv_id: string;
  chat_type: ChatType;
  last_seq: number;
  read_seq: number;
  unread: number;
  last: Message | null;
  peer: Profile | null;
}

export interface Page { conv_id: string; messages: Message[]; has_more: boolean }
export interface Friend { uid: number; name: string; head_img: string; online: boolean }
export interface FriendRequest { from_id: number; note: string; time: number }
export interface Group { group_id: number; name: string; owner_id: number; created_at: number; history_for_new_members?: boolean }
export interface ServiceCustomer { uid: number; name: string; head_img: string; kind: 'visitor' | 'wechat' | 'user'; wechat_appid: string | null; app_uid: string | null }
export interface Member { uid: number; name: string; head_img: string; online: boolean }

export interface ServiceInfoAgent { status: 'available' | 'away'; max_sessions: number; customers: number[]; queue_length: number; waiting: number[] }
export interface ServiceInfoCustomer { session: null | { agent: number | null; position: number | null } }

export interface Consultation {
  consult_id: number; conv_id: string; user: number; consultant: number;
  /** rounded up to whole seconds; `remaining_ms` is the exact figure */
  remaining_s: number; remaining_ms: number; total_s: number; ended: boolean; running: boolean;
}

/** The server's pushes, emitted as events named after their `cmd` (protocol-spec 2.4-2.11). */
export interface PushEvents {
  read: { conv_id: string; uid: number; seq: number };
  typing: { conv_id: string; uid: number };
  presence: { uid: number; online: boolean };
  /** The server lost live pushes for this connection; the SDK has started its catch-up sync. */
  resync: Record<string, never>;
  profile: Profile;
  friend_request: FriendRequest;
  friend_added: Friend;
  friend_removed: { uid: number };
  group_event: { group_id: number; event: 'created' | 'joined' | 'left'; uids: number[] };
  /** customer-service desk: queued, assigned, transferred, requeued, closed, queue, converted */
  service: { event: string; [k: string]: any };
  wx_delivery: { msg_id: number; conv_id: string; seq: number; ok: boolean; code?: number; errcode?: number; msg?: string };
  /** timed consultations: created, running, paused, time, warning, ended, extended, state */
  consult: { consult_id: number; event: string; remaining_s: number; total_s: number; [k: string]: any };
}

export type State = 'connecting' | 'connected' | 'disconnected' | 'closed';

export interface StateInfo {
  /** close code of the socket that was lost (4000 = the SDK gave up on it: connect or heartbeat timeout) */
  code?: number;
  reason?: string;
}

export interface WxChatEvents extends PushEvents {
  /** every message once, in seq order per conversation (pushes, your own acks, syncs) */
  message: Message;
  state: State;
  /** every acknowledged send, also those restored from storage after a reload */
  sent: SentEvent;
  /** a send dropped for good (a code that never succeeds, or queued by another user) */
  send_failed: SendFailedEvent;
  auth: { uid: number };
  /** the server's `{"cmd":"error"}`, storage failures, getToken failures */
  error: WxChatError;
}

// ---------------------------------------------------------------------------------------------
// Plumbing

/** Synchronous key-value storage for the outbox and the seqs. */
export interface Storage {
  get(key: string): string | null;
  set(key: string, value: string): void;
  remove(key: string): void;
}

export interface TransportHandlers {
  onOpen(): void;
  onMessage(text: string): void;
  onClose(code: number, reason: string): void;
  onError(err: unknown): void;
}
export interface TransportSocket {
  /** false when the socket is not open */
  send(text: string): boolean | void;
  close(code: number, reason: string): void;
}
export interface Transport {
  open(url: string, handlers: TransportHandlers): TransportSocket;
}

/** Injectable time source (tests use a manual one). */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(id: unknown): void;
}

/** The parts of `wx` / `uni` the SDK uses (connectSocket, storage, lifecycle, login, request, uploadFile). */
export type MiniProgramApi = any;

export interface WxChatOptions {
  /** ws(s)://host/ws (mini-programs: wss:// on a domain listed in the console) */
  url: string;
  /** Leave out both token and getToken on a page of the chat's own site after doLogin: the
   *  wxchat_token cookie authenticates the socket. */
  token?: string;
  /** Called when there is no token, and again after a 401 / close 4001. */
  getToken?: () => string | Promise<string>;
  /** A WebSocket constructor (browser global by default; Node: the `ws` package). */
  WebSocket?: any;
  /** WeChat mini-program: use wx.connectSocket, wx storage, wx.onAppHide/onAppShow, wx.uploadFile. */
  wx?: MiniProgramApi;
  /** uni-app: the same with `uni`. */
  uni?: MiniProgramApi;
  /** 'wx' | 'uni' (the global object), or a custom Transport. */
  transport?: 'wx' | 'uni' | Transport;
  /** Default: wx/uni storage, else localStorage, else memory. */
  storage?: Storage;
  /** Prefix of the storage keys (default 'wxchat'): one WxChat per prefix at a time. */
  storageKey?: string;
  /** http(s)://host for the HTTP APIs (default: derived from url). */
  httpUrl?: string;
  /** ping after this long without any frame (default 20000 ms) */
  heartbeatInterval?: number;
  /** the link is dead when nothing arrives this long after a ping (default 10000 ms) */
  heartbeatTimeout?: number;
  /** per request, from the call, including the wait for a connection (default 15000 ms) */
  requestTimeout?: number;
  /** from opening the socket to authenticated (default 10000 ms) */
  connectTimeout?: number;
  /** full-jitter backoff: delay = random * min(backoffCap, backoffBase * 2^attempt) (500 / 30000 ms) */
  backoffBase?: number;
  backoffCap?: number;
  /** sync page size, 1-200 (default 200) */
  syncLimit?: number;
  /** First connection of a device: 'latest' (default) starts at each conversation's last seq;
   *  'all' emits every stored message. */
  initialSync?: 'latest' | 'all';
  /** Hook wx/uni onAppHide/onAppShow (default true when wx or uni is given). */
  lifecycle?: boolean;
  /** fetch for uploads outside mini-programs (default globalThis.fetch) */
  fetch?: typeof fetch;
  clock?: Clock;
  random?: () => number;
}

declare class Emitter<E> {
  on<K extends keyof E & string>(event: K, fn: (data: E[K]) => void): () => void;
  on(event: string, fn: (...args: any[]) => void): () => void;
  once<K extends keyof E & string>(event: K, fn: (data: E[K]) => void): () => void;
  off(event: string, fn: (...args: any[]) => void): void;
}

export class WxChatError extends Error {
  /** the server's code (400, 401, 403, 404, 409, 410, 413, 429, 503...) or the SDK's:
   *  'timeout' | 'disconnected' | 'closed' | 'cancelled' | 'wrong_user' | 'auth' | 'transport'
   *  | 'storage' | 'network' | 'expired' | 'qr_error' | 'wx_login' */
  code: number | string;
  cmd?: string;
  /** WeChat's errcode passed on by HTTP APIs */
  errcode?: number;
  status?: number;
  constructor(code: number | string, message: string, extra?: object);
}

export const PERMANENT_SEND_CODES: Set<number>;

export class WxChat extends Emitter<WxChatEvents> {
  constructor(options: WxChatOptions);
  /** 'state' listeners also get {code, reason} of the close that caused it. */
  on(event: 'state', fn: (state: State, info: StateInfo) => void): () => void;
  on<K extends keyof WxChatEvents & string>(event: K, fn: (data: WxChatEvents[K]) => void): () => void;
  on(event: string, fn: (...args: any[]) => void): () => void;
  readonly state: State;
  /** the authenticated uid (kept while disconnected), null before the first auth */
  readonly uid: number | null;
  readonly lastClose: { code: number; reason: string } | null;
  readonly url: string;
  readonly httpUrl: string;

  /** Resolves when connected; rejects only if the client ends 'closed' first. */
  connect(): Promise<void>;
  /** Stops for good (until connect()); pending sends stay in the outbox. */
  close(): void;
  setToken(token: string | null): void;
  /** Skip the rest of the backoff delay (automatic on the browser's online event and wx.onNetworkStatusChange). */
  reconnectNow(): void;
  /** Close cleanly while in the background (automatic on wx/uni onAppHide). */
  suspend(): void;
  /** Reconnect at once and catch up (automatic on onAppShow). */
  resume(): void;

  /** Exactly-once send: resolves after the server committed the message. */
  send(args: SendArgs): Promise<SendAck>;
  pending(): PendingSend[];
  clearOutbox(): void;

  /**
   * Any command; resolves with the reply's data. `service_info`, `service_customer`,
   * `consult_get` and `read` (which a cluster may run on another node) are sent again after a
   * 503 and when unanswered for a third of `requestTimeout`, until the timeout.
   */
  request<T = any>(cmd: string, fields?: object, opts?: { timeout?: number }): Promise<T>;
  ping(): Promise<{ time: number }>;
  sync(conv_id: string, after_seq?: number, limit?: number): Promise<Page>;
  /** newest first */
  history(conv_id: string, before_seq?: number, limit?: number): Promise<Page>;
  conversations(): Promise<Conversation[]>;
  read(conv_id: string, seq: number): Promise<{ conv_id: string; read_seq: number }>;
  typing(conv_id: string): Promise<{}>;
  readCount(conv_id: string, seq: number): Promise<{ conv_id: string; seq: number; read: number; members: number }>;
  presence(uids: number[]): Promise<Record<string, boolean>>;
  recall(conv_id: string, msg_id: number): Promise<Omit<SendAck, 'client_msg_id'>>;

  friends(): Promise<Friend[]>;
  friendRequest(to_id: number, note?: string): Promise<{}>;
  friendAccept(from_id: number): Promise<{ uid: number }>;
  friendRequests(): Promise<FriendRequest[]>;
  friendRemove(uid: number): Promise<{}>;

  groups(): Promise<Group[]>;
  groupCreate(name: string, members?: number[], opts?: { history_for_new_members?: boolean }): Promise<{ group: Group; members: number[] }>;
  groupMembers(group_id: number): Promise<Member[]>;
  groupInvite(group_id: number, uids: number[]): Promise<{ group_id: number; added: number[] }>;
  groupLeave(group_id: number): Promise<{ group_id: number }>;

  serviceStatus(status: 'available' | 'away'): Promise<ServiceInfoAgent>;
  serviceAccept(customer: number): Promise<{ customer: number }>;
  serviceTransfer(customer: number, to: number): Promise<{ customer: number; to: number }>;
  /** agents pass the customer, customers nothing */
  serviceClose(customer?: number): Promise<{ customer: number; session_id: number }>;
  serviceRate(session_id: number, rating: 1 | 2 | 3 | 4 | 5, comment?: string): Promise<{ session_id: number; rating: number }>;
  serviceInfo(): Promise<ServiceInfoAgent | ServiceInfoCustomer>;
  /** Agents: who a customer is (protocol-spec 2.10 `service_customer`). */
  serviceCustomer(customer: number): Promise<ServiceCustomer>;

  consultGet(consult_id: number): Promise<Consultation>;

  /** Mini-programs: a temp file path; elsewhere a Blob / File. */
  upload(file: string | Blob, opts?: { name?: string }): Promise<UploadResult>;
}

/**
 * A client_msg_id as `send()` makes one: 32 hex characters, the time in milliseconds (12) then
 * 80 random bits (20). Ids that grow with time are cheap for the server to index; pass one to
 * `send({ client_msg_id })` to know it before the ack.
 */
export function newClientMsgId(nowMs: number, random?: () => number): string;

export function fullJitter(attempt: number, base: number, cap: number, random?: () => number): number;
export function httpBaseOf(wsUrl: string): string;

export function memoryStorage(): Storage;
export function webStorage(store: { getItem(k: string): string | null; setItem(k: string, v: string): void; removeItem(k: string): void }): Storage;
export function miniProgramStorage(api: MiniProgramApi): Storage;

export function webSocketTransport(WebSocketCtor: any): Transport;
export function socketTaskTransport(api: MiniProgramApi, extra?: { header?: Record<string, string> }): Transport;

// ---------------------------------------------------------------------------------------------
// HTTP helpers (protocol-spec 3.x). `wx` / `uni` use their request / uploadFile; otherwise fetch.

export interface HttpOptions { baseUrl: string; fetch?: typeof fetch; wx?: MiniProgramApi }
export interface LoginResult { uid: number; token: string; expires_in: number; is_new: boolean }
export interface UploadResult { url: string; size: number; mime: string }

export function wxLogin(opts: { wx: MiniProgramApi; baseUrl: string; app?: string; userInfo?: { nickName?: string; avatarUrl?: string } }): Promise<LoginResult>;
export function wxDecrypt(opts: HttpOptions & { token: string; encryptedData: string; iv: string; app?: string }): Promise<any>;
export function createVisitor(opts: HttpOptions): Promise<{ uid: number; token: string; expires_in: number; user_type: 3 }>;
export function convertVisitor(opts: HttpOptions & { token: string; visitor_token: string }): Promise<{ visitor: number; uid: number; messages: number }>;
export function getMe(opts: HttpOptions & { token?: string }): Promise<any>;
export function updateMe(opts: HttpOptions & { token?: string; name?: string; head_img?: string }): Promise<any>;
export function logout(opts: HttpOptions & { token?: string }): Promise<{}>;
export function uploadFile(opts: HttpOptions & { token?: string; file: string | Blob; name?: string }): Promise<UploadResult>;
export function httpJson(opts: { method?: string; url: string; body?: any; token?: string; wx?: MiniProgramApi; fetch?: typeof fetch }): Promise<any>;

// ---------------------------------------------------------------------------------------------
// QR-code login (protocol-spec 4.2)

export interface QrEvents {
  qrcode_url: { message_type: 'qrcode_url'; url: string; expire_seconds: number };
  scan_success: { message_type: 'scan_success'; user: Profile & Record<string, any>; token: string; expires_in: number; is_new: boolean };
  qrcode_expired: { message_type: 'qrcode_expired' };
  error: { message_type: 'error'; msg: string; errcode?: number };
}

export class QrLogin extends Emitter<QrEvents> {
  /** url: ws(s)://host/ws/qrlogin */
  constructor(options: { url: string; app?: string; WebSocket?: any; wx?: MiniProgramApi; uni?: MiniProgramApi; transport?: Transport });
  readonly url: string;
  /** Resolves with scan_success; rejects on expiry, an error push, or a close. */
  start(): Promise<QrEvents['scan_success']>;
  close(): void;
}
