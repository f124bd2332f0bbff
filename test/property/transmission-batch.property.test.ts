/**
 * The transport hands a burst of pipelined requests to the transmission
 * machine as one `requests` event (docs/design.md: one machine event per
 * burst). That path must decide exactly what the per-request `request`
 * event and its named guards decide: same requests accepted, same errnos
 * for the refused ones, in wire order, and ESHUTDOWN for everything while
 * draining.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { advertisedFlags } from '../../src/machines/handshake.js';
import type { ExportDescriptor, TransmissionEmitted } from '../../src/machines/types.js';
import type { RequestFrame } from '../../src/protocol/frames.js';
import { CMD, ERRNO } from '../../src/protocol/constants.js';
import { negotiatedFor, startTransmission } from '../unit/machines/support.js';
import { REFUSALS, requestGuards, transmissionContext } from '../../src/machines/transmission.js';

const setup = fc.record({
  flags: fc.integer({ min: 0, max: 0x1fff }),
  sr: fc.boolean(),
  eh: fc.boolean(),
  contexts: fc.boolean(),
  minBlock: fc.constantFrom(1, 512, 4096),
  blocks: fc.integer({ min: 0, max: 64 }),
});

const frameArb = (size: number) =>
  fc.record({
    type: fc.oneof(fc.constantFrom(CMD.NBD_CMD_READ, CMD.NBD_CMD_WRITE, CMD.NBD_CMD_FLUSH, CMD.NBD_CMD_TRIM, CMD.NBD_CMD_CACHE, CMD.NBD_CMD_WRITE_ZEROES, CMD.NBD_CMD_BLOCK_STATUS), fc.integer({ min: 8, max: 20 })),
    flags: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0x3f }), fc.integer({ min: 0, max: 0xffff })),
    offset: fc.oneof(fc.integer({ min: 0, max: Math.max(size, 1) }), fc.constantFrom(0, 512, 4096)),
    length: fc.oneof(fc.integer({ min: 0, max: 70000 }), fc.constantFrom(0, 512, 4096)),
    huge: fc.boolean().map((b) => b && Math.random() < 0.05),
    payloadDiscarded: fc.constant(false),
  });

interface Outcome {
  cookie: bigint;
  errno: number;
}

function outcomes(emitted: TransmissionEmitted[]): Outcome[] {
  const out: Outcome[] = [];
  for (const e of emitted) {
    if (e.type === 'request') out.push({ cookie: e.frame.cookie, errno: 0 });
    else if (e.type === 'refuse') out.push({ cookie: e.frame.cookie, errno: e.errno });
    else if (e.type === 'requests') {
      // Accepted and refused lists are each in wire order; merge by cookie order (cookies are ascending here).
      for (const f of e.accepted) out.push({ cookie: f.cookie, errno: 0 });
      for (const r of e.refused) out.push({ cookie: r.frame.cookie, errno: r.errno });
    }
  }
  return out.sort((a, b) => (a.cookie < b.cookie ? -1 : a.cookie > b.cookie ? 1 : 0));
}

describe('transmission machine: a burst event decides what single events decide', () => {
  it('same accepted requests and errnos for arbitrary bursts', () => {
    const details = fc.check(
      fc.property(
        setup.chain((s) => {
          const size = s.blocks * Math.max(s.minBlock, 512);
          return fc.tuple(fc.constant({ ...s, size }), fc.array(frameArb(size), { minLength: 1, maxLength: 24 }));
        }),
        ([s, raw]) => {
          const exp: ExportDescriptor = { name: 'e', size: s.size, flags: s.flags, blockSizes: { minimum: s.minBlock, preferred: 4096, maximum: 1 << 20 } };
          const sr = s.sr || s.eh;
          const input = {
            negotiated: negotiatedFor(exp, {
              flags: advertisedFlags(exp, sr),
              structuredReplies: sr,
              extendedHeaders: s.eh,
              metaContexts: s.contexts ? [{ id: 1, name: 'base:allocation' }] : [],
            }),
            maxPayload: 1 << 16,
          };
          const frames: RequestFrame[] = raw.map((r, i) => ({
            kind: 'request',
            extended: s.eh,
            cookie: BigInt(i + 1),
            flags: r.flags,
            type: r.type,
            offset: r.huge ? Number.MAX_SAFE_INTEGER : r.offset,
            length: r.length,
            huge: r.huge,
            payloadDiscarded: false,
            payload: r.type === CMD.NBD_CMD_WRITE ? Buffer.alloc(Math.min(r.length, 70000)) : undefined,
          }));
          const single = startTransmission(input);
          for (const f of frames) single.send({ type: 'request', frame: f });
          const burst = startTransmission(input);
          burst.send({ type: 'requests', frames });
          expect(outcomes(burst.emitted)).toEqual(outcomes(single.emitted));
          // …and both agree with the named guards evaluated one by one, in table order
          // (no fast path): the first guard that holds gives the errno.
          const ctx = transmissionContext(input);
          const byGuards = frames.map((f) => ({ cookie: f.cookie, errno: REFUSALS.find((r) => requestGuards[r.guard](ctx, f))?.errno ?? 0 }));
          expect(outcomes(burst.emitted)).toEqual(byGuards);
          expect(burst.errors).toEqual([]);
          // While draining (server shutdown), a burst is refused whole with ESHUTDOWN.
          burst.send({ type: 'server.shutdown' });
          const late = burst.send({ type: 'requests', frames });
          expect(outcomes(late)).toEqual(frames.map((f) => ({ cookie: f.cookie, errno: ERRNO.NBD_ESHUTDOWN })));
        },
      ),
      { numRuns: 1500, interruptAfterTimeLimit: 6000 },
    );
    console.log(`burst-vs-single property: ${details.numRuns} runs`);
    expect(details.failed, String(details.counterexample)).toBe(false);
    expect(details.numRuns).toBeGreaterThan(50);
  });
});
