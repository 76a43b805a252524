// Issue 22's cluster test: three wxchat nodes (separate processes, each in a network namespace
// of its own), one MySQL database, a private Redis, moto's S3 and a real nginx in front running
// deploy/nginx/wxchat.conf; the clients are the real SDK connecting through nginx, so reconnecting
// and catching up are the SDK's own logic. The test never calls `sync`.
//
// 1. Users on different nodes chat one-to-one and in a group with members on every node; one
//    node is `kill -9`ed mid-traffic; its clients reconnect through nginx to the others; every
//    acknowledged message reaches every recipient exactly once, in seq order. The killed node
//    is then restarted (same host and port) for the scenarios after it.
// 2. Redis is killed and restarted empty mid-traffic: no acknowledged message is lost and live
//    pushes resume with no client reconnecting.
// 3. An image uploaded through node A is served by node B (and through nginx).
//
// The harness (harness.js) is shared: a further scenario is one more test() on `cluster`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { until } from '../helpers/wait.js';
import {
  Cluster,
  setupConversations,
  describePlacement,
  startTraffic,
  waitDelivered,
  deliveryProblems,
  sleep,
} from './harness.js';

let cluster;
const note = (msg) => console.log(msg);

before(async () => {
  cluster = await Cluster.start({ log: note });
}, { timeout: 120000 });

after(async () => {
  if (cluster) await cluster.stop();
});

/** Fails with the nodes' logs attached, which say what the servers saw. */
function withLogs(msg) {
  const logs = cluster.nodeLogs().map(({ id, log }) => `--- ${id}:\n${log.trim().split('\n').slice(-25).join('\n')}`).join('\n');
  return `${msg}\n${logs}\n--- nginx:\n${cluster.nginxErrors().trim().split('\n').slice(-10).join('\n')}`;
}

function assertDelivered(s, traffic) {
  assert.deepEqual(traffic.errors, [], withLogs(`sends failed:\n${traffic.errors.join('\n')}`));
  const problems = deliveryProblems(s.clients, traffic.ledger, s.members);
  assert.deepEqual(problems, [], withLogs(`delivery problems:\n${problems.join('\n')}`));
  // The database agrees: exactly the acknowledged messages, seqs 1..n.
  const stored = cluster.storedCounts([...s.members.keys()]);
  for (const conv of s.members.keys()) {
    const n = (traffic.ledger.get(conv) || new Map()).size;
    assert.deepEqual(stored.get(conv), { n, distinct: n, max: n }, `${conv}: stored messages vs ${n} acknowledged`);
  }
}

function ackedAtLeast(clients, n) {
  return clients.every((c) => c.acked >= n);
}

const total = (clients, f) => clients.reduce((sum, c) => sum + f(c), 0);

