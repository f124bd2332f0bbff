/**
 * Deterministic state and transition coverage of an xstate machine with
 * xstate's own graph tools (`xstate/graph`), shared by graph.test.ts (the
 * handshake machine) and transmission-graph.test.ts.
 *
 * For one machine input, `walk` traverses the machine with the test's
 * representative events (one per event type and per guard branch it can
 * reach from data alone: `getAdjacencyMap` + `getShortestPaths`), replays
 * every shortest path on a real actor and checks that it ends in the
 * predicted state. Then, for every transition definition of the machine
 * (each guarded branch of each event, wildcards included) and every state
 * value it leads to, it picks a graph edge that selects it, replays
 * "shortest path to the edge's source + the edge's event" and checks that
 * the actor ends in the predicted state and really took that transition
 * (from `@xstate.microstep` inspection events, which also report the
 * eventless `always` transitions an edge sets off: picking an edge per
 * resulting state value is what reaches those). `expectFullCoverage` then
 * checks that the union of taken transitions, over every walk, is every
 * transition of the machine, and the union of visited states every state.
 */
import { expect } from 'vitest';
import { createActor, type Actor, type AnyStateMachine, type AnyTransitionDefinition, type EventFromLogic, type InputFrom, type SnapshotFrom } from 'xstate';
import { getAdjacencyMap, getShortestPaths, getStateNodes, type AdjacencyMap, type AnyStateNode } from 'xstate/graph';

/** JSON of an event, bigints (cookies, offsets) as strings. */
export const serializeEvent = (e: unknown): string => JSON.stringify(e, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));

/** `<source id> <event>#<index in the source's list>(<guard>)`, or `<source id> always#<index>`: the guard name only for readability. */
export function transitionKey(t: AnyTransitionDefinition): string {
  const src = t.source as AnyStateNode;
  const always = (src.always ?? []) as AnyTransitionDefinition[];
  const ai = always.indexOf(t);
  if (ai >= 0) return `${src.id} always#${ai}`;
  const list = (src.transitions.get(t.eventType) ?? []) as AnyTransitionDefinition[];
  const i = list.indexOf(t);
  if (i < 0) throw new Error(`transition not found in its source: ${src.id} ${t.eventType}`);
  const guard = typeof t.guard === 'string' ? t.guard : ((t.guard as { type?: string } | undefined)?.type ?? '');
  return `${src.id} ${t.eventType}#${i}${guard ? `(${guard})` : ''}`;
}

export interface Replay {
  readonly value: unknown;
  readonly serialized: string;
  /** Keys (transitionKey) of every transition taken, eventless ones included. */
  readonly taken: string[];
  /** Ids of every state node entered or left on the way. */
  readonly visited: string[];
  /** What the test's `observe` recorded from the actor's emitted events. */
  readonly observed: string[];
}

export interface GraphOptions<M extends AnyStateMachine> {
  readonly machine: M;
  /** The state plus the context that changes (static config left out): equal strings are one graph node. */
  readonly serializeState: (s: SnapshotFrom<M>) => string;
  /** Listen to a fresh actor before it starts, pushing what matters (e.g. refusals) into `into`. */
  readonly observe?: (actor: Actor<M>, into: string[]) => void;
}

export interface WalkExpectations {
  /** At least this many shortest paths (a smaller number means the events no longer reach the states). */
  readonly minPaths: number;
  /** At least this many distinct (transition, resulting state value) edges. */
  readonly minEdges: number;
}

export class GraphCoverage<M extends AnyStateMachine> {
  readonly root: AnyStateNode;
  /** Every state node id but the root's, sorted. */
  readonly stateIds: readonly string[];
  /** Every transition of the machine (transitionKey), eventless ones included. */
  readonly transitions: ReadonlySet<string>;
  readonly coveredStates = new Set<string>();
  readonly coveredTransitions = new Set<string>();
  /** The union of every replay's `observed`. */
  readonly observed = new Set<string>();
  pathsReplayed = 0;

  constructor(private readonly options: GraphOptions<M>) {
    this.root = options.machine.root as AnyStateNode;
    this.stateIds = getStateNodes(this.root)
      .map((n) => n.id)
      .sort();
    const all = new Set<string>();
    for (const node of [this.root, ...getStateNodes(this.root)]) {
      for (const [, list] of node.transitions) for (const t of list as AnyTransitionDefinition[]) all.add(transitionKey(t));
      for (const t of (node.always ?? []) as AnyTransitionDefinition[]) all.add(transitionKey(t));
    }
    this.transitions = all;
  }

