/**
 * Hostile byte streams against one running server (issue 11, part 1).
 *
 * Each stream is generated from (seed, index) — random bytes, mutated
 * option phases, mutated request streams in simple, structured and
 * extended modes (see streams.ts) — and sent either straight into a
 * Session through an in-process stream pair (`server.accept`: decoder,
 * machines, reply writer, backend; no kernel) or through a real UNIX socket.
 * After the last byte the client half-closes (FIN) and the server must close
 * the connection. Everything the server sent is checked against what the
 * client sent (`checkReplies`: no reply the client could not frame, no
 * answer to something never sent). In-process streams are also fed to a
 * bare FrameDecoder at two different chunkings, which must decode the same
 * frames without throwing and never hold more than its buffer cap.
 * Every PROBE_EVERY streams a well-behaved client (in-process, and over the
 * socket) negotiates, writes a pattern, reads it back and compares, while the
 * hostile streams keep running; no answer within 2 s is a hang (a hang
 * detector, not a timing assertion).
 *
 * Counted: crashes (uncaught exceptions, unhandled rejections, server
 * log lines at error level, a decoder that throws), hangs (a connection the
 * server never closes after the client's FIN, a probe with no answer),
 * desyncs (server bytes out of step with the client's, a probe reading back
 * wrong data or a malformed reply, decoders that disagree across
 * chunkings), and peak RSS. The test asserts 0, 0, 0 and RSS under
 * RSS_BOUND.
 *
 *   FUZZ_STREAMS   streams to run (default 20 000: the CI slice; `npm run fuzz` runs 1 000 000)
 *   FUZZ_SEED      the run's seed (printed at the start and with every failure)
 *   FUZZ_ONLY      replay one stream index (with FUZZ_SEED), printing both byte streams
 *   FUZZ_SOCKET_SHARE  fraction of streams through the socket (default 0.2)
 */
import net from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mergeMap } from 'rxjs';
import { createServer, memoryBackend, type NbdServer } from '../../src/index.js';
import { FrameDecoder } from '../../src/protocol/decoder.js';
import type { Logger } from '../../src/transport/logger.js';
import { tmpDir } from '../integration/harness.js';
import {
  GoodClient,
  HangError,
  MiB,
  Rng,
  blockPattern,
  duplexPair,
  mib,
  mix32,
  rssPeak,
  runSeed,
  waitUntil,
  watchCrashes,
  within,
} from './support.js';
import { FUZZ_EXPORTS, FUZZ_EXPORT_SIZE, checkReplies, cutPoints, generate, type FuzzStream } from './streams.js';
import { REFUSAL_LINES } from '../../src/api/violations.js';

const STREAMS = Number(process.env.FUZZ_STREAMS ?? 20_000);
const SOCKET_SHARE = Number(process.env.FUZZ_SOCKET_SHARE ?? 0.2);
const ONLY = process.env.FUZZ_ONLY !== undefined && process.env.FUZZ_ONLY !== '' ? Number(process.env.FUZZ_ONLY) : undefined;
const SEED = runSeed();
/** Streams in flight at once, per transport. */
const CONCURRENCY = 16;
const PROBE_EVERY = 250;
/** The hang detector for probes: a probe step with no answer for this long (not a timing assertion). */
const HANG_MS = 2000;
/**
 * The hang detector for hostile streams: the server must close the
 * connection after the client's FIN. More generous than the probes' 2 s,
 * since up to 32 streams share two busy cores; a server that never closes
 * is caught all the same.
 */
const CLOSE_CAP_MS = 10_000;
/**
 * Peak RSS allowed for the whole run, in the test worker. A leak of a few
 * hundred bytes per stream would cross it over a long run; one hostile
 * stream can make the server buffer at most a few MiB.
 */
const RSS_BOUND = 768 * MiB;
const PROGRESS_EVERY = 100_000;

interface Failure {
  index: number;
  kind: string;
  transport: string;
  what: 'crash' | 'hang' | 'desync';
  message: string;
  notes: string[];
}

const failures: Failure[] = [];
const counts = { streams: 0, inProcess: 0, socket: 0, probes: 0, crashes: 0, hangs: 0, desyncs: 0, serverErrors: 0, warnings: 0, byKind: {} as Record<string, number> };
/** Log lines at warn level per open connection (the standard is one clear line per dropped connection). */
const warnsPerConnection = new Map<number, number>();
const refusalsPerConnection = new Map<number, number>();
let noisyConnections = 0;
const noisyExamples: string[] = [];

