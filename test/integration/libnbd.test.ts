/**
 * libnbd's command-line clients (nbdinfo, nbdsh) against our server on a
 * real UNIX socket: advertised size and flags per export shape, export
 * listing with descriptions, the allocation map of a sparse export, and
 * block-size constraints.
 */
import { describe, expect, test } from 'vitest';
import { mergeMap } from 'rxjs';
import { memoryBackend, type Backend, type ServerOptions } from '../../src/index.js';
import { run, serverPerTest, type Running } from './harness.js';

const MiB = 1024 * 1024;

const { serve, track } = serverPerTest();

/** Answer every request of a request-stream export (reads as zeroes). */
function answerAll(r: Running): void {
  track(r.server.requests$
    .pipe(
      mergeMap(async (req) => {
        if (req.type === 'read') req.reply(Buffer.alloc(req.length));
        else req.reply();
      }),
    )
    .subscribe(),
  );
}

interface InfoExport {
  'export-name': string;
  description?: string;
  'export-size': number;
  contexts?: string[];
  is_rotational: boolean;
  is_read_only: boolean;
  can_cache: boolean;
  can_df: boolean;
  can_fast_zero: boolean;
  can_flush: boolean;
  can_fua: boolean;
  can_multi_conn: boolean;
  can_trim: boolean;
  can_zero: boolean;
  block_size_minimum?: number;
  block_size_preferred?: number;
  block_size_maximum?: number;
}
interface Info {
  protocol: string;
  structured: boolean;
  exports: InfoExport[];
}

/**
 * nbdsh is `#!/usr/bin/env python3`: put Debian's python3 (which has the
 * libnbd binding) first on PATH.
 */
function nbdsh(args: string[]) {
  return run('nbdsh', args, { env: { PATH: `/usr/bin:${process.env.PATH ?? ''}` } });
}

async function nbdinfo(args: string[]): Promise<Info> {
  const { stdout } = await run('nbdinfo', ['--json', ...args]);
  return JSON.parse(stdout) as Info;
}

async function infoOf(uri: string): Promise<InfoExport> {
  const info = await nbdinfo(['--no-content', uri]);
  expect(info.protocol).toBe('newstyle-fixed');
  expect(info.exports).toHaveLength(1);
  return info.exports[0]!;
}

type FlagSet = Pick<
  InfoExport,
  'can_flush' | 'can_fua' | 'can_trim' | 'can_zero' | 'can_fast_zero' | 'can_cache' | 'can_multi_conn' | 'is_read_only' | 'is_rotational'
>;

function flagsOf(e: InfoExport): FlagSet {
  return {
    can_flush: e.can_flush,
    can_fua: e.can_fua,
    can_trim: e.can_trim,
    can_zero: e.can_zero,
    can_fast_zero: e.can_fast_zero,
    can_cache: e.can_cache,
    can_multi_conn: e.can_multi_conn,
    is_read_only: e.is_read_only,
    is_rotational: e.is_rotational,
  };
}

const NONE: FlagSet = {
  can_flush: false,
  can_fua: false,
  can_trim: false,
  can_zero: false,
  can_fast_zero: false,
  can_cache: false,
  can_multi_conn: false,
  is_read_only: false,
  is_rotational: false,
};

