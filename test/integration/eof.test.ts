/**
 * A client that pipelines requests and then closes its side (FIN) gets
 * every one of them answered: what it sent before the EOF is served like
 * any other request — even the part still waiting behind the in-flight
 * cap — never refused with ESHUTDOWN as if it came while draining.
 * And a DISC that arrives while the server is already draining (shutdown)
 * still ends what is interpreted: bytes after it are ignored.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createServer, fileBackend } from '../../src/index.js';
import { recordingLogger, tmpDir } from './harness.js';
import { RawClient, requestBytes } from './raw-client.js';

const READ = 0;
const WRITE = 1;
const DISC = 2;

describe('EOF after a pipelined burst', () => {
  const dir = tmpDir();
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const cap of [1, 4, 64]) {
    it(`cap ${cap}, file backend: 200 requests then FIN — all 200 answered with success`, async () => {
      const file = path.join(dir, `eof-${cap}.img`);
      fs.writeFileSync(file, Buffer.alloc(1 << 20, 7));
      const logs: string[] = [];
      const server = createServer({ exports: [{ name: '', backend: await fileBackend({ path: file }) }], logger: recordingLogger(logs), limits: { maxInFlight: cap } });
      const sock = path.join(dir, `eof-${cap}.sock`);
      await server.listen({ path: sock });
      try {
        const c = await RawClient.open({ path: sock });
        const reqs = Array.from({ length: 200 }, (_, i) =>
          i % 2 === 0
            ? { type: READ, offset: i * 4096, length: 4096, cookie: BigInt(i) }
            : { type: WRITE, offset: i * 4096, length: 4096, cookie: BigInt(i), payload: Buffer.alloc(4096, i & 0xff) },
        );
        c.send(Buffer.concat(reqs.map(requestBytes)));
        c.stream.end(); // FIN: the client sends nothing more but keeps reading
        const seen = new Set<bigint>();
        for (let i = 0; i < reqs.length; i++) {
          const r = await c.readSimpleReply((cookie) => (Number(cookie) % 2 === 0 ? 4096 : 0));
          expect(r.error, `cookie ${r.cookie}`).toBe(0);
          seen.add(r.cookie);
        }
        expect(seen.size).toBe(200);
        // Then the server closes its side too.
        await expect(c.readSimpleReply(() => 0)).rejects.toThrow(/closed/);
        c.destroy();
        expect(logs.filter((l) => l.startsWith('warn:') || l.startsWith('error:'))).toEqual([]);
      } finally {
        await server.close({ timeout: 2000 });
      }
    });
  }

  it('a DISC that arrives while the server is shutting down stops the decoding: bytes after it are ignored', async () => {
    const logs: string[] = [];
    const server = createServer({ exports: [{ name: '', size: 1 << 20, flags: {} }], logger: recordingLogger(logs) });
    const held: Array<{ reply(d?: Buffer): void; length: number }> = [];
    let first!: () => void;
    const gotFirst = new Promise<void>((r) => (first = r));
    server.requests$.subscribe((req) => {
      held.push(req);
      first();
    });
    const sock = path.join(dir, 'shut.sock');
    await server.listen({ path: sock });
    const c = await RawClient.open({ path: sock });
    c.send(requestBytes({ type: READ, offset: 0, length: 512, cookie: 1n }));
    await gotFirst;
    const closing = server.close({ timeout: 5000 });
    await new Promise((r) => setTimeout(r, 50));
    // While draining: a READ (ESHUTDOWN), DISC, then garbage that must never be parsed.
    c.send(Buffer.concat([requestBytes({ type: READ, offset: 0, length: 512, cookie: 2n }), requestBytes({ type: DISC, offset: 0, length: 0, cookie: 3n }), Buffer.from('garbage: certainly not an NBD request header')]));
    const refused = await c.readSimpleReply(() => 0);
    expect(refused).toMatchObject({ cookie: 2n, error: 108 });
    held[0]!.reply(Buffer.alloc(512));
    const answered = await c.readSimpleReply(() => 512);
    expect(answered).toMatchObject({ cookie: 1n, error: 0 });
    await expect(c.readSimpleReply(() => 0)).rejects.toThrow(/closed/);
    await closing;
    expect(logs.filter((l) => /bad request magic|protocol violation/.test(l))).toEqual([]);
  });
});
