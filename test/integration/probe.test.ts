/**
 * `nbd-engine probe` against real servers: nbd-engine itself, nbdkit
 * (memory), qemu-nbd and Debian's nbd-server. nbd-engine, nbdkit and qemu-nbd
 * fail nothing; nbd-server (3.24) fails exactly the two checks whose findings
 * were confirmed by hand (docs: the NBD_OPT_INFO size, checked with
 * python3-libnbd's opt_info too; a GO whose inner name length runs past the
 * option is read past its end, so it never answers). Every check ends within
 * its timeout; writes stay in the announced scratch region.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memoryBackend } from '../../src/index.js';
import { CLI, execFileP, requireTool, startServer, tmpDir, type Running } from './harness.js';
import { until } from './tls-support.js';

interface Line { status: string; rule: string }
interface Report { results: Array<{ status: string; rule: string; detail: string }>; summary: Record<string, number>; scratch: { offset: string; length: number } | null }

async function probeJson(uri: string, extra: string[] = []): Promise<{ code: number; report: Report; stderr: string }> {
  const r = await execFileP(process.execPath, [CLI, 'probe', uri, '--json', '--timeout', '3', ...extra]).then(
    (ok) => ({ code: 0, stdout: ok.stdout, stderr: ok.stderr }),
    (err: { code: number; stdout: string; stderr: string }) => ({ code: err.code, stdout: err.stdout, stderr: err.stderr }),
  );
  return { code: r.code, report: JSON.parse(r.stdout) as Report, stderr: r.stderr };
}

const failed = (r: Report): string[] => r.results.filter((x) => x.status === 'FAIL').map((x) => x.rule);

function background(cmd: string, args: string[]): ChildProcess {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.resume();
  return child;
}

let dir: string;
const children: ChildProcess[] = [];
beforeAll(() => {
  for (const t of ['nbdkit', 'qemu-nbd', 'nbd-server']) requireTool(t);
  dir = tmpDir('nbd-engine-probe-');
});
afterAll(() => {
  for (const c of children) c.kill('SIGTERM');
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('nbd-engine probe', () => {
  let srv: Running;
  afterAll(() => srv?.close());

  it('nbd-engine passes every check it offers; the lines name each rule; exit 0', async () => {
    srv = await startServer({ exports: [{ name: 'disk', backend: memoryBackend({ size: 64 << 20 }) }] });
    const { stdout } = await execFileP(process.execPath, [CLI, 'probe', srv.uri(), '--timeout', '3']);
    const lines = stdout.trim().split('\n');
    expect(lines[0]).toBe(`scratch region: bytes ${(64 << 20) - 65536}..${(64 << 20) - 1} of ${64 << 20} may be overwritten`);
    const results: Line[] = lines.slice(1, -1).map((l) => ({ status: l.slice(0, 14).trim(), rule: l.slice(15).split(/\s+/)[0]! }));
    expect(results.length).toBeGreaterThanOrEqual(20);
    expect(results.filter((r) => r.status === 'FAIL')).toEqual([]);
    expect(results.filter((r) => r.status === 'PASS').length).toBeGreaterThanOrEqual(20);
    const rules = fs.readFileSync(path.join(import.meta.dirname, '../../docs/rules.md'), 'utf8');
    for (const r of results) expect(rules, r.rule).toContain(`### \`${r.rule}\``);
    expect(lines.at(-1)).toMatch(/^\d+ passed, 0 failed, \d+ not advertised, 0 skipped$/);
  });

  it('--read-only writes nothing: the writing check is SKIPPED and the scratch region null', async () => {
    const { code, report } = await probeJson(srv.uri(), ['--read-only']);
    expect(code).toBe(0);
    expect(report.scratch).toBeNull();
    expect(report.results.find((r) => r.rule === 'transmission.flush-durable')!.status).toBe('SKIPPED');
  });

  it('nbdkit memory: nothing fails', async () => {
    const sock = path.join(dir, 'nbdkit.sock');
    children.push(background('nbdkit', ['-f', '-U', sock, 'memory', '64M']));
    await until(() => fs.existsSync(sock), 10_000, 'nbdkit');
    const { code, report } = await probeJson(`nbd+unix:///?socket=${sock}`);
    expect(failed(report)).toEqual([]);
    expect(code).toBe(0);
    // nbdkit serves any export name (the spec allows that), and has no extended headers in Debian 12.
    expect(report.results.find((r) => r.rule === 'option.export-unknown')!.status).toBe('NOT ADVERTISED');
  });

  it('qemu-nbd: nothing fails', async () => {
    const sock = path.join(dir, 'qemu.sock');
    const img = path.join(dir, 'qemu.img');
    fs.writeFileSync(img, Buffer.alloc(0));
    fs.truncateSync(img, 64 << 20);
    children.push(background('qemu-nbd', ['-k', sock, '-f', 'raw', '-x', 'disk', '--persistent', img]));
    await until(() => fs.existsSync(sock), 10_000, 'qemu-nbd');
    const { code, report } = await probeJson(`nbd+unix:///disk?socket=${sock}`);
    expect(failed(report)).toEqual([]);
    expect(code).toBe(0);
  });

  it("Debian's nbd-server: exactly the two confirmed findings fail, each within its timeout; exit 1", async () => {
    const sock = path.join(dir, 'nbd-server.sock');
    const img = path.join(dir, 'ns.img');
    fs.writeFileSync(img, Buffer.alloc(0));
    fs.truncateSync(img, 64 << 20);
    const conf = path.join(dir, 'ns.conf');
    // nbd-server also needs a TCP port (port 0 means inetd mode); it daemonizes and writes its pid.
    fs.writeFileSync(conf, `[generic]\n    unixsock = ${sock}\n    listenaddr = 127.0.0.1\n    port = 0\n[disk]\n    exportname = ${img}\n`.replace('port = 0', `port = ${20000 + (process.pid % 20000)}`));
    const pidFile = path.join(dir, 'ns.pid');
    await execFileP('nbd-server', ['-C', conf, '-p', pidFile]);
    try {
      await until(() => fs.existsSync(sock), 10_000, 'nbd-server');
      const { code, report } = await probeJson(`nbd+unix:///disk?socket=${sock}`);
      expect(failed(report)).toEqual(['option.info-export', 'option.length-mismatch']);
      expect(report.results.find((r) => r.rule === 'option.info-export')!.detail).toMatch(/^INFO says size 0 /);
      expect(report.results.find((r) => r.rule === 'option.length-mismatch')!.detail).toBe('no answer within 3000 ms');
      expect(code).toBe(1);
    } finally {
      await until(() => fs.existsSync(pidFile), 5000, 'the pid file').catch(() => undefined);
      if (fs.existsSync(pidFile)) process.kill(Number(fs.readFileSync(pidFile, 'utf8').trim()), 'SIGTERM');
    }
  });

  it('a bad command line is one stderr line and exit 2; a server that is not there, exit 1', async () => {
    for (const args of [[], ['http://x/'], ['nbd://h/', '--timeout', '0'], ['nbd://h/', '--scratch', '12']]) {
      const e = await execFileP(process.execPath, [CLI, 'probe', ...args]).then(() => null, (err: { code: number; stderr: string }) => err);
      expect(e?.code, args.join(' ')).toBe(2);
      expect(e!.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
    }
    const e = await execFileP(process.execPath, [CLI, 'probe', `nbd+unix:///?socket=${path.join(dir, 'none.sock')}`]).then(() => null, (err: { code: number; stderr: string }) => err);
    expect(e?.code).toBe(1);
    expect(e!.stderr).toMatch(/^nbd-engine probe: cannot negotiate with .*ENOENT/);
  });
});
