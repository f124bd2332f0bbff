/**
 * A WRITE whose payload is cut off by a disconnect was never acknowledged:
 * it must leave the export exactly as it was, with every kind of export —
 * the memory backend (which used to receive large WRITEs straight into its
 * pages through Backend.writeTargets, and now stores them by copy with
 * writev once complete), the file backend, a user backend with its own
 * writeTargets (received zero-copy into scratch memory, applied on commit),
 * and a requests$ export. And while such a payload is still arriving,
 * another client reading the range must never see part of it.
 *
 * A raw client writes a known pattern, then sends a 64 KiB WRITE header and
 * 20,000 bytes of another pattern (at an unaligned offset that spans a
 * memory-backend block boundary), then ends the connection with a FIN
 * (`end()`) or an RST (`resetAndDestroy()`). A second raw client, connected
 * once the server has closed the first connection, reads the range back.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { filter, firstValueFrom } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { fileBackend, memoryBackend, type Backend, type ExportConfig, type ReadSegment } from '../../src/index.js';
import { serverPerTest, tmpDir, type Running } from './harness.js';
import { CMD, RawClient } from './raw-client.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 4 * MiB;
/** The cut-off WRITE: 64 KiB at an unaligned offset across the 1 MiB block boundary, 20,000 bytes sent. */
const AT = MiB - 20 * KiB + 512;
const LEN = 64 * KiB;
const SENT = 20_000;
/** The range checked: the WRITE's range plus 4 KiB either side. */
const FROM = AT - 4 * KiB;
const SPAN = LEN + 8 * KiB;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const servers = serverPerTest();
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

/** A user backend over one Buffer whose zero-copy WRITEs go to scratch memory, copied in on commit. */
function userBackendWithTargets(): { backend: Backend; placements: () => number[] } {
  const store = Buffer.alloc(SIZE);
  const placements: number[] = [];
  const backend: Backend = {
    size: SIZE,
    read: (o, l) => Buffer.from(store.subarray(o, o + l)),
    write: (o, d) => void d.copy(store, o),
    writeTargets: (o, l) => {
      placements.push(o);
      const scratch = Buffer.allocUnsafe(l);
      return { targets: [scratch], commit: () => void scratch.copy(store, o) };
    },
  };
  return { backend, placements: () => placements };
}

interface Kind {
  readonly name: string;
  /** The export; for a requests$ export the handler to subscribe; for zero-copy WRITEs, how many were placed. */
  make(): Promise<{ config: ExportConfig; serve?: (srv: Running) => void; placements?: () => number[] }>;
}

const KINDS: readonly Kind[] = [
  { name: 'memory backend', make: async () => ({ config: { name: 'disk', backend: memoryBackend({ size: SIZE }) } }) },
  {
    name: 'file backend',
    make: async () => {
      const dir = tmpDir();
      dirs.push(dir);
      return { config: { name: 'disk', backend: await fileBackend({ path: path.join(dir, 'disk.img'), createSize: SIZE }) } };
    },
  },
  {
    name: 'user backend with writeTargets',
    make: async () => {
      const { backend, placements } = userBackendWithTargets();
      return { config: { name: 'disk', backend }, placements };
    },
  },
  {
    name: 'requests$ export',
    make: async () => {
      const store = Buffer.alloc(SIZE);
      return {
        config: { name: 'disk', size: SIZE, flags: { write: true } },
        serve: (srv) =>
          servers.track(
            srv.server.requests$.subscribe((req) => {
              if (req.type === 'read') return req.reply(Buffer.from(store.subarray(req.offset, req.offset + req.length)));
              if (req.type === 'write') req.data!.copy(store, req.offset);
              req.reply();
            }),
          ),
      };
    },
  },
];

async function start(kind: Kind): Promise<{ srv: Running; tcp: { port: number; host: string }; placements?: () => number[] }> {
  const { config, serve, placements } = await kind.make();
  const srv = await servers.serve({ exports: [config] });
  serve?.(srv);
  // TCP as well: an RST needs a TCP socket.
  const [l] = await srv.server.listen({ port: 0, host: '127.0.0.1' });
  return { srv, tcp: { port: l!.address.port!, host: '127.0.0.1' }, placements };
}

/** Connect and negotiate; also returns the server's id for the connection. */
async function connect(srv: Running, tcp: { port: number; host: string }): Promise<{ c: RawClient; id: number }> {
  const opened = firstValueFrom(srv.server.connections$.pipe(filter((e) => e.type === 'opened')));
  const c = await RawClient.connect(tcp);
  const id = (await opened).connection.id;
  await c.handshake('disk');
  return { c, id };
}

async function writeRange(c: RawClient, offset: number, data: Buffer, cookie: bigint): Promise<void> {
  await c.write(Buffer.concat([RawClient.request(CMD.WRITE, offset, data.length, cookie), data]));
  expect(await c.readSimpleReply()).toEqual({ error: 0, cookie });
}

