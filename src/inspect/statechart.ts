/**
 * The project's statecharts as plain data, read from the machine
 * definitions themselves (never restated by hand), and drawn from that data
 * as Graphviz DOT, Mermaid and SVG (statechart-render.ts). `nbd-engine
 * machines`, the generated docs and the trace viewer all use these, and all
 * name states and transitions with ids.ts, so a recorded step and a drawn
 * node or edge carry the same string.
 */
import type { AnyStateMachine, AnyStateNode, AnyTransitionDefinition } from 'xstate';
import { connectionMachine, handshakeMachine, transmissionMachine } from '../machines/index.js';
import { allTransitions, stateId } from './ids.js';

export { toDot, toMermaid, toSvg, mermaidId, DOT_IDS } from './statechart-render.js';

export type StateType = 'atomic' | 'compound' | 'parallel' | 'final' | 'history';

export interface GraphState {
  /** ids.ts's stateId, e.g. `handshake.options.open`. */
  readonly id: string;
  /** The name within its parent (`open`); the machine id for the root. */
  readonly key: string;
  /** The parent's id; null for the root. */
  readonly parent: string | null;
  readonly type: StateType;
  /** The initial child's id (compound states only), else null. */
  readonly initial: string | null;
  readonly entry: readonly string[];
  readonly exit: readonly string[];
  /** The `src` of each actor the state invokes (its id when the source is not named). */
  readonly invoke: readonly string[];
}

export interface GraphTransition {
  /** ids.ts's transitionId: `source|event|index`. */
  readonly id: string;
  readonly source: string;
  /** The event type, `always` for eventless transitions. */
  readonly event: string;
  /** Target state ids; empty for a targetless transition (actions only, no state change). */
  readonly targets: readonly string[];
  readonly guard?: string;
  readonly actions: readonly string[];
}

export interface MachineGraph {
  readonly machine: string;
  /** Depth first, in definition order; the root first. */
  readonly states: readonly GraphState[];
  /** ids.ts's allTransitions order. */
  readonly transitions: readonly GraphTransition[];
}

/** The machines `nbd-engine machines` draws, by name. */
export const MACHINES: Readonly<Record<'connection' | 'handshake' | 'transmission', AnyStateMachine>> = {
  connection: connectionMachine,
  handshake: handshakeMachine,
  transmission: transmissionMachine,
};

export type MachineName = keyof typeof MACHINES;
export const MACHINE_NAMES = Object.keys(MACHINES) as MachineName[];

/** What an inline function (no name in the definition) is called in a graph. */
export const INLINE = 'inline';

type Named = string | { type?: unknown; guards?: unknown } | ((...args: never[]) => unknown) | null | undefined;

/**
 * The name the definition gives an action or guard: a string as is, a
 * `{ type }` object by its type, xstate's own helpers (`assign`, `emit`, …)
 * by their `xstate.*` type, `and`/`or`/`not` with their operands, any other
 * function as {@link INLINE}.
 */
export function itemName(item: Named): string {
  if (typeof item === 'string') return item;
  if (item === null || item === undefined) return INLINE;
  const { type, guards } = item as { type?: unknown; guards?: unknown };
  if (typeof type === 'string') return type;
  if (typeof item === 'function') {
    const name = item.name;
    if (Array.isArray(guards) && (name === 'and' || name === 'or' || name === 'not')) return `${name}(${guards.map((g) => itemName(g as Named)).join(', ')})`;
    if (name === 'stateIn') return 'stateIn';
  }
  return INLINE;
}

function names(list: readonly unknown[] | undefined): string[] {
  return (list ?? []).map((a) => itemName(a as Named));
}

function stateOf(node: AnyStateNode): GraphState {
  const initial = node.type === 'compound' ? (node.initial?.target?.[0] as AnyStateNode | undefined) : undefined;
  return {
    id: stateId(node),
    key: node.parent ? node.key : node.machine.id,
    parent: node.parent ? stateId(node.parent) : null,
    type: node.type as StateType,
    initial: initial ? stateId(initial) : null,
    entry: names(node.entry),
    exit: names(node.exit),
    invoke: (node.invoke ?? []).map((i: { src: unknown; id: string }) => (typeof i.src === 'string' ? i.src : i.id)),
  };
}

function transitionOf(id: string, t: AnyTransitionDefinition): GraphTransition {
  const event = id.split('|')[1]!;
  const targets = ((t.target ?? []) as AnyStateNode[]).map(stateId);
  const base = { id, source: stateId(t.source), event, targets };
  const actions = names(t.actions as readonly unknown[]);
  return t.guard === undefined ? { ...base, actions } : { ...base, guard: itemName(t.guard as Named), actions };
}

/** The machine's states and transitions as plain, JSON-serialisable data, in a fixed order. */
export function machineGraph(machine: AnyStateMachine): MachineGraph {
  const states: GraphState[] = [];
  const visit = (node: AnyStateNode): void => {
    states.push(stateOf(node));
    for (const child of Object.values(node.states) as AnyStateNode[]) visit(child);
  };
  visit(machine.root);
  return { machine: machine.id, states, transitions: allTransitions(machine).map(({ id, transition }) => transitionOf(id, transition)) };
}
