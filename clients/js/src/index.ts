/**
 * wshub client: one ES module, no dependencies. The same code is the npm package
 * `@wshub/client` (typed) and the standalone server's `/wshub.js` (built from it).
 *
 *     import { WshubClient } from "/wshub.js";          // or from "@wshub/client"
 *
 *     const client = new WshubClient("/ws", { token: () => fetchMyToken() });
 *     client.on("chat", (payload) => console.log(payload.from, payload.message));
 *     client.subscribe("news", (msg) => console.log(msg.offset, msg.data));
 *     await client.connect();
 *     const offset = await client.publish("news", { hello: "world" });
 *
 * In TypeScript, `new WshubClient<ServerMessages, ClientMessages>(...)` with the maps that
 * `wshub codegen ts --app module:hub` wrote types the application's own messages too.
 *
 * Speaks wshub protocol v1 (+ 1.1's token refresh). After an unexpected close the client
 * reconnects with exponential backoff and full jitter, authenticates again and re-subscribes with
 * `since` and `epoch`, so every channel and the user's own stream continue where they stopped:
 * each message reaches the application once, in order (duplicates at the seam are dropped).
 * While open, an application-level heartbeat (`ping` after a silence) finds connections that died
 * without a close. A live stream whose offsets jump is resumed on the same connection and
 * delivered in order; a token function renews the connection's token on `token_expiring`.
 * See docs/browser.md for the whole API.
 */

import type {
  AuthenticatedPayload,
  ChatReceivedPayload,
  ClientMessages,
  MessagePayload,
  PongPayload,
  ServerMessages,
  SubscribedPayload,
  UnsubscribedPayload,
  WelcomePayload,
} from "./protocol.js";

export type * from "./protocol.js";

export const PROTOCOL_VERSION = 1;

/** Close codes after which reconnecting would only repeat the failure: a policy violation
 * (authentication missing in time, rate-limit abuse) and protocol errors on either side. */
export const NO_RECONNECT_CODES: readonly number[] = Object.freeze([1002, 1003, 1007, 1008, 1010]);

/** The server closed the connection because its token expired (protocol 1.1): the client
 * reconnects, asking a callable `token` for a fresh one, and resumes every stream. */
export const TOKEN_EXPIRED_CLOSE_CODE = 4001;

/** The server disconnected the user on purpose (`POST /api/users/{id}/disconnect`, a
 * revocation): no reconnect unless the policy says `reconnectOnDisconnect: true`. */
export const DISCONNECTED_CLOSE_CODE = 4002;

/** The reconnect policy: delays in ms. */
export interface ReconnectPolicy {
  minDelay: number;
  maxDelay: number;
  maxAttempts: number;
  /** Reconnect after 4002 (disconnected by the server) too. */
  reconnectOnDisconnect: boolean;
}

export const DEFAULT_RECONNECT: Readonly<ReconnectPolicy> = Object.freeze({
  minDelay: 500,
  maxDelay: 30000,
  maxAttempts: Infinity,
  reconnectOnDisconnect: false,
});

// setTimeout fires at once for delays above 2 ** 31 - 1 ms (about 24.8 days).
const MAX_TIMER_DELAY = 2 ** 31 - 1;

/** The server's heartbeat interval when its `welcome` does not say (the protocol's default). */
export const DEFAULT_HEARTBEAT_INTERVAL = 30000;

/** The shortest timeout derived for a heartbeat ping: one round trip on a slow mobile link. */
export const MIN_HEARTBEAT_TIMEOUT = 2000;

/** The close code the client uses (and reports in `close`/`reconnecting`, reason
 * "heartbeat timeout") when a heartbeat ping went unanswered. */
export const HEARTBEAT_CLOSE_CODE = 4000;

/** The heartbeat's timing in ms. */
export interface HeartbeatTiming {
  interval: number;
  timeout: number;
}

export type HeartbeatOption = boolean | null | { interval?: number | null; timeout?: number | null };
export type ReconnectOption = boolean | null | Partial<ReconnectPolicy>;

/** A token, or a function giving one (maybe asynchronously), called for every (re)connection,
 * on `token_expiring` and to resume the user stream after a gap. */
export type TokenSource = string | null | TokenFunction;
export type TokenFunction = () => string | null | undefined | Promise<string | null | undefined>;

/** Where a stream stands: resume after `offset` in `epoch`. */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

/** The WebSocket class the client opens sockets with (the browser's, `ws`, Node 22's...). */
export interface WebSocketLike {
  // `any` events: the DOM's and `ws`'s handler types (MessageEvent, CloseEvent) both fit.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onmessage: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onclose: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface WshubClientOptions {
  /** Authenticates every connection (an `authenticate` message after `welcome`, never in the
   * URL); a function is called for every (re)connection, on `token_expiring` and to resume the
   * user stream after a gap. */
  token?: TokenSource;
  /** The same as a function `token`. */
  getToken?: TokenFunction | null;
  /** Milliseconds; `false`: never reconnect. */
  reconnect?: ReconnectOption;
  /** ms a request may take, waiting for a reconnection included (default 10000). */
  requestTimeout?: number;
  /** ms from opening the socket to being ready (10000). */
  openTimeout?: number;
  /** ms: `ping` after `interval` ms of silence, reconnect when nothing follows within `timeout`.
   * Defaults: the server's `heartbeatInterval`, half of it (at least 2000). `false`: none. */
  heartbeat?: HeartbeatOption;
  /** Resume the user stream from here (a previous page's `client.userPosition`). */
  userPosition?: { offset: number; epoch?: string | null } | null;
  /** The WebSocket class (default `globalThis.WebSocket`; in Node 20: `ws`'s). */
  WebSocket?: WebSocketConstructor;
}

/** A server envelope of type `T` with payload `P`. */
export interface Envelope<T extends string = string, P = unknown> {
  type: T;
  payload: P;
  id?: string;
  offset?: number;
}

/** Every envelope of a message map `S`: a union discriminated by `type`. */
export type EnvelopeOf<S> = { [K in keyof S & string]: Envelope<K, S[K]> }[keyof S & string];

/** A publication on a channel, as `subscribe()` handlers get it (`data` typed by the caller). */
export type ChannelMessage<D = unknown> = Omit<MessagePayload, "data"> & { data: D };
export type ChannelHandler<D = unknown> = (
  payload: ChannelMessage<D>,
  envelope: Envelope<"message", ChannelMessage<D>>,
) => void;

export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closing" | "closed";

export interface SubscriptionInfo {
  channel: string;
  offset: number | null;
  epoch: string | null;
  joined: boolean;
  recovered: boolean | null;
}

export interface GapDetail {
  stream: "user" | "channel";
  name: string | null;
  since: number | null;
  sinceEpoch: string | null;
  offset: number;
  epoch: string | null;
  /** [first, last] of the offsets known to be missing, or null. */
  missing: [number, number] | null;
  /** false: the gap is being filled on this connection; true: data is gone. */
  lost: boolean;
}

