#!/usr/bin/env node
// What serving `requests$` costs per request, with no socket and no storage:
// batches of 32 requests (one socket read's worth at QD32) go through a
// Subject, as the server's requests$ does, and are answered by the README
// snippet's handler through
//   - a direct call (what the backend path does: no rxjs),
//   - rxjs mergeMap(async handler, 64) (README's request-stream snippet),
//   - serveRequests(async handler, { concurrency: 64 }),
//   - serveRequests(plain handler, { concurrency: 64 }).
// Between batches the microtask queue is drained (as between socket reads).
// The variants alternate; prints the median ns per request of each.
//
//   npm run build && node bench/stream-micro.mjs [--batches N] [--rounds N]
import { Subject, mergeMap } from 'rxjs';
import { NbdRequest, serveRequests } from '../dist/index.js';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const BATCHES = opt('--batches', 40000);
const ROUNDS = opt('--rounds', 9);
const QD = 32;

// A sink that drops every answer; it offers both forms a session may use (encoded frames, or one call per outcome).
const sink = {
  replyMode: 'simple',
  reply() {},
  replySimple() {},
  replyData() {},
  ok() {},
  read() {},
  blockStatus() {},
  error() {},
};
const exp = { name: '', size: 1 << 30 };
const conn = { id: 1, peer: 'bench', tls: false };
const data = Buffer.alloc(4096);
// READ requests of 4 KiB; the handler answers them from one buffer (the snippet's read case).
const frame = (i) => ({ kind: 'request', extended: false, flags: 0, type: 0, cookie: BigInt(i), offset: (i % 1024) * 4096, length: 4096, huge: false, payloadDiscarded: false });

const asyncHandler = async (req) => {
  switch (req.type) {
    case 'read':  return req.reply(data);
    case 'flush': return req.reply();
    default:      return req.fail('EINVAL');
  }
};
const syncHandler = (req) => {
  switch (req.type) {
    case 'read':  return req.reply(data);
    case 'flush': return req.reply();
    default:      return req.fail('EINVAL');
  }
};

const variants = {
  'direct call (backend path, no rxjs)': () => {
    const s = new Subject();
    return { next: (req) => syncHandler(req), s };
  },
  'mergeMap(async handler, 64)': () => {
    const s = new Subject();
    s.pipe(mergeMap(asyncHandler, 64)).subscribe();
    return { next: (req) => s.next(req), s };
  },
  'serveRequests(async handler, 64)': () => {
    const s = new Subject();
    s.pipe(serveRequests(asyncHandler, { concurrency: 64 })).subscribe();
    return { next: (req) => s.next(req), s };
  },
  'serveRequests(plain handler, 64)': () => {
    const s = new Subject();
    s.pipe(serveRequests(syncHandler, { concurrency: 64 })).subscribe();
    return { next: (req) => s.next(req), s };
  },
};

const tick = () => new Promise((r) => setImmediate(r));

async function time(make) {
  const v = make();
  let n = 0;
  const t0 = process.hrtime.bigint();
  for (let b = 0; b < BATCHES; b++) {
    for (let i = 0; i < QD; i++) v.next(new NbdRequest(frame(n++), sink, exp, conn, []));
    await tick();
  }
  const ns = Number(process.hrtime.bigint() - t0) / n;
  v.s.complete();
  return ns;
}

const names = Object.keys(variants);
const res = Object.fromEntries(names.map((k) => [k, []]));
await time(variants[names[0]]); // warm-up
for (let r = 0; r < ROUNDS; r++) {
  for (const k of r % 2 ? [...names].reverse() : names) res[k].push(await time(variants[k]));
}
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const base = median(res[names[0]]);
process.stdout.write(`${BATCHES} batches of ${QD} 4 KiB READs, ${ROUNDS} alternating rounds (node ${process.version})\n\n`);
process.stdout.write('| path | ns / request (median) | over the direct call | runs |\n|---|---:|---:|---|\n');
for (const k of names) {
  const m = median(res[k]);
  process.stdout.write(`| ${k} | ${m.toFixed(0)} | +${(m - base).toFixed(0)} | ${res[k].map((x) => x.toFixed(0)).join(', ')} |\n`);
}
