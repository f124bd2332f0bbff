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
 *
 * Request sequences likewise: the commands of the transmission phase's rule
 * table (src/machines/request-rules.ts, COMMANDS: what each command needs
 * advertised, whether it addresses the export, whether it writes), in random
 * orders, valid ones and some past the end of the export, writes only inside
 * the scratch region, checked against a model of the scratch region's bytes.
 */
import fc from 'fast-check';
import { handshakeMachine } from '../machines/handshake.js';
import { CMD, FLAG, INFO, OPT, SPEC_ERRNOS } from '../protocol/constants.js';
import { allTransitions } from '../inspect/ids.js';
import { COMMANDS } from '../machines/request-rules.js';
import { infoGoData, metaContextData, NbdClientError, type NbdConnection, type Reply } from '../client/index.js';
import { fail, pass, type Check } from './runner.js';
import { negotiated, opened, type ProbeContext } from './context.js';
import { inSync } from './checks-transmission.js';

/** An option of a sequence: its code, its data, and how it reads in evidence. */
interface Move {
  readonly code: number;
  readonly data: Buffer;
  readonly label: string;
}

/** The `opt.*` events the handshake machine handles, in its own spelling (`opt.setMetaContext`, …). */
export function machineOptionEvents(): string[] {
  const events = new Set(allTransitions(handshakeMachine).map(({ transition }) => transition.eventType as string));
  return [...events].filter((e) => e.startsWith('opt.') && e !== 'opt.*').sort();
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
            const sync = await inSync(c, ctx);
            if (sync) return fail(`a READ after the sequence was not answered cleanly: ${sync}`, where);
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

/** One request of a generated sequence. */
interface RequestMove {
  readonly name: keyof typeof CMD;
  /** Offset relative to the scratch region for writing commands, absolute otherwise. */
  readonly at: number;
  readonly length: number;
  readonly fill: number;
  /** Past the end of the export on purpose: an error is due. */
  readonly outside: boolean;
}

/** The commands a server advertised (COMMANDS' `needs`), addressable, not needing a meta context. */
function servedCommands(flags: number, writable: boolean): Array<keyof typeof CMD> {
  return (Object.keys(COMMANDS) as Array<keyof typeof CMD>).filter((name) => {
    const rule = COMMANDS[name];
    if (!rule || name === 'NBD_CMD_DISC' || rule.needsMetaContext) return false;
    if (rule.needs && !(flags & rule.needs)) return false;
    return writable || !rule.writes;
  });
}

/** The server ended the connection where the spec lets it (a request past the end is the client's violation). */
const ENDED = Symbol('ended');

/**
 * Run one move; returns what is wrong, or null. `model` holds the scratch bytes (-1: unknown after TRIM).
 * `mayClose`: a request past the end was just made or refused; the spec lets a server hard-disconnect
 * over it (instead of answering, or after answering without reading a WRITE's payload), so the
 * connection ending here is ENDED, not a fault.
 */
async function runMove(c: NbdConnection, m: RequestMove, ctx: ProbeContext, model: Int16Array, mayClose: boolean): Promise<string | null | typeof ENDED> {
  const rule = COMMANDS[m.name]!;
  const scratch = ctx.scratch;
  const base = rule.writes && scratch ? scratch.offset : 0n;
  const offset = m.outside ? ctx.facts.size + BigInt(m.at) : rule.unranged ? 0n : base + BigInt(m.at);
  const length = rule.unranged ? 0 : m.length;
  const payload = rule.payload ? Buffer.alloc(length, m.fill) : undefined;
  let r: Reply;
  try {
    r = await c.request({ type: CMD[m.name], offset, length, payload });
  } catch (err) {
    if ((mayClose || m.outside) && err instanceof NbdClientError && err.code === 'closed') return ENDED;
    return `${m.name} got no answer: ${(err as Error).message}`;
  }
  if (r.deviations.length) return `${m.name}: ${r.deviations[0]!.message}`;
  if (r.error !== 0 && !SPEC_ERRNOS.has(r.error)) return `${m.name} answered errno ${r.error}, not one of the spec's`;
  if (m.outside) return r.error === 0 ? `${m.name} past the end of the export succeeded` : null;
  if (r.error !== 0) return `${m.name} at ${offset} (${length} bytes) failed with errno ${r.error}`;
  if (rule.writes && scratch) {
    const v = m.name === 'NBD_CMD_WRITE' ? m.fill : m.name === 'NBD_CMD_WRITE_ZEROES' ? 0 : -1;
    model.fill(v, m.at, m.at + length);
  }
  if (m.name === 'NBD_CMD_READ' && scratch && offset >= scratch.offset && offset + BigInt(length) <= scratch.offset + BigInt(scratch.length)) {
    const at = Number(offset - scratch.offset);
    for (let i = 0; i < length; i++) {
      const want = model[at + i]!;
      if (want >= 0 && r.data![i] !== want) return `READ at ${offset} gave byte ${r.data![i]} at +${i}, the model says ${want}`;
    }
  }
  return null;
}

export const REQUEST_RUNS = 8;

export const REQUEST_SEQUENCE_CHECKS: readonly Check<ProbeContext>[] = [
  {
    rule: 'transmission.error-values',
    title: `${REQUEST_RUNS} random request sequences from the request rule table: answered, spec errnos only, data as written`,
    needsData: true,
    async run(ctx, signal) {
      const seed = ctx.seed ?? 1;
      const writable = ctx.scratch !== null && !(ctx.facts.flags & FLAG.NBD_FLAG_READ_ONLY);
      const names = servedCommands(ctx.facts.flags, writable);
      const span = ctx.scratch ? ctx.scratch.length : Math.min(65536, Number(ctx.facts.size));
      const move: fc.Arbitrary<RequestMove> = fc
        .record({ name: fc.constantFrom(...names), at: fc.nat({ max: span - 1 }), length: fc.integer({ min: 1, max: 4096 }), fill: fc.integer({ min: 1, max: 255 }), outside: fc.oneof({ weight: 9, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }) })
        .map((m) => ({ ...m, length: Math.min(m.length, span - m.at) }));
      const sequences = fc.sample(fc.array(move, { minLength: 1, maxLength: 12 }), { seed, numRuns: REQUEST_RUNS });
      const model = new Int16Array(ctx.scratch?.length ?? 0).fill(-1);
      let requests = 0;
      let disconnects = 0;
      let current: { destroy(): void } | undefined;
      signal.addEventListener('abort', () => current?.destroy(), { once: true });
      for (const [i, seq] of sequences.entries()) {
        if (signal.aborted) break;
        const where = `sequence ${i + 1} of seed ${seed}: ${seq.map((m) => `${m.name.slice(8)}${m.outside ? '(past the end)' : ''} @${m.at}+${m.length}`).join('; ')}`;
        const c = await negotiated(ctx, { structured: ctx.facts.structured });
        current = c;
        try {
          let mayClose = false;
          let ended = false;
          for (const m of seq) {
            const wrong = await runMove(c, m, ctx, model, mayClose);
            requests++;
            // A hard disconnect over a request past the end (transmission.out-of-bounds: the client's violation; transmission.payload-consumed): this sequence ends here.
            if (wrong === ENDED) {
              ended = true;
              disconnects++;
              break;
            }
            if (wrong) return fail(wrong, where);
            mayClose = m.outside;
          }
          if (!ended) await c.disc().catch(() => false);
        } finally {
          c.destroy();
        }
      }
      const cut = disconnects ? `; ${disconnects} ended by the server after a request past the end, as the spec allows` : '';
      return pass(`${requests} requests in ${sequences.length} sequences (seed ${seed}; ${names.map((n) => n.slice(8)).join(', ')})${cut}`);
    },
  },
];
