/**
 * The WRITE payload lifetime contract (README "Backends"): `data` / `parts`
 * handed to `Backend.write` / `writev` are valid until write returns or its
 * promise settles; a request's `data` on `requests$` is valid until the
 * request is answered. After that the server reuses the socket read memory
 * the payload was received into (src/transport/slab-account.ts).
 *
 * Real sockets (a raw client pipelining WRITEs over a UNIX socket); slab
 * reuse is observed through the slab accounting's process-wide counters.
 * Each test checks both sides: the memory IS reused (so the payload was
 * released), and a payload still held is intact although other traffic went
 * through reused slabs meanwhile.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { fileBackend, memoryBackend, type Backend, type NbdRequest } from '../../src/index.js';
import { slabCounters } from '../../src/transport/slab-account.js';
import { serverPerTest, tmpDir } from './harness.js';
import { CMD, RawClient } from './raw-client.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 32 * MiB;

/** `count` WRITEs of `size` bytes of random data at offsets base + i × size, cookies from `firstCookie`. */
function writes(count: number, size: number, base: number, firstCookie: bigint) {
  const data = crypto.randomBytes(count * size);
  const wire: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    wire.push(RawClient.request(CMD.WRITE, base + i * size, size, firstCookie + BigInt(i)), data.subarray(i * size, (i + 1) * size));
  }
  return { data, wire: Buffer.concat(wire) };
}

/** Send the WRITEs pipelined in one go and read `count` replies; every one must succeed. */
async function pipeline(c: RawClient, wire: Buffer, count: number): Promise<void> {
  const sent = c.write(wire);
  for (let i = 0; i < count; i++) {
    const r = await c.readSimpleReply();
    expect(r.error).toBe(0);
  }
  await sent;
}

