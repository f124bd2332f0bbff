/**
 * The live view's server side (src/inspect/live.ts) on real sockets: the page
 * and its WebSocket on a loopback port, a tap on the NBD server only while a
 * page is connected (none before, none after), the records of live and new
 * connections with their transcript lines, pages of other origins refused,
 * a page that falls behind disconnected with one log line. The page itself in
 * a browser: test/browser/live.test.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { memoryBackend } from '../../src/index.js';
import { startLiveInspector, type LiveInspector, type LiveMessage } from '../../src/inspect/live.js';
import type { TraceSink } from '../../src/inspect/trace-format.js';
import { CLI, execFileP, recordingLogger, run, serverPerTest, tmpDir, type Running } from './harness.js';
import { RawClient, requestBytes, CMD } from './raw-client.js';
import { until } from './tls-support.js';
import { within } from '../hostile/support.js';

const servers = serverPerTest();
let live: LiveInspector | undefined;
afterEach(async () => {
  await live?.close();
  live = undefined;
});

/** Count the server's taps and their ends. */
function countTaps(srv: Running): { taps: () => number; detached: () => number } {
  const server = srv.server;
  const tap = server.tap.bind(server);
  let taps = 0;
  let detached = 0;
  server.tap = (sink: TraceSink) => {
    taps++;
    const t = tap(sink);
    return {
      unsubscribe() {
        detached++;
        t.unsubscribe();
      },
    };
  };
  return { taps: () => taps, detached: () => detached };
}

