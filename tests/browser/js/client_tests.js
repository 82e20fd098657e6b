// Tests of /wshub.js that need no server: the client talks to a scripted fake WebSocket, fed
// with the golden frames of tests/golden/. Each exported async function is one test; it throws
// on failure and returns a short summary. test_js_client.py runs them in Chromium, serving this
// file at /__tests__/client_tests.js.

import {
  StreamState,
  WshubClient,
  WshubError,
  backoffDelay,
  resolveUrl,
  shouldReconnect,
} from "/wshub.js";

// -- helpers ---------------------------------------------------------------------------------

function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

function assertEqual(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

/** Await `predicate()` becoming truthy, checking after every macrotask; fail after `timeout`. */
async function until(predicate, what, timeout = 2000) {
  const deadline = performance.now() + timeout;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
}

async function rejection(promise, what) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error(`${what} resolved; it should have rejected`);
}

const kind = (v) => (v === null ? "null" : Array.isArray(v) ? "array" : typeof v);

/** The golden rule of tests/golden/README.md (golden.py `mismatches` is its Python twin). */
export function mismatches(golden, actual) {
  const problems = [];
  const variable = new Set(golden.variable);
  const compare = (expected, value, path) => {
    const where = path || "frame";
    if (kind(expected) !== kind(value)) {
      problems.push(`${where}: expected ${kind(expected)}, got ${JSON.stringify(value)}`);
      return;
    }
    if (variable.has(path)) return;
    if (kind(expected) === "object") {
      for (const key of Object.keys(expected)) {
        if (!(key in value)) problems.push(`${where}: missing key '${key}'`);
        else compare(expected[key], value[key], path ? `${path}.${key}` : key);
      }
      for (const key of Object.keys(value)) {
        if (!(key in expected)) problems.push(`${where}: unexpected key '${key}'`);
      }
    } else if (kind(expected) === "array") {
      if (expected.length !== value.length) {
        problems.push(`${where}: expected ${expected.length} items, got ${JSON.stringify(value)}`);
        return;
      }
      expected.forEach((item, i) => compare(item, value[i], `${path}[${i}]`));
    } else if (expected !== value) {
      problems.push(`${where}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(value)}`);
    }
  };
  compare(golden.frame, actual, "");
  return problems;
}

function assertGolden(goldens, name, actual) {
  const golden = goldens[name];
  assert(golden, `golden ${name} exists`);
  const problems = mismatches(golden, actual);
  if (problems.length) {
    throw new Error(`${name} does not match ${JSON.stringify(actual)}:\n  ${problems.join("\n  ")}`);
  }
  return actual;
}

/** A server frame from golden `name`, as the reply to `request` (its id), with changes. */
function reply(goldens, name, request = null, payload = {}) {
  const frame = structuredClone(goldens[name].frame);
  if (request !== null) frame.id = request.id;
  Object.assign(frame.payload, payload);
  return frame;
}

/** A WebSocket class whose instances the test drives: `deliver(frame)` plays the server. */
function fakeSocketClass() {
  class FakeSocket {
    static instances = [];

    constructor(url) {
      this.url = url;
      this.readyState = 1;
      this.sent = [];
      this.closedWith = null;
      this.onmessage = null;
      this.onclose = null;
      FakeSocket.instances.push(this);
    }

    send(text) {
      if (this.readyState !== 1) throw new Error("send on a closed fake socket");
      this.sent.push(JSON.parse(text));
    }

    close(code = 1005, reason = "") {
      this.closedWith = [code, reason];
      this.drop(code, reason);
    }

    // -- the test's side --

    deliver(frame) {
      this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }

    drop(code, reason = "") {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ code, reason, wasClean: code !== 1006 });
    }

    /** The `n`th frame sent (0-based), once it has been. */
    async nth(n, what = `frame #${n}`) {
      return until(() => this.sent[n], `the client to send ${what}`);
    }

    static async nth(n) {
      return until(() => FakeSocket.instances[n], `socket #${n}`);
    }
  }
  return FakeSocket;
}

