// The pure rules of rules.js, with no client, socket or clock.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { newTracker, holdMessage, addMessage, addPage, skipHole, takeRun, hasHole, startSeq, afterClose, sendOutcome, requestOutcome } from '../../src/rules.js';

const m = (seq) => ({ seq, msg_id: 100 + seq });
const seqs = (run) => run.map((x) => x.seq);

test('addMessage emits contiguous runs, buffers beyond a hole, drops repeats', () => {
  const t = newTracker(3);
  assert.deepEqual(seqs(addMessage(t, m(4))), [4]);
  assert.deepEqual(seqs(addMessage(t, m(6))), []);
  assert.equal(hasHole(t), true);
  assert.deepEqual(seqs(addMessage(t, m(4))), [], 'a repeat');
  assert.deepEqual(seqs(addMessage(t, m(6))), [], 'a buffered repeat');
  assert.deepEqual(seqs(addMessage(t, m(5))), [5, 6]);
  assert.equal(hasHole(t), false);
  assert.equal(t.held, 6);
});

test('holdMessage never emits; takeRun then releases what became contiguous', () => {
  const t = newTracker(undefined);
  holdMessage(t, m(9));
  holdMessage(t, m(8));
  assert.deepEqual(seqs(takeRun(t)), [], 'unknown start: nothing');
  t.held = 7;
  assert.deepEqual(seqs(takeRun(t)), [8, 9]);
  holdMessage(t, m(5));
  assert.equal(hasHole(t), false, 'below held: ignored');
});

test('addPage fills a hole; a page starting beyond held + 1 moves held to the join point', () => {
  const t = newTracker(1);
  addMessage(t, m(5));
  assert.deepEqual(seqs(addPage(t, [m(2), m(3), m(4)])), [2, 3, 4, 5]);
  const g = newTracker(0);
  addMessage(g, m(8));
  assert.deepEqual(seqs(addPage(g, [m(6), m(7), m(8)])), [6, 7, 8], 'joined at 5: 1..5 are not ours');
});

test('skipHole jumps to the first buffered message when the server has nothing more', () => {
  const t = newTracker(2);
  addMessage(t, m(5));
  addMessage(t, m(6));
  addMessage(t, m(9));
  assert.deepEqual(seqs(skipHole(t)), [5, 6]);
  assert.equal(hasHole(t), true, '9 still waits beyond 7 and 8');
  assert.deepEqual(skipHole(newTracker(1)), []);
});

test('startSeq: a first connection starts at last_seq unless initialSync is all; later ones at 0', () => {
  assert.equal(startSeq({ firstConnect: true, initialSync: 'latest', lastSeq: 40 }), 40);
  assert.equal(startSeq({ firstConnect: true, initialSync: 'all', lastSeq: 40 }), 0);
  assert.equal(startSeq({ firstConnect: false, initialSync: 'latest', lastSeq: 40 }), 0);
});

test('afterClose: which close codes stop, refresh the token, wait or retry', () => {
  const base = { authFailed: false, canRefreshToken: false, suspended: false };
  for (const code of [4003, 4004]) {
    assert.equal(afterClose({ ...base, code }), 'stop');
    assert.equal(afterClose({ ...base, code, canRefreshToken: true }), 'stop', 'getToken does not undo a kick');
  }
  assert.equal(afterClose({ ...base, code: 4001 }), 'stop_auth');
  assert.equal(afterClose({ ...base, code: 4001, canRefreshToken: true }), 'refresh_and_retry');
  assert.equal(afterClose({ ...base, code: 1006, authFailed: true }), 'stop_auth', 'a 401 auth reply counts even if the close code was lost');
  for (const code of [1000, 1001, 1006, 1008, 1011, 1012, 1013, 4000, 4002]) {
    assert.equal(afterClose({ ...base, code }), 'retry', String(code));
    assert.equal(afterClose({ ...base, code, suspended: true }), 'wait', String(code));
  }
});

test('sendOutcome: permanent codes drop, the rest retry', () => {
  assert.equal(sendOutcome(200), 'ack');
  for (const code of [400, 403, 404, 409, 410, 413, 415]) assert.equal(sendOutcome(code), 'drop', String(code));
  for (const code of [401, 429, 500, 502, 503]) assert.equal(sendOutcome(code), 'retry', String(code));
});

test('requestOutcome: the customer-service reads that may run on another node retry a 503, nothing else does', () => {
  for (const cmd of ['service_info', 'service_customer', 'consult_get', 'read']) {
    assert.equal(requestOutcome(cmd, 503), 'retry', cmd);
    for (const code of [200, 400, 403, 404, 429, 500]) assert.equal(requestOutcome(cmd, code), 'settle', `${cmd} ${code}`);
  }
  // Not repeatable (a second close or accept answers 404), or not the desk's.
  for (const cmd of ['service_close', 'service_accept', 'service_transfer', 'service_rate', 'service_status', 'sync', 'group_create']) {
    assert.equal(requestOutcome(cmd, 503), 'settle', cmd);
  }
});