function record(f: Failure): void {
  counts[f.what === 'crash' ? 'crashes' : f.what === 'hang' ? 'hangs' : 'desyncs']++;
  if (failures.length < 20) failures.push(f);
  // Failures are kept grouped (a long run may find thousands); the first few of each kind are printed in full.
  const k = kindOf(f);
  const group = kinds.get(k) ?? { count: 0, streams: [] };
  kinds.set(k, group);
  if (group.streams.length < 8) group.streams.push(f.index);
  if (++group.count <= 3) {
    console.error(
      `fuzz ${f.what}: seed=0x${SEED.toString(16)} stream=${f.index} kind=${f.kind} via ${f.transport}: ${f.message}\n` +
        `  notes: ${f.notes.join('; ')}\n  replay: FUZZ_SEED=0x${SEED.toString(16)} FUZZ_ONLY=${f.index} npx vitest run test/hostile/fuzz.test.ts` +
          ` (alone on a fresh server; what earlier streams left in the exports is gone: FUZZ_SEED=0x${SEED.toString(16)} FUZZ_STREAMS=${STREAMS} replays the whole run)`,
    );
  }
}

/** Failures grouped by their message with the numbers taken out: how many, and the first streams. */
const kinds = new Map<string, { count: number; streams: number[] }>();
const kindOf = (f: Failure) => `${f.what}: ${f.message.replace(/\b(0x)?[0-9a-f]*\d[0-9a-f]*\b/g, 'N')}`;

function failureKinds(): string {
  return [...kinds].map(([k, g]) => `\n  ${g.count} (streams ${g.streams.join(', ')}${g.count > g.streams.length ? ', …' : ''}): ${k}`).join('');
}

const idOf = (line: string) => Number(/connection (\d+)/.exec(line)?.[1] ?? 0);
/** Server connection id → stream index, for in-process streams (accept() opens the connection synchronously). */
const streamOfConnection = new Map<number, number>();
let accepting: number | undefined;

const logger: Logger = {
  warn: (m) => {
    counts.warnings++;
    const id = idOf(m);
    // A refused request or rejected option is one line each (the connection goes on), up to REFUSAL_LINES
    // and the line that says the rest are not logged; anything else is the one line a dropped connection gets.
    const refusal = m.includes(': refused: ') || m.includes(': further refusals ');
    const table = refusal ? refusalsPerConnection : warnsPerConnection;
    if (id > 0) table.set(id, (table.get(id) ?? 0) + 1);
    if (ONLY !== undefined) console.log(`server warn: ${m}`);
  },
  error: (m) => {
    counts.serverErrors++;
    const index = streamOfConnection.get(idOf(m)) ?? -1;
    record({ index, kind: '?', transport: index < 0 ? 'socket' : 'in-process', what: 'crash', message: `server logged an error: ${m}`, notes: [] });
  },
  info: ONLY !== undefined ? (m) => console.log(`server info: ${m}`) : undefined,
};

let server: NbdServer;
let socketPath: string;
let dir: string;

beforeAll(async () => {
  dir = tmpDir('nbd-hostile-fuzz-');
  socketPath = path.join(dir, 'nbd.sock');
  const answered = new Uint8Array(FUZZ_EXPORT_SIZE);
  server = createServer({
    logger,
    exports: [
      { name: FUZZ_EXPORTS.writable, backend: memoryBackend({ size: FUZZ_EXPORT_SIZE }) },
      { name: FUZZ_EXPORTS.readOnly, backend: memoryBackend({ size: 64 * 1024, readOnly: true }) },
      { name: FUZZ_EXPORTS.aligned, backend: memoryBackend({ size: FUZZ_EXPORT_SIZE }), blockSizes: { minimum: 512, preferred: 4096, maximum: 1 << 20 } },
      // Answered through requests$, later and out of order.
      { name: FUZZ_EXPORTS.async, size: FUZZ_EXPORT_SIZE, flags: { write: true, flush: true, fua: true, trim: true, zero: true, fastZero: true, cache: true } },
      { name: 'probe', backend: memoryBackend({ size: 4 * MiB }) },
    ],
  });
  server.requests$
    .pipe(
      mergeMap(async (req) => {
        await new Promise((r) => setTimeout(r, req.cookie % 3n === 0n ? 1 : 0));
        const o = req.offset;
        switch (req.type) {
          case 'read':
            return req.reply(Buffer.from(answered.subarray(o, o + req.length)));
          case 'write':
            if (req.data) answered.set(req.data, o); // a zero-length WRITE has no payload
            return req.reply();
          case 'writeZeroes':
          case 'trim':
            answered.fill(0, o, o + req.length);
            return req.reply();
          default:
            return req.reply();
        }
      }, 8),
    )
    .subscribe({ error: (e) => logger.error(`requests$ handler: ${String(e)}`) });
  server.connections$.subscribe((e) => {
    if (e.type === 'opened' && accepting !== undefined) streamOfConnection.set(e.connection.id, accepting);
    if (e.type !== 'closed') return;
    streamOfConnection.delete(e.connection.id);
    const n = warnsPerConnection.get(e.connection.id) ?? 0;
    const r = refusalsPerConnection.get(e.connection.id) ?? 0;
    if (n > 1 || r > REFUSAL_LINES + 1) {
      noisyConnections++;
      if (noisyExamples.length < 5) noisyExamples.push(`connection ${e.connection.id}: ${n} warnings, ${r} refusal lines`);
    }
    warnsPerConnection.delete(e.connection.id);
    refusalsPerConnection.delete(e.connection.id);
  });
  await server.listen({ path: socketPath });
});