/** Slab counters over `fn`: how many slabs were allocated and reused meanwhile. */
async function counting(fn: () => Promise<void>): Promise<{ allocated: number; reused: number }> {
  const a = slabCounters.allocated;
  const r = slabCounters.reused;
  await fn();
  return { allocated: slabCounters.allocated - a, reused: slabCounters.reused - r };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('WRITE payload lifetime', () => {
  const srv = serverPerTest();

  it('an async user backend: data held until its promise settles stays intact while later writes reuse the slabs', async () => {
    const m = memoryBackend({ size: SIZE });
    /** The first WRITEs' payloads, held (views, not copies) until the test settles their promises. */
    const held: { data: Buffer[]; settle: () => void }[] = [];
    const b: Backend = {
      size: SIZE,
      read: (o, l) => m.read(o, l),
      // Not marked in any way: a plain user backend. Writes are asynchronous.
      write: (o, d) => {
        if (o >= 16 * MiB) return new Promise<void>((res) => held.push({ data: [d], settle: () => res(m.write!(o, d, { fua: false })) }));
        return Promise.resolve().then(() => m.write!(o, d, { fua: false }));
      },
      writev: (o, parts) => {
        if (o >= 16 * MiB) return new Promise<void>((res) => held.push({ data: [...parts], settle: () => res(m.writev!(o, parts, { fua: false })) }));
        return Promise.resolve().then(() => m.writev!(o, parts, { fua: false }));
      },
    };
    const s = await srv.serve({ exports: [{ name: 'disk', backend: b }] });
    const c = await RawClient.connect({ path: s.socket });
    await c.handshake('disk');
    // Warm up: the first slabs are small and never reused; from here reads land in 1 MiB slabs, which are.
    await pipeline(c, writes(1024, 4 * KiB, 0, 10_000n).wire, 1024);
    // Two held WRITEs: a 4 KiB one (a single view of a slab) and a 300 KiB one (pieces of several reads).
    const small = crypto.randomBytes(4 * KiB);
    const big = crypto.randomBytes(300 * KiB);
    await c.write(Buffer.concat([RawClient.request(CMD.WRITE, 16 * MiB, small.length, 1n), small, RawClient.request(CMD.WRITE, 17 * MiB, big.length, 2n), big]));
    while (held.length < 2) await sleep(5);
    // 12 MiB of other WRITEs through the same connection, answered as they come: their slabs are reused.
    const other = writes(3 * 1024, 4 * KiB, 0, 100n);
    const n = await counting(() => pipeline(c, other.wire, 3 * 1024));
    expect(n.reused).toBeGreaterThan(0);
    // The held payloads are exactly what was sent, although slabs were reused around them.
    expect(Buffer.concat(held[0]!.data).equals(small)).toBe(true);
    expect(Buffer.concat(held[1]!.data).equals(big)).toBe(true);
    for (const h of held) h.settle();
    for (let i = 0; i < 2; i++) expect((await c.readSimpleReply()).error).toBe(0);
    expect(Buffer.concat((m.read(0, other.data.length) as { data?: Buffer; hole?: number }[]).map((x) => x.data ?? Buffer.alloc(x.hole!))).equals(other.data)).toBe(true);
    expect((m.read(16 * MiB, small.length) as Buffer).equals(small)).toBe(true);
    c.destroy();
  });

  it('a sync user backend: payloads are released when write returns, so read slabs are reused instead of allocated', async () => {
    const stored = Buffer.alloc(SIZE);
    // A plain user backend that copies what it keeps (the contract); no marker of any kind.
    const b: Backend = {
      size: SIZE,
      read: (o, l) => stored.subarray(o, o + l),
      write: (o, d) => void d.copy(stored, o),
    };
    const s = await srv.serve({ exports: [{ name: 'disk', backend: b }] });
    const c = await RawClient.connect({ path: s.socket });
    await c.handshake('disk');
    const w = writes(4 * 1024, 4 * KiB, 0, 1n);
    const n = await counting(() => pipeline(c, w.wire, 4 * 1024));
    // 16 MiB went through 1 MiB slabs: without release that is one new slab per MiB.
    expect(n.reused).toBeGreaterThan(0);
    expect(n.allocated).toBeLessThan(10);
    expect(stored.subarray(0, w.data.length).equals(w.data)).toBe(true);
    c.destroy();
  });

  it('the file backend (async writes): payloads are released once each write settles, and the file holds the data', async () => {
    const dir = tmpDir();
    try {
      const file = path.join(dir, 'disk.img');
      const fb = await fileBackend({ path: file, createSize: SIZE });
      const s = await srv.serve({ exports: [{ name: 'disk', backend: fb }] });
      const c = await RawClient.connect({ path: s.socket });
      await c.handshake('disk');
      // 64 KiB writes: large single views and pieces spanning reads (joined for `write`).
      const w = writes(256, 64 * KiB, 0, 1n);
      const n = await counting(() => pipeline(c, w.wire, 256));
      expect(n.reused).toBeGreaterThan(0);
      expect(n.allocated).toBeLessThan(10);
      c.destroy();
      await s.close();
      expect(fs.readFileSync(file).subarray(0, w.data.length).equals(w.data)).toBe(true);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('requests$: data stays intact until the request is answered, then the memory is reused and data throws', async () => {
    const s = await srv.serve({ exports: [{ name: 'disk', size: SIZE, flags: { write: true } }] });
    const stored = Buffer.alloc(SIZE);
    let first: NbdRequest | undefined;
    let firstData: Buffer | undefined;
    srv.track(
      s.server.requests$.subscribe((req) => {
        if (req.cookie === 1n) {
          // Held, unanswered: keep the view itself, not a copy.
          first = req;
          firstData = req.data;
          return;
        }
        req.data!.copy(stored, req.offset);
        req.reply();
      }),
    );
    const c = await RawClient.connect({ path: s.socket });
    await c.handshake('disk');
    // Warm up: the first slabs are small and never reused; from here reads land in 1 MiB slabs, which are.
    await pipeline(c, writes(1024, 4 * KiB, 0, 10_000n).wire, 1024);
    const held = crypto.randomBytes(4 * KiB);
    await c.write(Buffer.concat([RawClient.request(CMD.WRITE, 16 * MiB, held.length, 1n), held]));
    while (first === undefined) await sleep(5);
    const w = writes(3 * 1024, 4 * KiB, 0, 100n);
    const n = await counting(() => pipeline(c, w.wire, 3 * 1024));
    // Answered requests released their payloads: slabs were reused...
    expect(n.reused).toBeGreaterThan(0);
    expect(stored.subarray(0, w.data.length).equals(w.data)).toBe(true);
    // ...but not the one holding the unanswered request's payload.
    expect(firstData!.equals(held)).toBe(true);
    expect(first.data!.equals(held)).toBe(true);
    first.reply();
    expect((await c.readSimpleReply()).cookie).toBe(1n);
    expect(() => first!.data).toThrow(/released/);
    c.destroy();
  });
});
