import { describe, expect, it } from 'vitest';
import { createMachine } from 'xstate';
import { allTransitions } from '../../../src/inspect/ids.js';
import { INLINE, MACHINES, machineGraph, mermaidId, toDot, toMermaid, toSvg, type MachineGraph } from '../../../src/inspect/statechart.js';

type Config = Record<string, unknown> & { states?: Record<string, Config> };

/** How many transitions one `on` value / `always` / `onDone` … stands for (an array: one each). */
const count = (v: unknown): number => (v === undefined ? 0 : Array.isArray(v) ? v.length : 1);

/** States and transitions counted from the machine's config objects, without xstate's StateNodes. */
function configCounts(config: Config): { states: number; transitions: number } {
  let states = 1;
  let transitions = 0;
  for (const v of Object.values((config.on ?? {}) as Record<string, unknown>)) transitions += count(v);
  for (const v of Object.values((config.after ?? {}) as Record<string, unknown>)) transitions += count(v);
  transitions += count(config.always) + count(config.onDone);
  const invokes = config.invoke === undefined ? [] : Array.isArray(config.invoke) ? config.invoke : [config.invoke];
  for (const inv of invokes as Config[]) transitions += count(inv.onDone) + count(inv.onError) + count(inv.onSnapshot);
  for (const child of Object.values(config.states ?? {})) {
    const c = configCounts(child);
    states += c.states;
    transitions += c.transitions;
  }
  return { states, transitions };
}