afterAll(async () => {
  await server?.close({ timeout: 2000 });
  fs.rmSync(dir, { recursive: true, force: true });
});

// ── one stream ───────────────────────────────────────────────────────────

const throughSocket = (index: number) => (mix32(SEED ^ 0x50c7e7, index) % 10_000) / 10_000 < SOCKET_SHARE;

/** Feed the stream to bare decoders at two chunkings: same frames, no throw, buffer cap kept. */
function decoderCheck(s: FuzzStream, cuts: number[], rng: Rng): string | null {
  const run = (pieces: number[]) => {
    const d = new FrameDecoder();
    const frames: string[] = [];
    let extended = false;
    let at = 0;
    for (const end of [...pieces, s.bytes.length]) {
      if (end <= at) continue;
      if (!d.push(s.bytes.subarray(at, end))) {
        const f = d.next();
        frames.push(`refused:${f && f.kind === 'fatal' ? f.code : '?'}`);
        return frames;
      }
      at = end;
      if (d.bufferedBytes > d.limits.maxBufferedBytes) throw new Error(`decoder holds ${d.bufferedBytes} bytes, over its cap`);
      for (;;) {
        const f = d.next();
        if (f === null) break;
        if (f.kind === 'fatal') {
          frames.push(`fatal:${f.code}`);
          return frames;
        }
        if (f.kind === 'clientFlags') frames.push(`flags:${f.flags}`);
        else if (f.kind === 'option') {
          const detail = 'name' in f ? `${f.name}|${'requests' in f ? f.requests.join(',') : ''}${'queries' in f ? f.queries.join(',') : ''}` : '';
          frames.push(`opt:${f.code}:${f.length}:${f.opt}:${f.problem?.reply ?? ''}:${detail}`);
          if (f.opt === 'extendedHeaders') extended = true;
          if ((f.opt === 'go' || f.opt === 'exportName') && !f.problem) d.startTransmission(extended);
        } else {
          const p = f.payload;
          frames.push(`req:${f.type}:${f.flags}:${f.cookie}:${f.offset}:${f.length}:${f.huge}:${f.payloadDiscarded}:${p ? p.length + ':' + p.toString('base64', 0, Math.min(p.length, 48)) + ':' + p.toString('base64', Math.max(0, p.length - 48)) : '-'}`);
        }
      }
    }
    return frames;
  };
  const a = run(cuts);
  const other: number[] = [];
  for (let at = 0; at < s.bytes.length; at += 1 + rng.int(s.bytes.length < 4096 ? 16 : 8192)) if (at > 0) other.push(at);
  const b = run(other);
  if (a.length !== b.length || a.some((x, i) => x !== b[i])) {
    const i = a.findIndex((x, k) => x !== b[k]);
    return `decoders disagree across chunkings at frame ${i}: ${a[i]} vs ${b[i]}`;
  }
  return null;
}

async function runInProcess(index: number, s: FuzzStream, cuts: number[], rng: Rng): Promise<Buffer> {
  const { client, server: end } = duplexPair();
  const got: Buffer[] = [];
  client.on('data', (d: Buffer) => got.push(d));
  client.on('error', () => {});
  const closed = Promise.all([new Promise((r) => end.once('close', r)), new Promise((r) => client.once('close', r))]);
  accepting = index;
  server.accept(end);
  accepting = undefined;
  let at = 0;
  for (const c of [...cuts, s.bytes.length]) {
    if (client.destroyed) break;
    client.write(s.bytes.subarray(at, c));
    at = c;
    // Sometimes let the server handle each piece before the next arrives.
    if (rng.chance(0.3)) await new Promise((r) => setImmediate(r));
  }
  if (!client.destroyed) client.end();
  await within(closed, CLOSE_CAP_MS, 'the server did not close the connection after the client FIN');
  return Buffer.concat(got);
}

