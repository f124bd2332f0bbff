/**
 * Zero-copy WRITEs (Backend.writeTargets): a large, flag-less WRITE that the
 * transmission machine's table accepts is received from the socket straight
 * into memory the backend hands out, and committed to the export once the
 * whole payload is in, before the reply; everything else takes the buffered
 * path. Most backends here are memory backends with a writeTargets that
 * receives into scratch memory and commits by `write`; the last tests use
 * the memory backend's own (whole blocks into spare buffers, swapped in).
 * Real sockets, a raw client for the exact byte timings, qemu-io and fio
 * for real ones. (A payload cut off by a disconnect: torn-write.test.ts.)
 */
import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { memoryBackend, type Backend, type WritePlacement } from '../../src/index.js';
import { memoryWithPlacements, requireTool, run, serverPerTest } from './harness.js';
import { CMD, RawClient } from './raw-client.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const FUA = 1;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** writeTargets for a memory backend: a scratch buffer, stored by `write` on commit. */
function scratchTargets(m: Backend): (offset: number, length: number) => WritePlacement {
  return (offset, length) => {
    const scratch = Buffer.allocUnsafe(length);
    // Two targets when possible, so that payloads cross from one to the next.
    const cut = Math.min(4096, length);
    return { targets: [scratch.subarray(0, cut), scratch.subarray(cut)], commit: () => m.write!(offset, scratch, { fua: false }) };
  };
}

/** A memory backend with zero-copy WRITEs that counts how each WRITE reached it (commits not counted as writes). */
function spied(readOnly = false) {
  const m = memoryBackend({ size: SIZE, readOnly });
  const targets = scratchTargets(m);
  const calls = { targets: 0, write: 0, writev: 0, flush: 0 };
  const b: Backend = {
    ...m,
    read: (o, l) => m.read(o, l),
    write: (o, d, opts) => {
      calls.write++;
      return m.write!(o, d, opts);
    },
    writev: (o, p, opts) => {
      calls.writev++;
      return m.writev!(o, p, opts);
    },
    writeTargets: (o, l) => {
      calls.targets++;
      return targets(o, l);
    },
    flush: () => {
      calls.flush++;
      return m.flush!();
    },
    trim: (o, l, opts) => m.trim!(o, l, opts),
    zero: (o, l, opts) => m.zero!(o, l, opts),
    extents: (o, l, opts) => m.extents!(o, l, opts),
  };
  return { b, m, calls };
}

const servers = serverPerTest();

async function client(b: Backend, name = 'disk'): Promise<RawClient> {
  const srv = await servers.serve({ exports: [{ name, size: SIZE, backend: b }] });
  const c = await RawClient.connect({ path: srv.socket });
  await c.handshake(name);
  return c;
}

async function readBack(c: RawClient, offset: number, length: number, cookie: bigint): Promise<Buffer> {
  await c.write(RawClient.request(CMD.READ, offset, length, cookie));
  expect(await c.readSimpleReply()).toEqual({ error: 0, cookie });
  return Buffer.from(await c.read(length));
}

