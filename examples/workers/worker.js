#!/usr/bin/env node
// A handover worker in Node.js, standard library only.
//
// Node's standard library cannot receive descriptors over a Unix socket (there is no
// recvmsg/SCM_RIGHTS without a native addon), so this worker cannot run in prefork mode, where
// connections arrive over the control channel. It runs in the two modes that pass descriptors at
// start:
//
//   shared  listening sockets from descriptor 3 (LISTEN_FDS, systemd style):
//             handover serve --mode shared --listen tcp://127.0.0.1:8080 -w 4 -- node examples/workers/worker.js
//   spawn   one connection as descriptor 3 (LISTEN_FDS=1):
//             handover serve --mode spawn --socket fd3 --listen tcp://127.0.0.1:8080 -- node examples/workers/worker.js
//
// Either way every request gets a tiny HTTP response.
'use strict';

const http = require('http');
const net = require('net');

function answer(req, res) {
  const body = `hello from the node worker ${process.pid}\n`;
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body), Connection: 'close' });
  res.end(body);
}

function main() {
  if (process.env.LISTEN_PID !== String(process.pid)) {
    console.error('worker.js: not started by `handover serve` (LISTEN_PID is not ours)');
    process.exit(2);
  }
  if (process.env.HANDOVER_CHANNEL_FD) {
    console.error('worker.js: prefork mode needs SCM_RIGHTS, which Node cannot receive without an addon; use --mode shared or spawn');
    process.exit(2);
  }
  const count = parseInt(process.env.LISTEN_FDS || '0', 10);
  if (!(count > 0)) {
    console.error('worker.js: no sockets passed (LISTEN_FDS)');
    process.exit(2);
  }
  const server = http.createServer(answer);
  if (process.env.HANDOVER_LISTENER !== undefined) {
    // spawn mode: descriptor 3 is one accepted connection.
    const socket = new net.Socket({ fd: 3, readable: true, writable: true });
    socket.on('close', () => process.exit(0));
    server.emit('connection', socket);
    return;
  }
  for (let i = 0; i < count; i++) {
    server.listen({ fd: 3 + i });
  }
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
}

main();
