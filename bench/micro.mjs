#!/usr/bin/env node
// Microbenchmarks of the hot code, on the compiled library (dist/, xstate's
// production build — the same code the CLI runs).
//
//   npm run bench:micro            (builds first)
//   node bench/micro.mjs [--time MS] [--filter TEXT]
//
// decoder: a 28-byte request, a 4 KiB and a 1 MiB WRITE; reply encoding;
// one request (and a batch of 32) through the transmission machine; one
// 4 KiB read and write through a whole Session (decoder → machine → memory
// backend → reply writer) over an in-process duplex; one whole connection
// (accept, greeting, the options nbdinfo --size sends, DISC, close) likewise.
// The session rows run twice: as served, and recording a trace to a file in
// the temporary directory (`serve --trace`), which is what recording costs.
import { Bench } from 'tinybench';
import { Duplex } from 'node:stream';
import { createActor } from 'xstate';
import { FrameDecoder } from '../dist/protocol/decoder.js';
import { replyOk, replyRead } from '../dist/protocol/replies.js';
import { CMD, FLAG } from '../dist/protocol/constants.js';
import { transmissionMachine } from '../dist/machines/transmission.js';
import { createServer } from '../dist/api/server.js';
import { memoryBackend } from '../dist/backends/memory.js';
import { traceFile } from '../dist/inspect/trace-file.js';
import os from 'node:os';
import path from 'node:path';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const time = Number(opt('--time', '500'));
const filter = opt('--filter', '');

function request(type, offset, length, cookie = 1n, payload) {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609513, 0);
  h.writeUInt16BE(0, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeUInt32BE(Math.floor(offset / 2 ** 32), 16);
  h.writeUInt32BE(offset >>> 0, 20);
  h.writeUInt32BE(length, 24);
  return payload ? Buffer.concat([h, payload]) : h;
}

