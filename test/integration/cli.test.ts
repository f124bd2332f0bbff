/**
 * The nbd-engine command (dist/, built by the global setup) with real clients:
 * socket activation, --run, --socket/--port, sizes, read-only, bad arguments.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, memoryBackend, WARM_UP_ROUNDS } from '../../src/index.js';
import { WARM_UP_CONNECTIONS_PER_ROUND } from '../../src/api/warm-up.js';
import { CLI, requireTool, run, spawnCli, startServer, tmpDir, silentLogger } from './harness.js';

const node = process.execPath;

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Run the CLI to completion; never rejects (the exit code is the result). */
function cli(args: string[], timeout = 30_000, env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(node, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
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

/**
 * Run a command in its own process group to completion (its exit, and every
 * copy of its stdout / stderr closed); never rejects. On the timeout, and
 * (unless `reap` is false) once it has exited, whatever it left running in the
 * group (a server it started through a launcher) gets SIGTERM, so a failing
 * test leaks nothing. `timedOut` tells whether the timeout had to end it.
 */
function runGrouped(
  cmd: string,
  args: string[],
  { timeout = 30_000, reap = true }: { timeout?: number; reap?: boolean } = {},
): Promise<{ code: number | null; stdout: string; stderr: string; timedOut: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const killGroup = () => {
      try {
        process.kill(-child.pid!, 'SIGTERM');
      } catch {
        /* the group is gone */
      }
    };
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup();
    }, timeout);
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', () => {
      if (reap) killGroup();
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      killGroup();
      resolve({ code, stdout, stderr, timedOut });
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

  it('through a launcher that stays as the parent (LISTEN_PID names it, not us): still served', async () => {
    // The shell runs node as its child (it cannot exec it in its place), so LISTEN_PID is the
    // shell's pid, as it is under timeout and similar wrappers; the shell keeps fd 3 open for
    // its child. (The trap passes nbdinfo's SIGTERM on: a plain `sh -c` would die and leave
    // the server running.)
    const script = `"${node}" "${CLI}" serve --memory 64M & trap 'kill $!' TERM; wait $!; wait $!`;
    requireTool('nbdinfo');
    const viaShell = await runGrouped('nbdinfo', ['--size', '--', '[', 'sh', '-c', script, ']']);
    expect(viaShell.code, viaShell.stderr).toBe(0);
    expect(viaShell.stdout.trim()).toBe('67108864');
    const viaTimeout = await runGrouped('nbdinfo', ['--size', '--', '[', 'timeout', '60', node, CLI, 'serve', '--memory', '2M', ']']);
    expect(viaTimeout.code, viaTimeout.stderr).toBe(0);
    expect(viaTimeout.stdout.trim()).toBe('2097152');
  });

  it('a launcher that dies of the activating program\'s SIGTERM (plain sh -c): the orphaned server stops by itself', async () => {
    // nbdinfo SIGTERMs its child, the shell, which dies without passing the signal on. The
    // server still holds nbdinfo's stdout and stderr, so the run only completes once the
    // server has exited on its own (else the timeout ends it and the test fails).
    requireTool('nbdinfo');
    const script = `"${node}" "${CLI}" serve --memory 1M; exit $?`;
    const r = await runGrouped('nbdinfo', ['--size', '--', '[', 'sh', '-c', script, ']'], { reap: false });
    expect(r.timedOut, r.stderr).toBe(false);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe('1048576');
  });

  it("the README's `nbdinfo -- [ npx nbd-engine serve --memory 64M ]`: npx closes fd 3, the server says so in one line and exits, nbdinfo does not hang", async () => {
    // npm exec runs the bin as `sh -c nbd-engine …` from Node, and Node passes a child only
    // fds 0–2: the listening socket never reaches nbd-engine. Listening elsewhere would leave
    // nbdinfo waiting for ever (the old behaviour: this test then hits its timeout).
    requireTool('npx');
    const r = await runGrouped('nbdinfo', ['--size', '--', '[', 'npx', '--offline', 'nbd-engine', 'serve', '--memory', '64M', ']']);
    expect(r.code, r.stderr).toBe(1);
    const ours = r.stderr.split('\n').filter((l) => l.startsWith('nbd-engine:'));
    expect(ours, r.stderr).toHaveLength(1);
    expect(ours[0]).toMatch(/^nbd-engine: cannot listen: socket activation: LISTEN_FDS=1 was passed to process \d+ \(npm exec[^)]*\), which started this one, but fd 3 is not an open socket here: .*npx.*node_modules\/\.bin\/nbd-engine/);
  });

  it('LISTEN_PID naming an ancestor whose socket did not arrive: one line, exit 1 (not a server on the defaults)', async () => {
    // This test process is the CLI's parent, and Node gives the CLI no fd 3: what npx does.
    const r = await cli(['serve', '--memory', '1M', '--socket', path.join(work, 'lost.sock')], 30_000, { LISTEN_PID: String(process.pid), LISTEN_FDS: '1' });
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^nbd-engine: cannot listen: socket activation: LISTEN_FDS=1 was passed to process ${process.pid} .*, but fd 3 is not an open socket here: .*\n$`));
    expect(r.stdout).toBe('');
  });

  it('LISTEN_FDS meant for another process: one warning saying it is ignored and why, then the usual listeners', async () => {
    const sock = path.join(work, 'stale-env.sock');
    // No process has pid 99999999 (above Linux's pid_max).
    const { child, uris, stderr } = await spawnCli(['serve', '--memory', '1M', '--socket', sock], { LISTEN_PID: '99999999', LISTEN_FDS: '1' });
    try {
      expect(uris).toEqual([`nbd+unix:///?socket=${sock}`]);
      const { stdout } = await run('nbdinfo', ['--size', uris[0]!]);
      expect(stdout.trim()).toBe('1048576');
      const warnings = stderr().split('\n').filter(Boolean);
      expect(warnings).toEqual([
        `nbd-engine: warn: socket activation ignored: LISTEN_PID=99999999 is neither this process (${child.pid}) nor one of its parents: left over from another program's socket activation`,
      ]);
    } finally {
      await stop(child);
    }
  });

  it('--run children do not inherit the activation variables', async () => {
    const script = `"${node}" "${CLI}" serve --memory 1M --run 'echo "pid=[$LISTEN_PID] fds=[$LISTEN_FDS]" >&2'; exit $?`;
    // The shell's own nbd-engine takes the socket; its --run child must not see LISTEN_*.
    const r = await run('sh', ['-c', script], { env: { LISTEN_PID: '99999999', LISTEN_FDS: '1' } });
    expect(r.stderr).toMatch(/pid=\[\] fds=\[\]/);
  });
});