/** A client on a fake socket, welcomed; `token` makes it authenticate (answered here). */
async function connected(goldens, options = {}) {
  const Socket = fakeSocketClass();
  const client = new WshubClient("ws://fake.test/ws", {
    reconnect: false,
    requestTimeout: 1000,
    ...options,
    WebSocket: Socket,
  });
  const ready = client.connect();
  const socket = await Socket.nth(0);
  socket.deliver(goldens["server/welcome"].frame);
  if (options.token) {
    const auth = await socket.nth(0, "authenticate");
    socket.deliver(reply(goldens, "server/authenticated", auth));
  }
  await ready;
  return { client, socket, Socket };
}

// -- tests -----------------------------------------------------------------------------------

/** What the client sends is the golden client frames; each request resolves with its reply. */
export async function requestsMatchGoldenFrames(goldens) {
  const Socket = fakeSocketClass();
  const client = new WshubClient("ws://fake.test/ws", { token: "tok", WebSocket: Socket });
  const ready = client.connect();
  const socket = await Socket.nth(0);
  assertEqual(client.state, "connecting", "state before welcome");
  socket.deliver(goldens["server/welcome"].frame);

  const auth = assertGolden(goldens, "client/authenticate", await socket.nth(0));
  assertEqual(auth.payload.token, "tok", "token sent");
  socket.deliver(reply(goldens, "server/authenticated", auth));
  const welcome = await ready;
  assertEqual(welcome.protocol, 1, "connect() resolves with the welcome payload");
  assertEqual([client.state, client.userId, client.ready], ["open", "alice", true], "state");

  let sent = 1;
  async function exchange(call, clientGolden, serverGolden) {
    const result = call();
    const request = assertGolden(goldens, clientGolden, await socket.nth(sent++));
    socket.deliver(reply(goldens, serverGolden, request));
    return result;
  }

  const subscribed = await exchange(() => client.subscribe("news"), "client/subscribe", "server/subscribed");
  assertEqual(subscribed.channel, "news", "subscribe() resolves with the subscribed payload");
  const offset = await exchange(
    () => client.publish("news", { hello: "world" }),
    "client/publish",
    "server/published",
  );
  assertEqual(offset, 1, "publish() resolves with the offset");
  const receipt = await exchange(() => client.chat("bob", "hi bob"), "client/chat", "server/chat_received");
  assertEqual([receipt.delivered, receipt.queued], [false, true], "chat() resolves with the receipt");
  const pong = await exchange(() => client.ping(), "client/ping", "server/pong");
  assert(typeof pong.timestamp === "number" && pong.rtt >= 0, "ping() resolves with timestamp and rtt");
  const users = await exchange(
    () => client.presence("presence-lobby"),
    "client/presence",
    "server/presence",
  );
  assertEqual(users, ["alice"], "presence() resolves with the users");
  await exchange(() => client.unsubscribe("news"), "client/unsubscribe", "server/unsubscribed");
  assertEqual(client.subscriptions, [], "no subscription left");

  const refused = client.publish("news", 1);
  const request = await socket.nth(sent++);
  socket.deliver(reply(goldens, "server/error-forbidden", request));
  const error = await rejection(refused, "publish() answered by error");
  assert(error instanceof WshubError, "rejects with a WshubError");
  assertEqual([error.code, error.id], ["forbidden", request.id], "error code and id");
  assert(error.message.includes("Subscribe to 'news'"), "error message is the server's");
  return `${sent} requests`;
}

/** Server frames reach subscription handlers and on() handlers once; duplicates are dropped. */
export async function serverFramesReachHandlers(goldens) {
  const { client, socket } = await connected(goldens);
  const seen = [];
  const record = (label) => (payload, envelope) => seen.push([label, payload, envelope]);
  const subscribing = client.subscribe("news", record("news"));
  const request = await socket.nth(0);
  socket.deliver(reply(goldens, "server/subscribed", request));
  await subscribing;
  for (const type of ["message", "chat", "notification", "system_message", "presence_join", "error"]) {
    client.on(type, record(type));
  }
  const any = [];
  const off = client.on("*", (payload, envelope) => any.push(envelope.type));
  const duplicates = [];
  client.addEventListener("frame", ({ detail }) => {
    if (detail.duplicate) duplicates.push(detail.message.type);
  });

  for (const name of [
    "server/message", "server/message", // the same offset twice: the second is a duplicate
    "server/chat", "server/chat",
    "server/notification",
    "server/system_message",
    "server/presence_join",
    "server/error-invalid_json",
  ]) {
    socket.deliver(goldens[name].frame);
  }
  off();
  socket.deliver(goldens["server/system_message"].frame);

  assertEqual(
    seen.map(([label]) => label),
    ["news", "message", "chat", "notification", "system_message", "presence_join", "error", "system_message"],
    "handlers called",
  );
  assertEqual(seen[0][1].data, { hello: "world" }, "a subscription handler gets the message payload");
  assertEqual(seen[2][2].offset, 1, "on() handlers get the envelope too");
  assertEqual(seen[6][1].code, "invalid_json", "error frames without a request reach on('error')");
  assertEqual(duplicates, ["message", "chat"], "duplicates flagged on the frame event");
  assertEqual(any.length, 6, "'*' sees every delivered message until removed");
  return "ok";
}