describe('zero-copy WRITE (Backend.writeTargets)', () => {
  it('a 1 MiB WRITE arriving in pieces is received zero-copy, committed, and reads back intact', async () => {
    const { b, calls } = spied();
    const c = await client(b);
    const data = crypto.randomBytes(MiB);
    const at = MiB + 512; // unaligned
    // Header plus a little payload, then the rest in pieces with pauses, so later reads land in the storage windows.
    await c.write(Buffer.concat([RawClient.request(CMD.WRITE, at, MiB, 1n), data.subarray(0, 1000)]));
    await sleep(20);
    await c.write(data.subarray(1000, 300_000));
    await sleep(20);
    await c.write(data.subarray(300_000));
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 1n });
    expect(calls).toEqual({ targets: 1, write: 0, writev: 0, flush: 0 });
    expect((await readBack(c, at, MiB, 2n)).equals(data)).toBe(true);
    // Bytes around it are untouched.
    expect((await readBack(c, at - 512, 512, 3n)).every((x) => x === 0)).toBe(true);
    expect((await readBack(c, at + MiB, 512, 4n)).every((x) => x === 0)).toBe(true);
    c.destroy();
  });

  it('small and out-of-range WRITEs are not placed, a refused one changes nothing; FUA is placed and flushed', async () => {
    const { b, calls } = spied();
    const c = await client(b);
    // 4 KiB: below the placement threshold.
    await c.write(Buffer.concat([RawClient.request(CMD.WRITE, 0, 4096, 1n), Buffer.alloc(4096, 1)]));
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 1n });
    expect(calls.targets).toBe(0);
    expect(calls.write).toBe(1);
    // FUA with a backend whose FUA is native: placed, then made durable by a flush before the reply (transmission.fua-durable).
    const fuaData = Buffer.alloc(MiB, 2);
    await c.write(Buffer.concat([RawClient.request(CMD.WRITE, 2 * MiB, MiB, 2n, FUA), fuaData]));
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 2n });
    expect(calls).toMatchObject({ targets: 1, write: 1, writev: 0, flush: 1 });
    expect((await readBack(c, 2 * MiB, MiB, 5n)).equals(fuaData)).toBe(true);
    // Past the end: ENOSPC (transmission.write-out-of-bounds), nothing placed, nothing written.
    await c.write(Buffer.concat([RawClient.request(CMD.WRITE, SIZE - 512, MiB, 3n), Buffer.alloc(MiB, 3)]));
    expect(await c.readSimpleReply()).toEqual({ error: 28, cookie: 3n });
    expect(calls.targets).toBe(1);
    expect((await readBack(c, SIZE - 512, 512, 4n)).every((x) => x === 0)).toBe(true);
    c.destroy();
  });

  it('FUA with emulated FUA (write + flush backend) takes the write path: the flag reaches the backend as a flush after the write', async () => {
    const m = memoryBackend({ size: SIZE });
    const order: string[] = [];
    const b: Backend = {
      read: (o, l) => m.read(o, l),
      write: (o, d) => {
        order.push(`write ${d.length}`);
        m.write!(o, d, { fua: false });
      },
      writeTargets: (o, l) => {
        order.push('targets');
        return scratchTargets(m)(o, l);
      },
      flush: () => void order.push('flush'),
    };
    const c = await client(b);
    await c.write(Buffer.concat([RawClient.request(CMD.WRITE, 0, MiB, 1n, FUA), Buffer.alloc(MiB, 4)]));
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 1n });
    expect(order).toEqual([`write ${MiB}`, 'flush']);
    // Without FUA the same backend is written zero-copy.
    await c.write(Buffer.concat([RawClient.request(CMD.WRITE, MiB, MiB, 2n), Buffer.alloc(MiB, 5)]));
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 2n });
    expect(order.at(-1)).toBe('targets');
    expect((await readBack(c, MiB, MiB, 3n)).every((x) => x === 5)).toBe(true);
    c.destroy();
  });

  it('a backend whose writeTargets is wrong (short, or throwing) is written the ordinary way, with one warning', async () => {
    const m = memoryBackend({ size: SIZE });
    let mode: 'short' | 'throw' = 'short';
    const b: Backend = {
      read: (o, l) => m.read(o, l),
      write: (o, d, x) => m.write!(o, d, x),
      writeTargets: (o, l) => {
        if (mode === 'throw') throw new Error('no storage today');
        const p = scratchTargets(m)(o, l);
        return { ...p, targets: [p.targets[0]!, p.targets[1]!.subarray(1)] };
      },
    };
    const srv = await servers.serve({ exports: [{ name: 'disk', size: SIZE, backend: b }] });
    const c = await RawClient.connect({ path: srv.socket });
    await c.handshake('disk');
    for (const [cookie, fill] of [[1n, 6], [2n, 7]] as const) {
      await c.write(Buffer.concat([RawClient.request(CMD.WRITE, 0, MiB, cookie), Buffer.alloc(MiB, fill)]));
      expect(await c.readSimpleReply()).toEqual({ error: 0, cookie });
      expect((await readBack(c, 0, MiB, cookie + 10n)).every((x) => x === fill)).toBe(true);
      mode = 'throw';
    }
    expect(srv.logs.filter((l) => l.startsWith('warn:'))).toEqual([
      expect.stringMatching(/writeTargets gave 1048575 bytes for a 1048576-byte WRITE; buffering instead/),
      expect.stringMatching(/WRITE placement failed, buffering instead: Error: no storage today/),
    ]);
    c.destroy();
  });

  it('commit: once per complete WRITE, before its reply, and may be asynchronous; one that throws fails the WRITE with EIO', async () => {
    const store = Buffer.alloc(SIZE);
    const events: string[] = [];
    let failNext = false;
    const b: Backend = {
      read: (o, l) => Buffer.from(store.subarray(o, o + l)),
      write: (o, d) => void d.copy(store, o),
      writeTargets: (o, l) => {
        const scratch = Buffer.alloc(l);
        events.push(`targets ${o}`);
        return {
          targets: [scratch.subarray(0, 1000), scratch.subarray(1000)],
          commit: async () => {
            events.push(`commit ${o}`);
            await sleep(5);
            if (failNext) throw new Error('commit failed');
            scratch.copy(store, o);
          },
        };
      },
    };
    const srv = await servers.serve({ exports: [{ name: 'disk', size: SIZE, backend: b }] });
    const c = await RawClient.connect({ path: srv.socket });
    await c.handshake('disk');
    const data = crypto.randomBytes(MiB);
    await c.write(Buffer.concat([RawClient.request(CMD.WRITE, 4096, MiB, 1n), data]));
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 1n });
    expect(events).toEqual(['targets 4096', 'commit 4096']);
    expect((await readBack(c, 4096, MiB, 2n)).equals(data)).toBe(true);
    failNext = true;
    await c.write(Buffer.concat([RawClient.request(CMD.WRITE, 2 * MiB, MiB, 3n), Buffer.alloc(MiB, 1)]));
    expect(await c.readSimpleReply()).toEqual({ error: 5, cookie: 3n });
    expect((await readBack(c, 2 * MiB, MiB, 4n)).every((x) => x === 0)).toBe(true);
    c.destroy();
  });

  it('writeTargets returning bare views (no commit) is not placed: one warning per WRITE, written the ordinary way', async () => {
    const m = memoryBackend({ size: SIZE });
    const live = Buffer.alloc(MiB);
    const b = {
      read: (o: number, l: number) => m.read(o, l),
      write: (o: number, d: Buffer) => m.write!(o, d, { fua: false }),
      // The shape writeTargets once had: views of live storage.
      writeTargets: () => [live],
    } as unknown as Backend;
    const srv = await servers.serve({ exports: [{ name: 'disk', size: SIZE, backend: b }] });
    const c = await RawClient.connect({ path: srv.socket });
    await c.handshake('disk');
    await c.write(Buffer.concat([RawClient.request(CMD.WRITE, 0, MiB, 1n), Buffer.alloc(MiB, 8)]));
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 1n });
    expect((await readBack(c, 0, MiB, 2n)).every((x) => x === 8)).toBe(true);
    expect(live.every((x) => x === 0)).toBe(true);
    expect(srv.logs.filter((l) => l.startsWith('warn:'))).toEqual([
      expect.stringMatching(/WRITE placement failed, buffering instead: TypeError: writeTargets must return \{ targets, commit \} or null/),
    ]);
    c.destroy();
  });

  it('a read-only export refuses a large WRITE with EPERM and places nothing', async () => {
    const { b, calls } = spied(true);
    const c = await client(b);
    await c.write(Buffer.concat([RawClient.request(CMD.WRITE, 0, MiB, 1n), Buffer.alloc(MiB, 9)]));
    expect(await c.readSimpleReply()).toEqual({ error: 1, cookie: 1n });
    expect(calls.targets).toBe(0);
    expect((await readBack(c, 0, 4096, 2n)).every((x) => x === 0)).toBe(true);
    c.destroy();
  });

  it('a pipelined burst of large WRITEs and READs: each READ sees the WRITE before it', async () => {
    const { b, calls } = spied();
    const c = await client(b);
    const a = crypto.randomBytes(256 * 1024);
    const z = crypto.randomBytes(256 * 1024);
    // Overlapping requests in flight together are unordered (the spec lets a server reorder them); these READs follow their WRITEs.
    await c.write(
      Buffer.concat([
        RawClient.request(CMD.WRITE, 0, a.length, 1n),
        a,
        RawClient.request(CMD.READ, 0, a.length, 2n),
        RawClient.request(CMD.WRITE, MiB, z.length, 3n),
        z,
        RawClient.request(CMD.READ, MiB, z.length, 4n),
      ]),
    );
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 1n });
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 2n });
    expect(Buffer.from(await c.read(a.length)).equals(a)).toBe(true);
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 3n });
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 4n });
    expect(Buffer.from(await c.read(z.length)).equals(z)).toBe(true);
    expect(calls.targets).toBe(2);
    c.destroy();
  });

  it('qemu-io writes 8 MiB (writeback cache: no FUA): placed, and verified by reading back', async () => {
    requireTool('qemu-io');
    const { b, calls } = spied();
    const srv = await servers.serve({ exports: [{ name: 'disk', size: SIZE, backend: b }] });
    const w = await run('qemu-io', ['-f', 'raw', '-t', 'writeback', '-c', 'write -P 0x5a 1M 8M', srv.uri()]);
    expect(w.stdout).toMatch(/wrote 8388608\/8388608/);
    expect(calls.targets).toBeGreaterThan(0);
    expect(calls.write + calls.writev).toBe(0);
    const r = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 1M 8M', '-c', 'read -P 0 0 1M', '-c', 'read -P 0 9M 1M', srv.uri()]);
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
    expect(r.stdout.match(/read \d+\/\d+/g)).toEqual(['read 8388608/8388608', 'read 1048576/1048576', 'read 1048576/1048576']);
  });
});