/** SIGTERM a spawned CLI and wait for it. */
async function stop(child: import('node:child_process').ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  await exited;
}

describe('--socket on a path that is taken', () => {
  const inUse = /^nbd-engine: cannot listen: .*address in use.*\n$/;

  it('a live API server on the path: the CLI refuses (exit 1, one line) and the first server keeps answering', async () => {
    const first = await startServer({ exports: [{ name: '', backend: memoryBackend({ size: 3 << 20 }) }] });
    try {
      const r = await cli(['serve', '--memory', '1M', '--socket', first.socket]);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toMatch(inUse);
      expect(r.stderr).toContain(first.socket);
      expect(fs.statSync(first.socket).isSocket()).toBe(true);
      const { stdout } = await run('nbdinfo', ['--size', first.uri()]);
      expect(stdout.trim()).toBe(String(3 << 20));
    } finally {
      await first.close();
    }
  });

  it('a live CLI server on the path: a second CLI refuses, the first still answers and still cleans up', async () => {
    const sock = path.join(work, 'taken.sock');
    const { child, uris } = await spawnCli(['serve', '--memory', '2M', '--socket', sock]);
    try {
      const r = await cli(['serve', '--memory', '1M', '--socket', sock]);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toMatch(inUse);
      const { stdout } = await run('nbdinfo', ['--size', uris[0]!]);
      expect(stdout.trim()).toBe('2097152');
    } finally {
      await stop(child);
    }
    expect(fs.existsSync(sock)).toBe(false);
  });

  it('the API: listen() on a live socket rejects with EADDRINUSE, the first server keeps answering', async () => {
    const first = await startServer({ exports: [{ name: '', backend: memoryBackend({ size: 1 << 20 }) }] });
    const second = createServer({ exports: [{ name: '', backend: memoryBackend({ size: 1 << 20 }) }], logger: silentLogger });
    try {
      const err = await second.listen({ path: first.socket }).then(
        () => undefined,
        (e: unknown) => e as NodeJS.ErrnoException,
      );
      expect(err?.code).toBe('EADDRINUSE');
      expect(err?.message).toMatch(/address in use/);
      const { stdout } = await run('nbdinfo', ['--size', first.uri()]);
      expect(stdout.trim()).toBe('1048576');
    } finally {
      await second.close({ timeout: 0 });
      await first.close();
    }
  });

  it('a stale socket left by a killed server is replaced', async () => {
    const sock = path.join(work, 'stale.sock');
    const { child } = await spawnCli(['serve', '--memory', '1M', '--socket', sock]);
    const killed = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGKILL');
    await killed;
    expect(fs.statSync(sock).isSocket()).toBe(true); // left behind
    const next = await spawnCli(['serve', '--memory', '4M', '--socket', sock]);
    try {
      const { stdout } = await run('nbdinfo', ['--size', next.uris[0]!]);
      expect(stdout.trim()).toBe('4194304');
      expect(next.stderr()).toBe('');
    } finally {
      await stop(next.child);
    }
  });

  it('a path that is not a socket is never removed', async () => {
    const file = path.join(work, 'not-a-socket');
    fs.writeFileSync(file, 'keep me');
    const r = await cli(['serve', '--memory', '1M', '--socket', file]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/^nbd-engine: cannot listen: .*not-a-socket: address in use: the path exists and is not a socket.*\n$/);
    expect(fs.readFileSync(file, 'utf8')).toBe('keep me');
  });
});

