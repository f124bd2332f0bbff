/**
 * Deterministic state and transition coverage of the handshake machine with
 * xstate's own graph tools (`xstate/graph`).
 *
 * For a few machine inputs (TLS policy, offers, DoS limit) we traverse the
 * machine with a representative event per event type and per guard branch
 * (`getAdjacencyMap` + `getShortestPaths`). For every transition definition
 * of the machine (each guarded branch of each event, plus `always`) we pick a
 * graph edge that selects it, replay "shortest path to the edge's source +
 * the edge's event" on a real actor, and check that the actor ends in the
 * predicted state and really took that transition (from `@xstate.microstep`
 * inspection events, which also report the eventless `always` transitions:
 * one edge per resulting state value reaches those). Finally the union of taken transitions must be every
 * transition of the machine, and the union of visited states every state.
 */
import { describe, expect, it } from 'vitest';
import { createActor, type AnyTransitionDefinition, type SnapshotFrom } from 'xstate';
import { getAdjacencyMap, getShortestPaths, getStateNodes, type AdjacencyMap, type AnyStateNode } from 'xstate/graph';
import { handshakeMachine, type HandshakeInput } from '../../../src/machines/handshake.js';
import type { HandshakeEvent } from '../../../src/machines/types.js';
import { DEFAULT_INPUT, O, infoGoData, metaData, opt } from './support.js';

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
];

/** Inputs whose union reaches every guard: TLS policies, offers on/off, a small DoS limit. */
const INPUTS: Array<[string, HandshakeInput]> = [
  ['optional', { ...DEFAULT_INPUT, tls: 'optional', maxOptions: 6 }],
  ['required', { ...DEFAULT_INPUT, tls: 'required', maxOptions: 3 }],
  ['off, nothing offered', { ...DEFAULT_INPUT, tls: 'off', maxOptions: 3, structuredReplies: false, extendedHeaders: false }],
];

/** The state plus the context that changes; the static config is left out. */
function serializeState(s: Snap): string {
  const { exports: _e, defaultExport: _d, tlsPolicy: _t, maxOptions: _m, offerExtendedHeaders: _x, offerStructuredReplies: _s, ...rest } = s.context;
  return JSON.stringify({ value: s.value, status: s.status, rest });
}
const serializeEvent = (e: HandshakeEvent) => JSON.stringify(e, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));

function transitionKey(t: AnyTransitionDefinition): string {
  const src = t.source as AnyStateNode;
  const always = (src.always ?? []) as AnyTransitionDefinition[];
  const ai = always.indexOf(t);
  if (ai >= 0) return `${src.id} always#${ai}`;
  const list = (src.transitions.get(t.eventType) ?? []) as AnyTransitionDefinition[];
  const i = list.indexOf(t);
  if (i < 0) throw new Error(`transition not found in its source: ${src.id} ${t.eventType}`);
  return `${src.id} ${t.eventType}#${i}`;
}

const ROOT = handshakeMachine.root as AnyStateNode;
const ALL_NODES = [ROOT, ...getStateNodes(ROOT)];
const ALL_STATE_IDS = getStateNodes(ROOT).map((n) => n.id).sort();
const ALL_TRANSITIONS = new Set<string>();
for (const node of ALL_NODES) {
  for (const [, list] of node.transitions) for (const t of list as AnyTransitionDefinition[]) ALL_TRANSITIONS.add(transitionKey(t));
  for (const t of (node.always ?? []) as AnyTransitionDefinition[]) ALL_TRANSITIONS.add(transitionKey(t));
}

interface Replay {
  readonly value: unknown;
  readonly serialized: string;
  readonly taken: string[];
  readonly visited: string[];
}

/** Run events on a real actor, recording every transition taken and every state entered. */
function replay(input: HandshakeInput, events: readonly HandshakeEvent[]): Replay {
  const taken: string[] = [];
  const visited: string[] = [];
  const actor = createActor(handshakeMachine, {
    input,
    inspect: (ev) => {
      if (ev.type !== '@xstate.microstep') return;
      for (const t of (ev as unknown as { _transitions: AnyTransitionDefinition[] })._transitions) {
        taken.push(transitionKey(t));
        visited.push((t.source as AnyStateNode).id);
        for (const target of (t.target ?? []) as AnyStateNode[]) visited.push(target.id);
      }
    },
  });
  const errors: unknown[] = [];
  actor.subscribe({ error: (e) => errors.push(e) });
  actor.start();
  for (const e of events) actor.send(e);
  expect(errors).toEqual([]);
  const s = actor.getSnapshot();
  visited.push(...(s._nodes as AnyStateNode[]).map((n) => n.id));
  return { value: s.value, serialized: serializeState(s), taken, visited };
}

