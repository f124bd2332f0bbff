/**
 * The transmission machine validates requests with one compiled table (the
 * context's `check`), called by one action, `validate`, for a single
 * `request` event and for a burst (`requests`, docs/design.md: one machine
 * event per burst). Here both
 * events are checked against an independent model of the spec's server
 * rules, written out below from docs/rules.md in nbdkit's order with its
 * own numbers: same requests accepted, and for each refused one the same
 * rule ID (`code`), errno and message prefix, in wire order; and ESHUTDOWN
 * for everything while draining.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { advertisedFlags } from '../../src/machines/handshake.js';
import type { ExportDescriptor, TransmissionEmitted } from '../../src/machines/types.js';
import type { RequestFrame } from '../../src/protocol/frames.js';
import { negotiatedFor, startTransmission } from '../unit/machines/support.js';

// Numbers written out on purpose (not imported from src): the model must not share the table it checks.
const C = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;
const F = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16, PAYLOAD_LEN: 32 } as const;
const T = { READ_ONLY: 2, SEND_FLUSH: 4, SEND_FUA: 8, SEND_TRIM: 32, SEND_WRITE_ZEROES: 64, SEND_DF: 128, SEND_CACHE: 1024, SEND_FAST_ZERO: 2048 } as const;
const EPERM = 1;
const EINVAL = 22;
const ENOSPC = 28;
const ESHUTDOWN = 108;

interface Export {
  size: number;
  flags: number;
  minBlock: number;
  maxPayload: number;
  structured: boolean;
  extended: boolean;
  contexts: boolean;
}

/** The model: the rule ID and errno of the first rule a request breaks, or null. */
function model(x: Export, f: RequestFrame): { code: string; errno: number } | null {
  const t = f.type;
  const no = (code: string, errno = EINVAL) => ({ code: `transmission.${code}`, errno });
  const past = f.huge || f.offset + f.length > x.size;
  const ranged = t === C.READ || t === C.WRITE || t === C.TRIM || t === C.CACHE || t === C.WRITE_ZEROES || t === C.BLOCK_STATUS;
  if ((t === C.WRITE || t === C.TRIM || t === C.WRITE_ZEROES) && x.flags & T.READ_ONLY) return no('write-read-only', EPERM);
  if ((t === C.WRITE || t === C.WRITE_ZEROES) && past) return no('write-out-of-bounds', ENOSPC);
  if (t > C.BLOCK_STATUS) return no('unknown-command');
  if (f.payloadDiscarded) return no('payload-too-large');
  if (f.payload !== undefined && t !== C.WRITE) return no('payload-unexpected');
  if (f.flags & ~(F.FUA | F.NO_HOLE | F.DF | F.REQ_ONE | F.FAST_ZERO | (x.extended ? F.PAYLOAD_LEN : 0))) return no('unknown-flag');
  if (
    (f.flags & (F.NO_HOLE | F.FAST_ZERO) && t !== C.WRITE_ZEROES) ||
    (f.flags & F.DF && t !== C.READ) ||
    (f.flags & F.REQ_ONE && t !== C.BLOCK_STATUS)
  )
    return no('flag-not-for-command');
  if (
    (f.flags & F.FUA && !(x.flags & T.SEND_FUA)) ||
    (f.flags & F.DF && !(x.flags & T.SEND_DF)) ||
    (f.flags & F.FAST_ZERO && !(x.flags & T.SEND_FAST_ZERO))
  )
    return no('flag-not-advertised');
  if (
    (t === C.FLUSH && !(x.flags & T.SEND_FLUSH)) ||
    (t === C.TRIM && !(x.flags & T.SEND_TRIM)) ||
    (t === C.WRITE_ZEROES && !(x.flags & T.SEND_WRITE_ZEROES)) ||
    (t === C.CACHE && !(x.flags & T.SEND_CACHE))
  )
    return no('command-not-advertised');
  if (t === C.BLOCK_STATUS && (!x.structured || !x.contexts)) return no('block-status-needs-context');
  if (t === C.FLUSH && (f.offset !== 0 || f.length !== 0)) return no('flush-with-range');
  if (ranged && past) return no('out-of-bounds');
  if (ranged && x.minBlock > 1 && (f.offset % x.minBlock !== 0 || f.length % x.minBlock !== 0)) return no('misaligned-request');
  if (t === C.READ && f.length > x.maxPayload) return no('read-too-large');
  if (t === C.BLOCK_STATUS && f.length === 0) return no('block-status-zero-length');
  return null;
}

const setup = fc.record({
  flags: fc.integer({ min: 0, max: 0x1fff }),
  advertised: fc.boolean(),
  sr: fc.boolean(),
  eh: fc.boolean(),
  contexts: fc.boolean(),
  minBlock: fc.constantFrom(1, 512, 4096),
  blocks: fc.integer({ min: 0, max: 64 }),
});

