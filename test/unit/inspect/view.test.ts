/**
 * The trace viewer's HTML builder on hand-written records (shaped as
 * src/inspect/trace-format.ts types them): the page is self-contained (no
 * URL anywhere), holds each machine's drawing with the ids the trace uses,
 * and its JSON block gives back the records.
 */
import { describe, expect, it } from 'vitest';
import { MACHINE_NAMES } from '../../../src/inspect/statechart.js';
import type { TraceRecord } from '../../../src/inspect/trace-format.js';
import { activity, coverageLine, inlineSvg, parseTrace, renderView, scriptJson, sequenceRows, valueStateIds, viewModel, type ViewModel } from '../../../src/inspect/view.js';

const T = 1_700_000_000_000;
const fixture: TraceRecord[] = [
  { type: 'trace', v: 1, t: T, server: 'nbd-engine', version: '0.1.0', pid: 42 },
  { type: 'open', t: T + 1, conn: 1, peer: 'unix' },
  { type: 'step', t: T + 2, conn: 1, actor: 'handshake', event: 'xstate.init', transitions: [], value: 'greeting', active: ['handshake', 'handshake.greeting'] },
  { type: 'step', t: T + 3, conn: 1, actor: 'handshake', event: 'always', transitions: ['handshake.greeting|always|0'], value: 'awaitingClientFlags', active: ['handshake', 'handshake.awaitingClientFlags'] },
  { type: 'frame', t: T + 4, conn: 1, dir: 'out', name: 'greeting', fields: { flags: ['FIXED_NEWSTYLE', 'NO_ZEROES'] } },
  { type: 'frame', t: T + 5, conn: 1, dir: 'in', name: 'clientFlags', fields: { flags: ['FIXED_NEWSTYLE'] } },
  { type: 'event', t: T + 6, conn: 1, actor: 'handshake', event: 'wire.clientFlags', fields: { flags: 1 } },
  { type: 'step', t: T + 7, conn: 1, actor: 'handshake', event: 'wire.clientFlags', transitions: ['handshake.awaitingClientFlags|wire.clientFlags|5'], value: { options: 'open' }, active: ['handshake', 'handshake.options', 'handshake.options.open'] },
  { type: 'snapshot', t: T + 8, conn: 1, actor: 'handshake', value: { options: 'open' }, status: 'active', context: { options: 0, note: '</script><script>alert(1)</script>' } },
  { type: 'frame', t: T + 9, conn: 1, dir: 'in', name: 'NBD_OPT_LIST', fields: {}, payload: { length: 0 } },
  { type: 'frame', t: T + 10, conn: 1, dir: 'out', name: 'NBD_REP_SERVER', fields: { name: 'disk' } },
  { type: 'step', t: T + 11, conn: 1, actor: 'handshake', event: 'opt.list', transitions: ['handshake.options.open|opt.list|2', 'no.such|transition|0'], value: { options: 'open' }, active: ['handshake', 'handshake.options', 'handshake.options.open'] },
  { type: 'open', t: T + 12, conn: 2, peer: '127.0.0.1:40000' },
  { type: 'tls', t: T + 13, conn: 2, step: 'start' },
  { type: 'close', t: T + 14, conn: 1, outcome: 'client', code: 'OK', reason: 'NBD_OPT_ABORT' },
  { type: 'end', t: T + 15, reason: 'closed' },
];

function dataBlock(html: string): ViewModel {
  const m = /<script type="application\/json" id="trace-data">([\s\S]*?)<\/script>/.exec(html);
  expect(m).not.toBeNull();
  return JSON.parse(m![1]!) as ViewModel;
}

