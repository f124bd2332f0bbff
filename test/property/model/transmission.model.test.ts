/**
 * Model-based test of the transmission machine: arbitrary negotiated exports
 * (flags, SR/EH, read-only, sizes, minimum block, payload limit) and arbitrary
 * request sequences, DISC at the end. Every request except DISC gets exactly
 * one outcome carrying its cookie; refusals carry the errno the simpler model
 * (./transmission/model.ts, nbdkit's order of checks) predicts and never reach
 * the application; after DISC / shutdown new requests get ESHUTDOWN.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { advertisedFlags } from '../../../src/machines/handshake.js';
import type { ExportDescriptor } from '../../../src/machines/types.js';
import { negotiatedFor, startTransmission } from '../../unit/machines/support.js';
import { requestCommands } from './transmission/commands.js';
import { DiscCommand } from './transmission/ControlCommands.js';
import type { TxModel, TxReal } from './transmission/model.js';
import { RequestCommand } from './transmission/RequestCommand.js';

const setup = fc
  .record({
    // Random transmission flags, read-only one time in four.
    flags: fc.tuple(fc.integer({ min: 0, max: 0x1fff }), fc.nat({ max: 3 })).map(([f, ro]) => (ro === 0 ? f | 2 : f & ~2)),
    sr: fc.boolean(),
    eh: fc.boolean(),
    contexts: fc.boolean(),
    minBlock: fc.constantFrom(1, 1, 512, 4096),
    blocks: fc.oneof(fc.integer({ min: 0, max: 512 }), fc.constant(256)),
    maxPayload: fc.constantFrom(1 << 16, 1 << 20),
  })
  .map((s) => ({ ...s, size: s.blocks * Math.max(s.minBlock, 512) }));

describe('transmission machine: model-based (fc.commands)', () => {
  it('arbitrary request sequences get exactly the outcomes the model predicts', () => {
    // Tally of outcomes over the whole run, so the generators provably reach every class.
    const tally = new Map<string, number>();
    const property = fc.property(setup, requestCommands, (s, cmds) => {
      const exp: ExportDescriptor = { name: 'e', size: s.size, flags: s.flags, blockSizes: { minimum: s.minBlock, preferred: 4096, maximum: s.maxPayload } };
      const sr = s.sr || s.eh;
      const flags = advertisedFlags(exp, sr);
      const t = startTransmission({
        negotiated: negotiatedFor(exp, {
          flags,
          structuredReplies: sr,
          extendedHeaders: s.eh,
          metaContexts: s.contexts ? [{ id: 1, name: 'base:allocation' }] : [],
        }),
        maxPayload: s.maxPayload,
      });
      const model: TxModel = { size: s.size, flags, minBlock: s.minBlock, maxPayload: s.maxPayload, sr, eh: s.eh, contexts: s.contexts, draining: false, nextCookie: 1n, sent: 0 };
      const real: TxReal = { t };
      fc.modelRun(() => ({ model, real }), cmds);
      // DISC at the end, one more request (ESHUTDOWN), then the transport reports idle ⇒ soft close.
      new DiscCommand().run(model, real);
      new RequestCommand(0, 0, { kind: 'abs', offset: 0 }, 0).run(model, real);
      expect(t.send({ type: 'inflight.idle' })).toEqual([expect.objectContaining({ type: 'close', hard: false })]);
      expect(t.actor.getSnapshot().status).toBe('done');
      // Refused requests never reached the application; accepted ones were all valid.
      const delivered = t.emitted.filter((e) => e.type === 'request').length;
      const refused = t.emitted.filter((e) => e.type === 'refuse').length;
      expect(delivered + refused).toBe(model.sent);
      expect(t.errors).toEqual([]);
      for (const e of t.emitted) {
        const k = e.type === 'refuse' ? `refuse:${e.errno}` : e.type;
        tally.set(k, (tally.get(k) ?? 0) + 1);
      }
    });
    const details = fc.check(property, { numRuns: 500, interruptAfterTimeLimit: 8000 });
    if (details.failed) throw new Error(`${fc.defaultReportMessage(details) ?? 'property failed'}\n${String(details.errorInstance)}`);
    console.log(`transmission model: ${details.numRuns} runs${details.interrupted ? ' (time limit hit)' : ''}`);
    expect(details.numRuns).toBeGreaterThanOrEqual(50);
    console.log(`transmission model outcomes: ${JSON.stringify(Object.fromEntries(tally))}`);
    for (const k of ['request', 'refuse:1', 'refuse:22', 'refuse:28', 'refuse:108']) expect(tally.get(k) ?? 0, k).toBeGreaterThan(0);
  });
});
