/**
 * The native addon's wrapper (file-native.ts) against real files, and the
 * choice of calls in file-sparse.ts against a recording stand-in for the
 * addon (to reach the refusal paths — EOPNOTSUPP, ENOSPC, devices — that
 * this machine's filesystems do not all produce).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRequire } from 'node:module';
import { ADDON_RELATIVE_PATH, fencedNative, loadFileNative, NO_NATIVE_ENV, type FileExtent, type FileNative } from '../../../src/backends/file-native.js';
import { INLINE_EXTENTS, sparseOps } from '../../../src/backends/file-sparse.js';
import { fileBackend } from '../../../src/backends/file.js';
import { NbdRequestError } from '../../../src/api/errors.js';

const MiB = 1 << 20;
let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-engine-native-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function loaded(): FileNative {
  const state = loadFileNative();
  if (!state.native) throw new Error(`the native addon must be built for these tests (npm run build:native): ${state.reason}`);
  return state.native;
}

describe('loadFileNative', () => {
  it('loads the built addon', () => {
    const state = loadFileNative();
    expect(state.native, 'reason' in state ? state.reason : '').not.toBeNull();
  });

  it('gives a reason instead of throwing when the addon is missing, not an addon, or disabled', () => {
    const missing = loadFileNative(path.join(dir, 'nope.node'));
    expect(missing.native).toBeNull();
    expect('reason' in missing && missing.reason).toMatch(/nope\.node not built/);
    const junk = path.join(dir, 'junk.node');
    fs.writeFileSync(junk, 'not an ELF file');
    const bad = loadFileNative(junk);
    expect(bad.native).toBeNull();
    expect('reason' in bad && bad.reason).toMatch(/junk\.node failed to load/);
    process.env[NO_NATIVE_ENV] = '1';
    try {
      expect(loadFileNative()).toEqual({ native: null, reason: `${NO_NATIVE_ENV}=1` });
    } finally {
      delete process.env[NO_NATIVE_ENV];
    }
    expect(loadFileNative().native).not.toBeNull();
  });

  it('refuses an addon of another version (an old build would ignore the FUA sync flag)', () => {
    const old = path.join(dir, 'old-addon.cjs');
    const fns = ['punchHole', 'zeroRange', 'fadviseWillneed', 'blkDiscard', 'blkGetSize64', 'mapExtents'];
    fs.writeFileSync(old, `module.exports = { maxExtents: 1, ${fns.map((f) => `${f}: async () => {}`).join(', ')} };`);
    const state = loadFileNative(old);
    expect(state.native).toBeNull();
    expect('reason' in state && state.reason).toMatch(/version 1, expected 3/);
  });

  it('uses a version 2 addon without preadNowait (every READ then takes the thread pool)', () => {
    const v2 = path.join(dir, 'v2-addon.cjs');
    const fns = ['punchHole', 'zeroRange', 'fadviseWillneed', 'blkDiscard', 'blkGetSize64', 'mapExtents'];
    fs.writeFileSync(v2, `module.exports = { version: 2, maxExtents: 1, mapExtentsSync: () => [], preadNowait: () => 0, ${fns.map((f) => `${f}: async () => {}`).join(', ')} };`);
    const state = loadFileNative(v2);
    expect(state.native).not.toBeNull();
    expect(state.native!.preadNowait).toBeUndefined();
    const v4 = path.join(dir, 'v4-addon.cjs');
    fs.writeFileSync(v4, fs.readFileSync(v2, 'utf8').replace('version: 2', 'version: 4'));
    expect(loadFileNative(v4).native).toBeNull();
  });
});

describe('the addon on a real file', () => {
  let fd: number;
  let file: string;
  beforeAll(() => {
    file = path.join(dir, 'img');
    fd = fs.openSync(file, 'w+');
    fs.ftruncateSync(fd, 16 * MiB);
    fs.writeSync(fd, Buffer.alloc(MiB, 0xaa), 0, MiB, 4 * MiB);
    fs.fsyncSync(fd);
    return () => fs.closeSync(fd);
  });

  it('mapExtents walks holes and data, clipped to the range', async () => {
    const n = loaded();
    expect(await n.mapExtents(fd, 0, 16 * MiB)).toEqual([
      { length: 4 * MiB, hole: true },
      { length: MiB, hole: false },
      { length: 11 * MiB, hole: true },
    ]);
    expect(await n.mapExtents(fd, 4 * MiB + 4096, 8192)).toEqual([{ length: 8192, hole: false }]);
    // Past EOF: no data after it, so a hole.
    expect(await n.mapExtents(fd, 32 * MiB, MiB)).toEqual([{ length: MiB, hole: true }]);
  });

  it('mapExtentsSync walks the same extents inline, at most max of them; errors throw', async () => {
    const n = loaded();
    expect(n.mapExtentsSync(fd, 0, 16 * MiB)).toEqual(await n.mapExtents(fd, 0, 16 * MiB));
    expect(n.mapExtentsSync(fd, 0, 16 * MiB, 2)).toEqual([
      { length: 4 * MiB, hole: true },
      { length: MiB, hole: false },
    ]);
    expect(() => n.mapExtentsSync(fd, 0, MiB, 0)).toThrow(RangeError);
    expect(() => n.mapExtentsSync(999_999, 0, MiB)).toThrow(expect.objectContaining({ code: 'EBADF' }) as Error);
  });

  it('preadNowait copies cached bytes on the calling thread; short at EOF; errors as -errno; bad arguments throw', () => {
    const n = loaded();
    const pread = n.preadNowait!;
    expect(typeof pread).toBe('function');
    const want = Buffer.alloc(8192);
    fs.readSync(fd, want, 0, 8192, 4 * MiB - 4096); // also brings the pages into the cache
    const got = Buffer.alloc(8192, 7);
    expect(pread(fd, got, 4 * MiB - 4096)).toBe(8192);
    expect(got.equals(want)).toBe(true);
    expect(want.subarray(4096).equals(Buffer.alloc(4096, 0xaa))).toBe(true);
    // A view into a bigger buffer: only the view is written.
    const big = Buffer.alloc(3 * 4096, 1);
    expect(pread(fd, big.subarray(4096, 8192), 4 * MiB)).toBe(4096);
    expect(big.subarray(0, 4096).equals(Buffer.alloc(4096, 1)) && big.subarray(8192).equals(Buffer.alloc(4096, 1))).toBe(true);
    expect(big.subarray(4096, 8192).equals(Buffer.alloc(4096, 0xaa))).toBe(true);
    // The file ends 100 bytes in: 100 bytes; at the end: 0; an empty buffer: 0.
    fs.readSync(fd, Buffer.alloc(4096), 0, 4096, 16 * MiB - 4096);
    expect(pread(fd, Buffer.alloc(4096), 16 * MiB - 100)).toBe(100);
    expect(pread(fd, Buffer.alloc(4096), 16 * MiB)).toBe(0);
    expect(pread(fd, Buffer.alloc(0), 0)).toBe(0);
    expect(pread(999_999, Buffer.alloc(16), 0)).toBe(-9); // EBADF
    expect(() => pread(fd, 'nope' as unknown as Buffer, 0)).toThrow(TypeError);
    expect(() => pread(fd, Buffer.alloc(1), -1)).toThrow(TypeError);
  });

  it('preadNowait after the fence closed: -EBADF, the addon is not called', async () => {
    const calls: number[] = [];
    const fenced = fencedNative({ ...loaded(), preadNowait: (f) => (calls.push(f), 0) });
    expect(fenced.native.preadNowait!(fd, Buffer.alloc(1), 0)).toBe(0);
    await fenced.close();
    expect(fenced.native.preadNowait!(fd, Buffer.alloc(1), 0)).toBe(-9);
    expect(calls).toEqual([fd]);
  });

  it('punchHole and zeroRange zero the bytes; punching frees the blocks', async () => {
    const n = loaded();
    const before = fs.fstatSync(fd).blocks;
    await n.punchHole(fd, 4 * MiB, 256 * 1024);
    expect(before - fs.fstatSync(fd).blocks).toBe((256 * 1024) / 512);
    await n.zeroRange(fd, 4 * MiB + 512 * 1024, 4096);
    const back = Buffer.alloc(MiB);
    fs.readSync(fd, back, 0, MiB, 4 * MiB);
    const want = Buffer.alloc(MiB, 0xaa);
    want.fill(0, 0, 256 * 1024);
    want.fill(0, 512 * 1024, 512 * 1024 + 4096);
    expect(back.equals(want)).toBe(true);
    await n.fadviseWillneed(fd, 0, MiB);
  });

  it('sync: zeroRange and punchHole with fdatasync in the same call; a non-boolean sync is refused by the addon', async () => {
    const n = loaded();
    fs.writeSync(fd, Buffer.alloc(8192, 0xbb), 0, 8192, 8 * MiB);
    await n.zeroRange(fd, 8 * MiB, 4096, true);
    await n.punchHole(fd, 8 * MiB + 4096, 4096, true);
    const back = Buffer.alloc(8192, 1);
    fs.readSync(fd, back, 0, 8192, 8 * MiB);
    expect(back.equals(Buffer.alloc(8192))).toBe(true);
    const raw = createRequire(import.meta.url)(path.resolve(ADDON_RELATIVE_PATH)) as { zeroRange(...a: unknown[]): Promise<void>; version: number };
    expect(raw.version).toBe(3);
    expect(() => raw.zeroRange(fd, 0, 4096, 'yes')).toThrow(TypeError);
    // An explicit undefined is no sync; calls without `sync` ignore a fourth argument.
    await raw.zeroRange(fd, 0, 4096, undefined);
    await (raw as unknown as { fadviseWillneed(...a: unknown[]): Promise<void> }).fadviseWillneed(fd, 0, 4096, 'ignored');
  });

  it('errors carry the errno name as code; bad arguments are RangeErrors', async () => {
    const n = loaded();
    await expect(n.blkGetSize64(fd)).rejects.toMatchObject({ code: 'ENOTTY' });
    await expect(n.blkDiscard(fd, 0, 4096)).rejects.toMatchObject({ code: 'ENOTTY' });
    const ro = fs.openSync(file, 'r');
    try {
      await expect(n.punchHole(ro, 0, 4096)).rejects.toMatchObject({ code: 'EBADF' });
    } finally {
      fs.closeSync(ro);
    }
    await expect(n.punchHole(fd, -1, 4096)).rejects.toBeInstanceOf(RangeError);
    await expect(n.zeroRange(fd, 0, 1.5)).rejects.toBeInstanceOf(RangeError);
    await expect(n.mapExtents(fd, 2 ** 53, 1)).rejects.toBeInstanceOf(RangeError);
  });
});

/** A stand-in addon: records calls, and fails the ones named in `fail` with that errno code. */
function fake(fail: Partial<Record<keyof FileNative, string>>) {
  const calls: string[] = [];
  const op = (name: keyof FileNative) => async (_fd: number, offset: number, length: number, sync?: boolean) => {
    calls.push(`${name}(${offset},${length}${sync ? ',sync' : ''})`);
    const code = fail[name];
    if (code) throw Object.assign(new Error(`${name}: ${code}`), { code });
  };
  const native: FileNative = {
    maxExtents: 1024,
    punchHole: op('punchHole'),
    zeroRange: op('zeroRange'),
    fadviseWillneed: op('fadviseWillneed'),
    blkDiscard: op('blkDiscard'),
    blkGetSize64: async () => 0,
    mapExtents: async () => [],
    mapExtentsSync: () => [],
  };
  const written: string[] = [];
  const make = (device = false) =>
    sparseOps({
      fd: 3,
      native,
      device,
      size: 16 * MiB,
      name: 'x',
      writeZeroes: async (o, l) => void written.push(`${o},${l}`),
      datasync: async () => void calls.push('datasync'),
    });
  return { calls, written, make };
}