/** An option request: IHAVEOPT, the option's code, its data. */
function option(code, data = Buffer.alloc(0)) {
  const h = Buffer.alloc(16);
  h.write('IHAVEOPT', 0, 'latin1');
  h.writeUInt32BE(code, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

/** An in-process duplex: we play the client, the server's replies go into the void (counted); `final` when the server ends the stream. */
function clientDuplex(count, final) {
  return new Duplex({
    read() {},
    write(chunk, _enc, cb) {
      count(chunk.length);
      cb();
    },
    writev(chunks, cb) {
      for (const c of chunks) count(c.chunk.length);
      cb();
    },
    ...(final ? { final } : {}),
  });
}

const read28 = request(CMD.NBD_CMD_READ, 4096, 4096);
const write4k = request(CMD.NBD_CMD_WRITE, 4096, 4096, 1n, Buffer.alloc(4096, 7));
const write1m = request(CMD.NBD_CMD_WRITE, 0, 1 << 20, 1n, Buffer.alloc(1 << 20, 7));
// 32 pipelined 4 KiB requests (half reads, half writes) in one chunk, as fio sends them.
const mixed32 = Buffer.concat(
  Array.from({ length: 32 }, (_, i) =>
    i % 2 ? request(CMD.NBD_CMD_READ, i * 4096, 4096, BigInt(i)) : request(CMD.NBD_CMD_WRITE, i * 4096, 4096, BigInt(i), Buffer.alloc(4096, i)),
  ),
);
// The 1 MiB write as it arrives from a socket: 64 KiB chunks.
const write1mChunks = [];
for (let at = 0; at < write1m.length; at += 65536) write1mChunks.push(write1m.subarray(at, at + 65536));

function decoder() {
  const d = new FrameDecoder();
  d.startTransmission(false);
  return d;
}

const negotiated = {
  export: { name: '', size: 1 << 30, flags: 0, blockSizes: { minimum: 1, preferred: 4096, maximum: 32 << 20 } },
  flags: FLAG.NBD_FLAG_HAS_FLAGS | FLAG.NBD_FLAG_SEND_FLUSH | FLAG.NBD_FLAG_SEND_FUA | FLAG.NBD_FLAG_SEND_TRIM,
  structuredReplies: true,
  extendedHeaders: false,
  metaContexts: [],
  tls: false,
  viaExportName: false,
};

const bench = new Bench({ time, warmupTime: 100 });
const add = (name, fn, opts) => {
  if (!filter || name.includes(filter)) bench.add(name, fn, opts);
};

// ── decoder ───────────────────────────────────────────────────────────
{
  const d = decoder();
  add('decode: 28-byte READ request', () => {
    d.push(read28);
    d.next();
  });
  add('decode: 4 KiB WRITE (one chunk)', () => {
    d.push(write4k);
    d.next();
  });
  add('decode: 1 MiB WRITE (one chunk)', () => {
    d.push(write1m);
    d.next();
  });
  add('decode: 1 MiB WRITE (16 × 64 KiB chunks)', () => {
    for (const c of write1mChunks) d.push(c);
    d.next();
  });
  add('decode: 32 × 4 KiB mixed (one chunk), per batch', () => {
    d.push(mixed32);
    while (d.next() !== null);
  });
}

// ── reply encoding ─────────────────────────────────────────────────────
{
  const data = Buffer.alloc(4096, 1);
  add('encode: simple OK reply (write done)', () => replyOk('structured', 12345n, 4096));
  add('encode: structured 4 KiB READ reply', () => replyRead('structured', 12345n, 4096, [{ data }]));
  add('encode: simple 4 KiB READ reply', () => replyRead('simple', 12345n, 4096, [{ data }]));
  add('encode: structured READ of a hole', () => replyRead('structured', 12345n, 4096, [{ hole: 4096 }]));
}

// ── the transmission machine ───────────────────────────────────────────
{
  const actor = createActor(transmissionMachine, { input: { negotiated } });
  let delivered = 0;
  actor.on('request', () => delivered++);
  actor.start();
  const d = decoder();
  d.push(read28);
  const frame = d.next();
  const event = { type: 'request', frame };
  add('machine: one request event (actor.send → emitted)', () => actor.send(event));
  if (transmissionMachine.config.states.open.on['requests']) {
    const frames = Array.from({ length: 32 }, () => frame);
    const batch = { type: 'requests', frames };
    add('machine: one batch event of 32 requests, per batch', () => actor.send(batch));
  }
}

// ── one request through a whole session ──────────────────────────────
async function sessionBench(trace, label = '') {
  let replies = 0;
  const sock = clientDuplex((n) => (replies += n));
  const server = createServer({ exports: [{ name: '', backend: memoryBackend({ size: 1 << 30 }) }], trace });
  server.accept(sock);
  // Handshake: client flags, GO with structured replies first.
  const go = Buffer.alloc(6); // name length 0, 0 info requests
  sock.push(Buffer.from([0, 0, 0, 3]));
  sock.push(option(8)); // STRUCTURED_REPLY
  sock.push(option(7, go)); // GO
  await new Promise((r) => setTimeout(r, 50));
  // Pre-fill the first pages so reads return data, not holes.
  sock.push(Buffer.concat(Array.from({ length: 32 }, (_, i) => request(CMD.NBD_CMD_WRITE, i * 4096, 4096, BigInt(i), Buffer.alloc(4096, i)))));
  await new Promise((r) => setTimeout(r, 20));
  const tick = () => new Promise((r) => setImmediate(r));
  add(`session: 32 × 4 KiB mixed read/write, per batch (to the socket)${label}`, async () => {
    sock.push(mixed32);
    await tick();
  });
  return () => {
    sock.destroy();
    return server.close({ timeout: 100 });
  };
}

// ── one whole connection: what `nbdinfo --size` sends ────────────────
async function handshakeBench(trace, label = '') {
  const server = createServer({ exports: [{ name: '', backend: memoryBackend({ size: 1 << 30 }) }], trace });
  // Client flags; STRUCTURED_REPLY; GO for the default export asking for INFO_BLOCK_SIZE; DISC.
  const go = Buffer.from([0, 0, 0, 0, 0, 1, 0, 3]);
  const client = Buffer.concat([Buffer.from([0, 0, 0, 3]), option(8), option(7, go), request(CMD.NBD_CMD_DISC, 0, 0)]);
  add(`session: one connection (flags, STRUCTURED_REPLY, GO, DISC), per connection${label}`, async () => {
    let bytes = 0;
    const done = new Promise((resolve) => {
      // The server ended the stream after DISC: the client closes its side too, as nbdinfo does,
      // so the session finishes (without this every connection stayed open and the heap grew).
      const sock = clientDuplex(
        (n) => (bytes += n),
        (cb) => {
          cb();
          sock.push(null);
        },
      );
      sock.on('close', resolve);
      server.accept(sock);
      sock.push(client);
    });
    await done;
    if (bytes === 0) throw new Error('no greeting');
  });
  return () => {
    if (server.connectionCount !== 0) throw new Error(`${server.connectionCount} connections still open after the connection rows`);
    return server.close({ timeout: 100 });
  };
}

// The trace rows' file: rotated at 64 MiB (two kept), so a long run neither stops recording nor fills the disk.
const traceOn = traceFile(path.join(os.tmpdir(), `nbd-engine-bench-trace-${process.pid}.jsonl`), { rotate: 2 });
const stops = [await handshakeBench(), await handshakeBench(traceOn, ' [trace on]'), await sessionBench(), await sessionBench(traceOn, ' [trace on]')];
await bench.run();
for (const stop of stops) await stop();
await traceOn.close();
for (const f of [traceOn.path, `${traceOn.path}.1`, `${traceOn.path}.2`]) (await import('node:fs')).rmSync(f, { force: true });

const rows = bench.tasks.map((t) => {
  const r = t.result;
  const mean = r.latency?.mean ?? r.mean; // ms
  const p99 = r.latency?.p99 ?? r.p99;
  return {
    task: t.name,
    'mean µs': (mean * 1000).toFixed(2),
    'p99 µs': (p99 * 1000).toFixed(2),
    'ops/s': Math.round(r.throughput?.mean ?? r.hz).toLocaleString('en-US'),
    samples: r.latency?.samples?.length ?? r.samples?.length ?? r.latency?.samplesCount,
  };
});
console.table(rows);