describe('nbdinfo --json: size and every flag, per export shape', () => {
  const readOnly: Backend = { read: (_o, l) => Buffer.alloc(l) };
  const readWrite = (): Backend => {
    const mem = memoryBackend({ size: MiB });
    return { read: (o, l) => mem.read(o, l), write: (o, d) => mem.write!(o, d, { fua: false }) };
  };
  const readWriteFlush = (): Backend => ({ ...readWrite(), flush: () => {} });

  const cases: { name: string; exp: ServerOptions['exports'][number]; size: number; flags: FlagSet; stream?: boolean }[] = [
    {
      name: 'full memoryBackend',
      exp: { name: 'mem', backend: memoryBackend({ size: 3 * MiB }) },
      size: 3 * MiB,
      flags: { ...NONE, can_flush: true, can_fua: true, can_trim: true, can_zero: true, can_fast_zero: true, can_cache: true, can_multi_conn: true },
    },
    {
      name: 'custom backend with only read()',
      exp: { name: 'ro', backend: readOnly, size: 123 * 512 },
      size: 123 * 512,
      flags: { ...NONE, is_read_only: true, can_cache: true },
    },
    {
      name: 'read+write (no flush ⇒ no FUA; zero emulated ⇒ fast zero advertised, as nbdkit)',
      exp: { name: 'rw', backend: readWrite(), size: MiB },
      size: MiB,
      flags: { ...NONE, can_zero: true, can_fast_zero: true, can_cache: true },
    },
    {
      name: 'read+write+flush (FUA emulated via flush)',
      exp: { name: 'rwf', backend: readWriteFlush(), size: MiB },
      size: MiB,
      flags: { ...NONE, can_flush: true, can_fua: true, can_zero: true, can_fast_zero: true, can_cache: true },
    },
    {
      name: 'native zero without canFastZero, trim, rotational, multiConn, no cache',
      exp: {
        name: 'native-zero',
        size: MiB,
        cache: false,
        backend: { ...readWriteFlush(), zero: () => {}, trim: () => {}, rotational: true, multiConn: true },
      },
      size: MiB,
      flags: { ...NONE, can_flush: true, can_fua: true, can_trim: true, can_zero: true, can_multi_conn: true, is_rotational: true },
    },
    {
      name: 'readOnly export of a memoryBackend',
      exp: { name: 'mem-ro', backend: memoryBackend({ size: 2 * MiB }), readOnly: true },
      size: 2 * MiB,
      // FLUSH stays (nbdkit keeps can_flush under -r); everything that writes is gone.
      flags: { ...NONE, is_read_only: true, can_flush: true, can_cache: true, can_multi_conn: true },
    },
    {
      name: 'request stream with rotational + multiConn + flush/fua/trim/zero/fastZero',
      exp: {
        name: 'stream-all',
        size: 5 * MiB,
        flags: { rotational: true, multiConn: true, flush: true, fua: true, trim: true, zero: true, fastZero: true },
      },
      size: 5 * MiB,
      stream: true,
      flags: {
        can_flush: true,
        can_fua: true,
        can_trim: true,
        can_zero: true,
        can_fast_zero: true,
        can_cache: true,
        can_multi_conn: true,
        is_read_only: false,
        is_rotational: true,
      },
    },
    {
      name: 'request stream with no flags and cache: false',
      exp: { name: 'stream-bare', size: 4096, cache: false },
      size: 4096,
      stream: true,
      flags: { ...NONE },
    },
    {
      name: 'request stream, readOnly, zero without fastZero, rotational only',
      exp: { name: 'stream-ro', size: 65536, readOnly: true, flags: { rotational: true, zero: true, trim: true, flush: true } },
      size: 65536,
      stream: true,
      flags: { ...NONE, is_read_only: true, is_rotational: true, can_flush: true, can_cache: true },
    },
    {
      name: 'request stream with zero but not fastZero, multiConn only',
      exp: { name: 'stream-zero', size: 65536, flags: { zero: true, multiConn: true } },
      size: 65536,
      stream: true,
      flags: { ...NONE, can_zero: true, can_multi_conn: true, can_cache: true },
    },
  ];

  test.each(cases)('$name', async ({ exp, size, flags, stream }) => {
    const r = await serve({ exports: [exp] });
    if (stream) answerAll(r);
    const e = await infoOf(r.uri());
    expect(e['export-name']).toBe(exp.name);
    expect(e['export-size']).toBe(size);
    expect(flagsOf(e)).toEqual(flags);
    // SEND_DF comes with structured replies, which libnbd negotiates by default.
    expect(e.can_df).toBe(true);
    expect(e.contexts).toContain('base:allocation');
  });

  test('several exports in one server each report their own flags (nbdinfo per export)', async () => {
    const r = await serve({
      exports: [
        { name: 'a', backend: memoryBackend({ size: MiB }) },
        { name: 'b', backend: readOnly, size: 512 },
      ],
    });
    const [a, b] = await Promise.all([infoOf(r.uri('a')), infoOf(r.uri('b'))]);
    expect([a['export-size'], a.is_read_only, a.can_trim]).toEqual([MiB, false, true]);
    expect([b['export-size'], b.is_read_only, b.can_trim]).toEqual([512, true, false]);
  });

  test('structuredReplies: false ⇒ nbdinfo sees a simple-reply server without DF or meta contexts', async () => {
    const r = await serve({ structuredReplies: false, exports: [{ name: 'disk', backend: memoryBackend({ size: MiB }) }] });
    const info = await nbdinfo(['--no-content', r.uri()]);
    expect(info.structured).toBe(false);
    const e = info.exports[0]!;
    expect(e['export-size']).toBe(MiB);
    expect(e.can_df).toBe(false);
    expect(e.contexts ?? []).toEqual([]);
    expect(e.can_flush && e.can_trim && e.can_zero && e.can_multi_conn).toBe(true);
  });
});