const Z = (noHole: boolean, fastZero: boolean) => ({ noHole, fastZero, fua: false });

describe('sparseOps: which call for which request', () => {
  it('zero: punch when holes are allowed, ZERO_RANGE for NO_HOLE, writing zeroes only after both refuse', async () => {
    const f = fake({});
    const ops = f.make();
    await ops.zero(0, 4096, Z(false, false));
    await ops.zero(8192, 4096, Z(true, false));
    expect(f.calls).toEqual(['punchHole(0,4096)', 'zeroRange(8192,4096)']);
    expect(f.written).toEqual([]);

    const g = fake({ punchHole: 'EOPNOTSUPP', zeroRange: 'EOPNOTSUPP' });
    const refused = g.make();
    await expect(refused.zero(0, 4096, Z(false, true))).rejects.toBeInstanceOf(NbdRequestError);
    await refused.zero(0, 4096, Z(false, false));
    expect(g.written).toEqual(['0,4096']);
    // Each refusal is remembered: the second request asked neither call again.
    expect(g.calls).toEqual(['punchHole(0,4096)', 'zeroRange(0,4096)']);
  });

  it('zero: a real failure (ENOSPC) is the answer, not a reason to write zeroes', async () => {
    const f = fake({ zeroRange: 'ENOSPC' });
    await expect(f.make().zero(0, 4096, Z(true, false))).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(f.written).toEqual([]);
  });

  it('FAST_ZERO on a device never takes ZERO_RANGE (the kernel may write zeroes itself)', async () => {
    const f = fake({ punchHole: 'EOPNOTSUPP' });
    const ops = f.make(true);
    const err = await Promise.resolve(ops.zero(0, 4096, Z(false, true))).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdRequestError);
    expect((err as NbdRequestError).errno).toBe(95);
    await ops.zero(0, 4096, Z(false, false));
    expect(f.calls).toEqual(['punchHole(0,4096)', 'zeroRange(0,4096)']);
    expect(ops.extents).toBeUndefined();
  });

  it('trim: punch on files, BLKDISCARD on devices; unsupported is a silent no-op, other errors are answers', async () => {
    const f = fake({});
    await f.make(false).trim(0, 4096, { fua: false });
    await f.make(true).trim(4096, 4096, { fua: false });
    expect(f.calls).toEqual(['punchHole(0,4096)', 'blkDiscard(4096,4096)']);
    const g = fake({ punchHole: 'EOPNOTSUPP' });
    const ops = g.make();
    await ops.trim(0, 4096, { fua: false });
    await ops.trim(0, 4096, { fua: false });
    expect(g.calls).toEqual(['punchHole(0,4096)']);
    await expect(fake({ punchHole: 'EIO' }).make().trim(0, 4096, { fua: false })).rejects.toMatchObject({ code: 'EIO' });
  });

  it('FUA: the native call syncs in its own job; where it was refused or not needed, a datasync follows', async () => {
    const f = fake({});
    const ops = f.make();
    await ops.zero(0, 4096, { noHole: false, fastZero: false, fua: true });
    await ops.zero(8192, 4096, { noHole: true, fastZero: false, fua: true });
    await ops.trim(0, 4096, { fua: true });
    await f.make(true).trim(0, 4096, { fua: true });
    expect(f.calls).toEqual(['punchHole(0,4096,sync)', 'zeroRange(8192,4096,sync)', 'punchHole(0,4096,sync)', 'blkDiscard(0,4096,sync)']);

    const g = fake({ punchHole: 'EOPNOTSUPP', zeroRange: 'EOPNOTSUPP' });
    const refused = g.make();
    await refused.zero(0, 4096, { noHole: false, fastZero: false, fua: true });
    await refused.trim(0, 4096, { fua: true });
    await refused.zero(0, 0, { noHole: false, fastZero: false, fua: true });
    // Zeroes written, then synced; the no-op trim and the empty zero still sync (FUA answered honestly).
    expect(g.written).toEqual(['0,4096']);
    expect(g.calls).toEqual(['punchHole(0,4096,sync)', 'zeroRange(0,4096,sync)', 'datasync', 'datasync', 'datasync']);
  });

  it('extents: a failing lseek reports data rather than failing the client', async () => {
    const f = fake({});
    const ops = f.make();
    const native = {
      mapExtentsSync: () => {
        throw Object.assign(new Error('EIO'), { code: 'EIO' });
      },
    };
    const broken = sparseOps({ fd: 3, native: { ...({} as FileNative), ...native } as FileNative, device: false, size: MiB, name: 'x', writeZeroes: async () => {}, datasync: async () => {} });
    expect(await broken.extents!(0, 2 * MiB, { reqOne: false, context: 'base:allocation' })).toEqual([{ length: MiB, flags: 0 }]);
    expect(ops.extents).toBeDefined();
  });

  it('extents: the first INLINE_EXTENTS inline, the rest of a fragmented range on the thread pool (and a failing rest keeps the first)', async () => {
    const calls: string[] = [];
    const piece = (n: number, at: number) => Array.from({ length: n }, (_, i) => ({ length: 4096, hole: (at + i) % 2 === 1 }));
    const make = (rest: () => Promise<FileExtent[]>) =>
      sparseOps({
        fd: 3,
        native: {
          ...({} as FileNative),
          maxExtents: 1024,
          mapExtentsSync: (_fd, offset, length, max) => (calls.push(`sync ${offset} ${length} ${max}`), piece(Math.min(max!, length / 4096), 0)),
          mapExtents: async (_fd, offset, length) => (calls.push(`async ${offset} ${length}`), rest()),
        } as FileNative,
        device: false,
        size: MiB,
        name: 'x',
        writeZeroes: async () => {},
        datasync: async () => {},
      });
    const opts = { reqOne: false, context: 'base:allocation' };
    // Few extents: answered inline, synchronously (no promise), no thread-pool call.
    const small = make(async () => []).extents!(0, 8 * 4096, opts);
    expect(Array.isArray(small)).toBe(true);
    expect(calls).toEqual([`sync 0 ${8 * 4096} ${INLINE_EXTENTS}`]);
    calls.length = 0;
    const all = await make(async () => piece(3, INLINE_EXTENTS)).extents!(0, MiB, opts);
    expect(calls).toEqual([`sync 0 ${MiB} ${INLINE_EXTENTS}`, `async ${INLINE_EXTENTS * 4096} ${MiB - INLINE_EXTENTS * 4096}`]);
    expect(all).toHaveLength(INLINE_EXTENTS + 3);
    expect(all.map((e) => e.flags)).toEqual(piece(INLINE_EXTENTS + 3, 0).map((e) => (e.hole ? 3 : 0)));
    const partial = await make(() => Promise.reject(Object.assign(new Error('EIO'), { code: 'EIO' }))).extents!(0, MiB, opts);
    expect(partial).toHaveLength(INLINE_EXTENTS);
  });

  it('extents while the file is being written: the whole walk on the thread pool (lseek would wait for the inode lock)', async () => {
    const file = path.join(dir, 'busy.img');
    fs.writeFileSync(file, Buffer.alloc(0));
    fs.truncateSync(file, 16 * MiB);
    const b = await fileBackend({ path: file });
    const opts = { reqOne: false, context: 'base:allocation' };
    try {
      expect(Array.isArray(b.extents!(0, 16 * MiB, opts))).toBe(true); // idle: inline, synchronous
      const writing = b.write!(0, Buffer.alloc(MiB, 1), { fua: false });
      const during = b.extents!(0, 16 * MiB, opts);
      expect(Array.isArray(during)).toBe(false); // a promise: the thread pool
      await writing;
      // Walked on the thread pool while the write ran: either before or after its data landed, all 16 MiB mapped.
      expect((await during).reduce((n, e) => n + e.length, 0)).toBe(16 * MiB);
      expect(b.extents!(0, 16 * MiB, opts)).toEqual([{ length: MiB, flags: 0 }, { length: 15 * MiB, flags: 3 }]);
      const off = await fileBackend({ path: file, inlineExtents: false });
      expect(Array.isArray(off.extents!(0, 16 * MiB, opts))).toBe(false);
      await off.close?.();
    } finally {
      await b.close?.();
    }
  });
});