async function runSocket(s: FuzzStream, cuts: number[], rng: Rng): Promise<Buffer> {
  const sock = net.connect({ path: socketPath });
  const got: Buffer[] = [];
  sock.on('data', (d: Buffer) => got.push(d));
  sock.on('error', () => {}); // EPIPE / ECONNRESET after the server dropped us: expected
  const closed = new Promise((r) => sock.once('close', r));
  await within(new Promise((r, j) => (sock.once('connect', r), sock.once('error', j))), HANG_MS, 'connect');
  let at = 0;
  for (const c of [...cuts, s.bytes.length]) {
    if (sock.destroyed) break;
    sock.write(s.bytes.subarray(at, c));
    at = c;
    if (rng.chance(0.3)) await new Promise((r) => setImmediate(r));
  }
  if (!sock.destroyed) sock.end();
  await within(closed, CLOSE_CAP_MS, 'the server did not close the connection after the client FIN');
  return Buffer.concat(got);
}

async function runStream(index: number): Promise<void> {
  const rng = new Rng(mix32(SEED, index));
  const s = generate(rng, index);
  const cuts = cutPoints(rng, s.bytes.length);
  const viaSocket = throughSocket(index);
  const transport = viaSocket ? 'socket' : 'in-process';
  counts.byKind[s.kind] = (counts.byKind[s.kind] ?? 0) + 1;
  const base = { index, kind: s.kind, transport, notes: s.notes };
  // The chunking check decodes a stream twice in one go: not for the few huge ones (100k options would
  // hold the event loop for a second; the server still gets them).
  if (!viaSocket && s.bytes.length <= 256 * 1024) {
    try {
      const d = decoderCheck(s, cuts, rng);
      if (d) record({ ...base, what: 'desync', message: d });
    } catch (e) {
      record({ ...base, what: 'crash', message: `decoder threw: ${e instanceof Error ? e.stack : String(e)}` });
    }
  }
  let out: Buffer;
  try {
    out = viaSocket ? await runSocket(s, cuts, rng) : await runInProcess(index, s, cuts, rng);
  } catch (e) {
    if (e instanceof HangError) record({ ...base, what: 'hang', message: e.message });
    else throw e;
    return;
  } finally {
    counts.streams++;
    if (viaSocket) counts.socket++;
    else counts.inProcess++;
  }
  const d = checkReplies(s.bytes, out, viaSocket);
  if (d) record({ ...base, what: 'desync', message: d });
  if (ONLY !== undefined) {
    console.log(`stream ${index} (${s.kind}, ${transport}): ${s.notes.join('; ')}`);
    console.log(`client bytes (${s.bytes.length}): ${s.bytes.toString('hex', 0, 4096)}`);
    console.log(`server bytes (${out.length}): ${out.toString('hex', 0, 4096)}`);
    console.log(`check: ${d ?? 'in sync'}`);
  }
}

// ── probes ───────────────────────────────────────────────────────────────

let probeBlock = 0;
let slowestProbe = 0;

async function probe(viaSocket: boolean): Promise<void> {
  counts.probes++;
  const transport = viaSocket ? 'socket probe' : 'in-process probe';
  const block = probeBlock++ % 1024;
  const base = { index: counts.streams, kind: 'probe', transport, notes: [`block ${block}`] };
  let c: GoodClient | undefined;
  const t0 = Date.now();
  try {
    if (viaSocket) c = await within(GoodClient.connect({ path: socketPath }), HANG_MS, 'probe connect');
    else {
      const { client, server: end } = duplexPair();
      server.accept(end);
      c = new GoodClient(client);
    }
    await within(c.handshake('probe'), HANG_MS, 'probe handshake');
    await within(c.verify(block * 4096, blockPattern(4096, SEED, counts.probes)), HANG_MS, 'probe write and read back');
    const closed = new Promise((r) => c!.stream.once('close', r));
    c.disconnect();
    await within(closed, HANG_MS, 'probe disconnect');
    slowestProbe = Math.max(slowestProbe, Date.now() - t0);
  } catch (e) {
    c?.destroy();
    record({ ...base, what: e instanceof HangError ? 'hang' : 'desync', message: e instanceof Error ? e.message : String(e) });
  }
}

// ── the run ──────────────────────────────────────────────────────────────