function page(url: string, headers: Record<string, string> = {}): Promise<{ ws: WebSocket; got: LiveMessage[] }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url.replace(/^http/, 'ws')}events`, { headers });
    const got: LiveMessage[] = [];
    ws.on('message', (d) => got.push(JSON.parse(String(d)) as LiveMessage));
    ws.once('open', () => resolve({ ws, got }));
    ws.once('error', reject);
  });
}

/** A hang detector for each step of the falls-behind test, not a timing assertion. */
const STEP_CAP_MS = 20_000;

const closed = (ws: WebSocket): Promise<number> => new Promise((resolve) => (ws.readyState === WebSocket.CLOSED ? resolve(-1) : ws.once('close', (code) => resolve(code))));

describe('live view', () => {
  it('serves its page on loopback; taps the server only while a page is connected', async () => {
    const srv = await servers.serve({ exports: [{ name: 'disk', backend: memoryBackend({ size: 1 << 20 }) }] });
    const counted = countTaps(srv);
    live = await startLiveInspector(srv.server, { port: 0 });
    expect(live.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);

    const res = await fetch(live.url);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-security-policy')).toContain("default-src 'none'");
    const html = await res.text();
    for (const m of ['connection', 'handshake', 'transmission']) expect(html).toContain(`id="chart-${m}"`);
    expect(html).toContain('id="state:handshake.awaitingClientFlags"');
    expect(html).not.toMatch(/https?:\/\/(?!www\.w3\.org)/);
    expect((await fetch(new URL('/elsewhere', live.url))).status).toBe(404);

    // No page: connections come and go untapped.
    expect((await run('nbdinfo', ['--size', srv.uri()])).stdout.trim()).toBe(String(1 << 20));
    expect(counted.taps()).toBe(0);

    // A connection already negotiated when the page opens: the page gets its open and current states first.
    const client = await RawClient.open({ path: srv.socket }, 'disk');
    try {
      const p = await page(live.url);
      expect(counted.taps()).toBe(1);
      await until(() => p.got.length >= 3, 5000, 'the live connection');
      expect(p.got.slice(0, 3).map((m) => m.record.type)).toEqual(['open', 'snapshot', 'snapshot']);
      expect(p.got[2]!.record).toMatchObject({ type: 'snapshot', actor: 'transmission', value: 'open' });
      expect(p.got[0]!.line).toMatch(/^open from /);

      client.send(requestBytes({ type: CMD.READ, offset: 0, length: 512, cookie: 7n }));
      await client.readSimpleReply(() => 512);
      await until(() => p.got.some((m) => m.line.includes('NBD_CMD_READ')), 5000, 'the READ');

      // A new connection is seen from its start to its close.
      const first = (p.got[0]!.record as { conn: number }).conn;
      await run('nbdinfo', ['--size', srv.uri()]);
      const conn = (m: LiveMessage) => (m.record as { conn?: number }).conn;
      await until(() => p.got.some((m) => m.record.type === 'close' && conn(m) !== first), 5000, 'the close');
      const lines = p.got.filter((m) => conn(m) !== undefined && conn(m) !== first).map((m) => m.line);
      expect(lines[0]).toMatch(/^open from /);
      expect(lines.some((l) => l.startsWith('C→S NBD_OPT_GO name="disk"'))).toBe(true);
      expect(lines.some((l) => /^handshake: .* → negotiated/.test(l))).toBe(true);
      expect(lines.at(-1)).toMatch(/^close /);

      p.ws.close();
      await until(() => counted.detached() === 1, 5000, 'the tap to go');
      expect(live.pages).toBe(0);
    } finally {
      client.destroy();
    }
  });

  it("refuses a WebSocket from another site's page, accepts its own page's", async () => {
    const srv = await servers.serve({ exports: [{ name: '', backend: memoryBackend({ size: 1 << 20 }) }] });
    const counted = countTaps(srv);
    live = await startLiveInspector(srv.server, { port: 0 });
    await expect(page(live.url, { Origin: 'http://attacker.example' })).rejects.toThrow(/401/);
    expect(counted.taps()).toBe(0);
    const own = await page(live.url, { Origin: live.url.replace(/\/$/, '') });
    expect(counted.taps()).toBe(1);
    own.ws.close();
  });

  it('listens on loopback addresses only', async () => {
    const srv = await servers.serve({ exports: [{ name: '', backend: memoryBackend({ size: 1 << 20 }) }] });
    await expect(startLiveInspector(srv.server, { port: 0, host: '0.0.0.0' })).rejects.toThrow(/loopback/);
  });

  it('a page that falls behind is disconnected with one log line, and its tap removed', async () => {
    const srv = await servers.serve({ exports: [{ name: 'disk', backend: memoryBackend({ size: 1 << 20 }) }] });
    const counted = countTaps(srv);
    const logs: string[] = [];
    // On a UNIX socket, whose kernel buffers are small (loopback TCP's grow to tens of MiB), so that
    // what a page does not read soon queues in ws, where the live view counts it.
    const path = `${srv.dir}/live.sock`;
    live = await startLiveInspector(srv.server, { path, maxBufferedBytes: 64 * 1024, logger: recordingLogger(logs) });
    expect(live.url).toBe(`unix:${path}`);
    // Each step has its own deadline, so that a stall says where it stalled (once, in a loaded CI run,
    // this test sat until vitest's 120 s timeout).
    const p = await within(
      new Promise<WebSocket>((resolve, reject) => {
        const ws = new WebSocket(`ws+unix://${path}:/events`);
        ws.once('open', () => resolve(ws));
        ws.once('error', reject);
      }),
      STEP_CAP_MS,
      'the page to connect',
    );
    // The page stops reading.
    (p as unknown as { _socket: { pause(): void } })._socket.pause();
    const client = await within(RawClient.open({ path: srv.socket }, 'disk'), STEP_CAP_MS, 'the NBD client to negotiate');
    try {
      for (let round = 0; round < 200 && counted.detached() === 0; round++) {
        for (let i = 0; i < 64; i++) client.send(requestBytes({ type: CMD.READ, offset: 0, length: 4096, cookie: BigInt(i) }));
        for (let i = 0; i < 64; i++) {
          await within(client.readSimpleReply(() => 4096), STEP_CAP_MS, `READ reply ${i} of round ${round} (page taps ${counted.taps()}, detached ${counted.detached()}, pages ${live.pages})`);
        }
      }
      expect(counted.detached()).toBe(1);
      expect(live.pages).toBe(0);
      expect(logs.filter((l) => l.includes('live view'))).toEqual(['warn: live view: a page fell more than 65536 bytes behind; disconnected']);
      // The NBD connection went on regardless.
      client.send(requestBytes({ type: CMD.READ, offset: 0, length: 512, cookie: 99n }));
      expect((await client.readSimpleReply(() => 512)).error).toBe(0);
    } finally {
      client.destroy();
      p.terminate();
    }
  });
});