describe('fencedNative', () => {
  it('close waits for calls still running and refuses new ones (the fd number may be reused after close)', async () => {
    let release!: () => void;
    const slow = new Promise<void>((r) => (release = r));
    const order: string[] = [];
    const base = { ...({} as FileNative), maxExtents: 1, punchHole: async () => (await slow, order.push('punch done')) } as unknown as FileNative;
    const fenced = fencedNative(base);
    const running = fenced.native.punchHole(3, 0, 1);
    const closing = fenced.close().then(() => order.push('closed'));
    await expect(fenced.native.punchHole(3, 0, 1)).rejects.toMatchObject({ code: 'EBADF' });
    await Promise.resolve();
    expect(order).toEqual([]);
    release();
    await Promise.all([running, closing]);
    expect(order).toEqual(['punch done', 'closed']);
  });
});

describe('the file backend reads cached data on the event loop (preadNowait)', () => {
  const isPromise = (v: unknown): v is Promise<Buffer> => typeof (v as { then?: unknown })?.then === 'function';

  it('a READ of cached data is answered synchronously with the file bytes; inlineReadMax bounds it; 0 turns it off', async () => {
    const file = path.join(dir, 'cached.img');
    const data = Buffer.alloc(2 * MiB);
    for (let i = 0; i < data.length; i += 4) data.writeUInt32LE(i, i);
    fs.writeFileSync(file, data);
    fs.readFileSync(file); // in the page cache
    const b = await fileBackend({ path: file, inlineReadMax: 64 * 1024 });
    const b0 = await fileBackend({ path: file, inlineReadMax: 0 });
    try {
      for (const [off, len] of [[0, 4096], [12345, 777], [MiB - 100, 64 * 1024], [0, 0]] as const) {
        const r = b.read(off, len);
        expect(isPromise(r), `${off}+${len}`).toBe(false);
        expect((r as Buffer).equals(data.subarray(off, off + len))).toBe(true);
        const r0 = b0.read(off, len);
        expect(isPromise(r0)).toBe(true);
        expect(((await r0) as Buffer).equals(data.subarray(off, off + len))).toBe(true);
      }
      // Bigger than inlineReadMax: the thread pool, same bytes.
      const big = b.read(4096, 64 * 1024 + 1);
      expect(isPromise(big)).toBe(true);
      expect(((await big) as Buffer).equals(data.subarray(4096, 4096 + 64 * 1024 + 1))).toBe(true);
    } finally {
      await b.close?.();
      await b0.close?.();
    }
    await expect(fileBackend({ path: file, inlineReadMax: -1 })).rejects.toThrow(/inlineReadMax/);
  });

  it('a file that shrank: the cached part inline, the rest on the thread pool, zeroes past the end', async () => {
    const file = path.join(dir, 'shrinks.img');
    fs.writeFileSync(file, Buffer.alloc(64 * 1024, 0x5c));
    const b = await fileBackend(file);
    try {
      fs.truncateSync(file, 4096 + 10);
      fs.readFileSync(file);
      const r = b.read(4096 - 10, 4096);
      expect(isPromise(r)).toBe(true);
      const want = Buffer.alloc(4096);
      want.fill(0x5c, 0, 20);
      expect(((await r) as Buffer).equals(want)).toBe(true);
    } finally {
      await b.close?.();
    }
  });

  it('a filesystem without RWF_NOWAIT (tmpfs): asked once, then every READ goes to the thread pool', async () => {
    const shm = '/dev/shm';
    const native = loaded();
    const probe = path.join(shm, `nbd-engine-nowait-${process.pid}.img`);
    fs.writeFileSync(probe, Buffer.alloc(8192, 0x11));
    const real = native.preadNowait!;
    const calls: number[] = [];
    (native as { preadNowait?: FileNative['preadNowait'] }).preadNowait = (fd, buf, off) => {
      const n = real(fd, buf, off);
      calls.push(n);
      return n;
    };
    const b = await fileBackend(probe);
    try {
      for (let i = 0; i < 3; i++) expect(((await b.read(0, 4096)) as Buffer).equals(Buffer.alloc(4096, 0x11))).toBe(true);
      // tmpfs answers EOPNOTSUPP (Linux 6.x): never asked again. A kernel whose tmpfs can would answer every time.
      if (calls[0]! < 0) expect(calls).toEqual([-95]);
      else expect(calls).toEqual([4096, 4096, 4096]);
    } finally {
      (native as { preadNowait?: FileNative['preadNowait'] }).preadNowait = real;
      await b.close?.();
      fs.rmSync(probe, { force: true });
    }
  });
});