describe('trace viewer page', () => {
  let page: string;
  const built = (async () => (page = await renderView(fixture)))();

  it('is self-contained: no URL in any attribute, no http(s) anywhere, no external script, style or font', async () => {
    await built;
    expect(page).not.toMatch(/https?:/i);
    expect(page).not.toMatch(/\b(?:src|href|xlink:href|action|poster|data)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:|\/\/)/i);
    expect(page).not.toMatch(/url\(\s*["']?(?!#)/i);
    expect(page).not.toMatch(/<link\b|<script\b[^>]*\bsrc=|@import|<iframe|<img\b/i);
    expect(page).not.toMatch(/["'(=\s]\/\/[a-z0-9]/i);
  });

  it('holds each machine drawn with state: and tr: element ids', async () => {
    await built;
    for (const name of MACHINE_NAMES) {
      expect(page).toContain(`<figure class="machine" id="machine-${name}">`);
      expect(page).toContain(`id="graph-${name}"`);
      expect(page).toContain(`id="state:${name}"`);
    }
    expect(page).toContain('id="state:handshake.options.open"');
    expect(page).toContain('id="tr:handshake.greeting|always|0"');
    expect(page).toContain('id="tr:transmission.open|request|0"');
    expect(page).toContain('id="tr:connection.phase.handshake|xstate.done.actor.handshake|0"');
    expect((page.match(/<svg\b/g) ?? []).length).toBe(MACHINE_NAMES.length);
  });

  it('has the controls the script and tests use', async () => {
    await built;
    for (const id of ['connection-picker', 'step-slider', 'step-prev', 'step-next', 'step-event', 'step-frame', 'step-context', 'step-active', 'coverage', 'coverage-toggle', 'sequence']) {
      expect(page).toContain(`id="${id}"`);
    }
    expect(page).toContain('<option value="1">connection 1 (unix)</option>');
    expect(page).toContain('<option value="2">connection 2 (127.0.0.1:40000)</option>');
  });

  it('its JSON block gives back every connection record, in order, and cannot close its script early', async () => {
    await built;
    const model = dataBlock(page);
    expect(model.header).toEqual(fixture[0]);
    for (const c of model.connections) expect(c.records).toEqual(fixture.filter((r) => 'conn' in r && r.conn === c.conn));
    expect(model.connections.map((c) => c.conn)).toEqual([1, 2]);
    expect(page.match(/<\/script>/g)).toHaveLength(2);
    expect(JSON.parse(scriptJson('a</script>\u2028b'))).toBe('a</script>\u2028b');
  });

  it('counts coverage per machine from the step records, only transitions the machine defines', () => {
    const model = viewModel(fixture);
    const c1 = model.connections[0]!;
    expect(c1.coverage.handshake).toEqual({ taken: 3, total: model.machines.handshake.transitions.length });
    expect(c1.coverage.transmission).toEqual({ taken: 0, total: model.machines.transmission.transitions.length });
    expect(c1.visited.handshake).toEqual(['handshake', 'handshake.greeting', 'handshake.awaitingClientFlags', 'handshake.options', 'handshake.options.open']);
    expect(coverageLine('handshake', c1.coverage.handshake)).toBe(`handshake: 3 of ${model.machines.handshake.transitions.length} transitions taken`);
  });

  it('--connection keeps one connection; --max-records caps what is embedded but not what is counted', () => {
    expect(viewModel(fixture, { connection: 2 }).connections.map((c) => c.conn)).toEqual([2]);
    const capped = viewModel(fixture, { maxRecords: 3 }).connections[0]!;
    expect(capped.records).toHaveLength(3);
    expect(capped.lines).toHaveLength(3);
    expect(capped.total).toBe(12);
    expect(capped.coverage.handshake.taken).toBe(3);
  });

  it('by default, many connections share what the page embeds (each at least 50 records); an explicit --max-records is taken as given', () => {
    const T0 = 1_700_000_000_000;
    const many: TraceRecord[] = [];
    for (let conn = 1; conn <= 2500; conn++) {
      many.push({ type: 'open', t: T0, conn, peer: 'local' });
      for (let i = 0; i < 99; i++) many.push({ type: 'event', t: T0 + i, conn, actor: 'handshake', event: 'opt.list' });
    }
    const shared = viewModel(many).connections;
    expect(shared).toHaveLength(2500);
    // 100 000 / 2 500 = 40 < 50: each connection shows its first 50 of its 100 records, every one counted.
    expect(shared.every((c) => c.records.length === 50 && c.total === 100)).toBe(true);
    const few = viewModel(many.filter((r) => 'conn' in r && r.conn <= 10)).connections;
    expect(few.every((c) => c.records.length === 100)).toBe(true);
    expect(viewModel(many, { maxRecords: 80 }).connections.every((c) => c.records.length === 80)).toBe(true);
  });

  it('the sequence rows: frames both ways with names and fields, state changes, TLS and close', () => {
    const rows = sequenceRows(fixture.filter((r) => 'conn' in r && r.conn === 1));
    expect(rows.some((r) => r.includes('class="msg c2s"') && r.includes('C→S NBD_OPT_LIST payload=0B'))).toBe(true);
    expect(rows.some((r) => r.includes('class="msg s2c"') && r.includes('S→C NBD_REP_SERVER name=&quot;disk&quot;'))).toBe(true);
    expect(rows.some((r) => r.includes('handshake: awaitingClientFlags → options.open (wire.clientFlags)'))).toBe(true);
    // Three steps change the state; the opt.list step stays in options.open and is not a row.
    expect(rows.filter((r) => r.includes('note state'))).toHaveLength(3);
    expect(rows.some((r) => r.includes('close client (OK): NBD_OPT_ABORT'))).toBe(true);
  });

  it('active states come from step records and, for a machine that has not stepped yet, from its snapshot\'s state value', () => {
    expect(valueStateIds('handshake', { options: 'open' })).toEqual(['handshake', 'handshake.options', 'handshake.options.open']);
    expect(valueStateIds('connection', { phase: 'handshake', reading: 'flowing' })).toEqual([
      'connection',
      'connection.phase',
      'connection.phase.handshake',
      'connection.reading',
      'connection.reading.flowing',
    ]);
    const conn1 = fixture.filter((r) => 'conn' in r && r.conn === 1);
    expect(activity(conn1).map((a) => a.at)).toEqual([1, 2, 6, 7, 10]);
    expect(activity(conn1)[3]).toEqual({ at: 7, actor: 'handshake', active: ['handshake', 'handshake.options', 'handshake.options.open'] });
  });

  it('an empty trace gives a page that says so', async () => {
    const html = await renderView([fixture[0]!]);
    expect(html).toContain('id="no-connections"');
    expect(dataBlock(html).connections).toEqual([]);
  });

  it('inlineSvg drops the prolog, comments and namespace URLs', () => {
    const svg = '<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN"\n "http://www.w3.org/x.dtd">\n<!-- c -->\n<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"><g id="graph0"></g></svg>';
    expect(inlineSvg(svg, 'm')).toBe('<svg><g id="graph-m"></g></svg>');
  });

  it('parseTrace reports bad lines by number and keeps the rest', () => {
    const { records, errors } = parseTrace(`${JSON.stringify(fixture[1])}\nnot json\n[1]\n\n${JSON.stringify(fixture[2])}\n`);
    expect(records).toEqual([fixture[1], fixture[2]]);
    expect(errors.map((e) => e.line)).toEqual([2, 3]);
  });
});
