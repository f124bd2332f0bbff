/**
 * Acknowledged means written (issue 11, part 3). The command-line server
 * serves a file (`nbd-engine serve --file F --socket S`, a child process)
 * while a raw client streams pipelined WRITEs — some with FUA — and
 * FLUSHes, and records every acknowledgement. At a seeded moment (after a
 * seeded number of acknowledgements, or a seeded number of milliseconds)
 * the server is killed with SIGKILL. Then the file is read directly: every
 * FUA write that was acknowledged, and every write acknowledged before a
 * FLUSH was sent whose own acknowledgement arrived (docs/rules.md:
 * transmission.fua-durable, transmission.flush-durable), must be there byte
 * for byte. Each write has its own region and its
 * own data (round and sequence number in every 16 bytes), so a write that
 * landed in the wrong place, or a half-written or stale one, counts as lost.
 *
 * A process kill leaves the kernel's page cache to the file, so this checks
 * that the server never acknowledges before the data reached the file
 * (no acknowledgement ahead of the write, no buffer reused before its write
 * completed), not power-loss durability.
 *
 *   DURABILITY_ROUNDS (default 20), FUZZ_SEED (the run's seed, printed).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnCli, tmpDir } from '../integration/harness.js';
import { CMD, CMD_FLAG, SIZE, W, encodeRequest } from '../helpers/wire.js';
import { GoodClient, MiB, Rng, blockPattern, connectReader, mix32, runSeed, within } from './support.js';

const ROUNDS = Number(process.env.DURABILITY_ROUNDS ?? 20);
const SEED = runSeed();
const FILE_SIZE = 256 * MiB;

let dir: string;
let file: string;

beforeAll(() => {
  dir = tmpDir('nbd-hostile-durability-');
  file = path.join(dir, 'disk.img');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, FILE_SIZE);
});

afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

interface Write {
  seq: number;
  offset: number;
  data: Buffer;
  fua: boolean;
  acked: boolean;
  /** Covered by an acknowledged FUA or FLUSH. */
  durable: boolean;
}

interface RoundResult {
  sent: number;
  acked: number;
  durable: number;
  lost: string[];
  ackedNotDurableInFile: number;
  ackedNotDurable: number;
  flushesAcked: number;
  killedAfter: string;
}

