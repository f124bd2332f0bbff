/**
 * NBD_CMD_DISC: every request received before it is answered; whatever
 * the client sends after it is ignored — never a reason to drop the
 * connection or lose a reply. The kernel's nbd-client sends more requests
 * after DISC when it disconnects under load.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createServer, fileBackend, memoryBackend, type ExportConfig } from '../../src/index.js';
import { recordingLogger, tmpDir } from './harness.js';
import { RawClient, requestBytes, type Request } from './raw-client.js';

const WRITE = 1;
const DISC = 2;
const READ = 0;
const SIZE = 1 << 20;

async function serverOf(kind: 'memory' | 'file' | 'requests$', dir: string) {
  const logs: string[] = [];
  let exp: ExportConfig;
  let bytes: Buffer | undefined;
  if (kind === 'memory') exp = { name: '', backend: memoryBackend({ size: SIZE }) };
  else if (kind === 'file') {
    const file = path.join(dir, 'disk.img');
    fs.writeFileSync(file, Buffer.alloc(SIZE));
    exp = { name: '', backend: await fileBackend({ path: file }) };
  } else {
    bytes = Buffer.alloc(SIZE);
    exp = { name: '', size: SIZE, flags: { flush: true } };
  }
  const server = createServer({ exports: [exp], logger: recordingLogger(logs) });
  if (bytes) {
    const b = bytes;
    // Answered later, so requests are still in flight when DISC arrives.
    server.requests$.subscribe((req) =>
      setTimeout(() => {
        if (req.type === 'write') req.data!.copy(b, req.offset);
        req.type === 'read' ? req.reply(b.subarray(req.offset, req.offset + req.length)) : req.reply();
      }, 5),
    );
  }
  const sock = path.join(dir, `${kind.replace('$', '')}.sock`);
  await server.listen({ path: sock });
  return { server, sock, logs };
}

/** WRITEs of 64 KiB: a burst of 9 spans several socket reads. */
const W = 64 * 1024;

function writes(n: number, cookieBase: bigint, fill: number): Request[] {
  return Array.from({ length: n }, (_, i) => ({
    type: WRITE,
    offset: i * W,
    length: W,
    cookie: cookieBase + BigInt(i),
    payload: Buffer.alloc(W, fill + i),
  }));
}

describe('bytes after NBD_CMD_DISC', () => {
  const dir = tmpDir();
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const kind of ['file', 'memory', 'requests$'] as const) {
    it(`${kind}: 8 WRITEs, DISC and one more WRITE in one burst — all 8 answered, the 9th ignored, a clean close`, async () => {
      const { server, sock, logs } = await serverOf(kind, dir);
      try {
        for (let round = 0; round < 5; round++) {
          const c = await RawClient.open({ path: sock });
          const before = writes(8, BigInt(round * 100), round * 10 + 1);
          const after: Request = { type: WRITE, offset: 9 * W, length: W, cookie: 99n, payload: Buffer.alloc(W, 0xee) };
          c.send(Buffer.concat([...before.map(requestBytes), requestBytes({ type: DISC, offset: 0, length: 0, cookie: 98n }), requestBytes(after)]));
          const answered = new Set<bigint>();
          for (let i = 0; i < 8; i++) {
            const r = await c.readSimpleReply(() => 0);
            expect(r.error).toBe(0);
            answered.add(r.cookie);
          }
          expect([...answered].sort()).toEqual(before.map((w) => w.cookie).sort());
          // Then the server closes: no reply to DISC, none to the WRITE after it.
          await expect(c.readSimpleReply(() => 0)).rejects.toThrow(/closed/);
          c.destroy();
        }
        // The ignored WRITE never reached the export; the 8 did.
        const check = await RawClient.open({ path: sock });
        check.send(requestBytes({ type: READ, offset: 0, length: 10 * W, cookie: 1n }));
        const r = await check.readSimpleReply(() => 10 * W);
        for (let i = 0; i < 8; i++) expect(r.data![i * W]).toBe(41 + i);
        expect(r.data![9 * W]).toBe(0);
        check.destroy();
        expect(logs.filter((l) => l.startsWith('warn:') || l.startsWith('error:'))).toEqual([]);
      } finally {
        await server.close({ timeout: 2000 });
      }
    });
  }

  it('bytes arriving in a later read after DISC are ignored; requests in flight are still answered', async () => {
    const logs: string[] = [];
    const server = createServer({ exports: [{ name: '', size: SIZE, flags: { flush: true } }], logger: recordingLogger(logs) });
    const held: Array<{ reply(): void }> = [];
    let gotAll!: () => void;
    const allHeld = new Promise<void>((r) => (gotAll = r));
    server.requests$.subscribe((req) => {
      held.push(req);
      if (held.length === 4) gotAll();
    });
    const sock = path.join(dir, 'held.sock');
    await server.listen({ path: sock });
    try {
      const c = await RawClient.open({ path: sock });
      const ws = writes(4, 1n, 1);
      c.send(Buffer.concat([...ws.map(requestBytes), requestBytes({ type: DISC, offset: 0, length: 0, cookie: 50n })]));
      // The 4 WRITEs are with the application and DISC was read behind them: the server is draining.
      await allHeld;
      await new Promise((r) => setImmediate(r));
      // Garbage, then a well-formed request, in later reads: neither is interpreted.
      c.send(Buffer.from('not a request at all, not even close'));
      c.send(requestBytes({ type: READ, offset: 0, length: 512, cookie: 51n }));
      await new Promise((r) => setTimeout(r, 50));
      for (const r of held) r.reply();
      for (let i = 0; i < 4; i++) expect((await c.readSimpleReply(() => 0)).error).toBe(0);
      await expect(c.readSimpleReply(() => 0)).rejects.toThrow(/closed/);
      c.destroy();
      expect(logs.filter((l) => l.startsWith('warn:') || l.startsWith('error:'))).toEqual([]);
    } finally {
      await server.close({ timeout: 2000 });
    }
  });
});