/** After a drop the client re-authenticates and re-subscribes with since/epoch (the golden
 * resume frames), skips the replayed messages it has seen, and delivers the rest once. */
export async function resumesAfterReconnect(goldens) {
  const Socket = fakeSocketClass();
  const client = new WshubClient("ws://fake.test/ws", {
    token: "tok",
    reconnect: { minDelay: 1, maxDelay: 5 },
    WebSocket: Socket,
  });
  const news = [];
  const chats = [];
  const notes = [];
  const events = [];
  client.subscribe("news", (payload) => news.push(payload.offset));
  client.on("chat", () => chats.push("chat"));
  client.on("notification", (payload, envelope) => notes.push(envelope.offset));
  for (const name of ["open", "close", "reconnecting", "gap"]) {
    client.addEventListener(name, ({ detail }) => events.push([name, detail]));
  }
  const ready = client.connect();

  const first = await Socket.nth(0);
  first.deliver(goldens["server/welcome"].frame);
  const auth = await first.nth(0);
  const sub = await first.nth(1);
  assertEqual([auth.type, sub.type], ["authenticate", "subscribe"], "join: authenticate, then subscribe");
  assertGolden(goldens, "client/subscribe", sub);
  first.deliver(reply(goldens, "server/authenticated", auth, { userId: "bob" }));
  first.deliver(reply(goldens, "server/subscribed", sub));
  await ready;
  first.deliver(goldens["server/message"].frame); // news offset 1
  first.deliver(goldens["server/chat"].frame); // user stream offset 1
  assertEqual(client.userPosition.offset, 1, "user position");

  first.drop(1012, "restart");
  assertEqual(client.state, "reconnecting", "state after an unexpected close");
  const second = await Socket.nth(1);
  second.deliver(goldens["server/welcome"].frame);
  const reauth = assertGolden(goldens, "client/authenticate-resume", await second.nth(0));
  const resub = assertGolden(goldens, "client/subscribe-resume", await second.nth(1));
  const epoch = goldens["server/subscribed"].frame.payload.epoch;
  assertEqual([reauth.payload.since, reauth.payload.epoch], [1, epoch], "user stream resumed after 1");
  assertEqual([resub.payload.since, resub.payload.epoch], [1, epoch], "channel resumed after 1");

  second.deliver(reply(goldens, "server/authenticated-resumed", reauth));
  second.deliver(goldens["server/chat"].frame); // offset 1 again: seen, dropped
  second.deliver(goldens["server/notification"].frame); // offset 2: new
  second.deliver(reply(goldens, "server/subscribed-resumed", resub, { offset: 2 }));
  second.deliver(goldens["server/message"].frame); // offset 1 again: dropped
  const next = structuredClone(goldens["server/message"].frame);
  next.payload.offset = 2;
  second.deliver(next);
  second.deliver(next); // and a duplicate of the new one

  await until(() => client.state === "open", "the client to be open again");
  assertEqual(news, [1, 2], "channel messages, once each");
  assertEqual(chats.length, 1, "the chat, once");
  assertEqual(notes, [2], "the notification missed while away");
  assertEqual(client.userPosition.offset, 2, "user position after the resume");
  assertEqual(client.subscriptions[0].offset, 2, "channel position after the resume");
  assertEqual(
    events.map(([name]) => name),
    ["open", "close", "reconnecting", "open"],
    "lifecycle events",
  );
  assertEqual(events[1][1].willReconnect, true, "close says it will reconnect");
  assertEqual(events[3][1].reconnected, true, "the second open is a reconnection");
  await client.close();
  assertEqual([client.state, Socket.instances.length], ["closed", 2], "closed for good");

  // connect() after close() starts over where the client stood.
  const again = client.connect();
  const third = await Socket.nth(2);
  third.deliver(goldens["server/welcome"].frame);
  const [auth3, sub3] = [await third.nth(0), await third.nth(1)];
  assertEqual([auth3.payload.since, sub3.payload.since], [2, 2], "positions kept across close()");
  third.deliver(reply(goldens, "server/authenticated-resumed", auth3));
  third.deliver(reply(goldens, "server/subscribed-resumed", sub3, { offset: 2 }));
  await again;
  await client.close();
  return "ok";
}

