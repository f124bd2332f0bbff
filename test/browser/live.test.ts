/**
 * The live view (`serve --inspect`) in a real browser: Debian's Chromium
 * driven by playwright-core opens the page of a running server
 * (`nbd-engine serve --inspect=0 --trace FILE`), every request other than
 * to that page's own address blocked and counted; real clients connect
 * while it is open (nbdinfo --list, qemu-img info, and python3-libnbd
 * holding a connection open across a READ). The page must show, for each
 * connection, the states the server's own trace of it says each machine is
 * in — while the connection is open and after it closed — and its
 * transcript.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TraceRecord } from '../../src/inspect/trace-format.js';
import { CLI, requirePythonNbd, run, tmpDir } from '../integration/harness.js';
import { until } from '../integration/tls-support.js';
import { activeAt, launchChromium, stop, type Browser } from './browser.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SHOT = path.join(ROOT, '.test-results', 'live.png');

/** Start the CLI and wait until its stderr matches `ready`. */
function serve(args: string[], ready: RegExp): Promise<{ child: ChildProcess; match: RegExpExecArray }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d) => {
      err += d;
      const m = ready.exec(err);
      if (m) resolve({ child, match: m });
    });
    child.once('exit', (code) => reject(new Error(`serve exited ${code}: ${err}`)));
  });
}

/** python3-libnbd: connect, READ, say "ready", wait for a line on stdin, READ again, disconnect. */
const HOLDER = `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pread(4096, 0)
print("ready", flush=True)
sys.stdin.readline()
h.pread(4096, 4096)
h.shutdown()
print("done", flush=True)
`;