describe('the file backend writes a payload in pieces as those pieces (writev)', () => {
  it('pieces of any size (empty ones, more than IOV_MAX of them, with FUA) land exactly where write would put them', async () => {
    const file = path.join(dir, 'writev.img');
    fs.writeFileSync(file, Buffer.alloc(MiB, 0xee));
    const b = await fileBackend({ path: file });
    try {
      expect(typeof b.writev).toBe('function');
      const want = Buffer.alloc(MiB, 0xee);
      const cases: Array<[number, Buffer[], boolean]> = [
        [0, [Buffer.from('ab'), Buffer.alloc(0), Buffer.from('cdef')], false],
        [4093, [Buffer.alloc(3, 1), Buffer.alloc(70000, 2), Buffer.alloc(1, 3)], true],
        // 1500 parts of 3 bytes: more than one pwritev may take.
        [200000, Array.from({ length: 1500 }, (_, i) => Buffer.alloc(3, i & 0xff)), false],
        [MiB - 5, [Buffer.alloc(2, 9), Buffer.alloc(3, 8)], false],
      ];
      for (const [at, parts, fua] of cases) {
        await b.writev!(at, parts, { fua });
        Buffer.concat(parts).copy(want, at);
      }
      expect(fs.readFileSync(file).equals(want)).toBe(true);
    } finally {
      await b.close?.();
    }
  });
});