test('kill -9 of a node mid-traffic: its clients reconnect through nginx to the others; every acked message delivered exactly once, in order', { timeout: 150000 }, async (t) => {
  const s = await setupConversations(cluster, 'k', 12);
  t.diagnostic(`placement: ${describePlacement(s.placement)}; one-to-one pairs: ${s.pairs.map(([a, b]) => `${a.name}-${b.name}`).join(' ')}`);
  t.diagnostic(`node_online: ${JSON.stringify(await cluster.nodeOnline())}`);

  // The victim: the node holding the most of these users.
  const victim = [...s.placement.byNode].sort((x, y) => y[1].length - x[1].length)[0][0];
  const vi = cluster.nodes.findIndex((n) => n.id === victim);
  const victims = s.clients.filter((c) => s.placement.byUser.get(c.uid) === victim);
  const others = s.clients.filter((c) => !victims.includes(c));

  const traffic = startTraffic(s.clients, { window: 4, intervalMs: 60 });
  try {
    await until(() => ackedAtLeast(s.clients, 10), { what: '10 acks per user before the kill', timeout: 30000 });
    const beforeKill = traffic.counts();
    const killedAt = Date.now();
    await cluster.killNode(vi);
    t.diagnostic(`kill -9 ${victim} (${victims.map((c) => c.name).join(' ')}) after ${beforeKill.acked} acks`);

    // Its clients notice, reconnect through nginx and land on the survivors.
    await until(
      () => victims.every((c) => c.states.some((st) => st.state === 'disconnected' && st.at >= killedAt) && c.chat.state === 'connected'),
      { what: `${victim}'s clients to reconnect`, timeout: 30000 },
    ).catch((err) => {
      throw new Error(withLogs(`${err.message}: ${victims.map((c) => `${c.name} ${c.chat.state}`).join(', ')}`));
    });
    const reconnectedAt = Date.now();
    const after = await cluster.placement(s.users, { excluding: [victim] });
    t.diagnostic(`reconnected ${reconnectedAt - killedAt} ms after the kill; now ${describePlacement(after)}`);
    for (const c of victims) assert.notEqual(after.byUser.get(c.uid), victim);

    // More traffic on the healed cluster, then stop and let everything settle.
    const base = new Map(s.clients.map((c) => [c, c.acked]));
    await until(() => s.clients.every((c) => c.acked >= base.get(c) + 15), { what: '15 more acks per user after the reconnects', timeout: 60000 });
    await traffic.stop(60000);
    await waitDelivered(s.clients, traffic.ledger, s.members, { timeout: 30000 });
    await sleep(1000); // a late duplicate would show up meanwhile

    const { issued, acked } = traffic.counts();
    t.diagnostic(
      `${acked}/${issued} sends acked (${acked - beforeKill.acked} after the kill); duplicate acks (committed, ack lost with the node) ${total(s.clients, (c) => c.dupAcks)}; ` +
        `SDK syncs: ${total(s.clients, (c) => c.syncTimes.length)} (${total(victims, (c) => c.syncTimes.length)} by the reconnected); ` +
        `live pushes ${total(s.clients, (c) => c.livePushes.length)}; conversations ${s.members.size}`,
    );
    assertDelivered(s, traffic);
    assert.equal(total(s.clients, (c) => c.syncTimes.length) > 0, true, 'the reconnected clients caught up with their own sync');
    // Only the victim's clients lost their connection.
    for (const c of others) {
      assert.equal(c.opens, 1, `${c.name} (not on ${victim}) reconnected: ${JSON.stringify(c.states)}`);
    }
    for (const c of victims) assert.ok(c.opens >= 2, `${c.name} opened a new socket`);
  } finally {
    await traffic.stop(60000).catch(() => {});
    cluster.closeClients();
  }

  // The node comes back on the same host and port and joins the cluster again.
  await cluster.restartNode(vi);
  t.diagnostic(`${victim} restarted`);
});

test('Redis killed and restarted empty mid-traffic: no acked message lost, live pushes resume without any client reconnecting', { timeout: 150000 }, async (t) => {
  const s = await setupConversations(cluster, 'r', 9);
  t.diagnostic(`placement: ${describePlacement(s.placement)}`);
  const traffic = startTraffic(s.clients, { window: 4, intervalMs: 60 });
  try {
    await until(() => ackedAtLeast(s.clients, 10), { what: '10 acks per user before Redis dies', timeout: 30000 });
    const beforeKill = traffic.counts();
    await cluster.killRedis();
    const killedAt = Date.now();
    await sleep(3000); // traffic goes on meanwhile
    const whileDown = traffic.counts().acked - beforeKill.acked;
    await cluster.restartRedis();
    const restartedAt = Date.now();
    await cluster.waitHealthy({ since: restartedAt, timeout: 30000 });
    const healthyAt = Date.now();
    t.diagnostic(`Redis down ${restartedAt - killedAt} ms (${whileDown} sends acked meanwhile); every node's bus healthy ${healthyAt - restartedAt} ms after the restart`);

    // Live pushes on the same sockets: every client gets new ones after the restart, from
    // senders on other nodes too (those come through Redis).
    const nodeOf = s.placement.byUser;
    const crossNode = (c, since) => c.livePushes.filter((p) => p.at > since && nodeOf.get(p.from) !== nodeOf.get(c.uid));
    const base = new Map(s.clients.map((c) => [c, c.acked]));
    await until(
      () => s.clients.every((c) => c.acked >= base.get(c) + 15 && crossNode(c, healthyAt).length >= 10),
      { what: '15 more acks and 10 live pushes from other nodes per user after the restart', timeout: 60000 },
    ).catch((err) => {
      throw new Error(withLogs(`${err.message}: ${s.clients.map((c) => `${c.name} acked +${c.acked - base.get(c)} cross-node live +${crossNode(c, healthyAt).length}`).join(', ')}`));
    });
    const firstCross = Math.min(...s.clients.map((c) => (crossNode(c, restartedAt)[0] || { at: Infinity }).at));
    const stillSyncing = total(s.clients, (c) => c.syncTimes.filter((at) => at > healthyAt + 2000).length);
    await traffic.stop(60000);
    await waitDelivered(s.clients, traffic.ledger, s.members, { timeout: 30000 });
    await sleep(1000);

    const { issued, acked } = traffic.counts();
    t.diagnostic(
      `${acked}/${issued} sends acked; resync pushes ${total(s.clients, (c) => c.resyncs.length)}; ` +
        `SDK syncs ${total(s.clients, (c) => c.syncTimes.length)} (before the kill ${total(s.clients, (c) => c.syncTimes.filter((at) => at < killedAt).length)}, ` +
        `Redis down ${total(s.clients, (c) => c.syncTimes.filter((at) => at >= killedAt && at < restartedAt).length)}, ` +
        `until healthy ${total(s.clients, (c) => c.syncTimes.filter((at) => at >= restartedAt && at < healthyAt).length)}, ` +
        `after ${total(s.clients, (c) => c.syncTimes.filter((at) => at >= healthyAt).length)}); ` +
        `first live push from another node ${firstCross - restartedAt} ms after the restart; ` +
        `live pushes from other nodes after the restart ${total(s.clients, (c) => crossNode(c, restartedAt).length)}; syncs later than 2 s after healthy ${stillSyncing}`,
    );
    assertDelivered(s, traffic);
    for (const c of s.clients) {
      assert.equal(c.opens, 1, `${c.name} opened another socket: ${JSON.stringify(c.states)}`);
      assert.deepEqual(c.states.map((st) => st.state), ['connecting', 'connected'], `${c.name} never left 'connected'`);
    }
  } finally {
    await traffic.stop(60000).catch(() => {});
    cluster.closeClients();
  }
});