async function readRange(c: RawClient, offset: number, length: number, cookie: bigint): Promise<Buffer> {
  await c.write(RawClient.request(CMD.READ, offset, length, cookie));
  expect(await c.readSimpleReply()).toEqual({ error: 0, cookie });
  return Buffer.from(await c.read(length));
}

/** Which bytes of `got` differ from `want`, summarised for a readable failure. */
function diff(got: Buffer, want: Buffer): string {
  let first = -1;
  let n = 0;
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) {
      if (first < 0) first = i;
      n++;
    }
  }
  return n === 0 ? 'unchanged' : `${n} bytes changed, the first at offset ${FROM + first}`;
}

describe.each(KINDS)('an incomplete WRITE leaves the export unchanged: $name', (kind) => {
  it.each(['FIN', 'RST'] as const)('64 KiB WRITE cut off after 20,000 bytes, then %s', async (ending) => {
    const { srv, tcp, placements } = await start(kind);
    const original = crypto.randomBytes(SPAN);
    const payload = crypto.randomBytes(LEN);
    const { c: a, id } = await connect(srv, tcp);
    await writeRange(a, FROM, original, 1n);
    const closed = firstValueFrom(srv.server.connections$.pipe(filter((e) => e.type === 'closed' && e.connection.id === id)));
    await a.write(Buffer.concat([RawClient.request(CMD.WRITE, AT, LEN, 2n), payload.subarray(0, SENT)]));
    if (ending === 'FIN') a.socket.end();
    else {
      // Give the server the chance to read what was sent first: an RST can make the kernel drop unread bytes.
      await sleep(100);
      a.socket.resetAndDestroy();
    }
    await closed;
    const b = (await connect(srv, tcp)).c;
    const got = await readRange(b, FROM, SPAN, 3n);
    expect(diff(got, original)).toBe('unchanged');
    // With writeTargets, the cut-off payload really was being received zero-copy.
    if (placements) expect(placements()).toContain(AT);
    b.destroy();
    // The server logged the cut-off frame once, as a warning, and kept serving.
    expect(srv.logs.filter((l) => l.startsWith('warn:') && l.includes(`connection ${id} `))).toEqual([
      expect.stringMatching(new RegExp(`in the middle of a frame \\(NBD_CMD_WRITE at offset ${AT} with ${SENT} of ${LEN} payload bytes\\)`)),
    ]);
  });

  it('a reader never sees part of a payload still arriving; the completed WRITE is then read back whole', async () => {
    const { srv, tcp, placements } = await start(kind);
    const original = crypto.randomBytes(SPAN);
    const payload = crypto.randomBytes(LEN);
    const { c: a } = await connect(srv, tcp);
    const { c: b } = await connect(srv, tcp);
    await writeRange(a, FROM, original, 1n);
    // The payload in four pieces; between them the other client reads the range, several times.
    const cuts = [0, 5_000, 10_000, SENT, LEN];
    await a.write(RawClient.request(CMD.WRITE, AT, LEN, 2n));
    let cookie = 10n;
    for (let i = 0; i < cuts.length - 1; i++) {
      await a.write(payload.subarray(cuts[i], cuts[i + 1]));
      if (i === cuts.length - 2) break;
      for (let k = 0; k < 3; k++) {
        await sleep(20);
        expect(`after ${cuts[i + 1]} bytes: ${diff(await readRange(b, FROM, SPAN, cookie++), original)}`).toBe(`after ${cuts[i + 1]} bytes: unchanged`);
      }
    }
    expect(await a.readSimpleReply()).toEqual({ error: 0, cookie: 2n });
    const expected = Buffer.from(original);
    payload.copy(expected, AT - FROM);
    expect(diff(await readRange(b, FROM, SPAN, cookie++), expected)).toBe('unchanged');
    if (placements) expect(placements()).toContain(AT);
    a.destroy();
    b.destroy();
  });
});

describe('the server shutting down in the middle of a WRITE payload', () => {
  it('closes the connection without storing any of the payload that had arrived', async () => {
    const m = memoryBackend({ size: SIZE });
    const srv = await servers.serve({ exports: [{ name: 'disk', backend: m }] });
    const c = await RawClient.connect({ path: srv.socket });
    await c.handshake('disk');
    const original = crypto.randomBytes(SPAN);
    await writeRange(c, FROM, original, 1n);
    await c.write(Buffer.concat([RawClient.request(CMD.WRITE, AT, LEN, 2n), crypto.randomBytes(SENT)]));
    // Once the server has read what was sent (without the fix it is in storage by then), shut down.
    await sleep(50);
    await srv.server.close({ timeout: 2000 });
    await c.closedP;
    const segments = m.read(FROM, SPAN) as Buffer | readonly ReadSegment[];
    const got = Buffer.isBuffer(segments) ? segments : Buffer.concat(segments.map((s) => ('data' in s ? s.data : Buffer.alloc(s.hole))));
    expect(diff(got, original)).toBe('unchanged');
  });
});
