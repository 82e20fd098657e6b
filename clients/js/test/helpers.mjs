// Test helpers: a real `wshub serve` on a free port, HS256 tokens, the HTTP API, and a TCP proxy
// between client and server that can drop connections, hold new ones, freeze traffic or drop one
// server frame.
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { once } from "node:events";
import { existsSync } from "node:fs";
import net from "node:net";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import WebSocket from "ws";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../../..");
export const WSHUB = process.env.WSHUB_BIN ?? resolve(repo, ".venv/bin/wshub");

export const SECRET = randomBytes(32).toString("hex");
export const API_KEY = randomBytes(16).toString("hex");

/** Node 20 has no global WebSocket: the `ws` package's, without compression (the proxy reads
 * frames). */
export class NodeWebSocket extends WebSocket {
  constructor(url) {
    super(url, { perMessageDeflate: false });
  }
}

let counter = 0;
export const uid = (prefix) => `${prefix}-${process.pid}-${++counter}-${randomBytes(3).toString("hex")}`;

const b64url = (data) => Buffer.from(data).toString("base64url");

/** An HS256 JWT for `sub`, valid `ttl` seconds, signed with SECRET. */
export function token(sub, { ttl = 3600, ...claims } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub, iat: now, exp: now + ttl, ...claims }));
  const signature = createHmac("sha256", SECRET).update(`${header}.${body}`).digest("base64url");
  return `${header}.${body}.${signature}`;
}

