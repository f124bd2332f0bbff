/**
 * `nbd-engine trace view`: a recorded trace as ONE self-contained HTML page
 * that works from file:// with the network off. The statecharts are drawn
 * here, at view time, from the machine definitions (statechart.ts, Graphviz
 * compiled to WebAssembly); the page carries them inline, with the trace as a
 * JSON block and its own CSS and script (view-page.ts). It references no URL
 * at all: no scripts, styles, fonts or images from anywhere.
 *
 * Per connection the page shows the path the connection took through each
 * machine (the states entered and transitions taken, from `step` records,
 * matched to the drawing's `state:` / `tr:` element ids), how many of each
 * machine's transitions that is, a client | server sequence diagram of the
 * frames, and a step slider over the connection's records with the active
 * states, the event, the frame and the machines' context at each step.
 */
import { MACHINES, MACHINE_NAMES, machineGraph, toSvg, type MachineName } from './statechart.js';
import type { Json, TraceHeader, TraceRecord } from './trace-format.js';
import { describeRecord, parseTraceLine } from './transcript.js';
import { PAGE_SCRIPT, PAGE_STYLE } from './view-page.js';

/** Records of one connection the page embeds at most, by default (the rest are counted, not shown). */
export const DEFAULT_MAX_RECORDS = 5000;
/**
 * Without `maxRecords`, what the whole page embeds is about this many records: with many connections each
 * gets its share (at least PAGE_MIN_RECORDS, enough for a handshake), so that a trace of thousands of
 * connections makes a page a browser can open (3 500 connections made a 100 MB page).
 */
export const PAGE_MAX_RECORDS = 100_000;
export const PAGE_MIN_RECORDS = 50;

export interface ViewOptions {
  /** Only this connection (by its `conn` id). */
  readonly connection?: number;
  /**
   * Records of each connection embedded for the slider and the sequence diagram (default
   * {@link DEFAULT_MAX_RECORDS}, less with many connections: {@link PAGE_MAX_RECORDS}); coverage counts all of them.
   */
  readonly maxRecords?: number;
  /** The page title (default: "nbd-engine trace"). */
  readonly title?: string;
}

/** One machine's share of a connection's path. */
export interface MachineCoverage {
  /** Distinct transitions of the machine the connection took. */
  readonly taken: number;
  /** Transitions the machine defines. */
  readonly total: number;
}

export interface ConnectionView {
  readonly conn: number;
  readonly peer: string;
  /** How many records the trace holds for this connection. */
  readonly total: number;
  /** The first `maxRecords` of them, in file order: what the slider steps over. */
  readonly records: readonly TraceRecord[];
  /** One readable line per embedded record. */
  readonly lines: readonly string[];
  /**
   * Where each machine was, as it changed: after embedded record `at`, the
   * machine `actor` has these states active (from a `step` record's `active`,
   * or the state value of a `snapshot` record, which is the only word on a
   * machine's initial state). The page marks a machine's last entry so far.
   */
  readonly activity: readonly ActiveAt[];
  /** Per machine: the ids of the transitions taken, and of the states ever active. */
  readonly taken: Readonly<Record<MachineName, readonly string[]>>;
  readonly visited: Readonly<Record<MachineName, readonly string[]>>;
  readonly coverage: Readonly<Record<MachineName, MachineCoverage>>;
}

export interface ActiveAt {
  readonly at: number;
  readonly actor: MachineName;
  readonly active: readonly string[];
}

export interface ViewModel {
  readonly header: TraceHeader | null;
  readonly machines: Readonly<Record<MachineName, { readonly states: readonly string[]; readonly transitions: readonly string[] }>>;
  readonly connections: readonly ConnectionView[];
}

const perMachine = <T>(make: (name: MachineName) => T): Record<MachineName, T> =>
  Object.fromEntries(MACHINE_NAMES.map((n) => [n, make(n)])) as Record<MachineName, T>;

/**
 * The ids of the states a machine's state value names, the machine's own
 * first: `{ options: 'open' }` of `handshake` is handshake,
 * handshake.options, handshake.options.open (every region of a parallel
 * state is followed).
 */