/** The ids attribute values of an SVG, with Graphviz's character references decoded. */
function svgIds(svg: string): Set<string> {
  const decode = (s: string): string =>
    s.replace(/&#(\d+);/g, (_, n: string) => String.fromCharCode(Number(n))).replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&amp;/g, '&');
  return new Set([...svg.matchAll(/\bid="([^"]*)"/g)].map((m) => decode(m[1]!)));
}

const graphs = Object.fromEntries(Object.entries(MACHINES).map(([name, m]) => [name, machineGraph(m)])) as Record<keyof typeof MACHINES, MachineGraph>;

describe('machineGraph', () => {
  it.each(Object.keys(MACHINES) as Array<keyof typeof MACHINES>)('%s: every state and transition of the definition, with ids.ts names', (name) => {
    const machine = MACHINES[name];
    const g = graphs[name];
    const expected = configCounts(machine.config as Config);
    expect(g.machine).toBe(name);
    expect(g.states).toHaveLength(expected.states);
    expect(g.transitions).toHaveLength(expected.transitions);
    expect(g.transitions.map((t) => t.id)).toEqual(allTransitions(machine).map((t) => t.id));
    expect(g.states[0]).toMatchObject({ id: name, parent: null });
    const ids = new Set(g.states.map((s) => s.id));
    for (const t of g.transitions) {
      expect(ids.has(t.source)).toBe(true);
      for (const target of t.targets) expect(ids.has(target)).toBe(true);
    }
    // Plain data: a JSON round trip changes nothing.
    expect(JSON.parse(JSON.stringify(g))).toEqual(g);
  });

  it('holds the states and transitions the machines are known for', () => {
    expect(graphs.handshake.states.some((s) => s.key === 'upgradingTls')).toBe(true);
    expect(graphs.transmission.transitions.some((t) => t.event === 'request' && t.actions.includes('validate'))).toBe(true);
    const root = graphs.connection.states[0]!;
    expect(root.type).toBe('parallel');
    expect(graphs.connection.states.filter((s) => s.parent === root.id).map((s) => s.key)).toEqual(['phase', 'reading']);
    expect(graphs.connection.states.flatMap((s) => s.invoke).sort()).toEqual(['handshake', 'transmission']);
    expect(graphs.handshake.states.find((s) => s.id === 'handshake')!.initial).toBe('handshake.greeting');
    expect(graphs.handshake.states.find((s) => s.id === 'handshake.greeting')!.entry).toEqual(['sendGreeting']);
    const go = graphs.handshake.transitions.find((t) => t.id === 'handshake.options.open|opt.go|0')!;
    expect(go).toMatchObject({ source: 'handshake.options.open', event: 'opt.go', targets: [], guard: 'optionTooBig' });
  });

  it('names guards and actions as the definition does, inline functions by a placeholder', () => {
    const m = createMachine({
      id: 'm',
      initial: 'a',
      states: {
        a: {
          entry: [() => {}, { type: 'hello', params: { x: 1 } }],
          on: { go: { target: 'b', guard: { type: 'ready' }, actions: ['send'] }, stay: { guard: () => true, actions: () => {} } },
          always: { target: 'b', guard: 'named' },
        },
        b: { type: 'final' },
      },
    });
    const g = machineGraph(m);
    expect(g.states.find((s) => s.id === 'm.a')!.entry).toEqual([INLINE, 'hello']);
    expect(g.transitions).toEqual([
      { id: 'm.a|go|0', source: 'm.a', event: 'go', targets: ['m.b'], guard: 'ready', actions: ['send'] },
      { id: 'm.a|stay|0', source: 'm.a', event: 'stay', targets: [], guard: INLINE, actions: [INLINE] },
      { id: 'm.a|always|0', source: 'm.a', event: 'always', targets: ['m.b'], guard: 'named', actions: [] },
    ]);
  });
});

describe('drawings', () => {
  it.each(Object.keys(MACHINES) as Array<keyof typeof MACHINES>)('%s: DOT and Mermaid name every state and transition', (name) => {
    const g = graphs[name];
    const dot = toDot(g);
    const mermaid = toMermaid(g);
    expect(dot.startsWith(`digraph "${name}" {`)).toBe(true);
    expect(mermaid.startsWith('stateDiagram-v2\n')).toBe(true);
    for (const s of g.states) {
      expect(dot).toContain(`id="state:${s.id}"`);
      expect(mermaid).toMatch(new RegExp(`\\bas ${mermaidId(s.id)}\\b`));
    }
    for (const t of g.transitions) expect(dot.toLowerCase()).toContain(`id="tr:${t.id}"`.toLowerCase());
    // Mermaid ids hold no dots or bars.
    for (const m of mermaid.matchAll(/ as (\S+)/g)) expect(m[1]).toMatch(/^[A-Za-z0-9_]+$/);
  });

  it('lists targetless transitions inside their state, loops them on a composite one, and dashes parallel regions', () => {
    const dot = toDot(graphs.transmission);
    expect(dot).toMatch(/"transmission.open" \[id="state:transmission.open", [^\n]*<TD ALIGN="LEFT" ID="tr:transmission.open\|request\|1" [^>]*>request \/ validate<\/TD>/);
    expect(dot).toContain('"transmission.open" -> "transmission.draining" [id="tr:transmission.open|request|0"');
    const hs = toDot(graphs.handshake);
    expect(hs).toContain('"any:handshake" -> "any:handshake" [id="tr:handshake|server.shutdown|0"');
    expect(hs).toContain('"any:handshake" -> "handshake.disconnected" [id="tr:handshake|socket.closed|0"');
    const conn = toDot(graphs.connection);
    expect(conn).toMatch(/id="state:connection.phase"; class="state compound"; label="phase"; style="rounded,dashed"/);
    expect(toMermaid(graphs.connection)).toMatch(/\n {4}--\n {4}state "reading" as connection_reading \{/);
  });

  it('the SVG carries state:<id> and tr:<id> element ids for every state and transition', async () => {
    for (const name of Object.keys(MACHINES) as Array<keyof typeof MACHINES>) {
      const g = graphs[name];
      const svg = await toSvg(g);
      expect(svg).toContain('<svg');
      const ids = svgIds(svg);
      for (const s of g.states) expect(ids, s.id).toContain(`state:${s.id}`);
      for (const t of g.transitions) expect(ids, t.id).toContain(`tr:${t.id}`);
    }
  });
});