async function freePort() {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

/** Start `wshub serve` (memory store); resolves once it logs that it listens. */
export async function startServer(settings = {}) {
  if (!existsSync(WSHUB)) {
    throw new Error(`${WSHUB} not found: create the venv first (make test, or WSHUB_BIN=...)`);
  }
  const port = await freePort();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("WS_")));
  Object.assign(env, {
    WS_HOST: "127.0.0.1",
    WS_PORT: String(port),
    WS_STORE_URL: "memory://",
    WS_JWT_SECRET: SECRET,
    WS_API_KEY: API_KEY,
    WS_LOG_LEVEL: "info",
    ...settings,
  });
  const proc = spawn(WSHUB, ["serve"], { env, cwd: here, stdio: ["ignore", "ignore", "pipe"] });
  // Never outlive the test process, even when it is killed (a test runner's timeout).
  const reap = () => proc.exitCode === null && proc.kill("SIGKILL");
  process.once("exit", reap);
  for (const signal of ["SIGINT", "SIGTERM"]) {
    process.once(signal, () => {
      reap();
      process.exit(128 + (signal === "SIGINT" ? 2 : 15));
    });
  }
  let log = "";
  await new Promise((resolveStarted, reject) => {
    const timer = setTimeout(() => reject(new Error(`wshub serve did not start:\n${log}`)), 20000);
    proc.stderr.setEncoding("utf8");
    proc.stderr.on("data", (chunk) => {
      log += chunk;
      if (log.includes("wshub listening on")) {
        clearTimeout(timer);
        resolveStarted();
      }
    });
    proc.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`wshub serve exited with ${code}:\n${log}`));
    });
  });
  const http = `http://127.0.0.1:${port}`;
  return {
    port,
    url: `ws://127.0.0.1:${port}/ws`,
    http,
    get log() {
      return log;
    },
    /** POST to the HTTP API with the API key; resolves with the JSON answer. */
    async api(path, body) {
      const response = await fetch(`${http}${path}`, {
        method: "POST",
        headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
      return response.json();
    },
    async stop() {
      if (proc.exitCode !== null) return;
      proc.removeAllListeners("exit");
      const exited = once(proc, "exit");
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Reads RFC 6455 frames (unmasked, from the server) out of a byte stream. */
function splitFrames(buffer) {
  const frames = [];
  let at = 0;
  while (buffer.length - at >= 2) {
    let length = buffer[at + 1] & 0x7f;
    let header = 2;
    if (length === 126) {
      if (buffer.length - at < 4) break;
      length = buffer.readUInt16BE(at + 2);
      header = 4;
    } else if (length === 127) {
      if (buffer.length - at < 10) break;
      length = Number(buffer.readBigUInt64BE(at + 2));
      header = 10;
    }
    if (buffer[at + 1] & 0x80) header += 4; // masked (not from a server, but be exact)
    if (buffer.length - at < header + length) break;
    frames.push({ bytes: buffer.subarray(at, at + header + length), payload: buffer.subarray(at + header, at + header + length) });
    at += header + length;
  }
  return { frames, rest: buffer.subarray(at) };
}

/**
 * A TCP proxy to `port`. `url` is the WebSocket URL through it.
 * - `dropAll()`: destroy every proxied connection (the client sees 1006).
 * - `hold = true`: new connections wait (accepted, not forwarded) until `release()`;
 *   `held()` resolves when one is waiting.
 * - `freeze()`: stop forwarding on the live connections, both ways, without closing them.
 * - `dropFrame(predicate)`: drop the next server frame whose text payload satisfies it.
 */
export async function startProxy(port) {
  const pairs = new Set();
  const waiting = [];
  let heldWaiters = [];
  let dropper = null;
  const server = net.createServer((client) => {
    const start = () => {
      const upstream = net.connect(port, "127.0.0.1");
      const pair = { client, upstream, frozen: false, handshaken: false, pending: Buffer.alloc(0) };
      pairs.add(pair);
      client.on("data", (data) => {
        if (!pair.frozen) upstream.write(data);
      });
      upstream.on("data", (data) => {
        if (pair.frozen) return;
        if (!pair.handshaken) {
          // The HTTP 101 answer goes as it is; frames start after its blank line.
          pair.pending = Buffer.concat([pair.pending, data]);
          const end = pair.pending.indexOf("\r\n\r\n");
          if (end < 0) return;
          client.write(pair.pending.subarray(0, end + 4));
          data = pair.pending.subarray(end + 4);
          pair.pending = Buffer.alloc(0);
          pair.handshaken = true;
        }
        if (dropper === null) {
          if (pair.pending.length > 0) {
            client.write(pair.pending);
            pair.pending = Buffer.alloc(0);
          }
          client.write(data);
          return;
        }
        const { frames, rest } = splitFrames(Buffer.concat([pair.pending, data]));
        pair.pending = Buffer.from(rest);
        for (const frame of frames) {
          if (dropper !== null && dropper.predicate(frame.payload.toString("utf8"))) {
            const { resolve: dropped } = dropper;
            dropper = null;
            dropped(frame.payload.toString("utf8"));
            continue;
          }
          client.write(frame.bytes);
        }
      });
      const end = () => {
        pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on("close", end);
      upstream.on("close", end);
      client.on("error", end);
      upstream.on("error", end);
    };
    if (proxy.hold) {
      client.pause();
      waiting.push(() => {
        client.resume();
        start();
      });
      for (const resolveHeld of heldWaiters.splice(0)) resolveHeld();
    } else {
      start();
    }
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const proxy = {
    url: `ws://127.0.0.1:${server.address().port}/ws`,
    hold: false,
    dropAll() {
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
    },
    held() {
      if (waiting.length > 0) return Promise.resolve();
      return new Promise((resolveHeld) => heldWaiters.push(resolveHeld));
    },
    release() {
      proxy.hold = false;
      for (const go of waiting.splice(0)) go();
    },
    freeze() {
      for (const pair of pairs) pair.frozen = true;
    },
    dropFrame(predicate) {
      return new Promise((resolveDropped) => {
        dropper = { predicate, resolve: resolveDropped };
      });
    },
    async close() {
      proxy.dropAll();
      heldWaiters = [];
      server.close();
      await once(server, "close");
    },
  };
  return proxy;
}

/** Resolves with the detail of the next `name` event of `target` satisfying `predicate`. */
export function nextEvent(target, name, predicate = () => true, timeout = 10000) {
  return new Promise((resolveEvent, reject) => {
    const timer = setTimeout(() => {
      target.removeEventListener(name, listener);
      reject(new Error(`no ${name} event within ${timeout} ms`));
    }, timeout);
    const listener = (event) => {
      if (!predicate(event.detail)) return;
      clearTimeout(timer);
      target.removeEventListener(name, listener);
      resolveEvent(event.detail);
    };
    target.addEventListener(name, listener);
  });
}

/** A queue of what a handler received: `next()` resolves with the next item, `take(n)` with n. */
export function inbox(timeout = 10000) {
  const items = [];
  const waiters = [];
  return {
    items,
    push(item) {
      items.push(item);
      while (waiters.length > 0 && waiters[0].count <= items.length) {
        const waiter = waiters.shift();
        clearTimeout(waiter.timer);
        waiter.resolve(items.slice(0, waiter.count));
      }
    },
    /** Resolves with the first `count` items once there are that many. */
    until(count) {
      if (items.length >= count) return Promise.resolve(items.slice(0, count));
      return new Promise((resolveItems, reject) => {
        const waiter = { count, resolve: resolveItems, timer: null };
        waiter.timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(waiter), 1);
          reject(new Error(`got ${items.length} of ${count} items within ${timeout} ms: ${JSON.stringify(items)}`));
        }, timeout);
        waiters.push(waiter);
      });
    },
  };
}