describe('hostile byte streams', () => {
  it(
    `${ONLY !== undefined ? `stream ${ONLY}` : `${STREAMS} streams`}: no crash, no hang, no desync, bounded memory`,
    async () => {
      const crashes = watchCrashes();
      const rss = rssPeak();
      const loop = monitorEventLoopDelay({ resolution: 10 });
      loop.enable();
      const started = Date.now();
      console.log(`fuzz: seed 0x${SEED.toString(16)} (replay with FUZZ_SEED=0x${SEED.toString(16)}), ${ONLY !== undefined ? `stream ${ONLY} only` : `${STREAMS} streams`}, ${Math.round(SOCKET_SHARE * 100)}% through the socket`);
      try {
        if (ONLY !== undefined) {
          await runStream(ONLY);
        } else {
          let next = 0;
          let nextProbe = PROBE_EVERY;
          let nextProgress = PROGRESS_EVERY;
          // While a probe pair runs, no new hostile stream starts (those already running go on), so the
          // 2 s a probe step may take measures the server, not the queue of streams this process feeds it.
          let probing: Promise<void> | null = null;
          const worker = async () => {
            while (next < STREAMS) {
              if (probing) await probing;
              if (next >= STREAMS) break;
              const i = next++;
              await runStream(i);
              if (counts.streams >= nextProbe && !probing) {
                nextProbe += PROBE_EVERY;
                probing = Promise.all([probe(false), probe(true)]).then(() => {
                  rss.sample();
                  probing = null;
                });
              }
              if (counts.streams >= nextProgress) {
                nextProgress += PROGRESS_EVERY;
                console.log(`fuzz: ${counts.streams} streams, ${counts.crashes} crashes, ${counts.hangs} hangs, ${counts.desyncs} desyncs, RSS ${mib(process.memoryUsage.rss())}, ${((Date.now() - started) / 1000).toFixed(0)} s`);
              }
            }
          };
          await Promise.all(Array.from({ length: 2 * CONCURRENCY }, worker));
          if (probing) await probing;
          await Promise.all([probe(false), probe(true)]);
        }
        // Every connection, hostile or not, is gone once its client is.
        await waitUntil(() => server.connectionCount === 0, 10_000, () => `${server.connectionCount} sessions still open`).catch((e: Error) =>
          record({ index: -1, kind: '-', transport: '-', what: 'hang', message: e.message, notes: [] }),
        );
      } finally {
        crashes.stop();
        rss.stop();
        loop.disable();
      }
      if (crashes.count > 0) {
        counts.crashes += crashes.count;
        failures.unshift({ index: -1, kind: '?', transport: '?', what: 'crash', message: `${crashes.count} uncaught exceptions or unhandled rejections; the first: ${String(crashes.first)}`, notes: [] });
      }
      const secs = (Date.now() - started) / 1000;
      console.log(
        [
          `fuzz: seed 0x${SEED.toString(16)}: ${counts.streams} streams (${counts.inProcess} in-process, ${counts.socket} through the socket; ${Object.entries(counts.byKind).map(([k, n]) => `${k} ${n}`).join(', ')}), ${counts.probes} probes, ${secs.toFixed(1)} s`,
          `fuzz: crashes ${counts.crashes} (server errors ${counts.serverErrors}, uncaught ${crashes.count}), hangs ${counts.hangs}, desyncs ${counts.desyncs}, peak RSS ${mib(rss.peak)} (bound ${mib(RSS_BOUND)})`,
          `fuzz: failures by kind:${failureKinds() || ' none'}`,
          `fuzz: slowest probe ${slowestProbe} ms; event loop delay p99 ${(loop.percentile(99) / 1e6).toFixed(0)} ms, max ${(loop.max / 1e6).toFixed(0)} ms`,
          `fuzz: ${counts.warnings} warning lines; ${noisyConnections} connections logged more than one warning${noisyExamples.length ? ` (${noisyExamples.join(', ')})` : ''}`,
        ].join('\n'),
      );
      expect(counts.streams).toBe(ONLY !== undefined ? 1 : STREAMS);
      expect({
        crashes: counts.crashes,
        hangs: counts.hangs,
        desyncs: counts.desyncs,
        kinds: [...kinds.keys()],
        first: failures.slice(0, 3).map((f) => `${f.what} at stream ${f.index} (${f.kind}, ${f.transport}): ${f.message}`),
      }).toEqual({ crashes: 0, hangs: 0, desyncs: 0, kinds: [], first: [] });
      // A dropped connection gets one clear log line, not several.
      expect(noisyExamples).toEqual([]);
      expect(rss.peak).toBeLessThan(RSS_BOUND);
    },
    Math.max(120_000, STREAMS * 10),
  );
});