describe('nbdinfo --list --json', () => {
  test('lists every export with its description, size and flags', async () => {
    const r = await serve({
      exports: [
        { name: 'disk', description: 'scratch disk', backend: memoryBackend({ size: MiB }) },
        { name: 'iso', description: 'a read-only image ✓', backend: { read: (_o, l) => Buffer.alloc(l) }, size: 8192 },
        { name: 'no-description', backend: memoryBackend({ size: 4096 }) },
        { name: 'spaced name/with slash', description: 'odd name', backend: memoryBackend({ size: 512 }) },
      ],
    });
    const info = await nbdinfo(['--list', r.uri()]);
    const byName = new Map(info.exports.map((e) => [e['export-name'], e]));
    expect([...byName.keys()].sort()).toEqual(['disk', 'iso', 'no-description', 'spaced name/with slash']);
    expect(byName.get('disk')!.description).toBe('scratch disk');
    expect(byName.get('iso')!.description).toBe('a read-only image ✓');
    expect(byName.get('no-description')!.description).toBeUndefined();
    expect(byName.get('spaced name/with slash')!.description).toBe('odd name');
    expect(byName.get('disk')!['export-size']).toBe(MiB);
    expect(byName.get('iso')!['export-size']).toBe(8192);
    expect(byName.get('iso')!.is_read_only).toBe(true);
    expect(byName.get('disk')!.is_read_only).toBe(false);
    expect(byName.get('spaced name/with slash')!['export-size']).toBe(512);
  });
});