export function valueStateIds(machineId: string, value: Json): string[] {
  const out = [machineId];
  const walk = (prefix: string, v: Json): void => {
    if (typeof v === 'string') out.push(`${prefix}.${v}`);
    else if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
      for (const [k, sub] of Object.entries(v)) {
        out.push(`${prefix}.${k}`);
        walk(`${prefix}.${k}`, sub);
      }
    }
  };
  walk(machineId, value);
  return out;
}

/** The active states after each `step` or `snapshot` record, by record index. */
export function activity(records: readonly TraceRecord[]): ActiveAt[] {
  const out: ActiveAt[] = [];
  records.forEach((r, at) => {
    if (r.type === 'step') out.push({ at, actor: r.actor, active: r.active });
    else if (r.type === 'snapshot') out.push({ at, actor: r.actor, active: valueStateIds(MACHINES[r.actor].id, r.value) });
  });
  return out;
}

/** Which connections a trace holds, what each did, and how much of each machine that covers. */
export function viewModel(records: readonly TraceRecord[], opts: ViewOptions = {}): ViewModel {
  const graphs = perMachine((n) => machineGraph(MACHINES[n]));
  const machines = perMachine((n) => ({ states: graphs[n].states.map((s) => s.id), transitions: graphs[n].transitions.map((t) => t.id) }));
  const known = perMachine((n) => new Set(machines[n].transitions));
  const byConn = new Map<number, TraceRecord[]>();
  let header: TraceHeader | null = null;
  for (const r of records) {
    if (r.type === 'trace') header ??= r;
    if (!('conn' in r) || (opts.connection !== undefined && r.conn !== opts.connection)) continue;
    const list = byConn.get(r.conn) ?? [];
    list.push(r);
    byConn.set(r.conn, list);
  }
  // An explicit maxRecords is taken as given; the default shares PAGE_MAX_RECORDS among the connections.
  const max = opts.maxRecords ?? Math.max(PAGE_MIN_RECORDS, Math.min(DEFAULT_MAX_RECORDS, Math.floor(PAGE_MAX_RECORDS / Math.max(1, byConn.size))));
  const connections = [...byConn].map(([conn, list]): ConnectionView => {
    const taken = perMachine(() => new Set<string>());
    const visited = perMachine(() => new Set<string>());
    for (const r of list) if (r.type === 'step') for (const t of r.transitions) taken[r.actor].add(t);
    for (const a of activity(list)) for (const s of a.active) visited[a.actor].add(s);
    const open = list.find((r) => r.type === 'open');
    return {
      conn,
      peer: open?.type === 'open' ? open.peer : '',
      total: list.length,
      records: list.slice(0, max),
      lines: list.slice(0, max).map(describeRecord),
      activity: activity(list.slice(0, max)),
      taken: perMachine((n) => [...taken[n]]),
      visited: perMachine((n) => [...visited[n]]),
      coverage: perMachine((n) => ({ taken: [...taken[n]].filter((t) => known[n].has(t)).length, total: machines[n].transitions.length })),
    };
  });
  return { header, machines, connections };
}

/** `handshake: 14 of 87 transitions taken`. */
export function coverageLine(machine: string, c: MachineCoverage): string {
  return `${machine}: ${c.taken} of ${c.total} transitions taken`;
}

const esc = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');


/** One connection's frames, STARTTLS, state changes, refusals and close, as rows between a client and a server lifeline. */
export function sequenceRows(records: readonly TraceRecord[]): string[] {
  const rows: string[] = [];
  const values = new Map<string, string>();
  const row = (i: number, cls: string, text: string): void => void rows.push(`<li class="${cls}" data-step="${i}"><span>${esc(text)}</span></li>`);
  records.forEach((r, i) => {
    if (r.type === 'frame') row(i, r.dir === 'in' ? 'msg c2s' : 'msg s2c', describeRecord(r));
    else if (r.type === 'tls' || r.type === 'refusal' || r.type === 'close') row(i, `note ${r.type}`, describeRecord(r));
    else if (r.type === 'step') {
      // Only the steps that changed the machine's state: `handshake: options.open → negotiated (opt.go)`.
      const value = JSON.stringify(r.value);
      if (values.get(r.actor) !== value) row(i, 'note state', describeRecord(r));
      values.set(r.actor, value);
    }
  });
  return rows;
}

