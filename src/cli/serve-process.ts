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

/**
 * Call `onGone` once the parent process has exited: the parent pid changes
 * when this process is re-parented (to init or a subreaper). Polled, so it
 * notices within PARENT_POLL_MS; the timer does not keep the process alive.
 */
export function watchParent(onGone: (parent: number) => void, intervalMs = PARENT_POLL_MS): () => void {
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid !== parent) {
      clearInterval(timer);
      onGone(parent);
    }
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
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
