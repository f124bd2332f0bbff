/**
 * Model-based test of the handshake machine (fast-check fc.commands, the
 * fast-check examples/004-stateMachine layout): arbitrary option sequences
 * against a simpler model, then GO / EXPORT_NAME / ABORT at the end.
 *
 * Invariants checked on every option (see ./handshake/model.ts): exactly one
 * final reply (ACK or error), last, echoing the option code; only
 * INFO/SERVER/META_CONTEXT before it; never ERR_TLS_REQD in NOTLS mode or
 * after TLS; the final reply type the model predicts; nothing negotiated
 * survives STARTTLS; GO after an identical INFO reports the same
 * NBD_INFO_EXPORT bytes; the machine never throws.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { TlsPolicy } from '../../../src/machines/types.js';
import { startHandshake } from '../../unit/machines/support.js';
import { optionCommands, terminalCommand } from './handshake/commands.js';
import { GoCommand, InfoCommand } from './handshake/InfoGoCommand.js';
import { MetaContextCommand } from './handshake/MetaContextCommand.js';
import type { HsModel, HsReal } from './handshake/model.js';
import { StartTlsCommand } from './handshake/StartTlsCommand.js';
import { StructuredReplyCommand } from './handshake/StructuredReplyCommand.js';
import { AbortCommand } from './handshake/TerminalCommands.js';

const setup = fc.record({
  policy: fc.constantFrom<TlsPolicy>('off', 'optional', 'required'),
  offerSR: fc.boolean(),
  offerEH: fc.boolean(),
  // Mostly fixed newstyle; sometimes a plain-newstyle client.
  clientFlags: fc.constantFrom(3, 3, 3, 1, 1, 2, 0),
});

describe('handshake machine: model-based (fc.commands)', () => {
  it('arbitrary option sequences agree with the model and keep the reply invariants', () => {
    let runs = 0;
    const property = fc.property(setup, optionCommands, terminalCommand, ({ policy, offerSR, offerEH, clientFlags }, cmds, last) => {
      runs++;
      const d = startHandshake({ tls: policy, structuredReplies: offerSR, extendedHeaders: offerEH, maxOptions: 1000 }, clientFlags);
      expect(d.value()).toBe('options');
      const model: HsModel = {
        policy,
        offerSR,
        offerEH,
        fixed: (clientFlags & 1) !== 0,
        noZeroes: (clientFlags & 2) !== 0,
        tls: false,
        sr: false,
        eh: false,
        meta: null,
        shutdown: false,
        done: false,
        lastInfo: null,
      };
      const real: HsReal = { d };
      fc.modelRun(() => ({ model, real }), cmds);
      if (last.check(model)) last.run(model, real);
      // A terminal GO can fail (unknown export, shutdown…) and leave the phase open: ABORT always ends it.
      if (!model.done) {
        expect(d.value()).toBe('options');
        new AbortCommand().run(model, real);
      }
      expect(d.errors).toEqual([]);
      expect(d.actor.getSnapshot().status).toBe('done');
    });
    const details = fc.check(property, {
      numRuns: 500,
      interruptAfterTimeLimit: 8000,
    });
    if (details.failed) throw new Error(`${fc.defaultReportMessage(details) ?? 'property failed'}\n${String(details.errorInstance)}`);
    console.log(`handshake model: ${details.numRuns} runs${details.interrupted ? ' (time limit hit)' : ''}`);
    expect(details.numRuns).toBeGreaterThanOrEqual(50);
    expect(runs).toBeGreaterThanOrEqual(details.numRuns);
  });

  it('tls.starttls-resets: pinned sequence: SR + SET_META_CONTEXT, STARTTLS, then GO has neither', () => {
    const d = startHandshake({ tls: 'optional' }, 3);
    const model: HsModel = {
      policy: 'optional',
      offerSR: true,
      offerEH: true,
      fixed: true,
      noZeroes: true,
      tls: false,
      sr: false,
      eh: false,
      meta: null,
      shutdown: false,
      done: false,
      lastInfo: null,
    };
    const cmds = [
      new StructuredReplyCommand(false),
      new MetaContextCommand(true, 'disk', ['base:allocation'], 'none'),
      new StartTlsCommand(false),
      new InfoCommand('', [3, 1], 'none'),
      new GoCommand('disk', [], 'none', true),
    ];
    fc.modelRun(() => ({ model, real: { d } }), cmds);
    expect(model.done).toBe(true);
  });
});
