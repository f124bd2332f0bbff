/**
 * Drawing a {@link MachineGraph}: Graphviz DOT (and SVG from it, through
 * Graphviz compiled to WebAssembly, @viz-js/viz, no network) and Mermaid
 * `stateDiagram-v2`.
 *
 * In the DOT and the SVG every state carries `id="state:<stateId>"` (a node,
 * or a cluster for a state with children) and every transition
 * `id="tr:<transitionId>"` on its edge, so a viewer finds the element a
 * recorded step names. A transition with several targets draws one edge per
 * target: the first has the plain id, the others `tr:<transitionId>#<n>`.
 * Compound states are clusters whose black dot marks the initial child (the
 * dot is also where the state's own transitions start and end); the regions
 * of a parallel state are dashed clusters. A transition without a target (it
 * runs actions and stays) is a row inside its source's box (the SVG element
 * of that row carries its tr: id), or a loop when the source has children; a
 * transition that re-enters its source is a loop.
 */
import type { GraphState, GraphTransition, MachineGraph } from './statechart.js';

/** The SVG / DOT element ids of states and transitions. */
export const DOT_IDS = {
  state: (stateId: string): string => `state:${stateId}`,
  transition: (transitionId: string): string => `tr:${transitionId}`,
  /** The initial-state marker (and anchor of the state's own edges) inside a compound state's cluster. */
  initial: (stateId: string): string => `initial:${stateId}`,
  /** The edge from that marker to the initial child. */
  initialEdge: (stateId: string): string => `start:${stateId}`,
  /** The "any state" box inside a state with children, where its transitions into itself start. */
  any: (stateId: string): string => `any:${stateId}`,
} as const;

interface Tree {
  readonly byId: ReadonlyMap<string, GraphState>;
  readonly children: ReadonlyMap<string | null, readonly GraphState[]>;
}

function tree(graph: MachineGraph): Tree {
  const byId = new Map<string, GraphState>();
  const children = new Map<string | null, GraphState[]>();
  for (const s of graph.states) {
    byId.set(s.id, s);
    const list = children.get(s.parent) ?? [];
    list.push(s);
    children.set(s.parent, list);
  }
  return { byId, children };
}

const hasChildren = (s: GraphState): boolean => s.type === 'compound' || s.type === 'parallel';

/** Whether `a` is `b` or inside it. */
function within(t: Tree, a: string, b: string): boolean {
  for (let s: string | null = a; s !== null; s = t.byId.get(s)?.parent ?? null) if (s === b) return true;
  return false;
}

/** `event [guard] / a, b`. */
export function transitionLabel(tr: GraphTransition): string {
  const guard = tr.guard !== undefined ? ` [${tr.guard}]` : '';
  const actions = tr.actions.length > 0 ? ` / ${tr.actions.join(', ')}` : '';
  return `${tr.event}${guard}${actions}`;
}

/** The entry / exit / invoke lines shown under a state's name. */
function stateNotes(s: GraphState): string[] {
  const lines: string[] = [];
  if (s.entry.length > 0) lines.push(`entry / ${s.entry.join(', ')}`);
  if (s.exit.length > 0) lines.push(`exit / ${s.exit.join(', ')}`);
  for (const src of s.invoke) lines.push(`invoke ${src}`);
  return lines;
}

/** A DOT quoted string (newlines become line breaks). */
function q(text: string): string {
  return `"${text.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`;
}

const cluster = (id: string): string => `cluster_${id}`;

/**
 * The targetless transitions of each state without children: drawn as rows
 * inside the state's box (UML's internal transitions) rather than as loops,
 * which a state answering dozens of events (the handshake's `open`) would
 * pile up unreadably.
 */
function internalTransitions(graph: MachineGraph): Map<string, GraphTransition[]> {
  const out = new Map<string, GraphTransition[]>();
  const leaves = new Set(graph.states.filter((s) => !hasChildren(s)).map((s) => s.id));
  for (const tr of graph.transitions) {
    if (tr.targets.length === 0 && leaves.has(tr.source)) out.set(tr.source, [...(out.get(tr.source) ?? []), tr]);
  }
  return out;
}

