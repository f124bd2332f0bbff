/**
 * The nbd-engine command's process lifecycle when its surroundings misbehave: an unwritable
 * stderr or stdout, repeated stop signals, descriptors running out.
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CLI, cliToEnd, requireTool, run, tmpDir } from './harness.js';

let work: string;
beforeAll(() => {
  requireTool('nbdinfo');
  work = tmpDir();
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

const started: ChildProcess[] = [];
afterEach(() => {
  for (const c of started.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/**
 * Start the CLI with the given stdio (stdin ignored); `exited` resolves with its exit code or signal.
 * Its $TMPDIR (`-U -`) is the test's directory, removed at the end whatever the server left there.
 */
function start(args: string[], stdio: StdioOptions, env: NodeJS.ProcessEnv = {}, command: string[] = [process.execPath, CLI]): { child: ChildProcess; exited: Promise<number | string> } {
  const child = spawn(command[0]!, [...command.slice(1), ...args], { stdio, env: { ...process.env, TMPDIR: work, ...env } });
  started.push(child);
  const exited = new Promise<number | string>((resolve) => child.on('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  return { child, exited };
}

/** Wait until `file` exists (a UNIX socket being listened on), or fail after `ms`. */
async function waitFor(file: string, ms = 20_000): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 50))) if (fs.existsSync(file)) return;
  throw new Error(`${file} did not appear within ${ms} ms`);
}

const size = async (socket: string) => (await run('nbdinfo', ['--size', `nbd+unix:///?socket=${socket}`], { timeout: 20_000 })).stdout.trim();

/** The server on `socket` answers two clients in a row, is still running, and stops cleanly on SIGTERM. */
async function servesTwiceThenStops(socket: string, child: ChildProcess, exited: Promise<number | string>): Promise<void> {
  await waitFor(socket);
  expect(await size(socket)).toBe('1048576');
  expect(await size(socket)).toBe('1048576');
  expect(child.exitCode).toBe(null);
  child.kill('SIGTERM');
  expect(await exited).toBe(0);
}

describe('stderr that cannot be written', () => {
  it('-v with stderr on /dev/full (ENOSPC): the log lines are dropped, two clients in a row are served', async () => {
    const socket = path.join(work, 'full.sock');
    const full = fs.openSync('/dev/full', 'w');
    const { child, exited } = start(['serve', '--no-warm-up', '-v', '-U', socket, 'memory', '1M'], ['ignore', 'ignore', full]);
    fs.closeSync(full);
    await servesTwiceThenStops(socket, child, exited);
    expect(fs.existsSync(socket)).toBe(false);
  });

  it('-v with stderr a pipe whose reader is gone (EPIPE): still serving', async () => {
    const socket = path.join(work, 'epipe.sock');
    const { child, exited } = start(['serve', '--no-warm-up', '-v', '-U', socket, 'memory', '1M'], ['ignore', 'ignore', 'pipe']);
    child.stderr!.destroy(); // the log reader exits before the server's first line
    await servesTwiceThenStops(socket, child, exited);
  });
});

describe('stdout that cannot take the URIs', () => {
  for (const [what, stdout] of [
    ['/dev/full (ENOSPC)', 'full'],
    ['a pipe whose reader is gone (EPIPE)', 'pipe'],
  ] as const) {
    it(`--print-uri with stdout ${what}: one warning naming the URIs, no stack trace, still serving`, async () => {
      const socket = path.join(work, `uri-${stdout}.sock`);
      const full = fs.openSync('/dev/full', 'w');
      const { child, exited } = start(['serve', '--no-warm-up', '--print-uri', '-U', socket, 'memory', '1M'], ['ignore', stdout === 'full' ? full : 'pipe', 'pipe']);
      fs.closeSync(full);
      if (stdout === 'pipe') child.stdout!.destroy();
      let stderr = '';
      child.stderr!.on('data', (d) => (stderr += d));
      await waitFor(socket);
      expect(await size(socket)).toBe('1048576');
      expect(child.exitCode).toBe(null);
      expect(stderr.split('\n').filter(Boolean)).toEqual([expect.stringMatching(/^nbd-engine: warn: cannot print the URIs on stdout: .*(ENOSPC|EPIPE).*; serving on nbd\+unix:\/\/\/\?socket=\S+uri-/)]);
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    });
  }
});

/** Whether process `pid` is gone (or a zombie nobody has reaped yet). */
function gone(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.startsWith('Z');
  } catch {
    return true;
  }
}