/** `event.detail` of each event the client dispatches (it is an EventTarget). */
export interface WshubEventMap {
  statechange: { state: ClientState; previous: ClientState };
  open: { welcome: WelcomePayload | null; reconnected: boolean };
  close: { code: number; reason: string; wasClean: boolean; willReconnect: boolean };
  reconnecting: { attempt: number; delay: number; code: number; reason: string };
  frame: { direction: "in" | "out"; text: string | null; message: unknown; duplicate: boolean };
  gap: GapDetail;
  tokenrefresh: { expiresAt: number | null; payload: AuthenticatedPayload };
  error: { error: unknown };
}

export type WshubEventListener<K extends keyof WshubEventMap> = (
  event: CustomEvent<WshubEventMap[K]>,
) => void;

/**
 * The heartbeat's timing, `{interval, timeout}` in ms, for the `heartbeat` option (false: none;
 * throws RangeError for nonsense) with a server whose `welcome` said `heartbeatInterval`.
 */
export function heartbeatTiming(
  option: HeartbeatOption = true,
  heartbeatInterval: number | null | undefined = DEFAULT_HEARTBEAT_INTERVAL,
): HeartbeatTiming | false {
  const given = normalizeHeartbeat(option);
  if (given === false) return false;
  const server =
    typeof heartbeatInterval === "number" && Number.isFinite(heartbeatInterval) && heartbeatInterval > 0
      ? Math.min(heartbeatInterval, MAX_TIMER_DELAY)
      : DEFAULT_HEARTBEAT_INTERVAL;
  const interval = given.interval ?? server;
  const timeout = given.timeout ?? Math.max(interval / 2, MIN_HEARTBEAT_TIMEOUT);
  return { interval, timeout };
}

/**
 * Milliseconds to wait before reconnect attempt `attempt` (0 for the first retry): uniformly
 * random between `minDelay` and `min(maxDelay, minDelay * 2 ** (attempt + 1))` (full jitter).
 */
export function backoffDelay(
  attempt: number,
  options: Partial<ReconnectPolicy> = {},
  random: () => number = Math.random,
): number {
  const { minDelay, maxDelay } = { ...DEFAULT_RECONNECT, ...options };
  // Cap the exponent: 2 ** 1100 is Infinity, and Infinity * 0 would be NaN.
  const ceiling = Math.min(maxDelay, minDelay * 2 ** Math.min(attempt + 1, 64));
  return minDelay + random() * (ceiling - minDelay);
}

/** Whether a close with `code`, not asked for by the application, warrants reconnecting
 * under `policy` (4002 only with `policy.reconnectOnDisconnect`). */
export function shouldReconnect(
  code: number,
  policy: Partial<ReconnectPolicy> | null = DEFAULT_RECONNECT,
): boolean {
  if (code === DISCONNECTED_CLOSE_CODE) return policy?.reconnectOnDisconnect === true;
  return !NO_RECONNECT_CODES.includes(code);
}

function pageHref(): string | undefined {
  return (globalThis as { location?: { href?: string } }).location?.href;
}

/** The hub's WebSocket URL on the page's own host: `ws(s)://HOST/ws`. */
export function defaultUrl(path = "/ws", base: string | undefined = pageHref()): string {
  return resolveUrl(path, base);
}

/** An absolute ws:// or wss:// URL from `url`, which may be relative or http(s). */
export function resolveUrl(url: string, base: string | undefined = pageHref()): string {
  const resolved = new URL(url, base);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved.href;
}

/**
 * A failed request or connection. `code` is the server's error code (`invalid_message`,
 * `forbidden`, `rate_limited`, ...) or one of the client's own: `timeout`, `not_connected`,
 * `connection_lost`, `closed`, `invalid_url`, `token_error`, `unsubscribed`.
 */
export class WshubError extends Error {
  code: string;
  id: string | null;
  frame: unknown;
  closeCode: number | null;

  constructor(
    code: string,
    message: string,
    { id = null, frame = null, closeCode = null }: { id?: string | null; frame?: unknown; closeCode?: number | null } = {},
  ) {
    super(message);
    this.name = "WshubError";
    this.code = code;
    this.id = id;
    this.frame = frame;
    this.closeCode = closeCode;
  }
}

/**
 * Where the application stands in one stream (a channel, or the user's own stream): the
 * stream's `epoch`, the highest offset handed to the application (`delivered`) and the head the
 * server reported on a join without `since` (`head`); resumes from `max(delivered, head)`.
 *
 * Contract: call `joined()` with each `subscribed`/`authenticated` reply before any message that
 * follows it; call `accept()` with each message's offset in arrival order and hand the message on
 * only when it returns true. `since`/`epoch` are what the next join carries.
 */
export class StreamState {
  epoch: string | null;
  delivered: number;
  head: number;
  known: boolean;
  /** The last join said `recovered: false`: the next message starts the numbering over. */
  loose: boolean;

  constructor(since: number | null = null, epoch: string | null = null) {
    this.epoch = epoch;
    this.delivered = since ?? 0;
    this.head = since ?? 0;
    this.known = since !== null;
    this.loose = false;
  }

  /** The offset to resume after, or null to join fresh. */
  get since(): number | null {
    return this.known ? Math.max(this.delivered, this.head) : null;
  }

  /** Apply a join reply to a join that carried `since`/`sinceEpoch` (null: a fresh join).
   * Returns true when a gap was not closed. */
  joined(
    offset: number,
    epoch: string,
    recovered: boolean | null,
    since: number | null,
    sinceEpoch: string | null,
  ): boolean {
    if (since === null) {
      if (epoch !== this.epoch) this.delivered = 0;
      this.head = offset;
    } else if (sinceEpoch !== null && epoch !== sinceEpoch) {
      // The server lost the stream and replays all it keeps of the new one.
      this.delivered = 0;
      this.head = 0;
    } else if (since > offset) {
      // The client is ahead of the stream: start again where the stream is.
      this.delivered = Math.min(this.delivered, offset);
      this.head = Math.min(this.head, offset);
    }
    this.epoch = epoch;
    this.known = true;
    this.loose = recovered === false;
    return recovered === false;
  }

  /** Whether the message at `offset` was handed on already. */
  isDuplicate(offset: number): boolean {
    return offset <= this.delivered;
  }

  /** Whether a new message at `offset` leaves a gap after `since`. */
  jumps(offset: number): boolean {
    const since = this.since;
    return since !== null && !this.loose && offset > since + 1;
  }

  /** True when the message at `offset` is new (and records it); false for a duplicate. */
  accept(offset: number): boolean {
    if (offset <= this.delivered) return false;
    this.delivered = offset;
    this.loose = false;
    return true;
  }
}

// -- internals ------------------------------------------------------------------------------

