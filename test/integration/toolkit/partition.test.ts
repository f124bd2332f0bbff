/**
 * The partition filter against real disk images: MBR and GPT tables made
 * by sfdisk, each partition filled with its own data through nbdkit's
 * partition filter, then served by ours. Sizes and contents must equal
 * nbdkit's for every partition (primary, logical, GPT past 4); writes,
 * zeroes and trims must land inside the partition in the image; a bad
 * partition number is a clean error.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, fileBackend, NbdError, partitionFilter, prepareExports, type ExportConfig } from '../../../src/index.js';
import { readParams, ParamError } from '../../../src/plugins/params.js';
import { FILTERS } from '../../../src/plugins/registry.js';
import { silentLogger } from '../../../src/transport/logger.js';
import { py } from '../pylibnbd.js';
import { memoryWithPlacements, recordingLogger, requireTool, run, serverPerTest, tmpDir } from '../harness.js';

const MiB = 1 << 20;
const { serve } = serverPerTest();
let dir: string;
/** Partition number → the bytes written into it, per image. */
const written: Record<string, Map<number, Buffer>> = {};

/** sfdisk script → a 64 MiB image file with that table. */
function makeImage(name: string, script: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, '');
  fs.truncateSync(file, 64 * MiB);
  execFileSync(requireTool('sfdisk'), ['-q', file], { input: script });
  return file;
}