describe('a second stop signal', () => {
  const orphans: number[] = [];
  afterEach(() => {
    for (const pid of orphans.splice(0)) if (!gone(pid)) process.kill(pid, 'SIGKILL');
  });
  // The --run command ignores SIGTERM, so the first signal leaves the server waiting for it.
  const RUN = 'trap "" TERM; sleep 30 & echo "$unixsocket $!"; wait';
  for (const [first, second, socketArg] of [
    ['SIGTERM', 'SIGTERM', '-'],
    ['SIGTERM', 'SIGINT', 'own'],
    ['SIGINT', 'SIGHUP', '-'],
  ] as const) {
    it(`${first} then ${second} (-U ${socketArg}): one line, exit at once, socket ${socketArg === '-' ? 'directory' : 'file'} removed, the --run command killed`, async () => {
      const socket = socketArg === '-' ? '-' : path.join(work, `second-${second}.sock`);
      const { child, exited } = start(['serve', '--no-warm-up', '-U', socket, 'memory', '1M', '--run', RUN], ['ignore', 'pipe', 'pipe']);
      let stdout = '';
      let stderr = '';
      child.stdout!.on('data', (d) => (stdout += d));
      child.stderr!.on('data', (d) => (stderr += d));
      for (const end = Date.now() + 20_000; !stdout.includes('\n') && Date.now() < end; ) await new Promise((r) => setTimeout(r, 50));
      const [unixsocket, sleepPid] = stdout.trim().split(' ');
      orphans.push(Number(sleepPid));
      expect(fs.existsSync(unixsocket!)).toBe(true);
      child.kill(first);
      await new Promise((r) => setTimeout(r, 700));
      expect(child.exitCode).toBe(null); // waiting for the command, which ignores SIGTERM
      const t0 = Date.now();
      child.kill(second);
      const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('still running'), 3000))]);
      expect(code).toBe(128 + os.constants.signals[second]);
      expect(Date.now() - t0).toBeLessThan(2000);
      expect(stderr).toMatch(new RegExp(`^nbd-engine: warn: ${second} during shutdown: exiting now \\(.*the --run command killed\\)$`, 'm'));
      expect(fs.existsSync(unixsocket!)).toBe(false);
      if (socketArg === '-') expect(fs.existsSync(path.dirname(unixsocket!))).toBe(false);
      for (let i = 0; i < 40 && !gone(Number(sleepPid)); i++) await new Promise((r) => setTimeout(r, 50));
      expect(gone(Number(sleepPid))).toBe(true);
    });
  }
});

describe('out of file descriptors', () => {
  it('ulimit -n 64 and 100 clients: one warning saying why clients are dropped; served again once they leave', async () => {
    const socket = path.join(work, 'emfile.sock');
    // Only the server is limited: the clients are this process's sockets.
    const { child, exited } = start(['serve', '--no-warm-up', '-U', socket, 'memory', '1M'], ['ignore', 'ignore', 'pipe'], {}, ['/bin/sh', '-c', 'ulimit -n 64 && exec "$0" "$@"', process.execPath, CLI]);
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    await waitFor(socket);
    const clients = await Promise.all(
      Array.from({ length: 100 }, () => new Promise<net.Socket>((resolve) => {
        const s = net.connect(socket, () => resolve(s));
        s.on('error', () => resolve(s));
      })),
    );
    await new Promise((r) => setTimeout(r, 1000));
    const lines = stderr.split('\n').filter(Boolean);
    expect(lines).toEqual([expect.stringMatching(/^nbd-engine: warn: out of file descriptors: all 64 \(ulimit -n\) are open.*; new connections are dropped until some close$/)]);
    for (const c of clients) c.destroy();
    await new Promise((r) => setTimeout(r, 500));
    expect(await size(socket)).toBe('1048576');
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});

describe('-U in a directory that does not exist', () => {
  it('one line saying the directory does not exist (libuv says EACCES, "permission denied"), exit 1', async () => {
    const missing = path.join(work, 'no-such-dir', 'x.sock');
    const r = await cliToEnd(['serve', '--no-warm-up', '-U', missing, 'memory', '1M'], 30_000);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`nbd-engine: cannot listen: ${missing}: no such file or directory: the directory ${path.dirname(missing)} does not exist\n`);
  });
});

describe('socket activation with a UNIX socket', () => {
  it('--print-uri prints the inherited socket\'s URI (its path read from /proc), and it serves', async () => {
    const socket = path.join(work, 'activated.sock');
    // Bind and listen, put the socket on fd 3, name this process in LISTEN_PID, exec the server.
    const activate = [
      'import os, socket, sys',
      's = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()',
      'os.dup2(s.fileno(), 3); os.set_inheritable(3, True)',
      "os.environ['LISTEN_FDS'] = '1'; os.environ['LISTEN_PID'] = str(os.getpid())",
      'os.execv(sys.argv[2], sys.argv[2:])',
    ].join('\n');
    const { child, exited } = start(['serve', '--print-uri', 'memory', '1M'], ['ignore', 'pipe', 'pipe'], {}, ['/usr/bin/python3', '-c', activate, socket, process.execPath, CLI]);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    for (const end = Date.now() + 20_000; !stdout.includes('\n') && child.exitCode === null && Date.now() < end; ) await new Promise((r) => setTimeout(r, 50));
    expect(stdout, stderr).toBe(`nbd+unix:///?socket=${socket}\n`);
    expect((await run('nbdinfo', ['--size', stdout.trim()], { timeout: 20_000 })).stdout.trim()).toBe('1048576');
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});