/** Another epoch (the server lost the stream) replays everything kept; `gap` tells the app. */
export async function anotherEpochStartsOver(goldens) {
  const { client, socket, Socket } = await connected(goldens, {
    reconnect: { minDelay: 1, maxDelay: 5 },
  });
  const offsets = [];
  const gaps = [];
  client.addEventListener("gap", ({ detail }) => gaps.push(detail));
  const subscribing = client.subscribe("news", (payload) => offsets.push(payload.offset));
  socket.deliver(reply(goldens, "server/subscribed", await socket.nth(0), { offset: 5 }));
  await subscribing;
  const six = structuredClone(goldens["server/message"].frame);
  six.payload.offset = 6;
  socket.deliver(six);
  socket.drop(1001, "going away");

  const second = await Socket.nth(1);
  second.deliver(goldens["server/welcome"].frame);
  const resub = await second.nth(0);
  assertEqual(resub.payload.since, 6, "resumes after 6");
  second.deliver(reply(goldens, "server/subscribed", resub, { offset: 1, epoch: "new", recovered: false }));
  second.deliver(goldens["server/message"].frame); // offset 1 of the new epoch
  await until(() => client.state === "open", "open again");
  assertEqual(offsets, [6, 1], "the new epoch's messages are not taken for duplicates");
  assertEqual(gaps.map((g) => [g.stream, g.name, g.since, g.epoch]), [["channel", "news", 6, "new"]], "gap");
  await client.close();
  return "ok";
}

/** No reconnect after close(), after 1008, with reconnect: false, or past maxAttempts. */
export async function stopsReconnectingWhenItShould(goldens) {
  const results = {};

  let { client, socket, Socket } = await connected(goldens, { reconnect: { minDelay: 1, maxDelay: 2 } });
  socket.drop(1008, "authentication required");
  assertEqual([client.state, client.lastClose.code], ["closed", 1008], "1008 closes for good");
  results.policy = Socket.instances.length;

  ({ client, socket, Socket } = await connected(goldens, { reconnect: { minDelay: 1, maxDelay: 2 } }));
  await client.close();
  assertEqual(socket.closedWith, [1000, ""], "close() sends 1000");
  assertEqual(client.state, "closed", "closed by the application");
  results.closed = Socket.instances.length;

  ({ client, socket, Socket } = await connected(goldens, { reconnect: false }));
  socket.drop(1012);
  assertEqual(client.state, "closed", "reconnect: false");
  results.disabled = Socket.instances.length;

  ({ client, socket, Socket } = await connected(goldens, {
    reconnect: { minDelay: 1, maxDelay: 2, maxAttempts: 2 },
  }));
  const inFlight = rejection(client.ping(), "a request in flight");
  await socket.nth(0, "the ping");
  socket.drop(1006);
  assertEqual((await inFlight).code, "connection_lost", "a request in flight fails");
  const waiting = rejection(client.ping(), "a request waiting for the connection");
  (await Socket.nth(1)).drop(1006); // attempt 1 fails
  (await Socket.nth(2)).drop(1006); // attempt 2 fails: give up
  await until(() => client.state === "closed", "giving up");
  assertEqual((await waiting).code, "closed", "a waiting request fails when the client gives up");
  const late = await rejection(client.ping(), "a request after giving up");
  assertEqual(late.code, "not_connected", "requests after the end");
  results.gaveUp = Socket.instances.length;

  assertEqual(results, { policy: 1, closed: 1, disabled: 1, gaveUp: 3 }, "sockets opened");
  return results;
}