describe('UNIX socket paths longer than sun_path', () => {
  it('--socket with a path over 107 bytes is refused (nbdkit: path too long), not cut short and listened on elsewhere', async () => {
    const dir = tmpDir();
    const long = path.join(dir, `${'z'.repeat(Math.max(1, 120 - dir.length))}.sock`);
    expect(Buffer.byteLength(long)).toBeGreaterThan(107);
    const r = await cli(['serve', '--memory', '1M', '--socket', long]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/^nbd-engine: cannot listen: listen: path: too long: \d+ bytes > 107 /);
    // Nothing was made under a shortened name.
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('-U - and the warm-up with a $TMPDIR too long for a socket: served from a directory under /tmp, warm-up complete', async () => {
    const long = path.join(tmpDir(), 'T'.repeat(100));
    fs.mkdirSync(long);
    const r = await cli(['serve', '-v', '-U', '-', 'memory', '1M', '--run', 'nbdinfo --size "$uri"; echo "$unixsocket"'], 30_000, { TMPDIR: long });
    expect(r.code, r.stderr).toBe(0);
    const [size, socket] = r.stdout.trim().split('\n');
    expect(size).toBe('1048576');
    expect(socket).toMatch(/^\/tmp\/nbd-engine-[^/]+\/nbd\.sock$/);
    expect(fs.existsSync(path.dirname(socket!))).toBe(false); // removed at exit
    expect(r.stderr).toMatch(new RegExp(`warm-up: ${WARM_UP_ROUNDS * WARM_UP_CONNECTIONS_PER_ROUND} connections, \\d+ requests in \\d+ ms\n`));
    expect(r.stderr).not.toMatch(/warm-up: .*\(/); // no warm-up failure noted
    expect(fs.readdirSync(long)).toEqual([]); // nothing left in $TMPDIR
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
