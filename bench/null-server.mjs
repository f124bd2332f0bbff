#!/usr/bin/env node
// nbd-engine with a backend that does no storage work (writes are dropped,
// reads return zeroes from one shared buffer): `bench/run.mjs --ceiling`
// runs fio against it to show how many IOPS the client reaches when the
// server's storage costs nothing.
//
//   node bench/null-server.mjs SOCKET_PATH [SIZE_BYTES]
import { createServer } from '../dist/index.js';

const [socketPath, sizeArg] = process.argv.slice(2);
if (!socketPath) {
  process.stderr.write('usage: node bench/null-server.mjs SOCKET_PATH [SIZE_BYTES]\n');
  process.exit(2);
}
const zeroes = Buffer.alloc(32 << 20);
const backend = {
  size: Number(sizeArg ?? 16 * 1024 ** 3),
  read: (_offset, length) => zeroes.subarray(0, length),
  write() {},
  flush() {},
  multiConn: true,
};
const server = createServer({ exports: [{ name: '', backend }] });
const [bound] = await server.listen({ path: socketPath });
process.stdout.write(`nbd-engine (null backend) listening: ${bound.uris.join(" ")}\n`);
const stop = () => server.close({ timeout: 1000 }).then(() => process.exit(0));
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
