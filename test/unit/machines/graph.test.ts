/**
 * Deterministic state and transition coverage of the handshake machine with
 * xstate's own graph tools (`xstate/graph`); the harness is graph-support.ts,
 * shared with transmission-graph.test.ts.
 *
 * For a few machine inputs (TLS policy, offers, DoS limit) we traverse the
 * machine with a representative event per event type and per guard branch,
 * replay every shortest path and, for every transition definition (each
 * guarded branch of each event, each mode's `opt.*` wildcard, the greeting's
 * eventless transition, and the `options.spent` event the machine raises
 * when the option budget is spent) and each state value it leads to, an
 * edge that selects it, on a real actor. Finally the union of taken
 * transitions must be every transition of the machine, and the union of
 * visited states every state (each mode of `options` among them: exhausted,
 * shuttingDown, unfixed, awaitingTls, open).
 */
import { describe, expect, it } from 'vitest';
import type { SnapshotFrom } from 'xstate';
import { handshakeMachine, type HandshakeInput } from '../../../src/machines/handshake.js';
import type { HandshakeEvent } from '../../../src/machines/types.js';
import { GraphCoverage, type WalkExpectations } from './graph-support.js';
import { DEFAULT_INPUT, EXPORTS, O, infoGoData, metaData, opt } from './support.js';

type Snap = SnapshotFrom<typeof handshakeMachine>;

const tooBig = { maxOptionLength: 16 };
const big = 'x'.repeat(64);

function syntheticTooBig(o: 'list' | 'structuredReply' | 'extendedHeaders' | 'unknown'): HandshakeEvent {
  const code = { list: O.LIST, structuredReply: O.STRUCTURED_REPLY, extendedHeaders: O.EXTENDED_HEADERS, unknown: 0x4343 }[o];
  const problem = { reply: 'NBD_REP_ERR_TOO_BIG', message: 'synthetic' } as const;
  const frame = o === 'unknown' ? { kind: 'option', code, length: 1 << 20, opt: o, problem } : { kind: 'option', code, length: 1 << 20, opt: o, hasData: true, problem };
  return { type: `opt.${o}`, frame } as HandshakeEvent;
}

/** One representative event per event type and per guard branch we can reach from data alone. */
const EVENTS: HandshakeEvent[] = [
  { type: 'wire.clientFlags', flags: 3 },
  { type: 'wire.clientFlags', flags: 0 },
  { type: 'wire.clientFlags', flags: 4 },
  opt(O.LIST),
  opt(O.LIST, Buffer.from('x')),
  opt(O.ABORT),
  opt(O.STARTTLS),
  opt(O.STARTTLS, Buffer.from('x')),
  opt(O.STRUCTURED_REPLY),
  opt(O.STRUCTURED_REPLY, Buffer.from('x')),
  opt(O.EXTENDED_HEADERS),
  opt(O.EXTENDED_HEADERS, Buffer.from('x')),
  opt(O.INFO, infoGoData('disk', [1, 3])),
  opt(O.INFO, Buffer.alloc(3)),
  opt(O.INFO, infoGoData('nope')),
  opt(O.INFO, infoGoData('secret')),
  opt(O.INFO, infoGoData(big), tooBig),
  opt(O.GO, infoGoData('disk')),
  opt(O.GO, Buffer.alloc(3)),
  opt(O.GO, infoGoData('nope')),
  opt(O.GO, infoGoData('secret')),
  opt(O.GO, infoGoData(big), tooBig),
  opt(O.EXPORT_NAME, Buffer.from('disk')),
  opt(O.EXPORT_NAME, Buffer.from('nope')),
  opt(O.EXPORT_NAME, Buffer.from('secret')),
  opt(O.EXPORT_NAME, Buffer.from('a\0b')),
  opt(O.EXPORT_NAME, Buffer.from(big), tooBig),
  opt(O.LIST_META_CONTEXT, metaData('disk', ['base:'])),
  opt(O.LIST_META_CONTEXT, Buffer.alloc(3)),
  opt(O.LIST_META_CONTEXT, metaData('nope', [])),
  opt(O.LIST_META_CONTEXT, metaData('secret', [])),
  opt(O.SET_META_CONTEXT, metaData('disk', ['base:allocation'])),
  opt(O.SET_META_CONTEXT, Buffer.alloc(3)),
  opt(O.SET_META_CONTEXT, metaData('nope', [])),
  opt(O.SET_META_CONTEXT, metaData('secret', [])),
  opt(0x4242, Buffer.from('data')),
  opt(O.LIST_META_CONTEXT, metaData('disk', [big]), tooBig),
  opt(O.SET_META_CONTEXT, metaData('disk', [big]), tooBig),
  // The decoder skips data-less and unknown options unbuffered and never marks
  // them TOO_BIG, but OptionFrame allows a `problem` on them and the machine has
  // a branch for it: cover that branch with synthetic frames.
  ...(['list', 'structuredReply', 'extendedHeaders'] as const).map((o) => syntheticTooBig(o)),
  syntheticTooBig('unknown'),
  { type: 'tls.established' },
  { type: 'tls.failed', message: 'handshake failed' },
  { type: 'socket.closed' },
  { type: 'server.shutdown' },
  { type: 'wire.fatal', message: 'bad magic' },
  { type: 'timer.handshake', ms: 10_000 },
  // Names and lists the server resolves per connection (resolveExports / resolveList), and its answers.
  opt(O.INFO, infoGoData('dyn')),
  opt(O.GO, infoGoData('dyn')),
  opt(O.EXPORT_NAME, Buffer.from('dyn')),
  opt(O.LIST_META_CONTEXT, metaData('dyn', [])),
  opt(O.SET_META_CONTEXT, metaData('dyn', ['base:allocation'])),
  { type: 'resolve.export', export: { ...EXPORTS[0]!, name: 'dyn' } },
  { type: 'resolve.export', export: null },
  { type: 'resolve.list', exports: [{ name: 'dyn', description: 'made for this connection' }] },
  { type: 'resolve.failed', message: 'the hook threw' },
];