/** An envelope as received: the payload is an object, its fields not checked. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Payload = Record<string, any>;
interface Incoming {
  type: string;
  payload: Payload;
  id?: unknown;
  offset?: unknown;
}
type Handler = (payload: unknown, envelope: Incoming) => void;
type Hook = ((message: Incoming) => void) | null;

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (error: unknown) => void;
}

interface Waiter<T> {
  resolve: (value: T) => void;
  reject: (error: unknown) => void;
}

interface Fill {
  since: number;
  firstSeen: number;
  held: Map<number, Incoming>;
  lost: boolean;
}

interface UserStream {
  kind: "user";
  state: StreamState;
  fill: Fill | null;
}

interface Subscription {
  kind: "channel";
  channel: string;
  fill: Fill | null;
  handlers: Set<ChannelHandler<never>>;
  state: StreamState;
  joined: boolean;
  payload: SubscribedPayload | null;
  recovered: boolean | null;
  waiters: Waiter<SubscribedPayload>[];
}

type Stream = UserStream | Subscription;

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Nobody may be waiting on it: a rejection the application never asked about must not
  // surface as "unhandled".
  promise.catch(() => {});
  return { promise, resolve, reject };
}

function normalizeReconnect(option: ReconnectOption | undefined): ReconnectPolicy | false {
  if (option === false || option === null) return false;
  if (option === true || option === undefined) return { ...DEFAULT_RECONNECT };
  const policy = { ...DEFAULT_RECONNECT, ...option };
  const { minDelay, maxDelay, maxAttempts } = policy;
  if (!(minDelay >= 0 && maxDelay >= minDelay && maxAttempts >= 0)) {
    throw new RangeError("reconnect needs 0 <= minDelay <= maxDelay and maxAttempts >= 0");
  }
  return policy;
}

function normalizeHeartbeat(
  option: HeartbeatOption | undefined,
): { interval?: number; timeout?: number } | false {
  if (option === false || option === null) return false;
  if (option === true || option === undefined) return {};
  const valid = (value: unknown) =>
    value === undefined ||
    value === null ||
    (typeof value === "number" && value > 0 && value <= MAX_TIMER_DELAY);
  if (!isObject(option) || !valid(option.interval) || !valid(option.timeout)) {
    throw new RangeError(
      "heartbeat needs false, or {interval, timeout} in ms: numbers > 0 and <= 2 ** 31 - 1",
    );
  }
  const policy: { interval?: number; timeout?: number } = {};
  if (option.interval != null) policy.interval = option.interval;
  if (option.timeout != null) policy.timeout = option.timeout;
  return policy;
}

function report(error: unknown): void {
  // An exception in an application callback must not break the client: report it like an
  // uncaught error in an event listener.
  const g = globalThis as { reportError?: (error: unknown) => void };
  if (typeof g.reportError === "function") g.reportError(error);
  else console.error(error);
}

const isObject = (value: unknown): value is Payload =>
  value !== null && typeof value === "object" && !Array.isArray(value);

const messageOf = (error: unknown): string =>
  String((error as { message?: unknown } | null)?.message ?? error);

const codeOf = (error: unknown): unknown => (error as { code?: unknown } | null)?.code;

/**
 * A connection to a wshub server that survives drops, typed by the message maps `S` (server →
 * client) and `C` (client → server): by default the built-in protocol's; pass the maps that
 * `wshub codegen ts --app module:hub` wrote to type the application's own messages too.
 *
 * Server messages: `on(type, handler)`; handlers get `(payload, envelope)`. Lifecycle: the client
 * is an EventTarget dispatching CustomEvents (`WshubEventMap`): `statechange`, `open`, `close`,
 * `reconnecting`, `frame`, `gap`, `tokenrefresh`, `error`.
 */