  /** Run events on a real actor, recording every transition taken and every state entered (coverage is not counted: see `record`). */
  replay(input: InputFrom<M>, events: readonly EventFromLogic<M>[]): Replay {
    const taken: string[] = [];
    const visited: string[] = [];
    const observed: string[] = [];
    const actor = createActor(this.options.machine, {
      input,
      inspect: (ev) => {
        if (ev.type !== '@xstate.microstep') return;
        for (const t of (ev as unknown as { _transitions: AnyTransitionDefinition[] })._transitions) {
          taken.push(transitionKey(t));
          visited.push((t.source as AnyStateNode).id);
          for (const target of (t.target ?? []) as AnyStateNode[]) visited.push(target.id);
        }
      },
    }) as Actor<M>;
    this.options.observe?.(actor, observed);
    const errors: unknown[] = [];
    actor.subscribe({ error: (e) => errors.push(e) });
    actor.start();
    for (const e of events) actor.send(e);
    expect(errors).toEqual([]);
    const s = actor.getSnapshot() as SnapshotFrom<M>;
    visited.push(...((s as unknown as { _nodes: AnyStateNode[] })._nodes.map((n) => n.id)));
    return { value: (s as { value: unknown }).value, serialized: this.options.serializeState(s), taken, visited, observed };
  }

  /** Count a replay's states, transitions and observations as covered. */
  record(r: Replay): void {
    for (const id of r.visited) this.coveredStates.add(id);
    for (const k of r.taken) this.coveredTransitions.add(k);
    for (const x of r.observed) this.observed.add(x);
    this.pathsReplayed++;
  }

  /** Replay every shortest path and one edge per (transition, resulting state value) for one input. */
  walk(input: InputFrom<M>, events: readonly EventFromLogic<M>[], expectations: WalkExpectations): void {
    const { machine, serializeState } = this.options;
    type Snap = SnapshotFrom<M>;
    type Ev = EventFromLogic<M>;
    const traversal = {
      input,
      events: [...events],
      serializeState,
      serializeEvent,
      // A finished machine ignores events; don't let the traversal step out of final states.
      filterEvents: (s: Snap) => (s as { status: string }).status === 'active',
    };
    // (casts: the graph functions' ActorLogic parameter does not accept a machine with typed emitted events)
    const paths = getShortestPaths(machine as never, traversal as never) as Array<{ state: Snap; steps: Array<{ event: Ev }> }>;
    expect(paths.length).toBeGreaterThanOrEqual(expectations.minPaths);
    const pathTo = new Map<string, Ev[]>();
    for (const p of paths) {
      // Steps: [init, …]; the events that lead to p.state are steps[1..].event.
      const path = p.steps.slice(1).map((s) => s.event);
      const r = this.replay(input, path);
      expect(r.value, `path ${path.map((e) => e.type).join(' → ')}`).toEqual((p.state as { value: unknown }).value);
      expect(r.serialized).toBe(serializeState(p.state));
      pathTo.set(serializeState(p.state), path);
      this.record(r);
    }

    // Edges: for each transition definition and each state value it leads to, the first edge (by path length).
    const adjacency = getAdjacencyMap(machine as never, traversal as never) as AdjacencyMap<Snap, Ev>;
    const byWeight = Object.entries(adjacency).sort(([a], [b]) => (pathTo.get(a)?.length ?? 1e9) - (pathTo.get(b)?.length ?? 1e9));
    const chosen = new Map<string, { key: string; from: string; event: Ev; next: Snap }>();
    for (const [from, { state, transitions }] of byWeight) {
      if (!pathTo.has(from)) continue;
      for (const { event, state: next } of Object.values(transitions) as Array<{ event: Ev; state: Snap }>) {
        for (const t of machine.getTransitionData(state as never, event)) {
          const key = transitionKey(t);
          const edge = `${key} ⇒ ${JSON.stringify((next as { value: unknown }).value)}`;
          if (!chosen.has(edge)) chosen.set(edge, { key, from, event, next });
        }
      }
    }
    expect(chosen.size).toBeGreaterThanOrEqual(expectations.minEdges);
    for (const [edge, { key, from, event, next }] of chosen) {
      const r = this.replay(input, [...pathTo.get(from)!, event]);
      expect(r.value, edge).toEqual((next as { value: unknown }).value);
      expect(r.serialized, edge).toBe(serializeState(next));
      expect(r.taken, edge).toContain(key);
      this.record(r);
    }
  }

  /** Every state and every transition was covered by the walks; returns a one-line summary. */
  expectFullCoverage(minTransitions: number): string {
    expect(this.pathsReplayed).toBeGreaterThan(0);
    const states = [...this.coveredStates].filter((id) => id !== this.root.id).sort();
    expect(states).toEqual(this.stateIds);
    const missing = [...this.transitions].filter((k) => !this.coveredTransitions.has(k)).sort();
    expect(missing).toEqual([]);
    expect(this.transitions.size).toBeGreaterThanOrEqual(minTransitions);
    return `${this.pathsReplayed} paths replayed, ${states.length}/${this.stateIds.length} states, ${this.coveredTransitions.size}/${this.transitions.size} transitions`;
  }
}
