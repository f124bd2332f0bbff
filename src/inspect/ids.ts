/**
 * Stable names for the parts of a statechart, shared by everything that
 * shows a machine: the exported diagrams (`machines --format …`), recorded
 * traces and the viewers. A state is named by its xstate id (`handshake`,
 * `handshake.options`, …). A transition is named by its source state, its
 * event (`always` for eventless ones) and its place among the source's
 * transitions for that event, so a diagram edge and a recorded step that took
 * it carry the same string.
 */
import type { AnyStateMachine, AnyStateNode, AnyTransitionDefinition } from 'xstate';

/** The label of an eventless (`always`) transition's event. */
export const ALWAYS = 'always';

export function stateId(node: AnyStateNode): string {
  return node.id;
}

/** `source|event|index`, e.g. `handshake.options|opt.go|0`. */
export function transitionId(t: AnyTransitionDefinition): string {
  const source = t.source;
  const event = t.eventType as string | null;
  const siblings: readonly AnyTransitionDefinition[] = event ? (source.transitions.get(event) ?? []) : source.always ?? [];
  const index = siblings.indexOf(t);
  return `${source.id}|${event ? event : ALWAYS}|${index < 0 ? 0 : index}`;
}

/** Every transition of a machine with its id, in definition order (states depth first). */
export function allTransitions(machine: AnyStateMachine): Array<{ readonly id: string; readonly transition: AnyTransitionDefinition }> {
  const out: Array<{ id: string; transition: AnyTransitionDefinition }> = [];
  const visit = (node: AnyStateNode): void => {
    for (const list of node.transitions.values()) for (const t of list) out.push({ id: transitionId(t), transition: t });
    for (const t of node.always ?? []) out.push({ id: transitionId(t), transition: t });
    for (const child of Object.values(node.states) as AnyStateNode[]) visit(child);
  };
  visit(machine.root);
  return out;
}
