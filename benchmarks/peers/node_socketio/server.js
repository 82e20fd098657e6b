'use strict';
// Peer: Node socket.io 4, the same messages as Socket.IO events (as peers/socketio_server.py):
// `welcome` on connect, `subscribe` -> `subscribed` (joins a room), `publish` -> `message` to
// the room (encoded once by the adapter) + `published` to the sender, `ping` -> `pong`.
// WebSocket transport only, no permessage-deflate. Load it with `loadgen --sio`.
//   node server.js PORT
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || process.env.PORT || 8000);
const offsets = new Map();
let nextId = 1;

const httpServer = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const io = new Server(httpServer, {
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
  httpCompression: false,
});

io.on('connection', (socket) => {
  socket.emit('welcome', {
    connectionId: `c${nextId++}`, userId: null, heartbeatInterval: 25000,
    serverTime: Date.now(), protocol: 1,
  });
  socket.on('subscribe', (payload) => {
    const ch = payload && payload.channel;
    socket.join(ch);
    socket.emit('subscribed', { channel: ch, offset: offsets.get(ch) || 0, epoch: 'bench' });
  });
  socket.on('unsubscribe', (payload) => {
    const ch = payload && payload.channel;
    socket.leave(ch);
    socket.emit('unsubscribed', { channel: ch });
  });
  socket.on('publish', (payload) => {
    const { channel: ch, data } = payload || {};
    const offset = (offsets.get(ch) || 0) + 1;
    offsets.set(ch, offset);
    io.to(ch).emit('message', {
      channel: ch, data, offset, timestamp: Date.now(), from: null,
    });
    socket.emit('published', { channel: ch, offset });
  });
  socket.on('ping', () => socket.emit('pong', { timestamp: Date.now() }));
  socket.on('error', () => {});
});

httpServer.listen(port, '127.0.0.1', 4096);
process.on('SIGTERM', () => process.exit(0));