describe("the memory backend's own zero-copy WRITEs (whole 1 MiB blocks, swapped in on commit)", () => {
  const blocks = (fill: (i: number) => number, n: number) => Buffer.concat(Array.from({ length: n }, (_, i) => Buffer.alloc(MiB, fill(i))));

  it('READ replies still queued to a client that does not read keep their bytes while another client rewrites the block', async () => {
    const { backend: m, placements } = memoryWithPlacements(SIZE);
    const srv = await servers.serve({ exports: [{ name: 'disk', backend: m }] });
    const a = await RawClient.connect({ path: srv.socket });
    await a.handshake('disk');
    const b = await RawClient.connect({ path: srv.socket });
    await b.handshake('disk');
    const original = crypto.randomBytes(MiB);
    await b.write(Buffer.concat([RawClient.request(CMD.WRITE, 2 * MiB, MiB, 1n), original]));
    expect(await b.readSimpleReply()).toEqual({ error: 0, cookie: 1n });
    // Three 1 MiB READs of block 2 (within the 4 MiB of queued replies, so served at once); A does not read the replies yet,
    // so all but what the kernel's socket buffers hold stays queued in the server, as views of the block.
    a.socket.pause();
    await a.write(Buffer.concat([1n, 2n, 3n].map((k) => RawClient.request(CMD.READ, 2 * MiB, MiB, k))));
    await sleep(100);
    // B rewrites block 2 (and its neighbour) again and again with whole-block WRITEs: those go into spare buffers.
    for (let i = 0; i < 12; i++) {
      await b.write(Buffer.concat([RawClient.request(CMD.WRITE, 2 * MiB, 2 * MiB, 10n + BigInt(i)), blocks((k) => 16 * i + k + 1, 2)]));
      expect(await b.readSimpleReply()).toEqual({ error: 0, cookie: 10n + BigInt(i) });
    }
    expect(placements().length).toBeGreaterThanOrEqual(13);
    a.socket.resume();
    for (const k of [1n, 2n, 3n]) {
      expect(await a.readSimpleReply()).toEqual({ error: 0, cookie: k });
      expect(Buffer.from(await a.read(MiB)).equals(original)).toBe(true);
    }
    expect((await readBack(a, 2 * MiB, 2 * MiB, 9n)).equals(blocks((k) => 16 * 11 + k + 1, 2))).toBe(true);
    a.destroy();
    b.destroy();
  });

  it('fio writes 1 MiB blocks at QD8 with verification; the data reads back', async () => {
    requireTool('fio');
    const srv = await servers.serve({ exports: [{ name: 'disk', backend: memoryBackend({ size: SIZE }) }] });
    const w = await run('fio', [
      '--name=w',
      '--ioengine=nbd',
      `--uri=${srv.uri()}`,
      '--rw=write',
      '--bs=1M',
      '--iodepth=8',
      `--size=${SIZE}`,
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_state_save=0',
      '--output-format=json',
    ]);
    const job = JSON.parse(w.stdout.slice(w.stdout.indexOf('{'))).jobs[0];
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(SIZE);
    expect(job.read.io_bytes).toBe(SIZE);
  });
});