export class WshubClient<S extends object = ServerMessages, C extends object = ClientMessages>
  extends EventTarget
{
  #url: string;
  #token: string | null;
  #getToken: TokenFunction | null;
  #reconnect: ReconnectPolicy | false;
  #requestTimeout: number;
  #openTimeout: number;
  #heartbeat: { interval?: number; timeout?: number } | false;
  #WebSocket: WebSocketConstructor;

  #ws: WebSocketLike | null = null;
  #state: ClientState = "idle";
  #welcomed = false; // this socket got `welcome`
  #sendable = false; // ...and the join (authenticate, subscribes) has been sent on it
  #ready = false; // ...and answered: application requests may go
  #closing = false;
  #everOpened = false;
  #attempt = 0;
  #reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  #openTimer: ReturnType<typeof setTimeout> | undefined = undefined;
  #lastClose: { code: number; reason: string } | null = null;

  // Heartbeat: a ping after `interval` ms without a frame; dead after `timeout` more without one.
  #heartbeatTiming: HeartbeatTiming | null = null;
  #heartbeatTimer: ReturnType<typeof setTimeout> | null = null;
  #heartbeatWaiting = false;
  #heartbeatPings = 0;
  #heartbeatPrefix: string;
  #lastReceived = 0;

  #ids = 0;
  #idPrefix = Math.random().toString(16).slice(2, 8);
  #pending = new Map<string, { resolve: (m: Incoming) => void; reject: (e: unknown) => void; hook: Hook }>();
  #readyWaiters: Waiter<void>[] = [];
  #connected: Deferred<WelcomePayload> | null = null;
  #closeWaiters: (() => void)[] = [];

  #subs = new Map<string, Subscription>();
  #user: StreamState;
  #userStream: UserStream;
  #userRecovered: boolean | null = null;
  #handlers = new Map<string, Set<Handler>>();

  #welcome: WelcomePayload | null = null;
  #connectionId: string | null = null;
  #userId: string | null = null;

  /**
   * @param url ws://, wss://, http(s):// or a path on this page's host; default `/ws`.
   */
  constructor(url = "/ws", options: WshubClientOptions = {}) {
    super();
    const {
      token = null,
      getToken = null,
      reconnect = true,
      requestTimeout = 10000,
      openTimeout = 10000,
      heartbeat = true,
      userPosition = null,
      WebSocket: WebSocketClass = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket,
    } = options;
    if (typeof WebSocketClass !== "function") {
      throw new TypeError("No WebSocket class: pass one as the WebSocket option (e.g. ws's)");
    }
    this.#url = resolveUrl(url);
    this.#token = typeof token === "function" ? null : token || null;
    this.#getToken = typeof token === "function" ? token : getToken;
    this.#reconnect = normalizeReconnect(reconnect);
    this.#requestTimeout = requestTimeout;
    this.#openTimeout = openTimeout;
    this.#heartbeat = normalizeHeartbeat(heartbeat);
    this.#heartbeatPrefix = `${this.#idPrefix}-hb-`;
    this.#WebSocket = WebSocketClass;
    this.#user = userPosition
      ? new StreamState(userPosition.offset, userPosition.epoch ?? null)
      : new StreamState();
    this.#userStream = { kind: "user", state: this.#user, fill: null };
  }

  // -- state ---------------------------------------------------------------------------------

  get url(): string {
    return this.#url;
  }

  /** `idle`, `connecting`, `open`, `reconnecting`, `closing` or `closed`. */
  get state(): ClientState {
    return this.#state;
  }

  /** Whether requests can go now (welcomed, authenticated, re-subscribed). */
  get ready(): boolean {
    return this.#ready;
  }

  /** The last `welcome` payload. */
  get welcome(): WelcomePayload | null {
    return this.#welcome;
  }

  get connectionId(): string | null {
    return this.#connectionId;
  }

  /** The authenticated user, or null. */
  get userId(): string | null {
    return this.#userId;
  }

  /** {code, reason} of the last closed connection, or null. */
  get lastClose(): { code: number; reason: string } | null {
    return this.#lastClose;
  }

  /** Where the user stream stands for this client, or null before the first authentication. */
  get userPosition(): StreamPosition | null {
    const since = this.#user.since;
    return since === null || this.#user.epoch === null
      ? null
      : { offset: since, epoch: this.#user.epoch };
  }

  /** `recovered` of the last resume of the user stream, or null before any resume. */
  get userRecovered(): boolean | null {
    return this.#userRecovered;
  }

  /** The channels this client keeps subscribed. */
  get subscriptions(): SubscriptionInfo[] {
    return [...this.#subs.values()].map((sub) => ({
      channel: sub.channel,
      offset: sub.state.since,
      epoch: sub.state.epoch,
      joined: sub.joined,
      recovered: sub.recovered,
    }));
  }

  /** The reconnect policy or false; assignable any time. */
  get reconnect(): ReconnectPolicy | false {
    return this.#reconnect === false ? false : { ...this.#reconnect };
  }

  set reconnect(option: ReconnectOption) {
    this.#reconnect = normalizeReconnect(option);
    if (this.#reconnect === false && this.#reconnectTimer !== null) {
      clearTimeout(this.#reconnectTimer);
      this.#reconnectTimer = null;
      this.#finish(new WshubError("closed", "Reconnecting was switched off"));
    }
  }

  /** The heartbeat in use, {interval, timeout} in ms, or false. */
  get heartbeat(): HeartbeatTiming | false {
    return heartbeatTiming(this.#heartbeat, this.#welcome?.heartbeatInterval);
  }

  // -- typed events ----------------------------------------------------------------------------

  override addEventListener<K extends keyof WshubEventMap>(
    type: K,
    listener: WshubEventListener<K> | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  override addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  override addEventListener(
    type: string,
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    listener: EventListenerOrEventListenerObject | ((event: any) => void) | null,
    options?: boolean | AddEventListenerOptions,
  ): void {
    super.addEventListener(type, listener as EventListenerOrEventListenerObject | null, options);
  }

  override removeEventListener<K extends keyof WshubEventMap>(
    type: K,
    listener: WshubEventListener<K> | null,
    options?: boolean | EventListenerOptions,
  ): void;
  override removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
  override removeEventListener(
    type: string,
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    listener: EventListenerOrEventListenerObject | ((event: any) => void) | null,
    options?: boolean | EventListenerOptions,
  ): void {
    super.removeEventListener(type, listener as EventListenerOrEventListenerObject | null, options);
  }

  // -- lifecycle -------------------------------------------------------------------------------

  /**
   * Open the connection. Resolves with the `welcome` payload once welcomed, authenticated (with
   * a token) and subscribed. A failing first attempt is retried like a dropped connection; the
   * promise rejects when the client gives up, is closed, or the server refuses the token.
   */
  connect(): Promise<WelcomePayload> {
    if (this.#state === "closing") {
      return new Promise<void>((resolve) => this.#closeWaiters.push(resolve)).then(() =>
        this.connect(),
      );
    }
    if (this.#state === "idle" || this.#state === "closed") {
      this.#closing = false;
      this.#attempt = 0;
      this.#connected = deferred<WelcomePayload>();
      this.#open();
    }
    return (this.#connected ??= deferred<WelcomePayload>()).promise;
  }

  /** Close with `code` (1000, or 3000-4999) and stop reconnecting. Resolves when closed. */
  close(code = 1000, reason = ""): Promise<void> {
    this.#closing = true;
    this.#stopHeartbeat();
    if (this.#reconnectTimer !== null) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    const ws = this.#ws;
    if (ws === null) {
      if (this.#state !== "idle") this.#finish(new WshubError("closed", "Closed by the application"));
      return Promise.resolve();
    }
    const closed = new Promise<void>((resolve) => this.#closeWaiters.push(resolve));
    this.#setState("closing");
    ws.close(code, reason);
    return closed;
  }

  // -- requests ------------------------------------------------------------------------------

  /** Authenticate with `token`, which is also used for every reconnection from now on. */
  authenticate(token: string): Promise<AuthenticatedPayload> {
    if (typeof token !== "string" || !token) {
      return Promise.reject(new TypeError("authenticate(token) needs a non-empty string"));
    }
    if (this.#state === "idle" || this.#state === "closed") return this.#notConnected();
    this.#token = token;
    this.#getToken = null;
    return this.#call(
      "authenticate",
      () => this.#authPayload(token),
      () => this.#userHook(),
    ).then((msg) => msg.payload as AuthenticatedPayload);
  }

  /** Publish `data` (any JSON value) on `channel`; resolves with the publication's offset. */
  publish(channel: string, data: unknown): Promise<number> {
    return this.#call("publish", { channel, data: data === undefined ? null : data }).then(
      (msg) => msg.payload.offset as number,
    );
  }

  /** A direct message; resolves with the `chat_received` payload (`delivered`, `queued`...). */
  chat(recipientId: string, message: string): Promise<ChatReceivedPayload> {
    return this.#call("chat", { recipientId, message }).then(
      (msg) => msg.payload as ChatReceivedPayload,
    );
  }

  /** An application-level round trip; resolves with the `pong` payload plus `rtt` (ms). */
  ping(): Promise<PongPayload & { rtt: number }> {
    const started = performance.now();
    return this.#call("ping", null).then((msg) => ({
      ...(msg.payload as PongPayload),
      rtt: performance.now() - started,
    }));
  }

  /** The user ids online in a `presence-…` channel. */
  presence(channel: string): Promise<string[]> {
    return this.#call("presence", { channel }).then((msg) => msg.payload.users as string[]);
  }

  /** Send a message of the map `C` with a fresh `id`; resolves with the reply envelope, rejects
   * with a WshubError for an `error` reply. */
  request<K extends keyof C & string>(type: K, payload?: C[K] | null): Promise<EnvelopeOf<S>> {
    return this.#call(type, payload ?? null) as unknown as Promise<EnvelopeOf<S>>;
  }

  /** Send a message without an `id` and without waiting. Throws `not_connected` unless a
   * connection is up. */
  send<K extends keyof C & string>(type: K, payload?: C[K] | null): void {
    const message: Payload = { type };
    if (payload != null) message.payload = payload;
    this.sendRaw(JSON.stringify(message));
  }

  /** Send one text frame as it is (the server answers what it cannot parse with `error`). */
  sendRaw(text: string): void {
    if (this.#ws === null || !this.#welcomed) {
      throw new WshubError("not_connected", "Not connected");
    }
    this.#sendText(String(text));
  }

  // -- subscriptions and messages ------------------------------------------------------------

  /**
   * Subscribe to `channel` (kept across reconnects); `handler(payload, envelope)` gets each
   * publication once, in order. Resolves with the `subscribed` payload; rejects if refused.
   * May be called before connect(). With `since` (and `epoch`) the server first replays what
   * was published after that offset.
   */
  subscribe<D = unknown>(
    channel: string,
    handler: ChannelHandler<D> | null = null,
    { since = null, epoch = null }: { since?: number | null; epoch?: string | null } = {},
  ): Promise<SubscribedPayload> {
    if (typeof channel !== "string" || !channel) {
      return Promise.reject(new TypeError("subscribe(channel) needs a non-empty string"));
    }
    let sub = this.#subs.get(channel);
    if (sub === undefined) {
      sub = {
        kind: "channel",
        fill: null,
        channel,
        handlers: new Set(),
        state: new StreamState(since, epoch),
        joined: false,
        payload: null,
        recovered: null,
        waiters: [],
      };
      this.#subs.set(channel, sub);
      if (this.#sendable) void this.#join(sub);
    }
    if (handler) sub.handlers.add(handler as ChannelHandler<never>);
    if (sub.joined && sub.payload !== null) return Promise.resolve(sub.payload);
    const waiting = sub;
    return new Promise((resolve, reject) => waiting.waiters.push({ resolve, reject }));
  }

  /** Remove `handler` from `channel`; without a handler, or when it was the last one, stop the
   * subscription. Resolves with the `unsubscribed` payload (or {channel} when offline). */
  unsubscribe<D = unknown>(
    channel: string,
    handler: ChannelHandler<D> | null = null,
  ): Promise<UnsubscribedPayload> {
    const sub = this.#subs.get(channel);
    if (sub !== undefined) {
      if (handler) sub.handlers.delete(handler as ChannelHandler<never>);
      if (handler && sub.handlers.size > 0) return Promise.resolve({ channel });
      this.#subs.delete(channel);
      const gone = new WshubError("unsubscribed", `Unsubscribed from ${channel}`);
      for (const waiter of sub.waiters.splice(0)) waiter.reject(gone);
    }
    if (!this.#sendable) return Promise.resolve({ channel });
    return this.#call("unsubscribe", { channel }).then((msg) => msg.payload as UnsubscribedPayload);
  }

  /** Call `handler(payload, envelope)` for every server message of `type` that is not the reply
   * to a request; `"*"` for all. User-stream messages come once, in order, across reconnects.
   * Returns a function that removes the handler. */
  on(type: "*", handler: (payload: S[keyof S], envelope: EnvelopeOf<S>) => void): () => void;
  on<K extends keyof S & string>(
    type: K,
    handler: (payload: S[K], envelope: Envelope<K, S[K]>) => void,
  ): () => void;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  on(type: string, handler: (payload: any, envelope: any) => void): () => void {
    let handlers = this.#handlers.get(type);
    if (handlers === undefined) {
      handlers = new Set();
      this.#handlers.set(type, handlers);
    }
    handlers.add(handler as Handler);
    return () => this.#off(type, handler as Handler);
  }

  /** Remove a handler given to on(). */
  off(type: "*", handler: (payload: S[keyof S], envelope: EnvelopeOf<S>) => void): void;
  off<K extends keyof S & string>(
    type: K,
    handler: (payload: S[K], envelope: Envelope<K, S[K]>) => void,
  ): void;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  off(type: string, handler: (payload: any, envelope: any) => void): void {
    this.#off(type, handler as Handler);
  }

  #off(type: string, handler: Handler): void {
    this.#handlers.get(type)?.delete(handler);
  }

  // -- internals: connecting -----------------------------------------------------------------

  #open(): void {
    this.#setState("connecting");
    let ws: WebSocketLike;
    try {
      ws = new this.#WebSocket(this.#url);
    } catch (error) {
      this.#finish(new WshubError("invalid_url", `Cannot open ${this.#url}: ${messageOf(error)}`));
      return;
    }
    this.#ws = ws;
    this.#welcomed = this.#sendable = this.#ready = false;
    this.#stopHeartbeat();
    this.#lastReceived = performance.now();
    ws.onmessage = (event) => {
      if (this.#ws !== ws) return;
      // Any frame shows the connection alive: the heartbeat pings only a silent one.
      this.#lastReceived = performance.now();
      if (this.#heartbeatWaiting) this.#heartbeatAnswered(ws);
      this.#receive(event.data);
    };
    ws.onclose = (event) => {
      if (this.#ws === ws) this.#onClose(event.code, event.reason, event.wasClean);
    };
    this.#openTimer = setTimeout(() => {
      if (this.#ws !== ws || this.#ready) return;
      // Give up on this socket at once; its own close event is ignored from now on.
      this.#ws = null;
      ws.close();
      this.#onClose(1006, "open timeout", false);
    }, this.#openTimeout);
  }

  async #onWelcome(ws: WebSocketLike | null): Promise<void> {
    let token: string | null = null;
    let problem: unknown = null;
    try {
      token = await this.#currentToken();
    } catch (error) {
      problem = new WshubError("token_error", `token function failed: ${messageOf(error)}`);
    }
    if (this.#ws !== ws) return;
    // Pipelined: the server handles a connection's messages in order, so the subscriptions
    // (private and presence channels included) are checked after the authentication.
    const joins: Promise<unknown>[] = [];
    if (token) {
      const auth = this.#request("authenticate", this.#authPayload(token), this.#userHook());
      joins.push(
        auth.catch((error: unknown) => {
          if (codeOf(error) !== "connection_lost") problem = error;
        }),
      );
    }
    for (const sub of this.#subs.values()) joins.push(this.#join(sub));
    this.#sendable = true;
    await Promise.all(joins);
    if (this.#ws !== ws || ws === null) return; // dropped meanwhile: the close has been handled
    clearTimeout(this.#openTimer);
    this.#ready = true;
    this.#attempt = 0;
    this.#startHeartbeat(ws);
    this.#setState("open");
    this.#emit("open", { welcome: this.#welcome, reconnected: this.#everOpened });
    this.#everOpened = true;
    for (const waiter of this.#readyWaiters.splice(0)) waiter.resolve();
    if (problem !== null) {
      this.#emit("error", { error: problem });
      this.#connected?.reject(problem);
    } else if (this.#welcome !== null) {
      this.#connected?.resolve(this.#welcome);
    }
  }

  /** Send `subscribe` for `sub` on the current connection, resuming from its position. */
  #join(sub: Subscription): Promise<void> {
    const { since, epoch } = sub.state;
    const payload: Payload = { channel: sub.channel };
    if (since !== null) {
      payload.since = since;
      if (epoch !== null) payload.epoch = epoch;
    }
    const hook = (msg: Incoming) =>
      this.#channelJoined(sub, msg.payload, since, since === null ? null : epoch);
    return this.#request("subscribe", payload, hook).then(
      (msg) => {
        if (this.#subs.get(sub.channel) !== sub) return;
        for (const waiter of sub.waiters.splice(0)) waiter.resolve(msg.payload as SubscribedPayload);
      },
      (error: unknown) => {
        if (codeOf(error) === "connection_lost" || this.#subs.get(sub.channel) !== sub) return;
        // Refused (a token without the claim, a changed policy): end this subscription only.
        this.#subs.delete(sub.channel);
        if (sub.waiters.length > 0) {
          for (const waiter of sub.waiters.splice(0)) waiter.reject(error);
        } else {
          this.#emit("error", { error });
        }
      },
    );
  }

  #onClose(code: number, reason: string, wasClean: boolean): void {
    clearTimeout(this.#openTimer);
    this.#stopHeartbeat();
    const ws = this.#ws;
    if (ws !== null) {
      ws.onmessage = ws.onclose = null;
      this.#ws = null;
    }
    this.#welcomed = this.#sendable = this.#ready = false;
    this.#lastClose = { code, reason };
    // Gaps being filled are dropped: the next connection resumes from the same offsets.
    this.#userStream.fill = null;
    for (const sub of this.#subs.values()) {
      sub.joined = false;
      sub.fill = null;
    }
    const lost = new WshubError("connection_lost", `Connection closed (${code})`, {
      closeCode: code,
    });
    for (const request of this.#pending.values()) request.reject(lost);
    this.#pending.clear();

    const policy = this.#reconnect;
    let willReconnect = !this.#closing && policy !== false && shouldReconnect(code, policy);
    if (willReconnect && policy !== false && this.#attempt >= policy.maxAttempts) {
      willReconnect = false;
    }
    this.#emit("close", { code, reason, wasClean, willReconnect });
    if (!willReconnect || policy === false) {
      const why = this.#closing
        ? "Closed by the application"
        : policy === false || !shouldReconnect(code, policy)
          ? `Connection closed (${code}${reason ? ` ${reason}` : ""}), not reconnecting`
          : `Gave up reconnecting after ${this.#attempt} attempt(s)`;
      this.#finish(new WshubError("closed", why, { closeCode: code }));
      return;
    }
    const delay = backoffDelay(this.#attempt, policy);
    this.#attempt += 1;
    this.#setState("reconnecting");
    this.#emit("reconnecting", { attempt: this.#attempt, delay, code, reason });
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      this.#open();
    }, delay);
  }

  /** The client is closed for good (until connect() again): fail everyone still waiting. */
  #finish(error: WshubError): void {
    this.#stopHeartbeat();
    this.#closing = false;
    this.#setState("closed");
    this.#connected?.reject(error);
    for (const waiter of this.#readyWaiters.splice(0)) waiter.reject(error);
    for (const sub of this.#subs.values()) {
      for (const waiter of sub.waiters.splice(0)) waiter.reject(error);
    }
    for (const resolve of this.#closeWaiters.splice(0)) resolve();
  }

  async #currentToken(): Promise<string | null> {
    if (typeof this.#getToken === "function") return (await this.#getToken()) || null;
    return this.#token;
  }

  #authPayload(token: string): Payload {
    const payload: Payload = { token };
    const { since, epoch } = this.#user;
    if (since !== null) {
      payload.since = since;
      if (epoch !== null) payload.epoch = epoch;
    }
    return payload;
  }

  /** The hook for the `authenticated` reply to the authentication being sent now. */
  #userHook(): Hook {
    const since = this.#user.since;
    const sinceEpoch = since === null ? null : this.#user.epoch;
    return (msg) => this.#userJoined(msg.payload, since, sinceEpoch);
  }

  #userJoined(payload: Payload, since: number | null, sinceEpoch: string | null): void {
    if (typeof payload.userId === "string") this.#userId = payload.userId;
    const { offset, epoch } = payload;
    if (typeof offset !== "number" || typeof epoch !== "string") return;
    const recovered = typeof payload.recovered === "boolean" ? payload.recovered : null;
    if (since !== null) this.#userRecovered = recovered;
    if (this.#user.joined(offset, epoch, recovered, since, sinceEpoch)) {
      const detail = { since, sinceEpoch, offset, epoch, missing: null, lost: true };
      this.#emit("gap", { stream: "user", name: this.#userId, ...detail });
    }
  }

  #channelJoined(sub: Subscription, payload: Payload, since: number | null, sinceEpoch: string | null): void {
    if (this.#subs.get(sub.channel) !== sub) return; // unsubscribed meanwhile
    const { offset, epoch } = payload;
    sub.joined = true;
    sub.payload = payload as SubscribedPayload;
    if (typeof offset !== "number" || typeof epoch !== "string") return;
    sub.recovered = typeof payload.recovered === "boolean" ? payload.recovered : null;
    if (sub.state.joined(offset, epoch, sub.recovered, since, sinceEpoch)) {
      const detail = { since, sinceEpoch, offset, epoch, missing: null, lost: true };
      this.#emit("gap", { stream: "channel", name: sub.channel, ...detail });
    }
  }

  // -- internals: heartbeat ------------------------------------------------------------------

  /** Watch the socket `ws`, ready now, until it closes. */
  #startHeartbeat(ws: WebSocketLike): void {
    this.#stopHeartbeat();
    const timing = this.heartbeat;
    if (timing === false) return;
    this.#heartbeatTiming = timing;
    this.#heartbeatAfter(ws, timing.interval - (performance.now() - this.#lastReceived));
  }

  #stopHeartbeat(): void {
    if (this.#heartbeatTimer !== null) {
      clearTimeout(this.#heartbeatTimer);
      this.#heartbeatTimer = null;
    }
    this.#heartbeatTiming = null;
    this.#heartbeatWaiting = false;
  }

  #heartbeatAfter(ws: WebSocketLike, delay: number): void {
    if (this.#heartbeatTimer !== null) clearTimeout(this.#heartbeatTimer);
    this.#heartbeatTimer = setTimeout(() => this.#heartbeatTick(ws), Math.max(0, delay));
  }

  /** The first frame after a heartbeat ping: silence is counted from now again. */
  #heartbeatAnswered(ws: WebSocketLike): void {
    this.#heartbeatWaiting = false;
    if (this.#heartbeatTiming !== null) this.#heartbeatAfter(ws, this.#heartbeatTiming.interval);
  }

  #heartbeatTick(ws: WebSocketLike): void {
    this.#heartbeatTimer = null;
    const timing = this.#heartbeatTiming;
    if (this.#ws !== ws || !this.#ready || timing === null) return;
    if (this.#heartbeatWaiting) {
      this.#heartbeatExpired(ws);
      return;
    }
    const silence = performance.now() - this.#lastReceived;
    if (silence < timing.interval) {
      this.#heartbeatAfter(ws, timing.interval - silence);
      return;
    }
    // Not through #request: no pending entry, no timeout error; the reply is recognised by its
    // id and dropped in #handle, late ones included.
    this.#heartbeatPings += 1;
    const message = { type: "ping", id: `${this.#heartbeatPrefix}${this.#heartbeatPings}` };
    this.#heartbeatWaiting = true;
    // Armed before sending: a `frame` listener may close() the client, which must disarm it.
    this.#heartbeatAfter(ws, timing.timeout);
    this.#sendText(JSON.stringify(message), message);
  }

  /** Nothing came within `timeout` after a ping: give up on the socket at once. */
  #heartbeatExpired(ws: WebSocketLike): void {
    this.#ws = null;
    const reason = "heartbeat timeout";
    try {
      ws.close(HEARTBEAT_CLOSE_CODE, reason); // tells the server why, should it still listen
    } catch (error) {
      report(error);
    }
    this.#onClose(HEARTBEAT_CLOSE_CODE, reason, false);
  }

  // -- internals: requests -------------------------------------------------------------------

  #notConnected<T>(): Promise<T> {
    return Promise.reject(new WshubError("not_connected", "Not connected: call connect() first"));
  }

  /** A request from the application: wait for the connection to be ready, then send. The
   * timeout covers both; a request whose time ran out while waiting is never sent. */
  #call(
    type: string,
    payload: unknown,
    hookFactory: (() => Hook) | null = null,
  ): Promise<Incoming> {
    if (this.#state === "idle" || this.#state === "closed") return this.#notConnected();
    return new Promise<Incoming>((resolve, reject) => {
      let expired = false;
      const timer = setTimeout(() => {
        expired = true;
        reject(new WshubError("timeout", `No reply to '${type}' within ${this.#requestTimeout} ms`));
      }, this.#requestTimeout);
      const send = (): Promise<Incoming> | undefined => {
        if (expired) return undefined;
        // Ready may have ended between the wake-up and now: wait for the next connection.
        if (!this.#ready) return this.#waitReady().then(send) as Promise<Incoming>;
        const body = typeof payload === "function" ? (payload as () => unknown)() : payload;
        return this.#request(type, body, hookFactory ? hookFactory() : null);
      };
      this.#waitReady()
        .then(send)
        .then((msg) => {
          if (msg !== undefined) resolve(msg);
        }, reject)
        .finally(() => clearTimeout(timer));
    });
  }

  #waitReady(): Promise<void> {
    if (this.#ready) return Promise.resolve();
    if (this.#state === "idle" || this.#state === "closed") return this.#notConnected();
    return new Promise((resolve, reject) => this.#readyWaiters.push({ resolve, reject }));
  }

  /** Send with a fresh `id` on the current connection; resolves with the reply envelope. `hook`
   * runs when a non-error reply arrives, before any later frame is handled. */
  #request(type: string, payload: unknown, hook: Hook = null): Promise<Incoming> {
    if (this.#ws === null || !this.#welcomed) {
      return Promise.reject(new WshubError("connection_lost", "Not connected"));
    }
    this.#ids += 1;
    const id = `${this.#idPrefix}-${this.#ids}`;
    const message: Payload = { type };
    if (payload !== null) message.payload = payload;
    message.id = id;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, hook });
      this.#sendText(JSON.stringify(message), message);
    });
  }

  #sendText(text: string, message: unknown = undefined): void {
    this.#ws?.send(text);
    if (message === undefined) {
      try {
        message = JSON.parse(text);
      } catch {
        message = null;
      }
    }
    this.#emit("frame", { direction: "out", text, message, duplicate: false });
  }

  // -- internals: receiving ------------------------------------------------------------------

  #receive(data: unknown): void {
    if (typeof data !== "string") {
      // Not part of protocol v1; shown to `frame` listeners, otherwise ignored.
      this.#emit("frame", { direction: "in", text: null, message: null, duplicate: false });
      return;
    }
    let parsed: unknown = null;
    try {
      parsed = JSON.parse(data);
    } catch {
      // not JSON: logged below, otherwise ignored
    }
    if (!isObject(parsed) || typeof parsed.type !== "string") {
      this.#emit("frame", { direction: "in", text: data, message: null, duplicate: false });
      return;
    }
    if (!isObject(parsed.payload)) parsed.payload = {};
    const message = parsed as Incoming;
    const stream = this.#streamOf(message);
    if (stream === null) {
      this.#emit("frame", { direction: "in", text: data, message, duplicate: false });
      this.#handle(message);
      return;
    }
    const offset = (message.type === "message" ? message.payload.offset : message.offset) as number;
    // Seen before (a resume's seam), or already held back behind a gap.
    const duplicate = stream.state.isDuplicate(offset) || stream.fill?.held.has(offset) === true;
    this.#emit("frame", { direction: "in", text: data, message, duplicate });
    if (!duplicate) this.#arrive(stream, offset, message);
  }

  /** The stream a message belongs to (a subscription, or #userStream), or null. */
  #streamOf(message: Incoming): Stream | null {
    if (message.type === "message") {
      const sub = this.#subs.get(message.payload.channel);
      if (sub === undefined || !sub.state.known || typeof message.payload.offset !== "number") {
        return null;
      }
      return sub;
    }
    return typeof message.offset === "number" ? this.#userStream : null;
  }

  #streamName(stream: Stream): string | null {
    return stream.kind === "user" ? this.#userId : stream.channel;
  }

  // -- internals: gaps on a live stream --------------------------------------------------------

  /** A new stream message: handed on, or held back behind a gap. A message that jumps starts a
   * fill: the stream is resumed on this connection from the last offset without a gap, then a
   * `ping` goes out; when its `pong` is in, the replay is complete. Until then what came after
   * the gap waits, and goes out in order as the replay fills the gap. */
  #arrive(stream: Stream, offset: number, message: Incoming): void {
    const { state } = stream;
    if (stream.fill !== null) {
      stream.fill.held.set(offset, message);
      this.#handAll(this.#release(stream.fill, state, false).items);
      return;
    }
    const since = state.since;
    if (since === null || !state.jumps(offset)) {
      state.accept(offset);
      this.#handle(message);
      return;
    }
    const fill: Fill = { since, firstSeen: offset, held: new Map([[offset, message]]), lost: false };
    stream.fill = fill;
    const epoch = state.epoch;
    this.#emit("gap", {
      stream: stream.kind,
      name: this.#streamName(stream),
      since,
      sinceEpoch: epoch,
      offset,
      epoch,
      missing: [since + 1, offset - 1],
      lost: false,
    });
    void this.#fill(stream, fill, this.#ws);
  }

  /** What `fill` may hand on now, in order, recorded in `state`; with `flush`, everything, with
   * the ranges still missing. */
  #release(
    fill: Fill,
    state: StreamState,
    flush: boolean,
  ): { items: Incoming[]; missing: [number, number][] } {
    const items: Incoming[] = [];
    const missing: [number, number][] = [];
    for (const offset of [...fill.held.keys()].sort((a, b) => a - b)) {
      if (state.isDuplicate(offset)) {
        fill.held.delete(offset);
        continue;
      }
      const contiguous = state.loose || offset === state.delivered + 1;
      if (!contiguous && !flush) break;
      if (!contiguous) missing.push([state.delivered + 1, offset - 1]);
      items.push(fill.held.get(offset) as Incoming);
      fill.held.delete(offset);
      state.accept(offset);
    }
    return { items, missing };
  }

  #handAll(messages: Incoming[]): void {
    for (const message of messages) this.#handle(message);
  }

  async #fill(stream: Stream, fill: Fill, ws: WebSocketLike | null): Promise<void> {
    const { state } = stream;
    const sinceEpoch = state.epoch;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const expired = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new WshubError("timeout", "No replay to fill a gap in time")),
        this.#requestTimeout,
      );
    });
    expired.catch(() => {});
    const current = () => this.#ws === ws && stream.fill === fill;
    try {
      let payload: Payload;
      if (stream.kind === "user") {
        const token = await Promise.race([this.#currentToken(), expired]);
        if (!current()) return;
        if (!token) throw new WshubError("token_error", "No token to resume the user stream");
        payload = { token, since: fill.since };
      } else {
        payload = { channel: stream.channel, since: fill.since };
      }
      if (sinceEpoch !== null) payload.epoch = sinceEpoch;
      const type = stream.kind === "user" ? "authenticate" : "subscribe";
      const hook = (msg: Incoming) => this.#refilled(stream, fill, msg.payload, sinceEpoch);
      await Promise.race([this.#request(type, payload, hook), expired]);
      if (!current()) return;
      await Promise.race([
        this.#request("ping", null, () => this.#fillDone(stream, fill, false)),
        expired,
      ]);
    } catch (error) {
      if (codeOf(error) === "connection_lost" || !current()) return;
      this.#fillDone(stream, fill, true); // refused or too slow: hand on what is held
      this.#emit("error", { error });
    } finally {
      clearTimeout(timer);
    }
  }

  /** The reply to a fill's resume (`subscribed`/`authenticated`), before the replay. */
  #refilled(stream: Stream, fill: Fill, payload: Payload, sinceEpoch: string | null): void {
    if (stream.fill !== fill) return;
    const { state } = stream;
    if (stream.kind === "user" && typeof payload.userId === "string") this.#userId = payload.userId;
    const { offset, epoch } = payload;
    if (typeof offset === "number" && typeof epoch === "string") {
      const recovered = typeof payload.recovered === "boolean" ? payload.recovered : null;
      if (stream.kind === "user") this.#userRecovered = recovered;
      else stream.recovered = recovered;
      const before = state.epoch;
      if (state.joined(offset, epoch, recovered, fill.since, sinceEpoch)) {
        if (epoch !== before) fill.held.clear(); // the old numbering: the replay brings the new
        fill.lost = true;
        this.#emit("gap", {
          stream: stream.kind,
          name: this.#streamName(stream),
          since: fill.since,
          sinceEpoch,
          offset,
          epoch,
          missing: [fill.since + 1, fill.firstSeen - 1],
          lost: true,
        });
      }
    }
    // With `recovered: false` the replay starts after a trimmed part, maybe before what is
    // held: its first message sets the numbering, and what is held goes after it.
    if (!state.loose) this.#handAll(this.#release(fill, state, false).items);
  }

  /** The fill is over (its `pong` is in; `failed`: the resume was refused or timed out): hand
   * on everything held, in order, and tell of what is still missing. */
  #fillDone(stream: Stream, fill: Fill, failed: boolean): void {
    if (stream.fill !== fill) return;
    stream.fill = null;
    const { state } = stream;
    const since = state.delivered;
    const { items, missing } = this.#release(fill, state, true);
    if (failed && missing.length === 0 && !fill.lost) {
      missing.push([fill.since + 1, fill.firstSeen - 1]);
    }
    const first = missing[0];
    const last = missing[missing.length - 1];
    if (first !== undefined && last !== undefined && !fill.lost) {
      this.#emit("gap", {
        stream: stream.kind,
        name: this.#streamName(stream),
        since,
        sinceEpoch: state.epoch,
        offset: state.delivered,
        epoch: state.epoch,
        missing: [first[0], last[1]],
        lost: true,
      });
    }
    if (fill.lost || missing.length > 0) {
      if (stream.kind === "user") this.#userRecovered = false;
      else stream.recovered = false;
    }
    this.#handAll(items);
  }

  // -- internals: the token --------------------------------------------------------------------

  /** `token_expiring`: authenticate again on this connection with a fresh token (the reply says
   * `refreshed: true`). Without a token function the server will close with 4001. */
  async #refreshToken(ws: WebSocketLike | null, expiresAt: number | null): Promise<void> {
    if (typeof this.#getToken !== "function") return;
    let token: string | null;
    try {
      token = await this.#currentToken();
    } catch (error) {
      const message = `token function failed: ${messageOf(error)}`;
      this.#emit("error", { error: new WshubError("token_error", message) });
      return;
    }
    if (this.#ws !== ws || !token) return;
    try {
      const reply = await this.#request("authenticate", { token }, (msg) => {
        if (typeof msg.payload.userId === "string") this.#userId = msg.payload.userId;
      });
      this.#emit("tokenrefresh", { expiresAt, payload: reply.payload as AuthenticatedPayload });
    } catch (error) {
      if (codeOf(error) !== "connection_lost") this.#emit("error", { error });
    }
  }

  #handle(message: Incoming): void {
    const { type, payload, id } = message;
    // The reply to a heartbeat ping: a sign of life, of no concern to the application.
    if (typeof id === "string" && id.startsWith(this.#heartbeatPrefix)) return;
    const request = typeof id === "string" ? this.#pending.get(id) : undefined;
    if (request !== undefined && typeof id === "string") {
      this.#pending.delete(id);
      if (type === "error") {
        const text = payload.message ?? "Request failed";
        request.reject(new WshubError(payload.code ?? "error", text, { id, frame: message }));
        return;
      }
      if (request.hook !== null) {
        try {
          request.hook(message);
        } catch (error) {
          report(error);
        }
      }
      request.resolve(message);
      return;
    }
    if (type === "welcome") {
      if (this.#welcomed) return;
      this.#welcomed = true;
      this.#welcome = payload as WelcomePayload;
      this.#connectionId = payload.connectionId ?? null;
      this.#userId = payload.userId ?? null;
      void this.#onWelcome(this.#ws);
    } else if (type === "token_expiring") {
      void this.#refreshToken(this.#ws, payload.expiresAt ?? null);
    } else if (type === "authenticated") {
      // Not the reply to our request: the handshake carried a token, or a raw frame was sent.
      this.#userJoined(payload, null, null);
    } else if (type === "message") {
      const sub = this.#subs.get(payload.channel);
      if (sub === undefined) return; // a publication racing our unsubscribe
      for (const handler of [...sub.handlers]) this.#invoke(handler as Handler, payload, message);
    }
    for (const handler of [
      ...(this.#handlers.get(type) ?? []),
      ...(this.#handlers.get("*") ?? []),
    ]) {
      this.#invoke(handler, payload, message);
    }
  }

  #invoke(handler: Handler, payload: unknown, message: Incoming): void {
    try {
      handler(payload, message);
    } catch (error) {
      report(error);
    }
  }

  #setState(state: ClientState): void {
    const previous = this.#state;
    if (state === previous) return;
    this.#state = state;
    this.#emit("statechange", { state, previous });
  }

  #emit<K extends keyof WshubEventMap>(name: K, detail: WshubEventMap[K]): void {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }
}

export default WshubClient;