describe('the live view bounds what pages may cost', () => {
  it('one page more than maxPages is refused with one log line; a page that sends more than 1 KiB is dropped, its message never kept', async () => {
    const srv = await servers.serve({ exports: [{ name: 'disk', backend: memoryBackend({ size: 1 << 20 }) }] });
    const counted = countTaps(srv);
    const logs: string[] = [];
    live = await startLiveInspector(srv.server, { port: 0, maxPages: 2, logger: recordingLogger(logs) });
    const a = await page(live.url);
    const b = await page(live.url);
    const c = await page(live.url);
    const refused = await new Promise<number>((resolve) => c.ws.once('close', (code) => resolve(code)));
    expect(refused).toBe(1013);
    expect(live.pages).toBe(2);
    expect(counted.taps()).toBe(2);
    expect(logs.filter((l) => l.includes('live view'))).toEqual(['warn: live view: 2 pages open already (maxPages); one more refused']);
    // A page that talks: ws refuses the oversized message (1009) and the page goes, its tap with it.
    const closed = new Promise<number>((resolve) => a.ws.once('close', (code) => resolve(code)));
    a.ws.send(Buffer.alloc(2048));
    expect(await closed).toBe(1009);
    await until(() => live!.pages === 1, 5000, 'the talking page to be dropped');
    expect(counted.detached()).toBe(1);
    // The room it left is taken by the next page.
    const d = await page(live.url);
    await until(() => live!.pages === 2, 5000, 'a new page to be accepted');
    b.ws.terminate();
    d.ws.terminate();
  });
});

describe('serve --inspect', () => {
  it('serves the live view next to the NBD server and says where, on stderr', async () => {
    const dir = tmpDir();
    const sock = `${dir}/nbd.sock`;
    const { child, stderr } = await spawnCliUntil(['serve', '--memory', '1M', '--socket', sock, '--inspect=0'], /live view at (http:\S+)/);
    try {
      const url = /live view at (http:\S+)/.exec(stderr())![1]!;
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
      const html = await (await fetch(url)).text();
      expect(html).toContain('id="chart-handshake"');
      const p = await page(url);
      expect((await run('nbdinfo', ['--size', `nbd+unix:///?socket=${sock}`])).stdout.trim()).toBe(String(1 << 20));
      await until(() => p.got.some((m) => m.record.type === 'close'), 5000, 'the connection in the live view');
      expect(p.got.some((m) => m.line.startsWith('C→S NBD_OPT_GO'))).toBe(true);
      p.ws.close();
    } finally {
      child.kill('SIGINT');
      await new Promise((r) => child.once('exit', r));
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a bad port is one line on stderr and exit status 2', async () => {
    const r = await execFileP(process.execPath, [CLI, 'serve', '--inspect=99999']).catch((e: { code: number; stderr: string }) => e);
    expect((r as { code: number }).code).toBe(2);
    expect((r as { stderr: string }).stderr).toBe('nbd-engine: --inspect: expected an integer from 0 to 65535, got "99999"\n');
  });
});

/** Start the CLI and wait until its stderr matches `ready`. */
function spawnCliUntil(args: string[], ready: RegExp): Promise<{ child: ChildProcess; stderr: () => string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d) => {
      err += d;
      if (ready.test(err)) resolve({ child, stderr: () => err });
    });
    child.once('exit', (code) => reject(new Error(`exited ${code}: ${err}`)));
  });
}
