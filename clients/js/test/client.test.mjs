// @wshub/client against a real `wshub serve` (memory store) started here, with ws as the
// WebSocket class (Node 20 has none built in).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  DEFAULT_RECONNECT,
  HEARTBEAT_CLOSE_CODE,
  WshubClient,
  WshubError,
  backoffDelay,
  heartbeatTiming,
  shouldReconnect,
} from "../dist/index.js";
import { NodeWebSocket, inbox, nextEvent, startProxy, startServer, token, uid } from "./helpers.mjs";

let server;
const clients = [];
const proxies = [];

before(async () => {
  server = await startServer();
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await Promise.all(proxies.map((p) => p.close()));
  await server?.stop();
});

function client(url, options = {}) {
  const c = new WshubClient(url, {
    WebSocket: NodeWebSocket,
    reconnect: { minDelay: 20, maxDelay: 50 },
    requestTimeout: 5000,
    ...options,
  });
  clients.push(c);
  return c;
}

async function proxy() {
  const p = await startProxy(server.port);
  proxies.push(p);
  return p;
}

describe("pure helpers", () => {
  test("backoff: full jitter between minDelay and the capped exponential", () => {
    assert.equal(backoffDelay(0, { minDelay: 100, maxDelay: 1000 }, () => 0), 100);
    assert.equal(backoffDelay(0, { minDelay: 100, maxDelay: 1000 }, () => 0.5), 150);
    assert.equal(backoffDelay(10, { minDelay: 100, maxDelay: 1000 }, () => 0.999999) < 1000, true);
    assert.equal(backoffDelay(5000, DEFAULT_RECONNECT, () => 1), DEFAULT_RECONNECT.maxDelay);
  });

  test("close codes: no reconnect after policy/protocol errors or 4002 unless asked", () => {
    for (const code of [1002, 1003, 1007, 1008, 1010, 4002]) assert.equal(shouldReconnect(code), false);
    for (const code of [1000, 1001, 1006, 1011, 1012, 1013, 4000, 4001]) assert.equal(shouldReconnect(code), true);
    assert.equal(shouldReconnect(4002, { ...DEFAULT_RECONNECT, reconnectOnDisconnect: true }), true);
  });

  test("heartbeat timing derives from the server's interval and rejects nonsense", () => {
    assert.deepEqual(heartbeatTiming(true, 30000), { interval: 30000, timeout: 15000 });
    assert.deepEqual(heartbeatTiming(true, 1000), { interval: 1000, timeout: 2000 });
    assert.deepEqual(heartbeatTiming({ interval: 500 }, 30000), { interval: 500, timeout: 2000 });
    assert.equal(heartbeatTiming(false), false);
    assert.throws(() => heartbeatTiming({ interval: -1 }), RangeError);
    assert.throws(() => new WshubClient("ws://x/ws", { WebSocket: NodeWebSocket, heartbeat: { timeout: 0 } }), RangeError);
  });
});