/** A real PNG (w x h, random pixels: a new file every run). */
function png(w, h) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const rows = [];
  for (let y = 0; y < h; y++) rows.push(Buffer.from([0]), crypto.randomBytes(w * 3));
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(Buffer.concat(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

test('an image uploaded through node A is served by node B (and through nginx), and sent as a message across nodes', { timeout: 60000 }, async (t) => {
  const [A, B] = cluster.nodes;
  const [alice, bob] = await cluster.createUsers('img', 2);
  await cluster.api('friend_add', { uid: alice.uid, friend_id: bob.uid });
  const bytes = png(32, 32);

  // The SDK's upload, straight to node A (its HTTP base is the WebSocket URL's host).
  const sender = await cluster.client(alice, { url: A.wsUrl });
  const up = await sender.chat.upload(new Blob([bytes], { type: 'image/png' }), { name: 'pixel.png' });
  assert.match(up.url, /^\/files\/[0-9a-f]{64}\.png$/);
  assert.equal(up.mime, 'image/png');
  assert.equal(up.size, bytes.length);

  for (const [where, base] of [[`${B.id} directly`, B.httpUrl], ['nginx', cluster.nginx.httpUrl]]) {
    const res = await fetch(base + up.url);
    assert.equal(res.status, 200, `GET ${up.url} from ${where}`);
    assert.equal(res.headers.get('content-type'), 'image/png');
    assert.deepEqual(Buffer.from(await res.arrayBuffer()), bytes, `the bytes from ${where}`);
  }
  // Node B read it from the shared bucket: neither node keeps files on its own disk.
  for (const n of [A, B]) assert.equal(fs.existsSync(path.join(n.dataDir, 'files')), false, `${n.id} has no local files`);

  // As a chat message from a client on A to one on B, whose URL B serves.
  const receiver = await cluster.client(bob, { url: B.wsUrl });
  const ack = await sender.chat.send({ chat_type: 0, to_id: bob.uid, msg_type: 1, msg: { url: up.url, mime: up.mime, size: up.size } });
  const got = await until(() => (receiver.got.get(ack.conv_id) || [])[0], { what: 'the image message on node B' });
  assert.equal(got.msg.url, up.url);
  const res = await fetch(B.httpUrl + got.msg.url);
  assert.deepEqual(Buffer.from(await res.arrayBuffer()), bytes);
  t.diagnostic(`${bytes.length} bytes uploaded through ${A.id} (${A.addr}), served by ${B.id} (${B.addr}) and nginx`);
  cluster.closeClients();
});
