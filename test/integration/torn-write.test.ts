/**
 * A WRITE whose payload is cut off by a disconnect was never acknowledged:
 * it must leave the export exactly as it was, with every kind of export —
 * the memory backend (which used to receive large WRITEs straight into its
 * pages; now it copies them in once complete, or receives WRITEs of whole
 * pages into buffers of their own that its pages point at on commit), the file backend, a user backend with its own
 * writeTargets (received zero-copy into scratch memory, applied on commit),
 * and a requests$ export. And while such a payload is still arriving,
 * another client reading the range must never see part of it.
 *
 * A raw client writes a known pattern, then sends a WRITE header and part
 * of its payload (another pattern), then ends the connection with a FIN
 * (`end()`) or an RST (`resetAndDestroy()`). Three shapes of WRITE: 64 KiB
 * at an unaligned offset that spans a memory-backend block boundary (20,000
 * bytes sent); 256 KiB of whole pages across a block boundary (200,000
 * bytes sent: the first block's buffer filled, the second's partly — the
 * shape of nbdcopy's writes); and 2 MiB of whole 1 MiB blocks (1.5 MiB
 * sent). The memory backend receives the last two without a copy, into
 * buffers its pages point at on commit. A second raw client,
 * connected once the server has closed the first connection, reads the
 * range back.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { filter, firstValueFrom } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { fileBackend, memoryBackend, type Backend, type ExportConfig, type ReadSegment } from '../../src/index.js';
import { memoryWithPlacements, serverPerTest, tmpDir, type Running } from './harness.js';
import { CMD, RawClient } from './raw-client.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 4 * MiB;

/** A cut-off WRITE: `len` bytes at `at`, of which `sent` arrive; the range checked is the WRITE's plus 4 KiB either side. */
interface Shape {
  readonly name: string;
  readonly at: number;
  readonly len: number;
  readonly sent: number;
  /** The memory backend receives this shape zero-copy (whole pages). */
  readonly wholePages: boolean;
}
const SHAPES: readonly Shape[] = [
  { name: '64 KiB across a block boundary', at: MiB - 20 * KiB + 512, len: 64 * KiB, sent: 20_000, wholePages: false },
  { name: '256 KiB of whole pages across a block boundary', at: MiB - 128 * KiB, len: 256 * KiB, sent: 200_000, wholePages: true },
  { name: '2 MiB of whole blocks', at: MiB, len: 2 * MiB, sent: MiB + MiB / 2, wholePages: true },
];
const rangeOf = (sh: Shape) => ({ from: sh.at - 4 * KiB, span: sh.len + 8 * KiB });

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
  /** The export; for a requests$ export the handler to subscribe; for zero-copy WRITEs, where they were placed. */
  make(): Promise<{ config: ExportConfig; serve?: (srv: Running) => void; placements?: () => number[] }>;
  /** Which shapes of WRITE this export receives zero-copy (writeTargets). */
  placed(shape: Shape): boolean;
}

const KINDS: readonly Kind[] = [
  {
    name: 'memory backend',
    make: async () => {
      const { backend, placements } = memoryWithPlacements(SIZE);
      return { config: { name: 'disk', backend }, placements };
    },
    placed: (sh) => sh.wholePages,
  },
  {
    name: 'file backend',
    make: async () => {
      const dir = tmpDir();
      dirs.push(dir);
      return { config: { name: 'disk', backend: await fileBackend({ path: path.join(dir, 'disk.img'), createSize: SIZE }) } };
    },
    placed: () => false,
  },
  {
    name: 'user backend with writeTargets',
    make: async () => {
      const { backend, placements } = userBackendWithTargets();
      return { config: { name: 'disk', backend }, placements };
    },
    placed: () => true,
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
    placed: () => false,
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

/** Which bytes of `got` (read from FROM) differ from `want`, summarised for a readable failure. */
function diff(got: Buffer, want: Buffer, FROM: number): string {
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

describe.each(KINDS.flatMap((kind) => SHAPES.map((shape) => ({ kind, shape, label: `${kind.name}, ${shape.name}` }))))(
  'an incomplete WRITE leaves the export unchanged: $label',
  ({ kind, shape }) => {
  const { at: AT, len: LEN, sent: SENT } = shape;
  const { from: FROM, span: SPAN } = rangeOf(shape);
  it.each(['FIN', 'RST'] as const)(`the WRITE cut off after ${SENT} bytes, then %s`, async (ending) => {
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
    expect(diff(got, original, FROM)).toBe('unchanged');
    // With writeTargets, the cut-off payload really was being received zero-copy.
    if (placements) expect(placements().includes(AT)).toBe(kind.placed(shape));
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
    const cuts = [0, 5_000, SENT >> 1, SENT, LEN];
    await a.write(RawClient.request(CMD.WRITE, AT, LEN, 2n));
    let cookie = 10n;
    for (let i = 0; i < cuts.length - 1; i++) {
      await a.write(payload.subarray(cuts[i], cuts[i + 1]));
      if (i === cuts.length - 2) break;
      for (let k = 0; k < 3; k++) {
        await sleep(20);
        expect(`after ${cuts[i + 1]} bytes: ${diff(await readRange(b, FROM, SPAN, cookie++), original, FROM)}`).toBe(`after ${cuts[i + 1]} bytes: unchanged`);
      }
    }
    expect(await a.readSimpleReply()).toEqual({ error: 0, cookie: 2n });
    const expected = Buffer.from(original);
    payload.copy(expected, AT - FROM);
    expect(diff(await readRange(b, FROM, SPAN, cookie++), expected, FROM)).toBe('unchanged');
    if (placements) expect(placements().includes(AT)).toBe(kind.placed(shape));
    a.destroy();
    b.destroy();
  });
  },
);

describe('the server shutting down in the middle of a WRITE payload', () => {
  it('closes the connection without storing any of the payload that had arrived', async () => {
    const { at: AT, len: LEN, sent: SENT } = SHAPES[0]!;
    const { from: FROM, span: SPAN } = rangeOf(SHAPES[0]!);
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
    expect(diff(got, original, FROM)).toBe('unchanged');
  });
});
