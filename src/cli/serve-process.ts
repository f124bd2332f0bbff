/**
 * The process-level pieces of `nbd-engine serve` that nbdkit has as options:
 * one connection on stdin/stdout (`-s`), exiting with the parent
 * (`--exit-with-parent`), the pid file (`-P`), the version (`-V`) and the
 * `--run` command's environment.
 */
import fs from 'node:fs';
import net from 'node:net';
import { Duplex } from 'node:stream';
import type { BoundAddress } from '../transport/listen.js';

/**
 * stdin and stdout as one stream, for `-s`. libnbd's connect_command (and
 * inetd) give a socket as both: then that socket itself, so replies go out
 * through the event loop rather than process.stdout's blocking writes.
 * Anything else (two pipes) is joined into one duplex.
 */
export function stdioStream(): Duplex {
  const same = (() => {
    try {
      const a = fs.fstatSync(0);
      const b = fs.fstatSync(1);
      return a.isSocket() && a.dev === b.dev && a.ino === b.ino;
    } catch {
      return false;
    }
  })();
  if (same) return new net.Socket({ fd: 0, readable: true, writable: true });
  return Duplex.from({ readable: process.stdin, writable: process.stdout });
}

/** How often `--exit-with-parent` looks at the parent (Node has no prctl(PR_SET_PDEATHSIG)). */
export const PARENT_POLL_MS = 250;

/** The parent when the process started, as bin/nbd-engine.js read it before loading the CLI. */
let startParent: number | undefined;

/**
 * Note the parent pid as the process starts (bin/nbd-engine.js, before the CLI's modules load): a
 * parent that exits during start-up (loading, the warm-up, opening the backend: up to a second or
 * two) is then still seen as gone. The first call counts.
 */
export function recordStartParent(pid: number): void {
  startParent ??= pid;
}

/**
 * Call `onGone` once the parent process has exited: the parent pid changes
 * when this process is re-parented (to init or a subreaper). Polled, so it
 * notices within PARENT_POLL_MS; the timer does not keep the process alive.
 * The parent is the one at start (recordStartParent) when known, so one
 * gone before this is called is reported at once.
 */
export function watchParent(onGone: (parent: number) => void, intervalMs = PARENT_POLL_MS, parent = startParent ?? process.ppid): () => void {
  const timer = setInterval(check, intervalMs);
  timer.unref();
  function check(): void {
    if (process.ppid !== parent) {
      clearInterval(timer);
      onGone(parent);
    }
  }
  const first = setImmediate(check);
  return () => {
    clearImmediate(first);
    clearInterval(timer);
  };
}

/**
 * `pid` and every process below it, parents before their children (Linux: /proc/PID/task/TID/children).
 * Where /proc says nothing, just `pid`.
 */
export function processTree(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length && out.length < 4096; i++) {
    let tasks: string[];
    try {
      tasks = fs.readdirSync(`/proc/${out[i]}/task`);
    } catch {
      continue;
    }
    for (const t of tasks) {
      let children = '';
      try {
        children = fs.readFileSync(`/proc/${out[i]}/task/${t}/children`, 'utf8');
      } catch {
        continue;
      }
      for (const c of children.split(' ')) if (c.trim() !== '') out.push(Number(c));
    }
  }
  return out;
}

/**
 * Signal the `--run` command and everything it started: the shell alone would leave its children
 * (`sleep`, a client) running under init once it dies. The tree is read before any signal is sent.
 */
export function signalTree(pid: number, signal: NodeJS.Signals): void {
  for (const p of processTree(pid)) {
    try {
      process.kill(p, signal);
    } catch {
      // gone already
    }
  }
}

/** The package's version (package.json sits two levels above both src/cli and dist/cli). */
export function packageVersion(): string {
  const pkg = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** `-P FILE`: the pid and a newline, written once the server is ready (replacing any old file; left at exit, as nbdkit). */
export function writePidfile(file: string): void {
  fs.writeFileSync(file, `${process.pid}\n`);
}

/**
 * nbdkit-captive(1)'s `--run` variables: $uri and $nbd (the same URI),
 * $port and $unixsocket (empty when not listening there), $exportname, and
 * $tls (1 for --tls=on, 2 for require, unset when off).
 */
export function runEnvironment(
  base: NodeJS.ProcessEnv,
  o: { uri: string; addresses: readonly BoundAddress[]; unixSocket?: string; exportName: string; tlsMode: 'off' | 'on' | 'require' },
): NodeJS.ProcessEnv {
  const tcp = o.addresses.find((a) => a.kind === 'tcp');
  const env: NodeJS.ProcessEnv = {
    ...base,
    uri: o.uri,
    nbd: o.uri,
    port: tcp?.port !== undefined ? String(tcp.port) : '',
    unixsocket: o.unixSocket ?? '',
    exportname: o.exportName,
  };
  if (o.tlsMode === 'off') delete env.tls;
  else env.tls = o.tlsMode === 'on' ? '1' : '2';
  return env;
}