const rare = (oneIn: number) => fc.integer({ min: 1, max: oneIn }).map((n) => n === 1);

const frameArb = (size: number) =>
  fc.record({
    type: fc.oneof(fc.constantFrom(C.READ, C.WRITE, C.FLUSH, C.TRIM, C.CACHE, C.WRITE_ZEROES, C.BLOCK_STATUS), fc.integer({ min: 8, max: 20 })),
    flags: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0x3f }), fc.integer({ min: 0, max: 0xffff })),
    offset: fc.oneof(fc.integer({ min: 0, max: Math.max(size, 1) }), fc.constantFrom(0, 512, 4096)),
    length: fc.oneof(fc.integer({ min: 0, max: 70000 }), fc.constantFrom(0, 512, 4096)),
    huge: rare(20),
    payloadDiscarded: rare(30),
    strayPayload: rare(20),
  });

interface Outcome {
  cookie: bigint;
  code: string | null;
  errno: number;
}

function outcomes(emitted: TransmissionEmitted[]): Outcome[] {
  const out: Outcome[] = [];
  const refusal = (cookie: bigint, code: string, errno: number, message: string) => {
    // The message starts with the rule ID.
    expect(message.startsWith(`${code}: `), message).toBe(true);
    out.push({ cookie, code, errno });
  };
  for (const e of emitted) {
    if (e.type === 'request') out.push({ cookie: e.frame.cookie, code: null, errno: 0 });
    else if (e.type === 'refuse') refusal(e.frame.cookie, e.code, e.errno, e.message);
    else if (e.type === 'requests') {
      // Accepted and refused lists are each in wire order; merge by cookie order (cookies are ascending here).
      for (const f of e.accepted) out.push({ cookie: f.cookie, code: null, errno: 0 });
      for (const r of e.refused) refusal(r.frame.cookie, r.code, r.errno, r.message);
    }
  }
  return out.sort((a, b) => (a.cookie < b.cookie ? -1 : a.cookie > b.cookie ? 1 : 0));
}

describe('transmission machine: single requests and bursts decide what the model of the rules decides', () => {
  it('same accepted requests, codes and errnos for arbitrary bursts', () => {
    const details = fc.check(
      fc.property(
        setup.chain((s) => {
          const size = s.blocks * Math.max(s.minBlock, 512);
          return fc.tuple(fc.constant({ ...s, size }), fc.array(frameArb(size), { minLength: 1, maxLength: 24 }));
        }),
        ([s, raw]) => {
          const exp: ExportDescriptor = { name: 'e', size: s.size, flags: s.flags, blockSizes: { minimum: s.minBlock, preferred: 4096, maximum: 1 << 20 } };
          const sr = s.sr || s.eh;
          // Either what the handshake would advertise for the export, or arbitrary transmission flags.
          const flags = s.advertised ? advertisedFlags(exp, sr) : s.flags | 1;
          const input = {
            negotiated: negotiatedFor(exp, {
              flags,
              structuredReplies: s.sr,
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
            payloadDiscarded: r.payloadDiscarded,
            payload: r.type === C.WRITE ? Buffer.alloc(Math.min(r.length, 70000)) : r.strayPayload ? Buffer.alloc(8) : undefined,
          }));
          const x: Export = { size: s.size, flags, minBlock: s.minBlock, maxPayload: 1 << 16, structured: sr, extended: s.eh, contexts: s.contexts };
          const expected = frames.map((f) => {
            const m = model(x, f);
            return { cookie: f.cookie, code: m?.code ?? null, errno: m?.errno ?? 0 };
          });
          const single = startTransmission(input);
          for (const f of frames) single.send({ type: 'request', frame: f });
          expect(outcomes(single.emitted)).toEqual(expected);
          const burst = startTransmission(input);
          burst.send({ type: 'requests', frames });
          expect(outcomes(burst.emitted)).toEqual(expected);
          expect(single.errors).toEqual([]);
          expect(burst.errors).toEqual([]);
          // The zero-copy gate asks the same compiled check.
          expect(frames.map((f) => ({ cookie: f.cookie, code: burst.actor.getSnapshot().context.check(f)?.code ?? null }))).toEqual(
            expected.map((e) => ({ cookie: e.cookie, code: e.code })),
          );
          // While draining (server shutdown), a burst is refused whole with ESHUTDOWN.
          burst.send({ type: 'server.shutdown' });
          const late = burst.send({ type: 'requests', frames });
          expect(outcomes(late)).toEqual(frames.map((f) => ({ cookie: f.cookie, code: 'transmission.shutdown-drains', errno: ESHUTDOWN })));
        },
      ),
      { numRuns: 1500, interruptAfterTimeLimit: 6000 },
    );
    console.log(`single/burst-vs-model property: ${details.numRuns} runs, seed ${details.seed}`);
    if (details.failed) throw new Error(fc.defaultReportMessage(details) ?? 'property failed');
    expect(details.numRuns).toBeGreaterThan(50);
  });
});