/** Partition number → [start, length] in bytes, as sfdisk lists them. */
function sfdiskParts(image: string): Map<number, [number, number]> {
  const dump = execFileSync(requireTool('sfdisk'), ['-d', image], { encoding: 'utf8' });
  const out = new Map<number, [number, number]>();
  for (const m of dump.matchAll(/\.img(\d+) : start=\s*(\d+), size=\s*(\d+)/g)) out.set(Number(m[1]), [Number(m[2]) * 512, Number(m[3]) * 512]);
  return out;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Run a command against nbdkit's partition filter on `image` (its $uri in the command). */
async function viaNbdkit(image: string, partition: number, command: string): Promise<string> {
  const { stdout } = await run('nbdkit', ['-U', '-', '--filter=partition', 'file', image, `partition=${partition}`, '--run', command]);
  return stdout;
}

/** Fill each partition, through nbdkit, with its own random bytes. */
async function fill(image: string, partitions: number[]): Promise<void> {
  const map = new Map<number, Buffer>();
  for (const n of partitions) {
    const size = Number((await viaNbdkit(image, n, 'nbdinfo --size "$uri"')).trim());
    const data = randomBytes(size);
    const src = path.join(dir, `fill-${n}.bin`);
    fs.writeFileSync(src, data);
    await viaNbdkit(image, n, `nbdcopy ${src} "$uri"`);
    map.set(n, data);
  }
  written[path.basename(image)] = map;
}

/** Our exports: one per partition ("p1", "p5" …) of `image`, each with its own filter. */
async function exportsFor(image: string, partitions: number[], readOnly = true): Promise<ExportConfig[]> {
  const exports: ExportConfig[] = [];
  for (const n of partitions) exports.push({ name: `p${n}`, backend: await fileBackend({ path: image, readOnly }), filters: [partitionFilter({ partition: n })] });
  await prepareExports(exports);
  return exports;
}

/** Size (nbdinfo) and sha256 of the contents (nbdcopy) of an export. */
async function describeUri(uri: string): Promise<{ size: number; sha: string }> {
  const size = Number((await run('nbdinfo', ['--size', uri])).stdout.trim());
  const out = path.join(dir, `copy-${randomBytes(4).toString('hex')}.bin`);
  await run('nbdcopy', [uri, out]);
  const got = { size, sha: sha(fs.readFileSync(out)) };
  fs.rmSync(out);
  return got;
}

const MBR_SCRIPT = [
  'label: dos',
  'start=2048, size=8192, type=83',
  'start=10240, size=16384, type=7',
  'start=26624, size=65536, type=5',
  'start=28672, size=4096, type=83',
  'start=34816, size=6144, type=82',
  'start=43008, size=2048, type=83',
  '',
].join('\n');
const MBR_PARTS = [1, 2, 5, 6, 7];
const GPT_PARTS = [1, 2, 3, 4, 5, 6];

beforeAll(async () => {
  dir = tmpDir('nbd-engine-partition-');
  await fill(makeImage('mbr.img', MBR_SCRIPT), MBR_PARTS);
  await fill(makeImage('gpt.img', `label: gpt\n${GPT_PARTS.map((i) => `size=${1024 + 512 * i}\n`).join('')}`), GPT_PARTS);
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('partition filter', () => {
  it('MBR: primary and logical partitions have nbdkit\'s sizes and the data written into them', async () => {
    const image = path.join(dir, 'mbr.img');
    const srv = await serve({ exports: await exportsFor(image, MBR_PARTS) });
    for (const n of MBR_PARTS) {
      const ours = await describeUri(srv.uri(`p${n}`));
      const theirs = Number((await viaNbdkit(image, n, 'nbdinfo --size "$uri"')).trim());
      expect({ n, ...ours }).toEqual({ n, size: theirs, sha: sha(written['mbr.img']!.get(n)!) });
    }
    // sfdisk agrees on the sizes.
    expect([...sfdiskParts(image)].filter(([n]) => MBR_PARTS.includes(n)).map(([n, [, len]]) => [n, len])).toEqual(MBR_PARTS.map((n) => [n, written['mbr.img']!.get(n)!.length]));
  });

  it('GPT with 6 partitions: every partition has nbdkit\'s size and its data', async () => {
    const image = path.join(dir, 'gpt.img');
    const srv = await serve({ exports: await exportsFor(image, GPT_PARTS) });
    for (const n of GPT_PARTS) {
      const ours = await describeUri(srv.uri(`p${n}`));
      const theirs = Number((await viaNbdkit(image, n, 'nbdinfo --size "$uri"')).trim());
      expect({ n, ...ours }).toEqual({ n, size: theirs, sha: sha(written['gpt.img']!.get(n)!) });
    }
    // sfdisk agrees on the sizes.
    expect([...sfdiskParts(image)].filter(([n]) => GPT_PARTS.includes(n)).map(([n, [, len]]) => [n, len])).toEqual(GPT_PARTS.map((n) => [n, written['gpt.img']!.get(n)!.length]));
  });

  it('writes land at the partition\'s offset in the image file, and nowhere else', async () => {
    const image = path.join(dir, 'mbr-write.img');
    fs.copyFileSync(path.join(dir, 'mbr.img'), image);
    const before = fs.readFileSync(image);
    const srv = await serve({ exports: await exportsFor(image, [5], false) });
    const [start, size] = sfdiskParts(image).get(5)!;
    await py(srv.uri('p5'), `
      h = connect()
      h.pwrite(b'\\xa5' * 4096, 0)
      h.pwrite(b'\\x5a' * 512, ${size - 512})
      h.zero(65536, 8192)  # libnbd: count, then offset
      out = {}
    `);
    const after = fs.readFileSync(image);
    const expected = Buffer.from(before);
    expected.fill(0xa5, start, start + 4096);
    expected.fill(0x5a, start + size - 512, start + size);
    expected.fill(0, start + 8192, start + 8192 + 65536);
    expect(after.equals(expected)).toBe(true);
    // And nbdkit sees the same bytes in the same partition.
    const copy = path.join(dir, 'p5-by-nbdkit.bin');
    await viaNbdkit(image, 5, `nbdcopy "$uri" ${copy}`);
    expect(fs.readFileSync(copy).equals(expected.subarray(start, start + size))).toBe(true);
  });

  it('trim, zero and extents pass through with the offset (memory backend below)', async () => {
    const image = fs.readFileSync(path.join(dir, 'gpt.img'));
    const { backend: mem, placements } = memoryWithPlacements(image.length);
    mem.write!(0, image, { fua: false });
    const exports: ExportConfig[] = [{ name: 'p3', backend: mem, filters: [partitionFilter({ partition: 3 })] }];
    const lines: string[] = [];
    await prepareExports(exports, recordingLogger(lines));
    // One line saying what is served.
    const [start, length] = sfdiskParts(path.join(dir, 'gpt.img')).get(3)!;
    expect(lines).toEqual([`info: export "p3": partition filter: GPT partition 3 (type 0fc63daf-8483-4772-8e79-3d69d8477de4), bytes ${start}–${start + length} (512-byte sectors)`]);
    const loc = (exports[0]!.filters![0] as ReturnType<typeof partitionFilter>).location!;
    const srv = await serve({ exports });
    const out = await py<{ flags: { trim: boolean; zero: boolean }; ext: { extents: number[][] } }>(srv.uri('p3'), `
      h = connect()
      h.trim(65536, 2 * 65536)  # libnbd: count, then offset
      h.zero(65536, 4 * 65536)
      out = {'flags': flags(h), 'ext': extents(h, 6 * 65536, 65536)}
    `);
    expect(out.flags).toMatchObject({ trim: true, zero: true });
    // The memory backend's 64 KiB pages from page 1 of the partition: data, hole (trimmed), data, hole (zeroed), data (2 pages).
    expect(out.ext.extents.map(([, f]) => f! & 1)).toEqual([0, 1, 0, 1, 0]);
    expect(out.ext.extents.map(([l]) => l)).toEqual([65536, 65536, 65536, 65536, 131072]);
    const below = await mem.extents!(loc.offset + 2 * 65536, 65536, { reqOne: false, context: 'base:allocation' });
    expect(below[0]!.flags & 1).toBe(1);
    expect((await mem.extents!(loc.offset + 4 * 65536, 65536, { reqOne: false, context: 'base:allocation' }))[0]!.flags & 1).toBe(1);
    expect((await mem.extents!(loc.offset + 3 * 65536, 65536, { reqOne: false, context: 'base:allocation' }))[0]!.flags & 1).toBe(0);
    // A large WRITE stays zero-copy: received into the memory backend's pages at the partition's offset.
    await py(srv.uri('p3'), `h = connect(); h.pwrite(b'\\x77' * 131072, 8 * 65536); out = {}`);
    expect(placements()).toContain(loc.offset + 8 * 65536);
    const back = await mem.read(loc.offset + 8 * 65536, 131072);
    const bytes = Buffer.isBuffer(back) ? back : Buffer.concat(back.map((x) => ('data' in x ? x.data : Buffer.alloc(x.hole))));
    expect(bytes.equals(Buffer.alloc(131072, 0x77))).toBe(true);
  });

  it('partition-sectorsize=4096 through the plugin: a 4096-byte-sector GPT', async () => {
    // sfdisk 2.38 cannot make 4096-byte-sector tables in a file; fdisk -b can.
    const image = path.join(dir, 'gpt4k.img');
    fs.writeFileSync(image, '');
    fs.truncateSync(image, 64 * MiB);
    execFileSync(requireTool('fdisk'), ['-b', '4096', image], { input: 'g\nn\n\n\n+4M\nn\n\n\n+8M\nw\n' });
    const list = execFileSync(requireTool('fdisk'), ['-b', '4096', '-l', '-o', 'Device,Start,Sectors', image], { encoding: 'utf8' });
    const m = /gpt4k\.img2\s+(\d+)\s+(\d+)/.exec(list)!;
    expect(Number(m[2]) * 4096).toBe(8 * MiB);
    const plugin = await FILTERS.partition!();
    const ctx = { logger: silentLogger, readOnly: false };
    const filter = await plugin.create(readParams('partition', plugin.params, ['partition=2', 'partition-sectorsize=4096']), ctx);
    const exports: ExportConfig[] = [{ name: '', backend: await fileBackend({ path: image }), filters: [filter] }];
    await prepareExports(exports);
    const srv = await serve({ exports });
    const size = Number((await run('nbdinfo', ['--size', srv.uri()])).stdout.trim());
    expect(size).toBe(Number(m[2]) * 4096);
    await py(srv.uri(), `h = connect(); h.pwrite(b'4k' * 256, 0); out = {}`);
    const at = Number(m[1]) * 4096;
    expect(fs.readFileSync(image).subarray(at, at + 4).toString()).toBe('4k4k');
    // Read as 512-byte sectors, sector 1 holds no GPT header: refused.
    const wrong = await plugin.create(readParams('partition', plugin.params, ['partition=2', 'partition-sectorsize=512']), ctx);
    await expect(prepareExports([{ name: 'w', backend: await fileBackend({ path: image }), filters: [wrong] }])).rejects.toThrow(/no GPT header/);
  });

  it('a bad partition number is a clean error naming the export, as nbdkit refuses it too', async () => {
    const image = path.join(dir, 'mbr.img');
    const attempt = async (n: number) => {
      const err = await prepareExports([{ name: 'disk', backend: await fileBackend({ path: image, readOnly: true }), filters: [partitionFilter({ partition: n })] }]).then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(NbdError);
      return (err as Error).message;
    };
    expect(await attempt(3)).toMatch(/^export "disk": partition 3 is the extended partition/);
    expect(await attempt(4)).toMatch(/^export "disk": partition 4 is unused in the MBR$/);
    expect(await attempt(8)).toMatch(/^export "disk": partition 8 does not exist: the MBR has logical partitions 5 to 7$/);
    expect(await attempt(200)).toMatch(/does not exist/);
    // nbdkit serves no export for these either.
    for (const n of [3, 4, 8]) await expect(viaNbdkit(image, n, 'nbdinfo --size "$uri"')).rejects.toThrow();
    const plugin = await FILTERS.partition!();
    await expect(plugin.create(readParams('partition', plugin.params, ['partition=0']), { logger: silentLogger, readOnly: true })).rejects.toThrow(ParamError);
    await expect(plugin.create(readParams('partition', plugin.params, ['partition=1', 'partition-sectorsize=1024']), { logger: silentLogger, readOnly: true })).rejects.toThrow(/must be 512 or 4096/);
  });

  it('an unprepared filter stops createServer with a message saying what to do', async () => {
    const backend = await fileBackend({ path: path.join(dir, 'mbr.img'), readOnly: true });
    const unprepared = () => createServer({ logger: silentLogger, exports: [{ name: '', backend, filters: [partitionFilter({ partition: 1 })] }] });
    expect(unprepared).toThrow(NbdError);
    expect(unprepared).toThrow(/await prepareExports\(exports\) before createServer/);
  });

  it('a disk without a partition table is refused', async () => {
    const blank = path.join(dir, 'blank.img');
    fs.writeFileSync(blank, Buffer.alloc(MiB));
    await expect(prepareExports([{ name: 'b', backend: await fileBackend({ path: blank }), filters: [partitionFilter({ partition: 1 })] }])).rejects.toThrow(/export "b": no partition table: sector 0 lacks the 0x55AA boot signature/);
  });
});