/**
 * Graphviz's SVG made fit to sit inline in the page: no XML prolog, DOCTYPE
 * or comments, no namespace declarations (an HTML parser knows SVG's; the
 * drawing then names no URL at all), and a graph id unique in the page.
 */
export function inlineSvg(svg: string, machine: string): string {
  return svg
    .replace(/<\?xml[^>]*\?>\s*/g, '')
    .replace(/<!DOCTYPE[^>]*>\s*/g, '')
    .replace(/<!--[\s\S]*?-->\s*/g, '')
    .replace(/\s+xmlns(:\w+)?="[^"]*"/g, '')
    .replace(/ id="graph0"/, ` id="graph-${machine}"`)
    .trim();
}

/** JSON that is safe inside a `<script>` element (no `</script>` can close it early). */
export function scriptJson(value: unknown): string {
  return JSON.stringify(value).replace(/</g, '\\u003c').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

function connectionLabel(c: ConnectionView): string {
  return `connection ${c.conn}${c.peer ? ` (${c.peer})` : ''}`;
}

/** The whole page for these records: statecharts, trace data, style and script inline. */
export async function renderView(records: readonly TraceRecord[], opts: ViewOptions = {}): Promise<string> {
  const model = viewModel(records, opts);
  const title = opts.title ?? 'nbd-engine trace';
  const svgs = await Promise.all(MACHINE_NAMES.map(async (n) => inlineSvg(await toSvg(machineGraph(MACHINES[n])), n)));
  const figures = MACHINE_NAMES.map(
    (n, i) => `<figure class="machine" id="machine-${n}"><figcaption>${n}</figcaption><div class="chart">${svgs[i]}</div></figure>`,
  ).join('\n');
  const options = model.connections.map((c) => `<option value="${c.conn}">${esc(connectionLabel(c))}</option>`).join('');
  const sequences = model.connections
    .map((c) => {
      const more = c.total > c.records.length ? `<p class="truncated">showing the first ${c.records.length} of ${c.total} records</p>` : '';
      return `<section class="sequence" data-conn="${c.conn}"><h3>${esc(connectionLabel(c))}</h3>${more}<div class="lifelines"><span>client</span><span>server</span></div><ol>${sequenceRows(c.records).join('')}</ol></section>`;
    })
    .join('\n');
  const empty = model.connections.length === 0 ? '<p id="no-connections">This trace holds no connection.</p>' : '';
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>${PAGE_STYLE}</style>
</head>
<body>
<header id="toolbar">
<h1>${esc(title)}</h1>
<label>Connection <select id="connection-picker">${options}</select></label>
<button type="button" id="step-prev" title="previous record">◀</button>
<input type="range" id="step-slider" min="0" max="0" value="0" aria-label="step">
<button type="button" id="step-next" title="next record">▶</button>
<span id="step-index"></span>
<label><input type="checkbox" id="coverage-toggle"> coverage</label>
<label><input type="checkbox" id="fit-toggle" checked> fit drawings to width</label>
</header>
${empty}
<main>
<aside id="details">
<div id="coverage"></div>
<h2>At this step</h2>
<dl>
<dt>record</dt><dd id="step-record"></dd>
<dt>event</dt><dd id="step-event"></dd>
<dt>frames</dt><dd id="step-frame"></dd>
<dt>active states</dt><dd id="step-active"></dd>
<dt>context</dt><dd id="step-context"></dd>
</dl>
<h2>Sequence</h2>
<div id="sequence">
${sequences}
</div>
</aside>
<div id="charts" class="fit">
${figures}
</div>
</main>
<script type="application/json" id="trace-data">${scriptJson(model)}</script>
<script>${PAGE_SCRIPT}</script>
</body>
</html>
`;
}

/** The records of a JSON Lines trace; each line that is not one is reported by its number (1-based) and why. */
export function parseTrace(text: string): { records: TraceRecord[]; errors: Array<{ line: number; message: string }> } {
  const records: TraceRecord[] = [];
  const errors: Array<{ line: number; message: string }> = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    const r = parseTraceLine(line);
    if (typeof r === 'string') errors.push({ line: i + 1, message: r });
    else records.push(r);
  });
  return { records, errors };
}
