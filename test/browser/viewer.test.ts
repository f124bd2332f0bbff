/**
 * The trace viewer in a real browser: Debian's Chromium (/usr/bin/chromium)
 * driven by playwright-core, never a downloaded browser. A real server
 * (`nbd-engine serve --trace FILE`) records real clients (nbdinfo --list,
 * qemu-img info, nbdinfo over STARTTLS); `nbd-engine trace view` turns the
 * recording into a page, which is opened from file:// with every non-file
 * request blocked and counted (there must be none). Assertions are by
 * content: SVG element ids with the `active` / `visited` classes, the
 * details panel's text, the sequence list, the coverage counts, each
 * compared with what the trace file itself says.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MACHINES, MACHINE_NAMES, machineGraph } from '../../src/inspect/statechart.js';
import type { TraceRecord } from '../../src/inspect/trace-format.js';
import { run, spawnCli, tmpDir } from '../integration/harness.js';
import { activeAt, cli, launchChromium, stop, type Browser } from './browser.js';
import { makePki } from '../integration/tls-support.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SHOT = path.join(ROOT, '.test-results', 'viewer.png');

type Conn = { conn: number; records: TraceRecord[] };

function coverage(records: readonly TraceRecord[]): string[] {
  return MACHINE_NAMES.map((m) => {
    const all = machineGraph(MACHINES[m]).transitions.map((t) => t.id);
    const taken = new Set(records.flatMap((r) => (r.type === 'step' && r.actor === m ? r.transitions : [])));
    return `${m}: ${all.filter((t) => taken.has(t)).length} of ${all.length} transitions taken`;
  });
}

const hasFrame = (c: Conn, dir: 'in' | 'out', name: string): boolean => c.records.some((r) => r.type === 'frame' && r.dir === dir && r.name === name);

describe('trace view in Chromium, from a real recording', () => {
  let dir: string;
  let conns: Conn[];
  let html: string;
  let browser: Browser;
  let page: Page;
  let blocked: string[];
  const errors: string[] = [];

  beforeAll(async () => {
    browser = await launchChromium((url) => url.startsWith('file:'));
    blocked = browser.blocked;
    dir = tmpDir('nbd-engine-viewer-');
    const pki = makePki(path.join(dir, 'pki'));
    const sock = path.join(dir, 'nbd.sock');
    const trace = path.join(dir, 'trace.jsonl');
    const tls = ['--tls', 'on', '--tls-cert', path.join(pki, 'server-cert.pem'), '--tls-key', path.join(pki, 'server-key.pem')];
    const { child } = await spawnCli(['serve', '--memory', '8M', '--export', 'disk', '--socket', sock, ...tls, '--trace', trace]);
    try {
      const plain = `nbd+unix:///disk?socket=${sock}`;
      const list = await run('nbdinfo', ['--list', plain]);
      expect(list.stdout).toContain('disk');
      const info = await run('qemu-img', ['info', '--output=json', plain]);
      expect(JSON.parse(info.stdout)['virtual-size']).toBe(8 << 20);
      const secure = await run('nbdinfo', ['--size', `nbds+unix:///disk?socket=${sock}&tls-certificates=${pki}`]);
      expect(secure.stdout.trim()).toBe(String(8 << 20));
    } finally {
      await stop(child);
    }
    const records = fs.readFileSync(trace, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as TraceRecord);
    const byConn = new Map<number, TraceRecord[]>();
    for (const r of records) if ('conn' in r) byConn.set(r.conn, [...(byConn.get(r.conn) ?? []), r]);
    conns = [...byConn].map(([conn, list]) => ({ conn, records: list }));
    expect(conns).toHaveLength(3);

    html = path.join(dir, 'view.html');
    const made = await cli(['trace', 'view', trace, '-o', html]);
    expect(made.stderr).toBe('');
    expect(made.code).toBe(0);

    page = browser.context.pages()[0] ?? (await browser.context.newPage());
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(pathToFileURL(html).href);
  });

  afterAll(async () => {
    await browser?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  const select = (conn: number) => page.locator('#connection-picker').selectOption(String(conn));
  const activeIds = () => page.$$eval('#charts .active', (els) => els.map((e) => e.id).sort());
  const step = (i: number) => page.locator('#step-slider').fill(String(i));

  it('the page loads with no script error and makes no request but the file itself', async () => {
    expect(errors).toEqual([]);
    expect(blocked).toEqual([]);
    const text = fs.readFileSync(html, 'utf8');
    expect(text).not.toMatch(/https?:/i);
    expect(text).not.toMatch(/\b(?:src|href|xlink:href)\s*=/i);
    const options = await page.$$eval('#connection-picker option', (els) => els.map((e) => e.getAttribute('value')));
    expect(options).toEqual(conns.map((c) => String(c.conn)));
  });

  it('at every record of every connection, the states marked active are those the trace says', async () => {
    for (const c of conns) {
      await select(c.conn);
      expect(await page.locator('#step-slider').getAttribute('max')).toBe(String(c.records.length - 1));
      for (let i = 0; i < c.records.length; i++) {
        await step(i);
        expect(await activeIds(), `connection ${c.conn}, record ${i}`).toEqual(activeAt(c.records, i));
      }
      // The buttons step too.
      await step(1);
      await page.locator('#step-next').click();
      expect(await page.locator('#step-slider').inputValue()).toBe('2');
      expect(await activeIds()).toEqual(activeAt(c.records, 2));
      await page.locator('#step-prev').click();
      expect(await page.locator('#step-slider').inputValue()).toBe('1');
    }
  });

  it('stepping to the GO reply shows NBD_OPT_GO and NBD_REP_INFO in the details', async () => {
    const c = conns.find((x) => hasFrame(x, 'in', 'NBD_OPT_GO') && !x.records.some((r) => r.type === 'tls'))!;
    expect(c).toBeDefined();
    const go = c.records.findIndex((r) => r.type === 'frame' && r.dir === 'in' && r.name === 'NBD_OPT_GO');
    const reply = c.records.findIndex((r, i) => i > go && r.type === 'frame' && r.dir === 'out' && r.name === 'NBD_REP_INFO');
    expect(reply).toBeGreaterThan(go);
    await select(c.conn);
    await step(reply);
    const frame = await page.locator('#step-frame').innerText();
    expect(frame).toContain('NBD_OPT_GO');
    expect(frame).toContain('NBD_REP_INFO');
    expect(await page.locator('#step-record').innerText()).toContain('NBD_REP_INFO');
    expect(await page.locator('#step-event').innerText()).not.toBe('');
    expect(await page.locator('#step-context').innerText()).toContain('handshake');
  });

  it("the TLS connection's path goes through the handshake's TLS upgrade state", async () => {
    const c = conns.find((x) => x.records.some((r) => r.type === 'tls' && r.step === 'established'))!;
    expect(c).toBeDefined();
    await select(c.conn);
    const visited = await page.$$eval('#charts .visited', (els) => els.map((e) => e.id));
    expect(visited).toContain('state:handshake.upgradingTls');
    const upgrading = c.records.findIndex((r) => r.type === 'step' && r.active.includes('handshake.upgradingTls'));
    await step(upgrading);
    expect(await activeIds()).toContain('state:handshake.upgradingTls');
    expect(await page.locator(`#sequence section[data-conn="${c.conn}"]`).innerText()).toContain('TLS established');
  });

  it('the sequence diagram of the nbdinfo --list connection lists NBD_OPT_LIST and the server reply', async () => {
    const c = conns.find((x) => hasFrame(x, 'in', 'NBD_OPT_LIST'))!;
    expect(c).toBeDefined();
    await select(c.conn);
    const seq = page.locator(`#sequence section[data-conn="${c.conn}"]`);
    expect(await seq.isVisible()).toBe(true);
    expect(await seq.locator('li.c2s').allInnerTexts()).toContainEqual(expect.stringContaining('NBD_OPT_LIST'));
    expect(await seq.locator('li.s2c').allInnerTexts()).toContainEqual(expect.stringContaining('NBD_REP_SERVER'));
    for (const other of conns.filter((x) => x !== c)) expect(await page.locator(`#sequence section[data-conn="${other.conn}"]`).isVisible()).toBe(false);
  });

  it('the coverage numbers are the counts computed from the trace; the overlay dims transitions not taken', async () => {
    for (const c of conns) {
      await select(c.conn);
      expect(await page.locator('#coverage .coverage-count').allInnerTexts()).toEqual(coverage(c.records));
    }
    const c = conns[0]!;
    await select(c.conn);
    await page.locator('#coverage-toggle').check();
    const taken = c.records.find((r) => r.type === 'step' && r.actor === 'handshake' && r.transitions.length > 0);
    expect(taken?.type).toBe('step');
    const takenId = `tr:${(taken as Extract<TraceRecord, { type: 'step' }>).transitions[0]}`;
    // Runs in the page: the window's getComputedStyle.
    const opacity = (id: string) => page.$eval(`[id="${id}"]`, (el) => (globalThis as unknown as { getComputedStyle(e: unknown): { opacity: string } }).getComputedStyle(el).opacity);
    expect(await opacity(takenId)).toBe('1');
    const untaken = machineGraph(MACHINES.transmission).transitions.map((t) => `tr:${t.id}`).find((id) => !c.records.some((r) => r.type === 'step' && r.transitions.includes(id.slice(3))))!;
    expect(await opacity(untaken)).toBe('0.2');
  });

  it('a screenshot of the page is a PNG', async () => {
    const c = conns.find((x) => hasFrame(x, 'in', 'NBD_OPT_GO') && !x.records.some((r) => r.type === 'tls'))!;
    await select(c.conn);
    await page.locator('#coverage-toggle').uncheck();
    await step(c.records.findIndex((r) => r.type === 'frame' && r.name === 'NBD_REP_INFO'));
    fs.mkdirSync(path.dirname(SHOT), { recursive: true });
    fs.rmSync(SHOT, { force: true });
    await page.screenshot({ path: SHOT });
    const png = fs.readFileSync(SHOT);
    expect(png.length).toBeGreaterThan(1000);
    expect(png.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
    expect(blocked).toEqual([]);
    expect(errors).toEqual([]);
  });
});

describe('nbd-engine trace view: the command line', () => {
  const records: TraceRecord[] = [
    { type: 'trace', v: 1, t: 1, server: 'nbd-engine', version: '0.1.0', pid: 1 },
    { type: 'open', t: 2, conn: 1, peer: 'local' },
    { type: 'snapshot', t: 3, conn: 1, actor: 'handshake', value: 'awaitingClientFlags', status: 'active' },
    { type: 'open', t: 4, conn: 2, peer: 'local' },
  ];
  let dir: string;
  let file: string;
  beforeAll(() => {
    dir = tmpDir('nbd-engine-view-cli-');
    file = path.join(dir, 'trace.jsonl');
    fs.writeFileSync(file, records.map((r) => JSON.stringify(r)).join('\n') + '\n');
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('bad command lines: exit 2 and one stderr line naming the problem', async () => {
    for (const [args, message] of [
      [['trace', 'view', file], /-o OUT\.html is required/],
      [['trace', 'view', '-o', path.join(dir, 'x.html')], /expected one trace FILE/],
      [['trace', 'view', file, '-o', path.join(dir, 'x.html'), '--connection', 'one'], /--connection: expected a whole number/],
      [['trace', 'view', file, '-o', path.join(dir, 'x.html'), '--max-records', '0'], /--max-records: expected a whole number ≥ 1/],
      [['trace', 'view', file, '-o', path.join(dir, 'x.html'), '--bogus'], /Unknown option '--bogus'/],
    ] as const) {
      const r = await cli([...args]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(message);
    }
    expect(fs.existsSync(path.join(dir, 'x.html'))).toBe(false);
  });

  it('--connection N keeps one connection; a connection the file lacks is an error', async () => {
    const r = await cli(['trace', 'view', file, '--connection', '2', '-o', '-']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('<option value="2">');
    expect(r.stdout).not.toContain('<option value="1">');
    const missing = await cli(['trace', 'view', file, '--connection', '9', '-o', path.join(dir, 'y.html')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe(`nbd-engine trace view: ${file} holds no connection 9\n`);
  });

  it('a line that is not a record: one stderr line naming it, the page still written, status 1', async () => {
    const bad = path.join(dir, 'bad.jsonl');
    fs.writeFileSync(bad, `${JSON.stringify(records[1])}\n{oops\n${JSON.stringify(records[2])}\n`);
    const out = path.join(dir, 'bad.html');
    const r = await cli(['trace', 'view', bad, '-o', out]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^nbd-engine trace view: ${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2: not JSON .*\\n$`));
    expect(fs.readFileSync(out, 'utf8')).toContain('<option value="1">connection 1 (local)</option>');
  });
});
