/**
 * Zero-length requests are legal (the spec only says their effect is
 * unspecified for some commands): a zero-length WRITE or READ gets a
 * success reply from every kind of export, and nothing is logged as an
 * error. Found by the hostile-stream fuzzer: a zero-length WRITE reached
 * the memory backend with no payload buffer and failed with EIO.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createServer, fileBackend, memoryBackend, type Backend, type ExportConfig } from '../../src/index.js';
import { recordingLogger, tmpDir } from './harness.js';
import { RawClient, requestBytes } from './raw-client.js';

const READ = 0;
const WRITE = 1;

describe('zero-length WRITE and READ', () => {
  const dir = tmpDir();
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const kinds: Record<string, () => Promise<ExportConfig>> = {
    memory: async () => ({ name: '', backend: memoryBackend({ size: 1 << 20 }) }),
    file: async () => {
      const f = path.join(dir, 'disk.img');
      fs.writeFileSync(f, Buffer.alloc(1 << 20));
      return { name: '', backend: await fileBackend({ path: f }) };
    },
    'user backend': async () => {
      const bytes = Buffer.alloc(1 << 20);
      const b: Backend = { size: bytes.length, read: (o, l) => bytes.subarray(o, o + l), write: (o, d) => void d.copy(bytes, o) };
      return { name: '', backend: b };
    },
    'requests$': async () => ({ name: '', size: 1 << 20, flags: {} }),
  };
  for (const [kind, make] of Object.entries(kinds)) {
    it(`${kind}: success, no error logged`, async () => {
      const logs: string[] = [];
      const server = createServer({ exports: [await make()], logger: recordingLogger(logs) });
      server.requests$.subscribe((req) => {
        expect(req.length).toBe(0);
        if (req.type === 'write') expect(req.data!.length).toBe(0);
        req.type === 'read' ? req.reply(Buffer.alloc(0)) : req.reply();
      });
      const sock = path.join(dir, `${kind.replace(/\W/g, '')}.sock`);
      await server.listen({ path: sock });
      try {
        const c = await RawClient.open({ path: sock });
        c.send(Buffer.concat([requestBytes({ type: WRITE, offset: 4096, length: 0, cookie: 1n }), requestBytes({ type: READ, offset: 4096, length: 0, cookie: 2n })]));
        const replies = [await c.readSimpleReply(() => 0), await c.readSimpleReply(() => 0)];
        expect(replies.map((r) => [r.cookie, r.error]).sort()).toEqual([
          [1n, 0],
          [2n, 0],
        ]);
        c.destroy();
        expect(logs.filter((l) => l.startsWith('error:') || l.startsWith('warn:'))).toEqual([]);
      } finally {
        await server.close({ timeout: 1000 });
      }
    });
  }
});