describe('the live view in Chromium, with real clients', () => {
  let dir: string;
  let sock: string;
  let trace: string;
  let server: ChildProcess;
  let url: string;
  let browser: Browser;
  let page: Page;
  const errors: string[] = [];

  beforeAll(async () => {
    requirePythonNbd();
    dir = tmpDir('nbd-engine-live-');
    sock = path.join(dir, 'nbd.sock');
    trace = path.join(dir, 'trace.jsonl');
    const started = await serve(['serve', '--memory', '8M', '--export', 'disk', '--socket', sock, '--inspect=0', '--trace', trace], /live view at (http:\S+)/);
    server = started.child;
    url = started.match[1]!;
    browser = await launchChromium((u) => u.startsWith(url));
    page = browser.context.pages()[0] ?? (await browser.context.newPage());
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(url);
    await page.locator('#status', { hasText: 'live' }).waitFor();
  });

  afterAll(async () => {
    await browser?.close();
    if (server) await stop(server);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  /** The trace file's records of connection `conn` (the server writes it once per event-loop turn). */
  async function recorded(conn: number, until_: (rs: TraceRecord[]) => boolean): Promise<TraceRecord[]> {
    let rs: TraceRecord[] = [];
    await until(() => {
      const text = fs.existsSync(trace) ? fs.readFileSync(trace, 'utf8') : '';
      rs = text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as TraceRecord).filter((r) => 'conn' in r && r.conn === conn);
      return until_(rs);
    }, 5000, `the trace of connection ${conn}`);
    return rs;
  }

  const activeOnPage = () => page.$$eval('.chart .active', (els) => els.map((e) => e.id).sort());
  const pick = async (conn: number) => {
    await page.locator(`#conn-${conn}`).click();
    await page.locator('#selected', { hasText: `connection #${conn} ` }).waitFor();
  };
  /** The page shows what the trace says of `conn` now: its active states. */
  async function showsTrace(conn: number, records: readonly TraceRecord[]): Promise<void> {
    const want = activeAt(records, records.length - 1);
    expect(want.length).toBeGreaterThan(3);
    // The page hears of records over its WebSocket: poll until it caught up (or show the difference).
    let got = await activeOnPage();
    for (const deadline = Date.now() + 5000; JSON.stringify(got) !== JSON.stringify(want) && Date.now() < deadline; got = await activeOnPage()) {
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(got).toEqual(want);
  }

  it('loads with no script error, nothing fetched but its own address, and no connection yet', async () => {
    expect(errors).toEqual([]);
    expect(browser.blocked).toEqual([]);
    expect(await page.locator('#connections li').count()).toBe(0);
    expect(await page.locator('#selected').innerText()).toBe('no connection yet');
    for (const m of ['connection', 'handshake', 'transmission']) expect(await page.locator(`#chart-${m} svg`).count()).toBe(1);
  });

  it('nbdinfo --list: the connection appears, closes, and shows its last states and NBD_OPT_LIST', async () => {
    const { stdout } = await run('nbdinfo', ['--list', `nbd+unix:///?socket=${sock}`]);
    expect(stdout).toContain('disk');
    await page.locator('#connections li.closed').first().waitFor();
    const conn = Number(await page.locator('#connections li').first().getAttribute('data-conn'));
    await pick(conn);
    const records = await recorded(conn, (rs) => rs.some((r) => r.type === 'close'));
    await showsTrace(conn, records);
    const log = await page.locator('#log').innerText();
    expect(log).toContain('C→S NBD_OPT_LIST');
    expect(log).toContain('S→C NBD_REP_SERVER');
    expect(log.trim().split('\n').at(-1)).toMatch(/^close /);
    expect(await page.locator(`#conn-${conn}`).getAttribute('class')).toContain('closed');
  });

  it('qemu-img info: a second connection, negotiated then closed, as the trace says', async () => {
    const { stdout } = await run('qemu-img', ['info', '--output=json', `nbd+unix:///disk?socket=${sock}`]);
    expect(JSON.parse(stdout)['virtual-size']).toBe(8 << 20);
    await page.locator('#connections li').nth(1).waitFor();
    const conn = Number(await page.locator('#connections li').first().getAttribute('data-conn'));
    await pick(conn);
    const records = await recorded(conn, (rs) => rs.some((r) => r.type === 'close'));
    expect(records.some((r) => r.type === 'step' && r.actor === 'handshake' && r.active.includes('handshake.negotiated'))).toBe(true);
    await showsTrace(conn, records);
    expect(await page.locator('#log').innerText()).toContain('C→S NBD_OPT_GO name="disk"');
  });

  it('a connection held open: its machines are shown live in transmission, then closed after it ends', async () => {
    const py = spawn(requirePythonNbd(), ['-c', HOLDER, `nbd+unix:///disk?socket=${sock}`], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    py.stdout!.on('data', (d) => (out += d));
    try {
      await until(() => out.includes('ready'), 10_000, 'the python client');
      await page.locator('#connections li').nth(2).waitFor();
      const conn = Number(await page.locator('#connections li').first().getAttribute('data-conn'));
      await pick(conn);
      // Open and negotiated, one READ answered: the page shows transmission `open`, not closed.
      const open = await recorded(conn, (rs) => rs.some((r) => r.type === 'frame' && r.name === 'NBD_CMD_READ'));
      expect(open.some((r) => r.type === 'close')).toBe(false);
      await showsTrace(conn, open);
      expect(await activeOnPage()).toContain('state:transmission.open');
      expect(await page.locator(`#conn-${conn}`).getAttribute('class')).not.toContain('closed');
      await page.screenshot({ path: SHOT, fullPage: false });

      py.stdin!.write('\n');
      await until(() => out.includes('done'), 10_000, 'the python client to finish');
      const all = await recorded(conn, (rs) => rs.some((r) => r.type === 'close'));
      expect(all.filter((r) => r.type === 'frame' && r.name === 'NBD_CMD_READ')).toHaveLength(2);
      await showsTrace(conn, all);
      await page.locator(`#conn-${conn}.closed`).waitFor();
      expect(await page.locator('#log').innerText()).toContain('C→S NBD_CMD_DISC');
    } finally {
      py.kill();
    }
    const png = fs.readFileSync(SHOT);
    expect(png.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))).toBe(true);
    expect(png.length).toBeGreaterThan(10_000);
    expect(browser.blocked).toEqual([]);
    expect(errors).toEqual([]);
  });
});