describe("against a real server", () => {
  test("connect, authenticate, subscribe, publish, chat and notifications", async () => {
    const alice = uid("alice");
    const bob = uid("bob");
    const channel = uid("news");
    const a = client(server.url, { token: token(alice) });
    const b = client(server.url, { token: () => Promise.resolve(token(bob)) });
    const published = inbox();
    const seenByOn = inbox();
    const chats = inbox();
    const notes = inbox();
    a.on("message", (payload) => seenByOn.push(payload.offset));
    a.on("chat", (payload, envelope) => chats.push({ from: payload.from, message: payload.message, offset: envelope.offset }));
    a.on("notification", (payload) => notes.push(payload.title));
    const subscribed = a.subscribe(channel, (payload) => published.push(payload));

    const welcome = await a.connect();
    assert.equal(welcome.protocol, 1);
    assert.equal(a.state, "open");
    assert.equal(a.userId, alice);
    assert.equal((await subscribed).channel, channel);
    assert.deepEqual(a.subscriptions.map((s) => s.channel), [channel]);

    assert.equal(await a.publish(channel, { n: 1 }), 1);
    assert.equal(await a.publish(channel, { n: 2 }), 2);
    const got = await published.until(2);
    assert.deepEqual(got.map((m) => [m.offset, m.data.n, m.from]), [[1, 1, alice], [2, 2, alice]]);
    assert.deepEqual(await seenByOn.until(2), [1, 2]);

    await b.connect();
    const receipt = await b.chat(alice, "hi there");
    assert.equal(receipt.delivered, true);
    assert.equal(receipt.recipientId, alice);
    const [chat] = await chats.until(1);
    assert.equal(chat.from, bob);
    assert.equal(chat.message, "hi there");
    assert.equal(typeof chat.offset, "number");

    await server.api(`/api/users/${alice}/notify`, { title: "Hello", message: "from the API" });
    assert.deepEqual(await notes.until(1), ["Hello"]);

    const pong = await a.ping();
    assert.equal(typeof pong.timestamp, "number");
    assert.equal(typeof pong.rtt, "number");
    assert.deepEqual(a.userPosition, { offset: 2, epoch: a.userPosition.epoch });
  });

  test("errors reject with the server's code; requests before connect() with not_connected", async () => {
    const c = client(server.url, { token: token(uid("carol")) });
    await assert.rejects(c.publish("x", 1), (e) => e instanceof WshubError && e.code === "not_connected");
    await c.connect();
    await assert.rejects(c.request("no_such_type", {}), (e) => e.code === "unknown_type" && /no_such_type/.test(e.message));
    await assert.rejects(c.publish(uid("not-subscribed"), 1), (e) => e.code === "forbidden");
    await assert.rejects(c.subscribe("bad channel"), (e) => e.code === "invalid_message");
    await assert.rejects(c.subscribe(`private-${uid("p")}`), (e) => e.code === "forbidden");
    const anonymous = client(server.url);
    await anonymous.connect();
    await assert.rejects(anonymous.chat("x", "hi"), (e) => e.code === "not_authenticated");
  });

  test("a dropped connection reconnects and resumes the channel and the user stream, once each, in order", async () => {
    const p = await proxy();
    const user = uid("dave");
    const channel = uid("feed");
    const c = client(p.url, { token: () => token(user) });
    const published = inbox();
    const notes = inbox();
    const frames = [];
    c.addEventListener("frame", (e) => frames.push(e.detail));
    c.on("notification", (payload, envelope) => notes.push([envelope.offset, payload.title]));
    const subscribed = c.subscribe(channel, (payload) => published.push(payload.offset));
    await c.connect();
    await subscribed;
    await server.api("/api/publish", { channel, data: "one" });
    await server.api(`/api/users/${user}/notify`, { title: "n1", message: "-" });
    await published.until(1);
    await notes.until(1);

    // Drop the connection and keep the client away while the server gets more.
    p.hold = true;
    const reconnecting = nextEvent(c, "reconnecting");
    p.dropAll();
    const { code } = await reconnecting;
    assert.equal(code, 1006);
    await p.held();
    for (const data of ["two", "three"]) await server.api("/api/publish", { channel, data });
    for (const title of ["n2", "n3"]) await server.api(`/api/users/${user}/notify`, { title, message: "-" });
    const reopened = nextEvent(c, "open");
    p.release();
    assert.equal((await reopened).reconnected, true);
    await server.api("/api/publish", { channel, data: "four" });

    assert.deepEqual(await published.until(4), [1, 2, 3, 4]);
    assert.deepEqual((await notes.until(3)).map(([, title]) => title), ["n1", "n2", "n3"]);
    const resume = frames.find((f) => f.direction === "out" && f.message?.type === "subscribe" && f.message.payload.since !== undefined);
    assert.equal(resume.message.payload.since, 1);
    assert.equal(c.subscriptions[0].recovered, true);
    assert.equal(c.userRecovered, true);
    assert.equal(published.items.length, 4);
    assert.equal(notes.items.length, 3);
  });

  test("a frame lost on a live channel is replayed in order on the same connection, with one gap event", async () => {
    const p = await proxy();
    const user = uid("erin");
    const channel = uid("live");
    const c = client(p.url, { token: token(user) });
    const published = inbox();
    const gaps = [];
    const duplicates = [];
    c.addEventListener("gap", (e) => gaps.push(e.detail));
    c.addEventListener("frame", (e) => e.detail.duplicate && duplicates.push(e.detail.message.payload.offset));
    const subscribed = c.subscribe(channel, (payload) => published.push(payload.data));
    await c.connect();
    await subscribed;
    const connection = c.connectionId;
    await server.api("/api/publish", { channel, data: 1 });
    await published.until(1);

    const dropped = p.dropFrame((text) => text.includes('"type":"message"') && text.includes('"data":2'));
    await server.api("/api/publish", { channel, data: 2 });
    await dropped;
    await server.api("/api/publish", { channel, data: 3 });
    await server.api("/api/publish", { channel, data: 4 });

    assert.deepEqual(await published.until(4), [1, 2, 3, 4]);
    assert.equal(c.connectionId, connection, "filled on the same connection");
    assert.equal(gaps.length, 1);
    assert.deepEqual({ ...gaps[0], sinceEpoch: undefined, epoch: undefined }, {
      stream: "channel",
      name: channel,
      since: 1,
      sinceEpoch: undefined,
      offset: 3,
      epoch: undefined,
      missing: [2, 2],
      lost: false,
    });
    assert.ok(duplicates.includes(3), "the replay's copy of what was held is dropped");
    assert.equal(c.subscriptions[0].recovered, true);
  });

  test("the heartbeat finds a frozen connection dead, reconnects, and the stream resumes", async () => {
    const p = await proxy();
    const channel = uid("hb");
    const c = client(p.url, { token: token(uid("frank")), heartbeat: { interval: 150, timeout: 150 } });
    const published = inbox();
    const pings = [];
    c.addEventListener("frame", (e) => e.detail.direction === "out" && e.detail.message?.type === "ping" && pings.push(e.detail.message.id));
    const subscribed = c.subscribe(channel, (payload) => published.push(payload.data));
    await c.connect();
    await subscribed;
    assert.deepEqual(c.heartbeat, { interval: 150, timeout: 150 });
    // Idle: pinged and answered, still open.
    await nextEvent(c, "frame", (d) => d.direction === "in" && d.message?.type === "pong" && d.message.id?.includes("-hb-"));
    assert.equal(c.state, "open");

    const reconnecting = nextEvent(c, "reconnecting");
    const reopened = nextEvent(c, "open");
    p.freeze();
    await server.api("/api/publish", { channel, data: "while frozen" });
    const { code, reason } = await reconnecting;
    assert.equal(code, HEARTBEAT_CLOSE_CODE);
    assert.equal(reason, "heartbeat timeout");
    assert.deepEqual(await published.until(1), ["while frozen"]);
    assert.equal((await reopened).reconnected, true);
    assert.equal(c.state, "open");
    assert.ok(pings.length >= 2);
  });

  test("token_expiring: a token function is asked again and the connection refreshed in place", async () => {
    const user = uid("gina");
    let calls = 0;
    const c = client(server.url, {
      token: async () => {
        calls += 1;
        return token(user, { ttl: calls === 1 ? 5 : 3600 });
      },
    });
    const refreshed = nextEvent(c, "tokenrefresh");
    const expiring = [];
    c.on("token_expiring", (payload) => expiring.push(payload.expiresAt));
    await c.connect();
    const { payload, expiresAt } = await refreshed;
    assert.equal(payload.refreshed, true);
    assert.equal(payload.userId, user);
    assert.equal(typeof expiresAt, "number");
    assert.equal(expiring.length, 1);
    assert.equal(calls, 2);
    assert.equal(c.state, "open");
    await c.ping();
  });

  test("a refused refresh ends in 4001; the client reconnects with a fresh token and resumes", async () => {
    const p = await proxy();
    const user = uid("hank");
    const channel = uid("t");
    let calls = 0;
    const c = client(p.url, {
      token: () => {
        calls += 1;
        if (calls === 1) return token(user, { ttl: 2 });
        if (calls === 2) return token(uid("someone-else")); // refused: another user
        return token(user);
      },
    });
    const published = inbox();
    const errors = [];
    c.addEventListener("error", (e) => errors.push(e.detail.error.code));
    const subscribed = c.subscribe(channel, (payload) => published.push(payload.data));
    await c.connect();
    await subscribed;
    await server.api("/api/publish", { channel, data: "before" });
    await published.until(1);

    const closed = nextEvent(c, "close", () => true, 8000);
    c.addEventListener("close", () => (p.hold = true), { once: true });
    const close = await closed;
    assert.equal(close.code, 4001);
    assert.equal(close.willReconnect, true);
    assert.deepEqual(errors, ["forbidden"]);
    await p.held();
    await server.api("/api/publish", { channel, data: "away" });
    const reopened = nextEvent(c, "open");
    p.release();
    await reopened;
    assert.equal(c.userId, user);
    assert.deepEqual(await published.until(2), ["before", "away"]);
    assert.equal(calls, 3);
    assert.equal(c.lastClose.code, 4001);
  });

  test("4002 (disconnected by the server) ends the client; reconnectOnDisconnect reconnects", async () => {
    const user = uid("ivy");
    const c = client(server.url, { token: token(user) });
    await c.connect();
    const closedState = nextEvent(c, "statechange", (d) => d.state === "closed");
    await server.api(`/api/users/${user}/disconnect`, { reason: "bye" });
    await closedState;
    assert.deepEqual(c.lastClose, { code: 4002, reason: "bye" });
    await assert.rejects(c.ping(), (e) => e.code === "not_connected");

    const other = uid("jack");
    const d = client(server.url, { token: token(other), reconnect: { minDelay: 20, maxDelay: 50, reconnectOnDisconnect: true } });
    await d.connect();
    const reopened = nextEvent(d, "open");
    await server.api(`/api/users/${other}/disconnect`, { reason: "again" });
    assert.equal((await reopened).reconnected, true);
  });

  test("close() stops for good: no reconnect, requests reject", async () => {
    const c = client(server.url);
    await c.connect();
    const states = [];
    c.addEventListener("statechange", (e) => states.push(e.detail.state));
    await c.close();
    assert.deepEqual(states, ["closing", "closed"]);
    assert.equal(c.lastClose.code, 1000);
    await assert.rejects(c.ping(), (e) => e.code === "not_connected");
  });
});