async function round(r: number): Promise<RoundResult> {
  const socket = path.join(dir, `nbd-${r}.sock`);
  const { child } = await spawnCli(['serve', '--file', file, '--socket', socket]);
  try {
    return await killedDuringWrites(r, child, socket);
  } finally {
    // Whatever happened, no server is left behind.
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

async function killedDuringWrites(r: number, child: ChildProcess, socket: string): Promise<RoundResult> {
  const rng = new Rng(mix32(SEED, r));
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  // The server is killed under this socket: its errors are recorded by the reader, never thrown.
  const { sock, reader } = await connectReader({ path: socket });
  // Handshake: fixed newstyle, NO_ZEROES, GO to the default export.
  const client = new GoodClient(sock, reader);
  await within(client.handshake(''), 20_000, 'greeting and GO');
  // SEND_FLUSH (1 << 2) and SEND_FUA (1 << 3) must be advertised for this to mean anything.
  expect(client.flags & 0b1100).toBe(0b1100);

  const depth = rng.range(1, 32);
  const flushEvery = rng.range(2, 64);
  const fuaShare = rng.pick([0, 0.1, 0.3, 1]);
  const byAcks = rng.chance(0.6);
  const killAt = byAcks ? rng.range(1, 1000) : rng.range(5, 300);
  const writes: Write[] = [];
  /** Cookie → what it was: a write, or a flush covering the writes acknowledged before it was sent. */
  const pending = new Map<bigint, { write?: Write; flushCovers?: Write[] }>();
  const ackedOrder: Write[] = [];
  let flushesAcked = 0;
  let cookie = 1n;
  let cursor = 0;
  let sinceFlush = 0;
  let killed = false;
  let killedAfter = '';

  const kill = (why: string) => {
    if (killed) return;
    killed = true;
    killedAfter = why;
    child.kill('SIGKILL');
  };
  const timer = byAcks ? undefined : setTimeout(() => kill(`${killAt} ms`), killAt);

  const sendOne = () => {
    const c = cookie++;
    if (sinceFlush >= flushEvery) {
      sinceFlush = 0;
      pending.set(c, { flushCovers: ackedOrder.slice() });
      sock.write(encodeRequest({ flags: 0, type: CMD.FLUSH, cookie: c, offset: 0, length: 0 }));
      return;
    }
    const size = rng.chance(0.8) ? 4096 : rng.chance(0.75) ? 64 * 1024 : 256 * 1024;
    if (cursor + size > FILE_SIZE) cursor = 0;
    const w: Write = { seq: writes.length, offset: cursor, data: blockPattern(size, r + 1, writes.length), fua: rng.chance(fuaShare), acked: false, durable: false };
    cursor += size;
    writes.push(w);
    sinceFlush++;
    pending.set(c, { write: w });
    sock.write(encodeRequest({ flags: w.fua ? CMD_FLAG.FUA : 0, type: CMD.WRITE, cookie: c, offset: w.offset, length: size }, w.data));
  };

  // Keep `depth` requests in flight; every reply is checked and recorded until the kill cuts the stream.
  try {
    for (let i = 0; i < depth; i++) sendOne();
    for (;;) {
      const rep = await reader.read(SIZE.SIMPLE_REPLY);
      if (rep.readUInt32BE(0) !== W.SIMPLE_REPLY_MAGIC) throw new Error(`round ${r}: bad reply magic ${rep.toString('hex')}`);
      const c = rep.readBigUInt64BE(8);
      const what = pending.get(c);
      if (!what) throw new Error(`round ${r}: reply for unknown cookie ${c}`);
      pending.delete(c);
      const err = rep.readUInt32BE(4);
      if (err !== 0) throw new Error(`round ${r}: request ${c} failed with error ${err}`);
      if (what.write) {
        what.write.acked = true;
        if (what.write.fua) what.write.durable = true;
        ackedOrder.push(what.write);
      } else {
        flushesAcked++;
        for (const w of what.flushCovers!) w.durable = true;
      }
      if (byAcks && ackedOrder.length + flushesAcked >= killAt) kill(`${killAt} acknowledgements`);
      if (!killed) sendOne();
    }
  } catch (e) {
    // The kill closes the connection mid-stream: that, and only that, ends the loop.
    if (!killed || !/connection closed/.test(String(e))) {
      kill('test error');
      throw e;
    }
  } finally {
    clearTimeout(timer);
  }
  await within(exited, 10_000, 'the killed server to exit');
  sock.destroy();

  // Read the file as it is now: every durable write must be there, byte for byte.
  const fd = fs.openSync(file, 'r');
  const lost: string[] = [];
  let ackedNotDurableInFile = 0;
  try {
    for (const w of writes) {
      if (!w.acked && !w.durable) continue;
      const got = Buffer.alloc(w.data.length);
      fs.readSync(fd, got, 0, got.length, w.offset);
      const ok = got.equals(w.data);
      if (w.durable && !ok) lost.push(`write ${w.seq} (${w.fua ? 'FUA' : 'before a FLUSH'}) at ${w.offset}, ${w.data.length} bytes`);
      if (!w.durable && ok) ackedNotDurableInFile++;
    }
  } finally {
    fs.closeSync(fd);
  }
  const durable = writes.filter((w) => w.durable).length;
  const acked = writes.filter((w) => w.acked).length;
  return { sent: writes.length, acked, durable, lost, ackedNotDurable: acked - durable, ackedNotDurableInFile, flushesAcked, killedAfter };
}

describe('SIGKILL during a FUA / FLUSH write stream to the file backend', () => {
  it(`${ROUNDS} rounds: no acknowledged FUA write and no write acknowledged before an acknowledged FLUSH is lost`, async () => {
    console.log(`durability: seed 0x${SEED.toString(16)} (replay with FUZZ_SEED=0x${SEED.toString(16)}), ${ROUNDS} rounds`);
    const results: RoundResult[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const res = await round(r);
      results.push(res);
      if (res.lost.length > 0) console.error(`durability: round ${r} (seed 0x${SEED.toString(16)}) lost ${res.lost.length}: ${res.lost.slice(0, 5).join('; ')}`);
    }
    const sum = (f: (x: RoundResult) => number) => results.reduce((n, x) => n + f(x), 0);
    const lost = sum((x) => x.lost.length);
    console.log(
      `durability: ${ROUNDS} rounds, ${sum((x) => x.sent)} writes sent, ${sum((x) => x.acked)} acknowledged, ${sum((x) => x.flushesAcked)} FLUSHes acknowledged, ` +
        `${sum((x) => x.durable)} durable (FUA or before an acknowledged FLUSH), lost ${lost}; ` +
        `acknowledged but not covered: ${sum((x) => x.ackedNotDurable)}, of which in the file ${sum((x) => x.ackedNotDurableInFile)}\n` +
        `durability: kills after ${results.map((x) => x.killedAfter).join(', ')}`,
    );
    expect(lost).toBe(0);
    // The kills came during the stream, with durable writes to check in most rounds.
    expect(sum((x) => x.durable)).toBeGreaterThan(0);
  });
});