/** Requests wait for a reconnection (within their timeout) and are never sent late. */
export async function requestsWaitForTheConnection(goldens) {
  const Socket = fakeSocketClass();
  const idle = new WshubClient("ws://fake.test/ws", { WebSocket: Socket });
  assertEqual((await rejection(idle.publish("news", 1), "publish before connect")).code, "not_connected", "idle");

  const { client, socket, Socket: S } = await connected(goldens, {
    reconnect: { minDelay: 1, maxDelay: 2 },
    requestTimeout: 200,
  });
  socket.drop(1012);
  const waiting = rejection(client.publish("news", { n: 1 }), "publish while reconnecting");
  const second = await S.nth(1);
  const timedOut = await waiting; // the new socket is not welcomed yet
  assertEqual(timedOut.code, "timeout", "times out");
  second.deliver(goldens["server/welcome"].frame);
  await until(() => client.state === "open", "open again");
  const pinging = client.ping();
  const sent = await second.nth(0);
  assertEqual(sent.type, "ping", "the timed-out publish was never sent; the ping was");
  second.deliver(reply(goldens, "server/pong", sent));
  await pinging;
  assert(second.sent.length === 1, "nothing else sent");
  await client.close();
  return "ok";
}

export async function backoffIsExponentialWithFullJitter() {
  const policy = { minDelay: 100, maxDelay: 1000 };
  const table = [
    [0, 0, 100], [0, 0.5, 150], [0, 0.999, 199.9],
    [1, 0.999, 399.7], [2, 0.5, 450], [3, 0.999, 999.1], [10, 0.5, 550], [5000, 0.5, 550],
  ];
  for (const [attempt, random, expected] of table) {
    const delay = backoffDelay(attempt, policy, () => random);
    assert(Math.abs(delay - expected) < 1e-6, `attempt ${attempt}, random ${random}: ${delay} != ${expected}`);
  }
  assertEqual([1000, 1001, 1006, 1011, 1012, 1013].map(shouldReconnect), [true, true, true, true, true, true], "retry");
  assertEqual([1002, 1003, 1007, 1008, 1010].map(shouldReconnect), [false, false, false, false, false], "no retry");
  return "ok";
}

export async function streamStateResumesFromWhatWasDelivered() {
  const cases = [
    // [description, setup(state), since, epoch]
    ["fresh join: from the head", (s) => s.joined(5, "e", null, null, null), 5, "e"],
    ["fresh, then delivered", (s) => { s.joined(5, "e", null, null, null); s.accept(6); s.accept(7); }, 7, "e"],
    ["fresh user stream: replay older than head accepted", (s) => { s.joined(5, "e", null, null, null); s.accept(3); }, 5, "e"],
    ["resume: since kept", (s) => { s.joined(5, "e", null, null, null); s.joined(9, "e", true, 5, "e"); }, 5, "e"],
    ["resume ahead of the stream: back to its head", (s) => { s.joined(5, "e", null, null, null); s.accept(8); s.joined(2, "e", false, 8, "e"); }, 2, "e"],
    ["another epoch: from 0", (s) => { s.joined(5, "e", null, null, null); s.joined(3, "f", false, 5, "e"); }, 0, "f"],
  ];
  for (const [what, setup, since, epoch] of cases) {
    const state = new StreamState();
    assertEqual(state.since, null, "unknown before the first join");
    setup(state);
    assertEqual([state.since, state.epoch], [since, epoch], what);
  }
  const state = new StreamState(4, "e");
  assertEqual([state.accept(4), state.accept(5), state.accept(5)], [false, true, false], "accept");
  assertEqual(resolveUrl("/ws", "https://example.test/ws-test"), "wss://example.test/ws", "https → wss");
  assertEqual(resolveUrl("http://h:1/x"), "ws://h:1/x", "http → ws");
  return "ok";
}

// -- gaps on a live stream, the token ----------------------------------------------------------

/** A `message` frame on `channel` at `offset` (data: the offset). */
function messageAt(goldens, offset, channel = "news") {
  const frame = structuredClone(goldens["server/message"].frame);
  Object.assign(frame.payload, { channel, offset, data: offset });
  return frame;
}

/** A user-stream `chat` frame at `offset`. */
function chatAt(goldens, offset) {
  const frame = structuredClone(goldens["server/chat"].frame);
  frame.offset = offset;
  return frame;
}

/** Channel news: 1, 2, 5 live; the resume with since=2 replays `replayed` (recovered as
 * given); then 6 live. Returns what the handler got, the gap events and the resume frame. */
