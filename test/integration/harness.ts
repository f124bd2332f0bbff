/**
 * Integration-test harness: our server on a real socket, real client tools.
 *
 * Peers come from Debian packages (libnbd-bin, python3-libnbd, qemu-utils,
 * nbdkit, fio). The test command (scripts/test.sh) installs them when
 * missing; a test whose peer is still missing FAILS (never skips), with the
 * package to install in the message.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { afterEach } from 'vitest';
import type { Subscription } from 'rxjs';
import { createServer, memoryBackend, type MemoryBackend, type NbdServer, type ServerOptions } from '../../src/index.js';
import { silentLogger, type Logger } from '../../src/transport/logger.js';

export const execFileP = promisify(execFile);

/** Debian package of every peer tool. */
export const PEERS: Record<string, string> = {
  nbdinfo: 'libnbd-bin',
  nbdcopy: 'libnbd-bin',
  nbdsh: 'libnbd-bin',
  'qemu-img': 'qemu-utils',
  'qemu-io': 'qemu-utils',
  nbdkit: 'nbdkit',
  fio: 'fio',
  'nbd-server': 'nbd-server',
  'nbd-client': 'nbd-client',
  certtool: 'gnutls-bin',
  psktool: 'gnutls-bin',
  sfdisk: 'fdisk',
  fdisk: 'fdisk',
};

/** Throw (never skip) when a peer tool is missing. */
export function requireTool(name: string): string {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/bin', '/usr/sbin'])) {
    const p = path.join(dir, name);
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`peer tool "${name}" is missing: apt-get install ${PEERS[name] ?? name}`);
}

/** Debian's python3 with the libnbd binding (the first python3 on PATH may be another one). */
export function requirePythonNbd(): string {
  const py = '/usr/bin/python3';
  if (!fs.existsSync(py) || !fs.existsSync('/usr/lib/python3/dist-packages/nbd.py')) {
    throw new Error('python3-libnbd is missing: apt-get install python3-libnbd');
  }
  return py;
}

export function tmpDir(prefix = 'nbd-engine-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export interface Running {
  server: NbdServer;
  socket: string;
  /** nbd+unix URI of the named export (default: the first export). */
  uri(exportName?: string): string;
  dir: string;
  logs: string[];
  close(): Promise<void>;
}

/** A logger that records lines (for assertions on "one clear log line"). */
export function recordingLogger(lines: string[]): Logger {
  const push = (level: string) => (m: string) => lines.push(`${level}: ${m}`);
  return { debug: push('debug'), info: push('info'), warn: push('warn'), error: push('error') };
}

/** Start createServer(options) on a fresh UNIX socket. */
export async function startServer(options: ServerOptions): Promise<Running> {
  const dir = tmpDir();
  const socket = path.join(dir, 'nbd.sock');
  const logs: string[] = [];
  const server = createServer({ logger: recordingLogger(logs), ...options });
  await server.listen({ path: socket });
  return {
    server,
    socket,
    dir,
    logs,
    uri: (name = options.exports[0]!.name) => `nbd+unix:///${encodeURIComponent(name)}?socket=${socket}`,
    close: async () => {
      await server.close({ timeout: 2000 });
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * One server per test: `serve()` starts it on a fresh socket; it, and every
 * subscription handed to `track()`, ends after each test.
 */
export function serverPerTest(): { serve(options: ServerOptions): Promise<Running>; track(subscription: Subscription): void } {
  let running: Running | undefined;
  let subscriptions: Subscription[] = [];
  afterEach(async () => {
    for (const s of subscriptions) s.unsubscribe();
    subscriptions = [];
    await running?.close();
    running = undefined;
  });
  return {
    serve: async (options) => (running = await startServer(options)),
    track: (subscription) => void subscriptions.push(subscription),
  };
}

/** Run a peer tool; resolves with stdout/stderr, rejects with them on failure. */
export async function run(tool: string, args: string[], opts: { timeout?: number; env?: NodeJS.ProcessEnv; input?: string } = {}) {
  requireTool(tool);
  return execFileP(tool, args, { timeout: opts.timeout ?? 60_000, env: { ...process.env, ...opts.env }, maxBuffer: 64 * 1024 * 1024 });
}

export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Run a command to its end; never rejects (the exit code is the result). Past
 * `timeout` ms it is killed (a server that should have refused to start and
 * waits instead ends with code null, which fails the test).
 */
export function runToEnd(cmd: string, args: readonly string[], timeout = 60_000): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeout);
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** `nbd-engine ARGS` (the built CLI) to its end, as runToEnd. */
export function cliToEnd(args: readonly string[], timeout = 60_000): Promise<Ran> {
  return runToEnd(process.execPath, [CLI, ...args], timeout);
}

/** Run a Python script with Debian's python3 + libnbd; returns stdout. */
export async function nbdPython(script: string, args: string[] = [], timeout = 60_000): Promise<string> {
  const py = requirePythonNbd();
  return new Promise((resolve, reject) => {
    const child = spawn(py, ['-c', script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeout);
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`python exited ${code}\n${err}\n${out}`));
    });
  });
}

/** Path of the CLI entry (compiled by `npm run build`). */
export const CLI = fileURLToPath(new URL('../../bin/nbd-engine.js', import.meta.url));

/** Spawn the CLI; resolves once it printed its first URI. */
export function spawnCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ child: ChildProcess; uris: string[]; stderr: () => string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('\n')) {
        setTimeout(() => resolve({ child, uris: out.trim().split('\n'), stderr: () => err }), 50);
      }
    });
    child.on('exit', (code) => reject(new Error(`nbd-engine exited ${code} before listening: ${err}`)));
  });
}

export { silentLogger };

/** A memory backend whose zero-copy placements (the whole-block WRITEs it receives into spare buffers) are recorded by offset. */
export function memoryWithPlacements(size: number): { backend: MemoryBackend; placements: () => number[] } {
  const m = memoryBackend({ size });
  const placements: number[] = [];
  const own = m.writeTargets!.bind(m);
  m.writeTargets = (o, l) => {
    const p = own(o, l);
    if (p !== null) placements.push(o);
    return p;
  };
  return { backend: m, placements: () => placements };
}