const html = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** A Graphviz HTML-like label: the state's name and notes, a rule, then one row (with the transition's id) per internal transition. */
function htmlLabel(s: GraphState, rows: readonly GraphTransition[]): string {
  const head = [s.key, ...stateNotes(s)].map((line) => `<TR><TD>${html(line)}</TD></TR>`).join('');
  const body = rows.map((tr) => `<TR><TD ALIGN="LEFT" ID="${html(DOT_IDS.transition(tr.id))}" TOOLTIP="${html(tr.id)}">${html(transitionLabel(tr))}</TD></TR>`).join('');
  return `<<TABLE BORDER="1" STYLE="rounded" CELLBORDER="0" CELLSPACING="0" CELLPADDING="2">${head}<HR/>${body}</TABLE>>`;
}

/** The Graphviz DOT text of a machine graph. */
export function toDot(graph: MachineGraph): string {
  const t = tree(graph);
  const out: string[] = [
    `digraph ${q(graph.machine)} {`,
    '  compound=true;',
    '  rankdir=LR;',
    '  node [shape=box, style=rounded, fontname="Helvetica", fontsize=11];',
    '  edge [fontname="Helvetica", fontsize=9];',
  ];
  const node = (s: GraphState): string => (hasChildren(s) ? DOT_IDS.initial(s.id) : s.id);
  const internal = internalTransitions(graph);
  // A transition of a state with children that stays inside it ("in any state of S, on e → a child of S") starts at an "any state" box.
  const inward = (tr: GraphTransition): boolean => hasChildren(t.byId.get(tr.source)!) && tr.targets.every((target) => within(t, target, tr.source));
  const anyBoxes = new Set(graph.transitions.filter(inward).map((tr) => tr.source));
  const draw = (s: GraphState, indent: string): void => {
    const label = q([s.key, ...stateNotes(s)].join('\n'));
    if (!hasChildren(s)) {
      const rows = internal.get(s.id);
      const shape = rows ? ', shape=plain' : s.type === 'final' ? ', peripheries=2' : s.type === 'history' ? ', shape=circle' : '';
      const text = rows ? htmlLabel(s, rows) : s.type === 'history' ? q('H') : label;
      out.push(`${indent}${q(s.id)} [id=${q(DOT_IDS.state(s.id))}, class="state ${s.type}", label=${text}${shape}];`);
      return;
    }
    const parent = s.parent !== null ? t.byId.get(s.parent) : undefined;
    const style = parent?.type === 'parallel' ? 'rounded,dashed' : 'rounded';
    out.push(`${indent}subgraph ${q(cluster(s.id))} {`);
    out.push(`${indent}  id=${q(DOT_IDS.state(s.id))}; class="state ${s.type}"; label=${q([s.key, ...stateNotes(s)].join('\n'))}; style=${q(style)};`);
    const marker = s.type === 'compound' ? 'width=0.12' : 'width=0.01, style=invis';
    out.push(`${indent}  ${q(node(s))} [id=${q(DOT_IDS.initial(s.id))}, class="initial", shape=point, label="", ${marker}];`);
    if (anyBoxes.has(s.id)) out.push(`${indent}  ${q(DOT_IDS.any(s.id))} [id=${q(DOT_IDS.any(s.id))}, class="any", label="any state", style="rounded,dashed", fontsize=9];`);
    for (const c of t.children.get(s.id) ?? []) draw(c, `${indent}  `);
    out.push(`${indent}}`);
  };
  for (const root of t.children.get(null) ?? []) draw(root, '  ');
  for (const s of graph.states) {
    if (s.initial === null) continue;
    const target = t.byId.get(s.initial)!;
    const head = hasChildren(target) ? `, lhead=${q(cluster(target.id))}` : '';
    out.push(`  ${q(node(s))} -> ${q(node(target))} [id=${q(DOT_IDS.initialEdge(s.id))}, class="initial"${head}];`);
  }
  for (const tr of graph.transitions) {
    const source = t.byId.get(tr.source)!;
    if (internal.get(source.id)?.includes(tr)) continue;
    const targets = tr.targets.length > 0 ? tr.targets : [tr.source];
    targets.forEach((targetId, n) => {
      const target = t.byId.get(targetId)!;
      const attrs = [`id=${q(DOT_IDS.transition(tr.id) + (n > 0 ? `#${n}` : ''))}`, `class=${q(tr.targets.length > 0 ? 'transition' : 'transition targetless')}`, `label=${q(transitionLabel(tr))}`];
      const tail = inward(tr) ? DOT_IDS.any(source.id) : node(source);
      if (hasChildren(source) && !inward(tr)) attrs.push(`ltail=${q(cluster(source.id))}`);
      if (hasChildren(target) && !within(t, source.id, target.id)) attrs.push(`lhead=${q(cluster(target.id))}`);
      const head = tr.targets.length === 0 ? tail : node(target);
      out.push(`  ${q(tail)} -> ${q(head)} [${attrs.join(', ')}];`);
    });
  }
  out.push('}');
  return `${out.join('\n')}\n`;
}

let viz: Promise<{ renderString(src: string, options: { format: string }): string }> | undefined;

/** The SVG drawing of a machine graph (Graphviz's `dot` layout of {@link toDot}). */
export async function toSvg(graph: MachineGraph): Promise<string> {
  viz ??= import('@viz-js/viz').then((m) => m.instance());
  // Graphviz names a table cell's element "a_" + its ID: the transitions listed inside a state get their plain tr: id back.
  return (await viz).renderString(toDot(graph), { format: 'svg' }).replace(/ id="a_(tr:[^"]*)"/g, ' id="$1"');
}

