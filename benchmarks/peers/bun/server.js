'use strict';
// Peer: Bun's built-in WebSocket server (uWebSockets) and its pub/sub: `ws.subscribe(channel)`,
// `server.publish(channel, text)` (the message encoded once; uWS sends it to every subscriber,
// the publisher too when it is subscribed, as the other peers do).
//   bun server.js PORT
// The same messages as peers/node_ws/server.js. Chat: a connection's user is the `user` query
// parameter of its handshake; `chat` goes to every connection of the recipient (a pub/sub topic
// per user), in memory.
const port = Number(process.argv[2] || process.env.PORT || 8000);
const offsets = new Map();
const online = new Map(); // user id -> connections
let nextId = 1;
let nextMessage = 1;

const reply = (type, payload, id) =>
  JSON.stringify(id === undefined ? { type, payload } : { type, payload, id });

const server = Bun.serve({
  hostname: '127.0.0.1',
  port,
  fetch(req, srv) {
    const userId = new URL(req.url).searchParams.get('user');
    if (srv.upgrade(req, { data: { userId } })) return undefined;
    return new Response('WebSocket only', { status: 400 });
  },
  websocket: {
    perMessageDeflate: false,
    idleTimeout: 0, // no idle close: the idle scenario's connections only wait
    sendPings: false, // as node-ws: no server heartbeat
    maxPayloadLength: 16 * 1024 * 1024,
    open(ws) {
      const { userId } = ws.data;
      if (userId) {
        online.set(userId, (online.get(userId) || 0) + 1);
        ws.subscribe(`user:${userId}`);
      }
      ws.send(reply('welcome', {
        connectionId: `c${nextId++}`, userId, heartbeatInterval: 30000,
        serverTime: Date.now(), protocol: 1,
      }));
    },
    message(ws, raw) {
      if (typeof raw !== 'string') return;
      let msg;
      try { msg = JSON.parse(raw); } catch { ws.send(reply('error', { code: 'invalid_json', message: 'bad' })); return; }
      const payload = msg.payload || {};
      const id = msg.id;
      switch (msg.type) {
        case 'publish': {
          const ch = payload.channel;
          const offset = (offsets.get(ch) || 0) + 1;
          offsets.set(ch, offset);
          server.publish(ch, JSON.stringify({ type: 'message', payload: {
            channel: ch, data: payload.data, offset, timestamp: Date.now(), from: null } }));
          ws.send(reply('published', { channel: ch, offset }, id));
          break;
        }
        case 'chat': {
          const { userId } = ws.data;
          if (!userId) { ws.send(reply('error', { code: 'not_authenticated', message: 'no user' }, id)); break; }
          const to = payload.recipientId;
          const messageId = `m${nextMessage++}`;
          const timestamp = Date.now();
          const delivered = online.has(to);
          if (delivered) {
            server.publish(`user:${to}`, JSON.stringify({ type: 'chat', payload: {
              messageId, from: userId, message: payload.message, timestamp } }));
          }
          ws.send(reply('chat_received', {
            messageId, recipientId: to, delivered, queued: false, timestamp }, id));
          break;
        }
        case 'ping':
          ws.send(reply('pong', { timestamp: Date.now() }));
          break;
        case 'subscribe': {
          const ch = payload.channel;
          ws.subscribe(ch);
          ws.send(reply('subscribed', { channel: ch, offset: offsets.get(ch) || 0, epoch: 'bench' }, id));
          break;
        }
        case 'unsubscribe': {
          const ch = payload.channel;
          ws.unsubscribe(ch);
          ws.send(reply('unsubscribed', { channel: ch }, id));
          break;
        }
        default:
          ws.send(reply('error', { code: 'unknown_type', message: `Unknown message type: ${msg.type}` }, id));
      }
    },
    close(ws) {
      // uWS drops the closed socket's subscriptions itself
      const { userId } = ws.data;
      if (userId) {
        const n = (online.get(userId) || 1) - 1;
        if (n > 0) online.set(userId, n); else online.delete(userId);
      }
    },
  },
});

process.on('SIGTERM', () => process.exit(0));
