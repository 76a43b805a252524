// Starts the real wxchat server binary for integration tests: a temp data dir, a config with
// port 0, the bound address read from data_dir/server.pid (line 2). Every child and temp dir
// is removed at process exit too, so a failing test leaves nothing behind.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { until } from './wait.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const SERVER_BIN = process.env.WXCHAT_TEST_SERVER_BIN
  ? path.resolve(process.env.WXCHAT_TEST_SERVER_BIN)
  : path.resolve(here, '../../../../target/debug/server');
export const API_KEY = 'sdk-test-api-key';

const live = new Set();
process.on('exit', () => {
  for (const s of live) s.cleanupSync();
});
// A test run interrupted (Ctrl-C, a CI timeout) exits through here too; 'exit' alone is not
// emitted on a signal.
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    for (const s of live) s.cleanupSync();
    process.exit(130);
  });
}

/** The address in a server's pid file (line 2) once the file names `pid` (line 1), else null. */
export function addressOf(pidFile, pid) {
  let text;
  try {
    text = fs.readFileSync(pidFile, 'utf8');
  } catch {
    return null;
  }
  const [filePid, addr] = text.split('\n').map((l) => l.trim());
  return Number(filePid) === pid && addr ? addr : null;
}

export class TestServer {
  constructor(extraToml = '') {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wxchat-sdk-'));
    this.dataDir = path.join(this.dir, 'data');
    this.configPath = path.join(this.dir, 'server.toml');
    this.extraToml = extraToml;
    this.child = null;
    this.addr = null;
    this.stderr = '';
    live.add(this);
  }

  writeConfig(listen) {
    const toml = [
      '[server]',
      `listen = "${listen}"`,
      `data_dir = ${JSON.stringify(this.dataDir)}`,
      'log_level = "warn"',
      '[admin]',
      'listen = ""',
      '[api]',
      `key = "${API_KEY}"`,
      '[chat]',
      'max_msgs_per_sec = 0',
      this.extraToml,
    ].join('\n');
    fs.writeFileSync(this.configPath, toml + '\n');
  }

  /** Starts on `listen` (port 0 the first time) and waits for the pid file naming this child. */
  async start(listen = '127.0.0.1:0') {
    if (!fs.existsSync(SERVER_BIN)) {
      throw new Error(`no server binary at ${SERVER_BIN}: run cargo build --bin server or set WXCHAT_TEST_SERVER_BIN`);
    }
    this.writeConfig(listen);
    // The server reads WXCHAT_* variables as configuration and refuses unknown ones, so the
    // test's own (WXCHAT_TEST_SERVER_BIN) and a developer's must not reach it.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WXCHAT_')));
    const child = spawn(SERVER_BIN, ['run', '--config', this.configPath], { stdio: ['ignore', 'ignore', 'pipe'], env });
    this.child = child;
    // Neither the child nor its pipe keeps the test process alive: a test that fails without
    // stopping its server still lets the process end, and the 'exit' handler kills the child.
    child.unref();
    child.stderr.unref();
    child.stderr.on('data', (d) => {
      this.stderr = (this.stderr + d.toString()).slice(-4000);
    });
    let exited = null;
    child.on('exit', (code, signal) => {
      exited = { code, signal };
    });
    const pidFile = path.join(this.dataDir, 'server.pid');
    await until(() => {
      if (exited) throw new Error(`server exited (${JSON.stringify(exited)}): ${this.stderr}`);
      const addr = addressOf(pidFile, child.pid);
      return addr ? (this.addr = addr) : false;
    }, { what: 'the server pid file', timeout: 15000 });
    this.port = Number(this.addr.split(':').pop());
    return this.addr;
  }

  get wsUrl() {
    return `ws://${this.addr}/ws`;
  }

  get httpUrl() {
    return `http://${this.addr}`;
  }

  /** SIGKILL and wait for the exit: no clean shutdown, no close frames. */
  async kill9() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((resolve) => child.once('exit', resolve));
    child.ref(); // waiting for its exit must keep the event loop alive (see start())
    child.kill('SIGKILL');
    await gone;
  }

  /** Starts again on the same port (the restart clients reconnect to). */
  restartSamePort() {
    return this.start(`127.0.0.1:${this.port}`);
  }

  async stop() {
    await this.kill9();
    this.cleanupSync();
  }

  cleanupSync() {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) {
      try {
        this.child.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
    live.delete(this);
  }

  /** POST /api/server/<action> with the API key; resolves with `data`. */
  async api(action, body) {
    const res = await fetch(`${this.httpUrl}/api/server/${action}`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    const json = await res.json();
    if (json.code !== 200) throw new Error(`${action}: ${res.status} ${JSON.stringify(json)}`);
    return json.data;
  }
}