async function channelWithAJump(goldens, replayed, recovered) {
  const { client, socket } = await connected(goldens);
  const offsets = [];
  const gaps = [];
  const duplicates = [];
  client.addEventListener("gap", ({ detail }) => gaps.push(detail));
  client.addEventListener("frame", ({ detail }) => {
    if (detail.duplicate) duplicates.push(detail.message.payload.offset);
  });
  const subscribing = client.subscribe("news", (payload) => offsets.push(payload.offset));
  socket.deliver(reply(goldens, "server/subscribed", await socket.nth(0), { offset: 0 }));
  await subscribing;
  const epoch = goldens["server/subscribed"].frame.payload.epoch;
  for (const offset of [1, 2, 5]) socket.deliver(messageAt(goldens, offset));
  assertEqual(offsets, [1, 2], "what comes after the gap is held back");
  const resume = await socket.nth(1, "the resume");
  socket.deliver(reply(goldens, "server/subscribed", resume, { offset: 5, recovered }));
  for (const offset of replayed) socket.deliver(messageAt(goldens, offset));
  const ping = await socket.nth(2, "the ping after the resume");
  assertEqual(ping.type, "ping", "a ping follows the resume");
  socket.deliver(reply(goldens, "server/pong", ping));
  socket.deliver(messageAt(goldens, 6));
  const recoveredAfter = client.subscriptions[0].recovered;
  await client.close();
  return { offsets, gaps, resume, epoch, duplicates, recoveredAfter };
}

/** A jump on a live channel: resumed with since = the last contiguous offset, the replay fills
 * the gap before what came after it, duplicates dropped, `gap` told (lost: false). */
export async function fillsAGapOnALiveChannel(goldens) {
  const r = await channelWithAJump(goldens, [3, 4, 5], true);
  assertEqual(r.resume.type, "subscribe", "the fill subscribes again");
  assertEqual(r.resume.payload, { channel: "news", since: 2, epoch: r.epoch }, "with since/epoch");
  assertEqual(r.offsets, [1, 2, 3, 4, 5, 6], "every message once, in order");
  assertEqual(r.duplicates, [5], "the replayed 5 is a duplicate of the one held");
  assertEqual(
    r.gaps.map((g) => [g.stream, g.name, g.since, g.offset, g.missing, g.lost]),
    [["channel", "news", 2, 5, [3, 4], false]],
    "one gap event, not lost",
  );
  assertEqual(r.recoveredAfter, true, "recovered");
  return "ok";
}

/** A fill the server cannot recover (`recovered: false`): told as lost, the rest in order. */
export async function aFillThatCannotRecoverIsLost(goldens) {
  const r = await channelWithAJump(goldens, [4, 5], false);
  assertEqual(r.offsets, [1, 2, 4, 5, 6], "what is kept, in order");
  assertEqual(
    r.gaps.map((g) => [g.since, g.missing, g.lost]),
    [[2, [3, 4], false], [2, [3, 4], true]],
    "the jump, then the loss",
  );
  assertEqual(r.recoveredAfter, false, "recovered is false");

  const hole = await channelWithAJump(goldens, [3, 5], true);
  assertEqual(hole.offsets, [1, 2, 3, 5, 6], "a replay with a hole: what came, in order");
  assertEqual(hole.gaps.map((g) => [g.since, g.missing, g.lost]), [[2, [3, 4], false], [3, [4, 4], true]], "hole");
  assertEqual(hole.recoveredAfter, false, "recovered is false after a hole");
  return "ok";
}

/** A jump in the user stream: authenticate again on the same connection with a fresh token
 * from the token function, since and epoch; the replay fills the gap. */