describe('nbdinfo --map', () => {
  interface MapEntry {
    offset: number;
    length: number;
    type: number;
    description: string;
  }

  test('a sparse memory export shows data where nbdsh wrote and hole,zero elsewhere', async () => {
    const size = 4 * MiB;
    const page = 64 * 1024;
    const r = await serve({ exports: [{ name: 'sparse', backend: memoryBackend({ size, pageSize: page }) }] });
    const uri = r.uri();

    const empty = JSON.parse((await run('nbdinfo', ['--map', '--json', uri])).stdout) as MapEntry[];
    expect(empty).toEqual([{ offset: 0, length: size, type: 3, description: 'hole,zero' }]);

    // Writes with nbdsh: 10 bytes at 0, 1 byte straddling 1 MiB + 1 page, the last byte.
    await nbdsh([
      '-u',
      uri,
      '-c',
      "h.pwrite(b'0123456789', 0)",
      '-c',
      `h.pwrite(b'ab', ${MiB + page - 1})`,
      '-c',
      `h.pwrite(b'z', ${size - 1})`,
    ]);
    const map = JSON.parse((await run('nbdinfo', ['--map', '--json', uri])).stdout) as MapEntry[];
    const D = (offset: number, length: number) => ({ offset, length, type: 0, description: 'data' });
    const H = (offset: number, length: number) => ({ offset, length, type: 3, description: 'hole,zero' });
    expect(map).toEqual([
      D(0, page),
      H(page, MiB - page),
      D(MiB, 2 * page),
      H(MiB + 2 * page, size - page - (MiB + 2 * page)),
      D(size - page, page),
    ]);

    // --totals: the percentage of data (4 pages of 64 pages) and of holes.
    const totals = JSON.parse((await run('nbdinfo', ['--map', '--totals', '--json', uri])).stdout) as { size: number; type: number }[];
    const dataBytes = totals.find((t) => t.type === 0)?.size;
    const holeBytes = totals.find((t) => t.type === 3)?.size;
    expect(dataBytes).toBe(4 * page);
    expect(holeBytes).toBe(size - 4 * page);

    // And the bytes written read back (nbdsh, a fresh connection).
    const { stdout } = await nbdsh([
      '-u',
      uri,
      '-c',
      `print(h.pread(10, 0).decode(), h.pread(2, ${MiB + page - 1}).decode(), h.pread(1, ${size - 1}).decode(), h.pread(4, 100) == bytes(4))`,
    ]);
    expect(stdout.trim()).toBe('0123456789 ab z True');
  });

  test('trim gives the hole back; a backend without extents() maps as one data extent', async () => {
    const page = 64 * 1024;
    const r = await serve({
      exports: [
        { name: 'mem', backend: memoryBackend({ size: MiB, pageSize: page }) },
        { name: 'plain', backend: { read: (_o, l) => Buffer.alloc(l) }, size: 3 * page },
      ],
    });
    await nbdsh(['-u', r.uri('mem'), '-c', `h.pwrite(b'x' * ${3 * page}, ${2 * page})`, '-c', `h.trim(${3 * page}, ${page})`]);
    const map = JSON.parse((await run('nbdinfo', ['--map', '--json', r.uri('mem')])).stdout) as MapEntry[];
    expect(map.map((m) => [m.offset, m.length, m.type])).toEqual([
      // written: pages 2–4; trimmed: pages 1–3 ⇒ only page 4 holds data.
      [0, 4 * page, 3],
      [4 * page, page, 0],
      [5 * page, MiB - 5 * page, 3],
    ]);
    const plain = JSON.parse((await run('nbdinfo', ['--map', '--json', r.uri('plain')])).stdout) as MapEntry[];
    expect(plain).toEqual([{ offset: 0, length: 3 * page, type: 0, description: 'data' }]);
  });
});

describe('block sizes', () => {
  test('blockSizes on the export, on the backend, defaults, and maxPayload clamp', async () => {
    const r = await serve({
      limits: { maxPayload: 256 * 1024 },
      exports: [
        { name: 'configured', backend: memoryBackend({ size: MiB }), blockSizes: { minimum: 512, preferred: 16384, maximum: 128 * 1024 } },
        {
          name: 'from-backend',
          size: MiB,
          backend: { read: (_o, l) => Buffer.alloc(l), blockSizes: { minimum: 4096, preferred: 65536, maximum: 131072 } },
          // The export's setting wins over the backend's, key by key.
          blockSizes: { preferred: 8192 },
        },
        { name: 'defaults', backend: memoryBackend({ size: MiB }) },
      ],
    });
    const [c, b, d] = await Promise.all([infoOf(r.uri('configured')), infoOf(r.uri('from-backend')), infoOf(r.uri('defaults'))]);
    expect([c.block_size_minimum, c.block_size_preferred, c.block_size_maximum]).toEqual([512, 16384, 128 * 1024]);
    expect([b.block_size_minimum, b.block_size_preferred, b.block_size_maximum]).toEqual([4096, 8192, 131072]);
    // Default maximum is 32 MiB, clamped to the server's maxPayload.
    expect([d.block_size_minimum, d.block_size_preferred, d.block_size_maximum]).toEqual([1, 4096, 256 * 1024]);
  });

  test('nbdsh sees the same constraints through get_block_size', async () => {
    const r = await serve({
      exports: [{ name: 'disk', backend: memoryBackend({ size: MiB }), blockSizes: { minimum: 4096, preferred: 65536, maximum: MiB } }],
    });
    const { stdout } = await nbdsh([
      '-u',
      r.uri(),
      '-c',
      'print(h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED), h.get_block_size(nbd.SIZE_MAXIMUM))',
    ]);
    expect(stdout.trim()).toBe(`4096 65536 ${MiB}`);
  });
});
