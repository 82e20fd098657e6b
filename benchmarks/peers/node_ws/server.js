'use strict';
// Peer: Node's `ws` package, `client.send()` once per subscriber (the message encoded once).
//   node server.js PORT
// Chat: a connection's user is the `user` query parameter of its handshake (the benchmark's
// stand-in for a JWT's `sub`); `chat` goes to every connection of the recipient, in memory.
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || process.env.PORT || 8000);
const channels = new Map(); // channel -> Set of sockets
const offsets = new Map();
const users = new Map(); // user id -> Set of sockets
let nextId = 1;
let nextMessage = 1;

const reply = (type, payload, id) =>
  JSON.stringify(id === undefined ? { type, payload } : { type, payload, id });

const wss = new WebSocketServer({ host: '127.0.0.1', port, backlog: 4096, perMessageDeflate: false });

wss.on('connection', (ws, req) => {
  const joined = new Set();
  const userId = new URL(req.url, 'http://x').searchParams.get('user');
  if (userId) {
    if (!users.has(userId)) users.set(userId, new Set());
    users.get(userId).add(ws);
  }
  ws.send(reply('welcome', {
    connectionId: `c${nextId++}`, userId, heartbeatInterval: 30000,
    serverTime: Date.now(), protocol: 1,
  }));
  ws.on('message', (raw, isBinary) => {
    if (isBinary) return;
    let msg;
    try { msg = JSON.parse(raw); } catch { ws.send(reply('error', { code: 'invalid_json', message: 'bad' })); return; }
    const payload = msg.payload || {};
    const id = msg.id;
    switch (msg.type) {
      case 'publish': {
        const ch = payload.channel;
        const offset = (offsets.get(ch) || 0) + 1;
        offsets.set(ch, offset);
        const out = JSON.stringify({ type: 'message', payload: {
          channel: ch, data: payload.data, offset, timestamp: Date.now(), from: null } });
        const subs = channels.get(ch);
        if (subs) for (const s of subs) s.send(out);
        ws.send(reply('published', { channel: ch, offset }, id));
        break;
      }
      case 'chat': {
        if (!userId) { ws.send(reply('error', { code: 'not_authenticated', message: 'no user' }, id)); break; }
        const to = payload.recipientId;
        const messageId = `m${nextMessage++}`;
        const timestamp = Date.now();
        const conns = users.get(to);
        if (conns) {
          const out = JSON.stringify({ type: 'chat', payload: {
            messageId, from: userId, message: payload.message, timestamp } });
          for (const s of conns) s.send(out);
        }
        ws.send(reply('chat_received', {
          messageId, recipientId: to, delivered: !!conns, queued: false, timestamp }, id));
        break;
      }
      case 'ping':
        ws.send(reply('pong', { timestamp: Date.now() }));
        break;
      case 'subscribe': {
        const ch = payload.channel;
        if (!channels.has(ch)) channels.set(ch, new Set());
        channels.get(ch).add(ws);
        joined.add(ch);
        ws.send(reply('subscribed', { channel: ch, offset: offsets.get(ch) || 0, epoch: 'bench' }, id));
        break;
      }
      case 'unsubscribe': {
        const ch = payload.channel;
        if (channels.has(ch)) channels.get(ch).delete(ws);
        joined.delete(ch);
        ws.send(reply('unsubscribed', { channel: ch }, id));
        break;
      }
      default:
        ws.send(reply('error', { code: 'unknown_type', message: `Unknown message type: ${msg.type}` }, id));
    }
  });
  ws.on('close', () => {
    for (const ch of joined) { const s = channels.get(ch); if (s) s.delete(ws); }
    if (userId) {
      const mine = users.get(userId);
      if (mine) { mine.delete(ws); if (!mine.size) users.delete(userId); }
    }
  });
  ws.on('error', () => {});
});

process.on('SIGTERM', () => process.exit(0));
