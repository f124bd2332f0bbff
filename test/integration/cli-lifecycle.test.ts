/**
 * The nbd-engine command's process lifecycle when its surroundings misbehave: an unwritable
 * stderr or stdout, repeated stop signals, descriptors running out.
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CLI, requireTool, run, tmpDir } from './harness.js';

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

/** Start the CLI with the given stdio (stdin ignored); `exited` resolves with its exit code or signal. */
function start(args: string[], stdio: StdioOptions, env: NodeJS.ProcessEnv = {}): { child: ChildProcess; exited: Promise<number | string> } {
  const child = spawn(process.execPath, [CLI, ...args], { stdio, env: { ...process.env, ...env } });
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

describe('stderr that cannot be written', () => {
  it('-v with stderr on /dev/full (ENOSPC): the log lines are dropped, two clients in a row are served', async () => {
    const socket = path.join(work, 'full.sock');
    const full = fs.openSync('/dev/full', 'w');
    const { child, exited } = start(['serve', '--no-warm-up', '-v', '-U', socket, 'memory', '1M'], ['ignore', 'ignore', full]);
    fs.closeSync(full);
    await waitFor(socket);
    expect(await size(socket)).toBe('1048576');
    expect(await size(socket)).toBe('1048576');
    expect(child.exitCode).toBe(null);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(fs.existsSync(socket)).toBe(false);
  });

  it('-v with stderr a pipe whose reader is gone (EPIPE): still serving', async () => {
    const socket = path.join(work, 'epipe.sock');
    const { child, exited } = start(['serve', '--no-warm-up', '-v', '-U', socket, 'memory', '1M'], ['ignore', 'ignore', 'pipe']);
    child.stderr!.destroy(); // the log reader exits before the server's first line
    await waitFor(socket);
    expect(await size(socket)).toBe('1048576');
    expect(await size(socket)).toBe('1048576');
    expect(child.exitCode).toBe(null);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
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
