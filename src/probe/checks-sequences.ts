/**
 * Option sequences the probe makes up: the options the handshake machine
 * (src/machines/handshake.ts) takes while negotiating — every `opt.*` event
 * it has a transition for, except those that end negotiation (ABORT, GO,
 * EXPORT_NAME) or hand the socket to TLS (STARTTLS) — in random orders, with
 * valid and invalid data, drawn by fast-check from a seed (so a failing
 * sequence can be replayed), each on a fresh connection and ended by a GO
 * and a READ. Whatever a server thinks of an option, it must answer it with
 * a final reply (an error is a reply, not a disconnect) and stay ready for
 * the next; the GO at the end must still work.
 */
import fc from 'fast-check';
import type { AnyStateNode } from 'xstate';
import { handshakeMachine } from '../machines/handshake.js';
import { INFO, OPT } from '../protocol/constants.js';
import { infoGoData, metaContextData } from '../client/index.js';
import { fail, pass, type Check } from './runner.js';
import { opened, type ProbeContext } from './context.js';

/** An option of a sequence: its code, its data, and how it reads in evidence. */
interface Move {
  readonly code: number;
  readonly data: Buffer;
  readonly label: string;
}

/** The `opt.*` events the handshake machine handles, in its own spelling (`opt.setMetaContext`, …). */
export function machineOptionEvents(): string[] {
  const events = new Set<string>();
  const walk = (n: AnyStateNode): void => {
    for (const e of n.transitions.keys()) if (e.startsWith('opt.') && e !== 'opt.*') events.add(e);
    for (const c of Object.values(n.states) as AnyStateNode[]) walk(c);
  };
  walk(handshakeMachine.root);
  return [...events].sort();
}

/** `opt.setMetaContext` → NBD_OPT_SET_META_CONTEXT's code (undefined for `opt.unknown`). */
function codeOf(event: string): number | undefined {
  const snake = event.slice(4).replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase();
  return (OPT as Record<string, number>)[`NBD_OPT_${snake}`];
}

const ENDING = new Set(['opt.abort', 'opt.go', 'opt.exportName', 'opt.starttls']);

function moveArbitrary(exportName: string): fc.Arbitrary<Move> {
  const name = fc.oneof(fc.constant(exportName), fc.constant(exportName), fc.string({ maxLength: 12 }));
  const infos = fc.array(fc.oneof(fc.constantFrom(INFO.NBD_INFO_EXPORT, INFO.NBD_INFO_NAME, INFO.NBD_INFO_DESCRIPTION, INFO.NBD_INFO_BLOCK_SIZE), fc.integer({ min: 4, max: 0xffff })), { maxLength: 4 });
  const queries = fc.array(fc.oneof(fc.constantFrom('base:allocation', 'base:', 'qemu:dirty-bitmap:x', ''), fc.string({ maxLength: 20 })), { maxLength: 3 });
  const junk = fc.uint8Array({ maxLength: 24 }).map((a) => Buffer.from(a));
  const arbs: Array<fc.Arbitrary<Move>> = [];
  for (const event of machineOptionEvents()) {
    if (ENDING.has(event)) continue;
    const code = codeOf(event);
    if (event === 'opt.unknown' || code === undefined) {
      arbs.push(fc.record({ code: fc.integer({ min: 0x1000, max: 0xffff }), data: junk }).map(({ code: c, data }) => ({ code: c, data, label: `unknown 0x${c.toString(16)} (${data.length} bytes)` })));
    } else if (code === OPT.NBD_OPT_INFO) {
      arbs.push(fc.tuple(name, infos).map(([n, i]) => ({ code, data: infoGoData(n, i), label: `INFO ${JSON.stringify(n)} [${i.join(',')}]` })));
    } else if (code === OPT.NBD_OPT_SET_META_CONTEXT || code === OPT.NBD_OPT_LIST_META_CONTEXT) {
      const kind = code === OPT.NBD_OPT_SET_META_CONTEXT ? 'SET' : 'LIST';
      arbs.push(fc.tuple(name, queries).map(([n, q]) => ({ code, data: metaContextData(n, q), label: `${kind}_META_CONTEXT ${JSON.stringify(n)} ${JSON.stringify(q)}` })));
    } else {
      // No data is defined for these; sometimes send some anyway (an error reply is due, not a disconnect).
      const opt = event.slice(4);
      arbs.push(fc.oneof(fc.constant(Buffer.alloc(0)), fc.constant(Buffer.alloc(0)), junk).map((data) => ({ code, data, label: `${opt}${data.length ? ` (${data.length} bytes)` : ''}` })));
    }
  }
  return fc.oneof(...arbs);
}

export const SEQUENCE_RUNS = 12;

export const SEQUENCE_CHECKS: readonly Check<ProbeContext>[] = [
  {
    rule: 'option.errors-not-disconnects',
    title: `${SEQUENCE_RUNS} random option sequences from the handshake machine's options: each answered, then GO works`,
    async run(ctx, signal) {
      const seed = ctx.seed ?? 1;
      const sequences = fc.sample(fc.array(moveArbitrary(ctx.target.exportName), { minLength: 1, maxLength: 8 }), { seed, numRuns: SEQUENCE_RUNS });
      let options = 0;
      // One abort listener for all the sequences' connections (not one per connection).
      let current: { destroy(): void } | undefined;
      signal.addEventListener('abort', () => current?.destroy(), { once: true });
      for (const [i, seq] of sequences.entries()) {
        const where = `sequence ${i + 1} of seed ${seed}: ${seq.map((m) => m.label).join('; ')}`;
        if (signal.aborted) break;
        const c = await opened(ctx);
        current = c;
        try {
          for (const m of seq) {
            let replies;
            try {
              replies = await c.option(m.code, m.data);
            } catch (err) {
              return fail(`${m.label} was not answered: ${(err as Error).message}`, where);
            }
            options++;
            // Sent raw: keep the client's idea of the reply form in step with what the server accepted.
            if (replies.at(-1)?.typeName === 'NBD_REP_ACK') {
              if (m.code === OPT.NBD_OPT_EXTENDED_HEADERS) c.mode = 'extended';
              else if (m.code === OPT.NBD_OPT_STRUCTURED_REPLY && c.mode === 'simple') c.mode = 'structured';
            }
            const dev = replies.flatMap((r) => r.deviations)[0];
            if (dev) return fail(`${m.label}: ${dev.message}`, `${dev.rule}; ${where}`);
          }
          try {
            const go = await c.go(ctx.target.exportName, []);
            if (!go.ok) return fail(`GO after the sequence was answered ${go.replies.at(-1)?.typeName}`, where);
            const read = await c.read(0, Math.min(512, Number(ctx.facts.size)));
            if (read.error !== 0 || read.deviations.length) return fail('a READ after the sequence was not answered cleanly', where);
          } catch (err) {
            return fail(`after the sequence, GO and a READ failed: ${(err as Error).message}`, where);
          }
          await c.disc().catch(() => false);
        } finally {
          c.destroy();
        }
      }
      return pass(`${options} options in ${sequences.length} sequences (seed ${seed}), each answered, GO then READ fine`);
    },
  },
];