export async function fillsAGapInTheUserStream(goldens) {
  let calls = 0;
  const token = async () => `tok-${++calls}`;
  const Socket = fakeSocketClass();
  const c = new WshubClient("ws://fake.test/ws", { token, reconnect: false, WebSocket: Socket });
  const chats = [];
  const gaps = [];
  c.on("chat", (payload, envelope) => chats.push(envelope.offset));
  c.addEventListener("gap", ({ detail }) => gaps.push(detail));
  const ready = c.connect();
  const s = await Socket.nth(0);
  s.deliver(goldens["server/welcome"].frame);
  const auth = await s.nth(0);
  assertEqual(auth.payload, { token: "tok-1" }, "the first authentication");
  const epoch = goldens["server/authenticated"].frame.payload.epoch;
  s.deliver(reply(goldens, "server/authenticated", auth, { offset: 0 }));
  await ready;
  s.deliver(chatAt(goldens, 1));
  s.deliver(chatAt(goldens, 3));
  const again = await s.nth(1, "the resume");
  assertEqual([again.type, again.payload], ["authenticate", { token: "tok-2", since: 1, epoch }], "resume");
  s.deliver(reply(goldens, "server/authenticated", again, { offset: 3, recovered: true, refreshed: true }));
  s.deliver(chatAt(goldens, 2));
  s.deliver(chatAt(goldens, 3));
  const ping = await s.nth(2, "the ping");
  s.deliver(reply(goldens, "server/pong", ping));
  s.deliver(chatAt(goldens, 4));
  assertEqual(chats, [1, 2, 3, 4], "the user stream once, in order");
  assertEqual(gaps.map((g) => [g.stream, g.since, g.missing, g.lost]), [["user", 1, [2, 2], false]], "gap");
  assertEqual(c.userRecovered, true, "userRecovered");
  await c.close();
  return "ok";
}

/** `token_expiring`: the token function is asked again and the connection authenticated in
 * place (no since: nothing replayed); `tokenrefresh` tells the application. */
export async function refreshesTheTokenOnTokenExpiring(goldens) {
  let calls = 0;
  const { client, socket, Socket } = await connected(goldens, { token: () => `tok-${++calls}` });
  const refreshes = [];
  client.addEventListener("tokenrefresh", ({ detail }) => refreshes.push(detail));
  socket.deliver({ type: "token_expiring", payload: { expiresAt: 1795713739000 } });
  const refresh = await socket.nth(1, "the refresh");
  assertEqual([refresh.type, refresh.payload], ["authenticate", { token: "tok-2" }], "refresh frame");
  socket.deliver(reply(goldens, "server/authenticated", refresh, { refreshed: true }));
  await until(() => refreshes.length === 1, "tokenrefresh");
  assertEqual([refreshes[0].expiresAt, refreshes[0].payload.refreshed], [1795713739000, true], "event");
  assertEqual([client.state, Socket.instances.length], ["open", 1], "the same connection");
  await client.close();

  // A string token has nothing fresher: no refresh is sent (the server will close with 4001).
  const plain = await connected(goldens, { token: "tok" });
  plain.socket.deliver({ type: "token_expiring", payload: { expiresAt: 1 } });
  await new Promise((resolve) => setTimeout(resolve, 0));
  assertEqual(plain.socket.sent.length, 1, "only the first authenticate");
  await plain.client.close();
  return "ok";
}

/** 4001: reconnect with a fresh token and resume; 4002: closed, unless reconnectOnDisconnect. */
export async function credentialCloseCodes(goldens) {
  let calls = 0;
  const { client, socket, Socket } = await connected(goldens, {
    token: async () => `tok-${++calls}`,
    reconnect: { minDelay: 1, maxDelay: 2 },
  });
  socket.deliver(chatAt(goldens, 1));
  socket.drop(4001, "token expired");
  const second = await Socket.nth(1);
  second.deliver(goldens["server/welcome"].frame);
  const auth = await second.nth(0);
  assertEqual([auth.payload.token, auth.payload.since], ["tok-2", 1], "fresh token, since");
  second.deliver(reply(goldens, "server/authenticated-resumed", auth));
  await until(() => client.state === "open", "open again");
  second.drop(4002, "disconnected");
  assertEqual([client.state, client.lastClose.code], ["closed", 4002], "4002 closes for good");

  const again = await connected(goldens, { reconnect: { minDelay: 1, maxDelay: 2, reconnectOnDisconnect: true } });
  again.socket.drop(4002, "disconnected");
  assertEqual(again.client.state, "reconnecting", "reconnectOnDisconnect");
  (await again.Socket.nth(1)).deliver(goldens["server/welcome"].frame);
  await until(() => again.client.state === "open", "open after 4002");
  await again.client.close();
  assertEqual(
    [shouldReconnect(4001), shouldReconnect(4002), shouldReconnect(4002, { reconnectOnDisconnect: true })],
    [true, false, true],
    "shouldReconnect",
  );
  return "ok";
}
