// Node.js cluster serving the same tiny response as every other benchmark server.
//   node node-cluster.js PORT WORKERS rr|os
// rr: the primary accepts and hands connections to workers round-robin (Node's default on
// Linux); os: workers share the listening socket and the kernel picks (SCHED_NONE).
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');
const [port, workers, policy] = [Number(process.argv[2]), Number(process.argv[3] || 2), process.argv[4] || 'rr'];
cluster.schedulingPolicy = policy === 'os' ? cluster.SCHED_NONE : cluster.SCHED_RR;
if (cluster.isPrimary) {
  let up = 0;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('listening', () => { if (++up === workers) console.log(`ready ${process.pid}`); });
} else {
  http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 2 });
    res.end('ok');
  }).listen(port, '127.0.0.1');
}