/** Inputs whose union reaches every guard: TLS policies, offers on/off, a small DoS limit, none at all. */
const INPUTS: Array<[string, HandshakeInput, WalkExpectations]> = [
  ['optional', { ...DEFAULT_INPUT, tls: 'optional', maxOptions: 6 }, { minPaths: 11, minEdges: 21 }],
  ['required', { ...DEFAULT_INPUT, tls: 'required', maxOptions: 3 }, { minPaths: 11, minEdges: 21 }],
  ['off, nothing offered', { ...DEFAULT_INPUT, tls: 'off', maxOptions: 3, structuredReplies: false, extendedHeaders: false }, { minPaths: 11, minEdges: 21 }],
  // No option allowed at all (the server's limits never go below 1; the machine's input can): exhausted from the start.
  ['no option allowed', { ...DEFAULT_INPUT, maxOptions: 0 }, { minPaths: 4, minEdges: 4 }],
  // Exports and the list resolved per connection: the `resolving` state and the guards that ask for it.
  ['resolving', { ...DEFAULT_INPUT, tls: 'off', maxOptions: 3, resolveExports: true, resolveList: true }, { minPaths: 11, minEdges: 21 }],
];

/** The state plus the context that changes; the server's settings (the same for every state) are left out. */
function serializeState(s: Snap): string {
  const { server: _server, ...rest } = s.context;
  return JSON.stringify({ value: s.value, status: s.status, rest });
}

describe('handshake machine: graph coverage with xstate/graph', () => {
  const graph = new GraphCoverage({ machine: handshakeMachine, serializeState });

  for (const [label, input, expectations] of INPUTS) {
    it(`every shortest path replays to its state, and each transition edge replays (${label})`, () => {
      graph.walk(input, EVENTS, expectations);
    });
  }

  // An option answered after `resolving` is raised again inside the answer's step, so states reached
  // through different options coincide and the shortest paths replay only one of them: replay each.
  it('each option that waits for the server is answered after the server fails (replays)', () => {
    const input: HandshakeInput = { ...DEFAULT_INPUT, resolveExports: true, resolveList: true };
    const failed: HandshakeEvent = { type: 'resolve.failed', message: 'the hook threw' };
    const flags: HandshakeEvent = { type: 'wire.clientFlags', flags: 3 };
    for (const o of [opt(O.INFO, infoGoData('dyn')), opt(O.GO, infoGoData('dyn')), opt(O.LIST_META_CONTEXT, metaData('dyn', [])), opt(O.LIST)]) {
      const r = graph.replay(input, [flags, o, failed]);
      expect(r.value).toEqual({ options: 'open' });
      graph.record(r);
    }
    const r = graph.replay(input, [flags, opt(O.STRUCTURED_REPLY), opt(O.SET_META_CONTEXT, metaData('dyn', ['base:allocation'])), failed]);
    expect(r.value).toEqual({ options: 'open' });
    graph.record(r);
  });

  it('the replayed paths cover every state and every transition of the machine', () => {
    const summary = graph.expectFullCoverage(100);
    // The option modes are states of the machine.
    expect(graph.stateIds).toEqual(expect.arrayContaining(['handshake.options.open', 'handshake.options.unfixed', 'handshake.options.awaitingTls', 'handshake.options.shuttingDown', 'handshake.options.exhausted', 'handshake.resolving']));
    console.log(`graph coverage: ${summary}`);
  });
});
