// The SDK's decisions as pure functions: no sockets, timers or storage, so each rule is unit
// tested on its own (test/unit/rules.test.js) and client.js only carries the effects out.

// ---------------------------------------------------------------------------------------------
// Per-conversation seq tracking (protocol-spec 2.3: seq grows by exactly 1 per message).
//
// A tracker is { held, buffer }: `held` is the last seq emitted (undefined until known) and
// `buffer` the messages received beyond it, by seq. Every function returns the run of messages
// that became contiguous and must be emitted now, in order.

export function newTracker(held) {
  return { held, buffer: new Map() };
}

/** Takes the contiguous run after `held`; drops anything at or below it. */
export function takeRun(t) {
  const run = [];
  if (t.held === undefined) return run;
  while (t.buffer.has(t.held + 1)) {
    t.held += 1;
    run.push(t.buffer.get(t.held));
    t.buffer.delete(t.held);
  }
  for (const seq of t.buffer.keys()) if (seq <= t.held) t.buffer.delete(seq);
  return run;
}

/** A message from a push or an ack. Repeats and old seqs are ignored. */
export function addMessage(t, msg) {
  if (t.held !== undefined && msg.seq <= t.held) return [];
  if (!t.buffer.has(msg.seq)) t.buffer.set(msg.seq, msg);
  return takeRun(t);
}

/** Buffers a message without emitting (before the conversation list says where to start). */
export function holdMessage(t, msg) {
  if (t.held !== undefined && msg.seq <= t.held) return;
  if (!t.buffer.has(msg.seq)) t.buffer.set(msg.seq, msg);
}

/** True when messages wait beyond a hole: a sync is needed. */
export function hasHole(t) {
  return t.buffer.size > 0;
}

/**
 * A sync page (oldest first) answering after_seq = `held`. It is the server's word on what
 * exists after `held`: when it starts beyond held + 1, the seqs in between are not served to
 * us (a group joined after its creation starts at its join point, protocol-spec 2.9).
 */
export function addPage(t, messages) {
  if (messages.length && messages[0].seq > t.held + 1) t.held = messages[0].seq - 1;
  for (const m of messages) if (m.seq > t.held && !t.buffer.has(m.seq)) t.buffer.set(m.seq, m);
  return takeRun(t);
}

/**
 * The server has nothing after `held` (an empty last page), yet messages wait beyond it: skip
 * to them rather than wait forever for seqs that do not exist.
 */
export function skipHole(t) {
  if (t.buffer.size === 0) return [];
  t.held = Math.min(...t.buffer.keys()) - 1;
  return takeRun(t);
}

/**
 * Where a conversation starts when the SDK first learns of it from `conversations`: on a
 * device's first connection at its last seq (older messages are history) unless every message
 * is wanted; later, a conversation never seen is new, so from the start.
 */
export function startSeq({ firstConnect, initialSync, lastSeq }) {
  return firstConnect && initialSync === 'latest' ? lastSeq : 0;
}

// ---------------------------------------------------------------------------------------------
// What to do when the socket is gone (protocol-spec 1.5, 2.2, 3.6).

/**
 * @param {{code: number, authFailed: boolean, canRefreshToken: boolean, suspended: boolean}} c
 * @returns {'stop' | 'stop_auth' | 'refresh_and_retry' | 'wait' | 'retry'}
 *   stop: 4003 kicked / logged out / purged, 4004 visitor converted: reconnecting is wrong.
 *   stop_auth: a refused token and no getToken to ask for another.
 *   refresh_and_retry: a refused token; getToken gives the next one.
 *   wait: suspended (app in the background): nothing until resume.
 *   retry: everything else (1001, 1006, 1008, 1011, 1012, 4002, timeouts) after a backoff.
 */
export function afterClose({ code, authFailed, canRefreshToken, suspended }) {
  if (code === 4003 || code === 4004) return 'stop';
  if (authFailed || code === 4001) return canRefreshToken ? 'refresh_and_retry' : 'stop_auth';
  return suspended ? 'wait' : 'retry';
}

/** Send replies: 'ack', 'drop' (can never succeed: reject, forget) or 'retry' (same id later). */
export function sendOutcome(code) {
  if (code === 200) return 'ack';
  return PERMANENT_SEND_CODES.has(code) ? 'drop' : 'retry';
}

/**
 * Send errors that will never succeed however often the message is resent: the outbox drops
 * them and the promise rejects. Everything else (429, 500, 503, timeouts, lost connections)
 * is retried with the same client_msg_id, which the server deduplicates.
 */
export const PERMANENT_SEND_CODES = new Set([400, 403, 404, 409, 410, 413, 415]);

/**
 * Requests the server may run on another node: in a cluster the customer-service desk's node
 * answers `service_*`, `consult_get`, and `read` in service and consultation conversations
 * (protocol-spec 2.10 "In a cluster"). While the desk moves (its node died: up to 8 s) such a
 * request is refused with 503 ("customer service is moving to another node, retry"), or, sent
 * to the node just lost, never answered. The ones that only read or repeat a state are sent
 * again: after a 503, and when unanswered for a while on a live connection.
 */
export const RETRIED_REQUESTS = new Set(['service_info', 'service_customer', 'consult_get', 'read']);

/**
 * A request's reply: 'settle' (resolve with 200, reject otherwise) or 'retry' (send it again
 * after a backoff delay, within the request's timeout).
 */
export function requestOutcome(cmd, code) {
  return code === 503 && RETRIED_REQUESTS.has(cmd) ? 'retry' : 'settle';
}
