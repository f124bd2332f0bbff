/**
 * The offset filter (nbdkit's `--filter=offset offset= range=`) with real
 * clients: the export is the window, reads see the window's bytes, writes,
 * zeroes and trims land inside it in the file (nothing outside changes), the
 * map is the window's, and nbdkit's offset filter on the same file agrees on
 * size, content and map. Bad windows are clean errors.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { createServer, fileBackend, memoryBackend, offsetFilter } from '../../../src/index.js';
import { ParamError } from '../../../src/plugins/params.js';
import { silentLogger } from '../../../src/transport/logger.js';
import { cliToEnd, requireTool, run, serverPerTest, tmpDir } from '../harness.js';

const MiB = 1 << 20;
const { serve } = serverPerTest();
let dir: string;
beforeAll(() => {
  requireTool('qemu-io');
  requireTool('nbdkit');
  dir = tmpDir();
  return () => fs.rmSync(dir, { recursive: true, force: true });
});

/** A 16 MiB file: random data, with a hole from 10 MiB to 12 MiB. */
function image(name: string): { file: string; data: Buffer } {
  const file = path.join(dir, name);
  const data = randomBytes(16 * MiB);
  data.fill(0, 10 * MiB, 12 * MiB);
  fs.writeFileSync(file, data.subarray(0, 10 * MiB));
  fs.truncateSync(file, 16 * MiB);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, data, 12 * MiB, 4 * MiB, 12 * MiB);
  fs.closeSync(fd);
  return { file, data };
}

describe('offset filter', () => {
  it('serves the window: size, bytes and map as nbdkit’s offset filter on the same file', async () => {
    const { file, data } = image('same.img');
    const srv = await serve({ exports: [{ name: 'w', backend: await fileBackend({ path: file, readOnly: true }), filters: [offsetFilter({ offset: 9 * MiB, range: 4 * MiB })] }] });
    const ours = {
      size: (await run('nbdinfo', ['--size', srv.uri()])).stdout.trim(),
      map: (await run('nbdinfo', ['--map', srv.uri()])).stdout,
    };
    const copy = path.join(dir, 'copy.bin');
    await run('nbdcopy', [srv.uri(), copy]);
    expect(fs.readFileSync(copy).equals(data.subarray(9 * MiB, 13 * MiB))).toBe(true);
    const kit = await run('nbdkit', ['-U', '-', '-r', '--filter=offset', 'file', file, `offset=${9 * MiB}`, `range=${4 * MiB}`, '--run', 'nbdinfo --size "$uri"; echo ---; nbdinfo --map "$uri"']);
    const [kitSize, kitMap] = kit.stdout.split('---\n');
    expect(ours.size).toBe(String(4 * MiB));
    expect(kitSize!.trim()).toBe(ours.size);
    expect(ours.map).toBe(kitMap);
    // 1 MiB data, 2 MiB hole, 1 MiB data.
    expect(ours.map.trim().split('\n').map((l) => l.trim().split(/\s+/).slice(0, 3).join(' '))).toEqual([
      `0 ${MiB} 0`,
      `${MiB} ${2 * MiB} 3`,
      `${3 * MiB} ${MiB} 0`,
    ]);
  });

  it('writes, zeroes and trims land inside the window in the file; nothing outside changes', async () => {
    const { file, data } = image('rw.img');
    const srv = await serve({ exports: [{ name: 'w', backend: await fileBackend({ path: file }), filters: [offsetFilter({ offset: 2 * MiB, range: 4 * MiB })] }] });
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 64k', '-c', `write -P 0x22 ${4 * MiB - 65536} 64k`, '-c', 'write -z 1M 64k', '-c', 'discard 2M 64k', srv.uri()]);
    const after = fs.readFileSync(file);
    const want = Buffer.from(data);
    want.fill(0x11, 2 * MiB, 2 * MiB + 65536);
    want.fill(0x22, 6 * MiB - 65536, 6 * MiB);
    want.fill(0, 3 * MiB, 3 * MiB + 65536);
    want.fill(0, 4 * MiB, 4 * MiB + 65536);
    expect(after.length).toBe(16 * MiB);
    expect(after.subarray(0, 2 * MiB).equals(data.subarray(0, 2 * MiB))).toBe(true);
    expect(after.subarray(6 * MiB).equals(data.subarray(6 * MiB))).toBe(true);
    expect(after.equals(want)).toBe(true);
    // A request past the window's end never reaches the file.
    const past = await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x33 ${4 * MiB} 4k`, srv.uri()]).catch((e: { stdout?: string; stderr?: string }) => e);
    expect(`${past.stdout}${past.stderr}`).toMatch(/error|Invalid|out of|beyond/i);
    expect(fs.readFileSync(file).subarray(6 * MiB, 6 * MiB + 4096).equals(data.subarray(6 * MiB, 6 * MiB + 4096))).toBe(true);
  });

  it('from the command line, as nbdkit: offset=SIZE range=SIZE; range defaults to the rest', async () => {
    const { file } = image('cli.img');
    const a = await cliToEnd(['serve', '--no-warm-up', '-U', '-', '--filter=offset', 'file', file, 'offset=3M', '--run', 'nbdinfo --size "$uri"']);
    expect([a.code, a.stdout.trim()]).toEqual([0, String(13 * MiB)]);
    const b = await cliToEnd(['serve', '--no-warm-up', '-U', '-', '--filter=offset', 'file', file, 'offset=3M', 'range=1M', '--run', 'nbdinfo --size "$uri"']);
    expect([b.code, b.stdout.trim()]).toEqual([0, String(MiB)]);
    const c = await cliToEnd(['serve', '--no-warm-up', '-U', '-', '--filter=offset', 'file', file, 'offset=15M', 'range=2M', '--run', 'true']);
    expect(c.code).not.toBe(0);
    expect(c.stderr).toMatch(/offset: offset=15728640 \+ range=2097152 is beyond the end of the backend below \(16777216 bytes\)/);
  });

  it('bad windows are refused when the server is created, naming the filter', () => {
    const make = (o: { offset?: number; range?: number }) => () =>
      createServer({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [offsetFilter(o)] }], logger: silentLogger });
    expect(make({ offset: 2 * MiB })).toThrow(/offset: offset=2097152 is beyond the end/);
    expect(make({ offset: 512, range: MiB })).toThrow(/beyond the end/);
    expect(() => offsetFilter({ offset: -1 })).toThrow(ParamError);
    expect(() => offsetFilter({ range: 1.5 })).toThrow(ParamError);
    expect(make({ offset: MiB })).not.toThrow(); // an empty window at the very end
  });
});
