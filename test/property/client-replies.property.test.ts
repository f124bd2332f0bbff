/**
 * Seeded properties of the client library's reply reader (replay a failure
 * with CLIENT_PROPERTY_SEED=<seed printed>):
 *  - any well-formed structured READ reply (the range cut into data and
 *    hole chunks, sent in any order) gives the right bytes and no deviation;
 *  - any stream of server bytes after GO (well-formed frames with random
 *    fields, garbage, an early close) never crashes the client nor leaves a
 *    request hanging: each one resolves or fails with an NbdClientError;
 *  - the same for option replies during the handshake.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { NbdClientError, OPT, REPLY_TYPE } from '../../src/client/index.js';
import { encodeOptionReply } from '../../src/protocol/encoder.js';
import { at, chunk, goWith, scripted, serveUntilGo, simpleReply } from '../unit/client/fake-server.js';

const SEED = Number(process.env.CLIENT_PROPERTY_SEED ?? 20261130);

async function run<T>(name: string, prop: fc.IAsyncPropertyWithHooks<T>, numRuns: number): Promise<void> {
  const details = await fc.check(prop, { numRuns, seed: SEED });
  console.log(`[client property] ${name}: ${details.numRuns} runs, seed ${details.seed}`);
  if (details.failed) throw new Error(fc.defaultReportMessage(details) ?? 'property failed');
}

/** Cut [0, length) into pieces, each data (with its bytes) or a hole. */
const pieces = (length: number) =>
  fc
    .uniqueArray(fc.integer({ min: 1, max: length - 1 }), { maxLength: 6 })
    .chain((cuts) => {
      const edges = [0, ...cuts.sort((a, b) => a - b), length];
      const spans = edges.slice(1).map((end, i) => [edges[i]!, end] as const);
      return fc.tuple(fc.constant(spans), fc.array(fc.boolean(), { minLength: spans.length, maxLength: spans.length }), fc.integer({ min: 0, max: 0xffffffff }));
    });

/** One frame a server could send: right-looking, or not. */
const frame = fc.oneof(
  fc.record({ k: fc.constant('simple' as const), cookie: fc.constantFrom(1n, 2n, 99n), error: fc.constantFrom(0, 5, 22, 1234) }),
  fc.record({
    k: fc.constant('chunk' as const),
    cookie: fc.constantFrom(1n, 2n, 99n),
    flags: fc.integer({ min: 0, max: 3 }),
    type: fc.constantFrom(0, 1, 2, 5, 6, 0x8001, 0x8002, 0x77, 0x8077),
    payload: fc.uint8Array({ maxLength: 40 }),
  }),
  fc.record({ k: fc.constant('garbage' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 24 }) }),
);

describe('client reply reader properties', () => {
  it('a well-formed structured READ reply in any chunk order gives the right bytes and no deviation', async () => {
    const LEN = 4096;
    await run(
      'read reassembly',
      fc.asyncProperty(pieces(LEN), fc.integer({ min: 0, max: 1000 }), async ([spans, isData, salt], shuffle) => {
        const expected = Buffer.alloc(LEN);
        const frames = spans.map(([s, e], i) => {
          if (!isData[i]) return (done: boolean) => chunk(1n, REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_HOLE, at(s, Buffer.from([(e - s) >>> 24, ((e - s) >>> 16) & 255, ((e - s) >>> 8) & 255, (e - s) & 255])), { done });
          const bytes = Buffer.alloc(e - s, (salt + i) % 255 + 1);
          bytes.copy(expected, s);
          return (done: boolean) => chunk(1n, REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_DATA, at(s, bytes), { done });
        });
        // A deterministic shuffle from the drawn number.
        const order = frames.map((f, i) => ({ f, key: (i * 7919 + shuffle) % 1009 })).sort((a, b) => a.key - b.key);
        const { client } = await scripted(async (s) => {
          await serveUntilGo(s);
          await s.request();
          s.write(...order.map((o, i) => o.f(i === order.length - 1)));
        });
        await goWith(client);
        const r = await client.read(0, LEN);
        expect(r.deviations).toEqual([]);
        expect(r.data!.equals(expected)).toBe(true);
        client.destroy();
      }),
      60,
    );
  });

  it('any server bytes after GO: no crash, every request settles (a reply or an NbdClientError)', async () => {
    await run(
      'hostile replies',
      fc.asyncProperty(fc.array(frame, { maxLength: 6 }), fc.boolean(), async (frames, close) => {
        const { client } = await scripted(async (s) => {
          await serveUntilGo(s);
          await s.request();
          await s.request();
          for (const f of frames) {
            if (f.k === 'simple') s.write(simpleReply(f.cookie, f.error));
            else if (f.k === 'chunk') s.write(chunk(f.cookie, f.type, Buffer.from(f.payload), { flags: f.flags }));
            else s.write(Buffer.from(f.bytes));
          }
          if (close) s.end();
        });
        await goWith(client);
        const settled = await Promise.allSettled([client.read(0, 16, { timeoutMs: 300 }), client.flush({ timeoutMs: 300 })]);
        for (const s of settled) {
          if (s.status !== 'rejected') continue;
          expect(s.reason).toBeInstanceOf(NbdClientError);
          expect((s.reason as NbdClientError).code).not.toBe('internal');
        }
        for (const d of client.deviations) expect(d.rule).toMatch(/^(reply|peer)\.[a-z-]+$/);
        client.destroy();
      }),
      80,
    );
  });

  it('any option replies: every option call resolves or fails with an NbdClientError (never `internal`)', async () => {
    const reply = fc.record({
      option: fc.constantFrom(OPT.NBD_OPT_STRUCTURED_REPLY, OPT.NBD_OPT_GO, 3, 9, 77),
      type: fc.constantFrom(1, 2, 3, 4, 0x55, 0x80000001, 0x80000006),
      data: fc.oneof(fc.uint8Array({ maxLength: 30 }), fc.constantFrom(Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 1]), Uint8Array.from([0, 3, 0, 0, 2, 0]))),
    });
    await run(
      'hostile option replies',
      fc.asyncProperty(fc.array(reply, { maxLength: 6 }), async (replies) => {
        // The server closes after its replies (a server that just stops is the timeout's business, tested elsewhere).
        const { client } = await scripted(async (s) => {
          await s.greet();
          await s.option();
          for (const r of replies) s.write(encodeOptionReply(r.option, r.type, Buffer.from(r.data)));
          s.end();
        });
        await client.handshake();
        const outcome = await client.go('', [3]).then(
          () => undefined,
          (e: unknown) => e,
        );
        if (outcome !== undefined) {
          expect(outcome).toBeInstanceOf(NbdClientError);
          expect((outcome as NbdClientError).code).not.toBe('internal');
        }
        client.destroy();
      }),
      80,
    );
  });
});