describe('handshake machine: graph coverage with xstate/graph', () => {
  const coveredTransitions = new Set<string>();
  const coveredStates = new Set<string>();
  let pathsReplayed = 0;

  for (const [label, input] of INPUTS) {
    it(`every shortest path replays to its state, and each transition edge replays (${label})`, () => {
      const options = {
        input,
        events: EVENTS,
        serializeState: (s: Snap) => serializeState(s),
        serializeEvent,
        // A finished machine ignores events; don't let the traversal step out of final states.
        filterEvents: (s: Snap) => s.status === 'active',
      };
      const paths = getShortestPaths(handshakeMachine, options);
      expect(paths.length).toBeGreaterThan(10);
      const pathTo = new Map<string, HandshakeEvent[]>();
      for (const p of paths) {
        // Steps: [init, …]; the events that lead to p.state are steps[1..].event.
        const events = p.steps.slice(1).map((s) => s.event);
        const r = replay(input, events);
        expect(r.value, `path ${events.map((e) => e.type).join(' → ')}`).toEqual(p.state.value);
        expect(r.serialized).toBe(serializeState(p.state));
        pathTo.set(serializeState(p.state), events);
        for (const id of r.visited) coveredStates.add(id);
        for (const k of r.taken) coveredTransitions.add(k);
        pathsReplayed++;
      }

      // Edges: for each transition definition and each state value it leads to, pick the first edge
      // (by path length) that selects it. Per resulting value, so that the eventless transitions an
      // edge sets off (choosing the option mode, spending the option budget) are replayed too.
      // (cast: getAdjacencyMap's ActorLogic parameter does not accept a machine with typed emitted events)
      const adjacency = getAdjacencyMap(handshakeMachine as never, options as never) as AdjacencyMap<Snap, HandshakeEvent>;
      const byWeight = Object.entries(adjacency).sort(([a], [b]) => (pathTo.get(a)?.length ?? 1e9) - (pathTo.get(b)?.length ?? 1e9));
      const chosen = new Map<string, { k: string; from: string; event: HandshakeEvent; next: Snap }>();
      for (const [from, { state, transitions }] of byWeight) {
        if (!pathTo.has(from)) continue;
        for (const { event, state: next } of Object.values(transitions) as Array<{ event: HandshakeEvent; state: Snap }>) {
          for (const t of handshakeMachine.getTransitionData(state, event)) {
            const k = transitionKey(t);
            const edge = `${k} ⇒ ${JSON.stringify(next.value)}`;
            if (!chosen.has(edge)) chosen.set(edge, { k, from, event, next });
          }
        }
      }
      expect(chosen.size).toBeGreaterThan(20);
      for (const [edge, { k, from, event, next }] of chosen) {
        const r = replay(input, [...pathTo.get(from)!, event]);
        expect(r.value, edge).toEqual(next.value);
        expect(r.serialized, edge).toBe(serializeState(next));
        expect(r.taken, edge).toContain(k);
        for (const id of r.visited) coveredStates.add(id);
        for (const t of r.taken) coveredTransitions.add(t);
        pathsReplayed++;
      }
    });
  }

  it('the replayed paths cover every state and every transition of the machine', () => {
    expect(pathsReplayed).toBeGreaterThan(0);
    const states = [...coveredStates].filter((id) => id !== ROOT.id).sort();
    expect(states).toEqual(ALL_STATE_IDS);
    const missing = [...ALL_TRANSITIONS].filter((k) => !coveredTransitions.has(k)).sort();
    expect(missing).toEqual([]);
    expect(ALL_TRANSITIONS.size).toBeGreaterThan(60);
    console.log(`graph coverage: ${pathsReplayed} paths replayed, ${coveredStates.size - (coveredStates.has(ROOT.id) ? 1 : 0)}/${ALL_STATE_IDS.length} states, ${coveredTransitions.size}/${ALL_TRANSITIONS.size} transitions`);
  });
});
