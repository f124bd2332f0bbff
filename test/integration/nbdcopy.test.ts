/**
 * nbdcopy: 256 MiB of random data into a memory export and back out over
 * four connections, checked by sha256.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memoryBackend } from '../../src/index.js';
import { requireTool, run, startServer, tmpDir, type Running } from './harness.js';

const MiB = 1024 * 1024;
const SIZE = 256 * MiB;

async function writeRandomFile(file: string, size: number): Promise<string> {
  const hash = crypto.createHash('sha256');
  const fh = await fs.promises.open(file, 'w');
  try {
    for (let done = 0; done < size; done += 4 * MiB) {
      const chunk = crypto.randomBytes(Math.min(4 * MiB, size - done));
      // A few all-zero chunks, so holes and zero detection are exercised too.
      if ((done / (4 * MiB)) % 16 === 5) chunk.fill(0);
      hash.update(chunk);
      await fh.write(chunk);
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}

async function sha256File(file: string): Promise<string> {
  const hash = crypto.createHash('sha256');
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 4 * MiB })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

describe('nbdcopy', () => {
  let srv: Running;
  let work: string;
  beforeAll(async () => {
    requireTool('nbdcopy');
    work = tmpDir();
    srv = await startServer({ exports: [{ name: 'big', size: SIZE, backend: memoryBackend({ size: SIZE }) }] });
  });
  afterAll(async () => {
    await srv?.close();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  it('copies 256 MiB in and out with --connections=4, sha256 equal', async () => {
    const src = path.join(work, 'src.img');
    const back = path.join(work, 'back.img');
    const want = await writeRandomFile(src, SIZE);
    let negotiated = 0;
    const sub = srv.server.connections$.subscribe((e) => {
      if (e.type === 'negotiated') negotiated++;
    });
    await run('nbdcopy', ['--threads=4', '--connections=4', src, srv.uri()], { timeout: 50_000 });
    fs.rmSync(src);
    await run('nbdcopy', ['--threads=4', '--connections=4', srv.uri(), back], { timeout: 50_000 });
    sub.unsubscribe();
    // Multi-conn is advertised (and --threads=4 so 2 cores do not cap it): four connections each way.
    expect(negotiated).toBeGreaterThanOrEqual(8);
    expect(fs.statSync(back).size).toBe(SIZE);
    const got = await sha256File(back);
    fs.rmSync(back);
    expect(got).toBe(want);
    expect(srv.logs.filter((l) => l.startsWith('error') || l.startsWith('warn'))).toEqual([]);
  });
});
