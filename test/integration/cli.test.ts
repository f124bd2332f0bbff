/**
 * The nbd-engine command (dist/, built by the global setup) with real clients:
 * socket activation, --run, --socket/--port, sizes, read-only, bad arguments.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, requireTool, run, spawnCli, tmpDir } from './harness.js';

const node = process.execPath;

/** Run the CLI to completion; never rejects (the exit code is the result). */
function cli(args: string[], timeout = 30_000): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(node, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeout);
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

let work: string;
beforeAll(() => {
  requireTool('nbdinfo');
  requireTool('qemu-io');
  work = tmpDir();
});
afterAll(() => {
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

describe('socket activation', () => {
  it('nbdinfo -- [ nbd-engine serve --memory 64M ] reports the size', async () => {
    const { stdout } = await run('nbdinfo', ['--', '[', node, CLI, 'serve', '--memory', '64M', ']']);
    expect(stdout).toMatch(/export-size: 67108864\b/);
    const size = await run('nbdinfo', ['--size', '--', '[', node, CLI, 'serve', '--memory', '64M', ']']);
    expect(size.stdout.trim()).toBe('67108864');
  });

  it('nbdinfo --json reports the export name and description of the activated server', async () => {
    const json = await run('nbdinfo', ['--json', '--', '[', node, CLI, 'serve', '--memory', '1M', '--export', 'act', '--description', 'activated', ']']);
    const info = JSON.parse(json.stdout) as { exports: Array<{ 'export-name': string; 'export-size': number; description?: string; is_read_only: boolean }> };
    expect(info.exports[0]).toMatchObject({ 'export-name': 'act', 'export-size': 1048576, description: 'activated', is_read_only: false });
  });
});

describe('--run', () => {
  it("--run 'nbdinfo $uri' exits 0 and prints the size", async () => {
    const r = await cli(['serve', '--memory', '16M', '--run', 'nbdinfo $uri']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/export-size: 16777216\b/);
  });

  it("--run 'exit 3' exits 3", async () => {
    const r = await cli(['serve', '--memory', '16M', '--run', 'exit 3']);
    expect(r.code).toBe(3);
  });

  it('--run sets $uri and $unixsocket, and qemu-io can write and verify through it', async () => {
    const r = await cli([
      'serve', '--memory', '4M', '--export', 'disk', '--run',
      'echo "uri=$uri"; echo "sock=$unixsocket"; test -S "$unixsocket" && qemu-io -f raw -c "write -P 0x77 4k 12k" -c "read -P 0x77 4k 12k" -c "read -P 0 0 4k" "$uri"',
    ]);
    expect(r.stderr).not.toMatch(/Pattern verification failed/);
    expect(r.code).toBe(0);
    const sock = /sock=(.*)/.exec(r.stdout)![1]!;
    expect(r.stdout).toContain(`uri=nbd+unix:///disk?socket=${sock}`);
    expect(r.stdout).toMatch(/read 12288\/12288 bytes at offset 4096/);
    // The private socket is gone after exit.
    expect(fs.existsSync(sock)).toBe(false);
  });

  it('size suffixes', async () => {
    const cases: Array<[string, number]> = [
      ['1G', 2 ** 30],
      ['512M', 512 * 2 ** 20],
      ['64k', 65536],
      ['8s', 4096],
      ['1048576', 1048576],
      ['2T', 2 * 2 ** 40],
    ];
    for (const [text, bytes] of cases) {
      const r = await cli(['serve', '--memory', text, '--run', 'nbdinfo --size "$uri"']);
      expect(r.code, `${text}: ${r.stderr}`).toBe(0);
      expect(r.stdout.trim(), text).toBe(String(bytes));
    }
  });

  it('-r serves read-only: nbdinfo says so and writes fail', async () => {
    const r = await cli(['serve', '--memory', '1M', '-r', '--run', 'nbdinfo "$uri" && qemu-io -f raw -c "write -P 1 0 4k" "$uri"']);
    expect(r.stdout).toMatch(/is_read_only: true/);
    expect(r.stdout + r.stderr).toMatch(/read-only|Operation not permitted|Permission denied/i);
    expect(r.code).not.toBe(0);
    const ok = await cli(['serve', '--memory', '1M', '--read-only', '--run', 'qemu-io -r -f raw -c "read -P 0 0 64k" "$uri"']);
    expect(ok.code, ok.stderr).toBe(0);
  });
});

describe('--socket and --port', () => {
  it('prints URIs, nbdinfo works on both, SIGTERM stops it', async () => {
    const sock = path.join(work, 'cli.sock');
    const { child, uris, stderr } = await spawnCli(['serve', '--memory', '2M', '--export', 'x', '--socket', sock, '--port', '0', '--host', '127.0.0.1']);
    try {
      expect(uris).toHaveLength(2);
      expect(uris[0]).toBe(`nbd+unix:///x?socket=${sock}`);
      expect(uris[1]).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/x$/);
      expect(uris[1]).not.toMatch(/:0\//);
      for (const uri of uris) {
        const { stdout } = await run('nbdinfo', ['--size', uri]);
        expect(stdout.trim()).toBe('2097152');
      }
      const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 0 8k', uris[0]!]);
      expect(io.stdout).toMatch(/wrote 8192\/8192/);
      const rd = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x42 0 8k', uris[1]!]);
      expect(rd.stdout).toMatch(/read 8192\/8192/);
    } finally {
      const exited = new Promise<[number | null, NodeJS.Signals | null]>((r) => child.once('exit', (c, s) => r([c, s])));
      child.kill('SIGTERM');
      const [code, signal] = await exited;
      expect(signal).toBeNull();
      expect(code, stderr()).toBe(0);
    }
    expect(fs.existsSync(sock)).toBe(false);
  });
});

describe('bad arguments', () => {
  const cases: Array<[string, string[], RegExp]> = [
    ['unknown option', ['serve', '--bogus'], /bogus/],
    ['unknown command', ['frobnicate'], /unknown command/],
    ['positional argument', ['serve', 'extra'], /extra|positional/i],
    ['--memory and --file', ['serve', '--memory', '1M', '--file', '/dev/null'], /exclusive/],
    ['bad --port', ['serve', '--memory', '1M', '--port', '99999'], /port/],
    ['bad size', ['serve', '--memory', 'lots'], /size/],
    ['bad --tls', ['serve', '--tls', 'maybe'], /tls/],
    ['missing option value', ['serve', '--memory'], /memory/],
  ];
  for (const [what, args, message] of cases) {
    it(`${what} exits 2 with a message`, async () => {
      const r = await cli(args);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).toMatch(/^nbd-engine: /);
    });
  }

  it('--help exits 0 with usage', async () => {
    const r = await cli(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/usage: nbd-engine serve/);
  });
});