/** A state id as a Mermaid id (Mermaid ids cannot hold `.` or `|`): every other character becomes `_`. */
export function mermaidId(stateId: string): string {
  return stateId.replace(/[^A-Za-z0-9_]/g, '_');
}

/** The Mermaid `stateDiagram-v2` text of a machine graph. */
export function toMermaid(graph: MachineGraph): string {
  const t = tree(graph);
  const seen = new Map<string, string>();
  for (const s of graph.states) {
    const m = mermaidId(s.id);
    if (seen.has(m)) throw new Error(`states ${JSON.stringify(seen.get(m))} and ${JSON.stringify(s.id)} share the Mermaid id ${m}`);
    seen.set(m, s.id);
  }
  const edges: string[] = [];
  const notes = new Map<string, string[]>();
  for (const tr of graph.transitions) {
    const source = t.byId.get(tr.source)!;
    if (hasChildren(source) && tr.targets.every((target) => within(t, target, source.id))) {
      // Mermaid draws no edge from a composite state to itself or into it: such transitions are listed in a note beside it.
      const into = tr.targets.map((target) => t.byId.get(target)!.key).join(', ');
      notes.set(source.id, [...(notes.get(source.id) ?? []), `${transitionLabel(tr)}${into ? ` → ${into}` : ''}`]);
      continue;
    }
    for (const target of tr.targets.length > 0 ? tr.targets : [tr.source]) edges.push(`  ${mermaidId(tr.source)} --> ${mermaidId(target)} : ${transitionLabel(tr)}`);
  }
  const out = ['stateDiagram-v2'];
  const block = (id: string | null, indent: string): void => {
    const self = id !== null ? t.byId.get(id)! : undefined;
    if (self?.initial) out.push(`${indent}[*] --> ${mermaidId(self.initial)}`);
    (t.children.get(id) ?? []).forEach((c, i) => {
      if (self?.type === 'parallel' && i > 0) out.push(`${indent}--`);
      const mid = mermaidId(c.id);
      if (hasChildren(c)) {
        out.push(`${indent}state "${c.key}" as ${mid} {`);
        block(c.id, `${indent}  `);
        out.push(`${indent}}`);
      } else {
        out.push(`${indent}state "${c.key}" as ${mid}`);
        for (const line of stateNotes(c)) out.push(`${indent}${mid} : ${line}`);
        if (c.type === 'final') out.push(`${indent}${mid} --> [*]`);
      }
      const note = notes.get(c.id);
      if (note) out.push(`${indent}note right of ${mid}`, ...note.map((l) => `${indent}  ${l}`), `${indent}end note`);
    });
  };
  block(null, '  ');
  // Every edge at the top level, after all states are declared: Mermaid moves a state into the
  // composite block where an edge names it, so edges inside blocks would pull states out of theirs.
  out.push(...edges);
  return `${out.join('\n')}\n`;
}
