/**
 * Listeners: UNIX sockets, TCP (IPv4 / IPv6), and systemd socket activation
 * (LISTEN_PID / LISTEN_FDS, first fd 3), each a `net.Server` whose sockets
 * are handed to `onSocket`.
 */
import dns from 'node:dns';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NbdError } from '../api/errors.js';
import { socketFd } from './user-buffer.js';

export type ListenTarget =
  | { readonly path: string }
  | { readonly port: number; readonly host?: string }
  | { readonly fd: number };

export interface BoundAddress {
  readonly kind: 'unix' | 'tcp' | 'fd';
  readonly path?: string;
  readonly host?: string;
  readonly port?: number;
  readonly fd?: number;
}

/** What socket activation (LISTEN_PID / LISTEN_FDS) gives this process. */
export interface Activation {
  /** The inherited listening sockets (fd 3, 4, …), or [] when there are none to use. */
  readonly fds: number[];
  /**
   * Why LISTEN_FDS was set but is not used, in one line; absent when it is
   * used or was never set.
   */
  readonly ignored?: string;
  /**
   * True when LISTEN_PID names this process or one of its ancestors, so a
   * client is waiting on those sockets, yet they did not reach this process
   * (something in between, such as npx, closed them): serving anywhere else
   * leaves that client waiting for ever.
   */
  readonly lost?: boolean;
}

/** How activation looks at the process tree and the descriptors; replaceable in tests. */
export interface ActivationProbe {
  readonly pid: number;
  /** Parent pid of `pid`, or undefined when it cannot be read. */
  parentOf(pid: number): number | undefined;
  /** Short description of a process for messages ("npm exec"), or undefined. */
  describe(pid: number): string | undefined;
  /** Whether `fd` is open in this process and is a socket. */
  isSocket(fd: number): boolean;
}

/** Parent pid from /proc/<pid>/stat (Linux); the command name may hold spaces and parentheses. */
function procParent(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    return Number.isInteger(ppid) && ppid >= 0 ? ppid : undefined;
  } catch {
    return undefined;
  }
}

function procDescribe(pid: number): string | undefined {
  try {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    if (cmd.length === 0) return undefined;
    const line = cmd.slice(0, 3).join(' ');
    return line.length > 60 ? `${line.slice(0, 57)}...` : line;
  } catch {
    return undefined;
  }
}

export const processProbe: ActivationProbe = {
  get pid() {
    return process.pid;
  },
  parentOf: procParent,
  describe: procDescribe,
  isSocket(fd) {
    // Node's own IPC channel (when started with an 'ipc' stdio) is a socket too, and never a listener.
    if (process.env.NODE_CHANNEL_FD !== undefined && Number(process.env.NODE_CHANNEL_FD) === fd) return false;
    try {
      return fs.fstatSync(fd).isSocket();
    } catch {
      return false;
    }
  },
};

/** Whether `ancestor` is a (grand…)parent of `pid`. */
export function isAncestor(ancestor: number, probe: Pick<ActivationProbe, 'pid' | 'parentOf'> = processProbe): boolean {
  let p: number | undefined = probe.pid;
  // init (pid 1) is everyone's ancestor and never the one activated. Bounded:
  // a process tree deeper than this is not a real one.
  if (ancestor <= 1) return false;
  for (let depth = 0; depth < 1024 && p !== undefined && p > 1; depth++) {
    p = probe.parentOf(p);
    if (p === ancestor) return true;
  }
  return false;
}

/**
 * systemd-style socket activation (sd_listen_fds(3)): LISTEN_FDS sockets
 * from fd 3 on, for the process LISTEN_PID names. LISTEN_PID may also name
 * an ancestor of this process, provided the descriptors really are open
 * sockets here: launchers such as `sh -c`, `timeout` or `env` may sit
 * between the activating program (nbdinfo's `[ CMD ]`, systemd) and the
 * server, and keep descriptors open. npx (npm exec) does not: Node passes a
 * child only its stdin, stdout and stderr, so the sockets never arrive; that
 * case is reported as `lost`.
 */
export function socketActivation(env: NodeJS.ProcessEnv = process.env, probe: ActivationProbe = processProbe): Activation {
  const fdsText = env.LISTEN_FDS;
  const pidText = env.LISTEN_PID;
  if (fdsText === undefined || fdsText === '') return { fds: [] };
  if (!/^\d+$/.test(fdsText) || !Number.isSafeInteger(Number(fdsText))) {
    return { fds: [], ignored: `LISTEN_FDS=${JSON.stringify(fdsText)} is not a count of descriptors` };
  }
  const count = Number(fdsText);
  if (count === 0) return { fds: [] };
  if (pidText === undefined || !/^\d+$/.test(pidText)) {
    return { fds: [], ignored: `LISTEN_FDS=${count} comes without a valid LISTEN_PID (${pidText === undefined ? 'unset' : JSON.stringify(pidText)})` };
  }
  const pid = Number(pidText);
  const fds = Array.from({ length: count }, (_, i) => 3 + i);
  let whose: string;
  if (pid === probe.pid) {
    whose = 'this process';
  } else if (isAncestor(pid, probe)) {
    const what = probe.describe(pid);
    whose = `process ${pid}${what ? ` (${what})` : ''}, which started this one`;
  } else {
    return { fds: [], ignored: `LISTEN_PID=${pid} is neither this process (${probe.pid}) nor one of its parents: left over from another program's socket activation` };
  }
  const missing = fds.filter((fd) => !probe.isSocket(fd));
  if (missing.length > 0) {
    return {
      fds: [],
      lost: true,
      ignored:
        `LISTEN_FDS=${count} was passed to ${whose}, but fd ${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} not an open socket here: ` +
        'a launcher in between closed it (npx and npm exec do); start the nbd-engine bin directly (node_modules/.bin/nbd-engine, ./bin/nbd-engine.js)',
    };
  }
  return { fds };
}

/**
 * File descriptors passed by socket activation, or [] (see
 * `socketActivation`). `warn` gets one line when LISTEN_FDS is set but not
 * used, saying why.
 */
export function activationFds(env: NodeJS.ProcessEnv = process.env, warn?: (message: string) => void, probe: ActivationProbe = processProbe): number[] {
  const a = socketActivation(env, probe);
  if (a.ignored && warn) warn(`socket activation ignored: ${a.ignored}`);
  return a.fds;
}

/**
 * A UNIX socket path that is taken (a live server answers there) gives this
 * error, with `code` 'EADDRINUSE' as Node's own errors have.
 */
export class AddressInUseError extends Error {
  readonly code = 'EADDRINUSE';
  constructor(readonly path: string) {
    super(`${path}: address in use: another server is listening on this socket (stop it or choose another --socket path)`);
    this.name = 'AddressInUseError';
  }
}

/**
 * Make way for a UNIX socket at `socketPath`: a socket file nobody listens
 * on (left by a server that was killed) is removed; a socket something
 * answers on is refused with AddressInUseError; a file that is not a socket
 * is left alone (listen then fails on it, naming it).
 */
async function clearStaleSocket(socketPath: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socketPath);
  } catch {
    return; // not there
  }
  if (!st.isSocket()) {
    const err = new Error(`${socketPath}: address in use: the path exists and is not a socket (not replacing it)`) as NodeJS.ErrnoException;
    err.code = 'EADDRINUSE';
    throw err;
  }
  const answer = await new Promise<'live' | 'stale' | NodeJS.ErrnoException>((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve('live');
    });
    probe.once('error', (err: NodeJS.ErrnoException) => {
      probe.destroy();
      // ECONNREFUSED: a socket file with no listener behind it.
      resolve(err.code === 'ECONNREFUSED' ? 'stale' : err.code === 'ENOENT' ? 'stale' : err);
    });
  });
  if (answer === 'live') throw new AddressInUseError(socketPath);
  if (answer !== 'stale') {
    // EACCES and the like: whether someone listens is unknown, so the file stays.
    const err = new Error(`${socketPath}: cannot tell whether a server is listening there (${answer.code ?? answer.message}); not replacing it`) as NodeJS.ErrnoException;
    err.code = answer.code;
    throw err;
  }
  try {
    fs.unlinkSync(socketPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/**
 * The longest UNIX socket path, in bytes: sockaddr_un's sun_path (108 on Linux) less its NUL. A
 * longer one is not refused by the system call Node makes: it is cut short, and the server would
 * listen on another path than the one it names in its URIs (as nbdkit, refused instead).
 */
export const UNIX_PATH_MAX = 107;

/**
 * A new private directory (mode 0700) for a socket named `name` in it: under os.tmpdir(), or /tmp
 * when a long $TMPDIR would make the socket path longer than UNIX_PATH_MAX.
 */
export function privateSocketDir(prefix: string, name: string): string {
  for (const base of [os.tmpdir(), '/tmp']) {
    const dir = fs.mkdtempSync(path.join(base, prefix));
    if (Buffer.byteLength(path.join(dir, name)) <= UNIX_PATH_MAX) return dir;
    fs.rmSync(dir, { recursive: true, force: true });
  }
  throw new NbdError('NBD_ERR_CONFIG', `no temporary directory short enough for a UNIX socket (at most ${UNIX_PATH_MAX} bytes)`);
}

/** Refuse a malformed target with a message naming the bad field (NBD_ERR_CONFIG). */
function checkTarget(target: ListenTarget): void {
  if ('path' in target) {
    if (typeof target.path !== 'string' || target.path === '' || target.path.includes('\0')) {
      throw new NbdError('NBD_ERR_CONFIG', `listen: path: expected a non-empty file name, got ${JSON.stringify(target.path)}`);
    }
    const bytes = Buffer.byteLength(target.path);
    if (bytes > UNIX_PATH_MAX) throw new NbdError('NBD_ERR_CONFIG', `listen: path: too long: ${bytes} bytes > ${UNIX_PATH_MAX} (a UNIX socket path must fit sockaddr_un): ${target.path}`);
  } else if ('fd' in target) {
    if (!Number.isSafeInteger(target.fd) || target.fd < 0) throw new NbdError('NBD_ERR_CONFIG', `listen: fd: expected an integer ≥ 0, got ${String(target.fd)}`);
  } else if (!Number.isInteger(target.port) || target.port < 0 || target.port > 65535) {
    throw new NbdError('NBD_ERR_CONFIG', `listen: port: expected an integer from 0 to 65535, got ${String(target.port)}`);
  }
}

/** Every address a host name stands for (dns.lookup with `all`), in the resolver's order. Replaceable in tests. */
export type HostLookup = (host: string) => Promise<string[]>;

const systemLookup: HostLookup = (host) =>
  new Promise((resolve, reject) => dns.lookup(host, { all: true }, (err, addresses) => (err ? reject(err) : resolve(addresses.map((a) => a.address)))));

/**
 * Listen on TCP `port` at every address `host` resolves to, each its own listener (as nbdkit:
 * `localhost` in an /etc/hosts that lists both ::1 and 127.0.0.1 is served on both; net.Server
 * alone takes the first). Port 0 is the port the first listener got, for the others too. An
 * address that cannot be bound while another can (IPv6 disabled, a port taken in one family only)
 * is one `warn` line; when none can, the first error is thrown.
 */
export async function listenHost(
  target: { readonly port: number; readonly host?: string },
  onSocket: (socket: net.Socket) => void,
  options: { lookup?: HostLookup; warn?: (message: string) => void } = {},
): Promise<Array<{ server: net.Server; address: BoundAddress }>> {
  checkTarget(target);
  const host = target.host ?? 'localhost';
  const addresses = net.isIP(host) ? [host] : [...new Set(await (options.lookup ?? systemLookup)(host))];
  if (addresses.length <= 1) return [await listen({ port: target.port, host: addresses[0] ?? host }, onSocket)];
  const bound: Array<{ server: net.Server; address: BoundAddress }> = [];
  const failed: Array<{ address: string; err: Error }> = [];
  let port = target.port;
  for (const address of addresses) {
    try {
      // Each IPv6 listener IPv6 only: the IPv4 addresses have listeners of their own.
      const l = await listen({ port, host: address }, onSocket, true);
      bound.push(l);
      port = l.address.port ?? port;
    } catch (err) {
      failed.push({ address, err: err as Error });
    }
  }
  if (bound.length === 0) throw failed[0]!.err;
  for (const f of failed) options.warn?.(`cannot listen on ${f.address.includes(':') ? `[${f.address}]` : f.address}:${port} (${f.err.message}); listening on the other addresses of ${host}`);
  return bound;
}

/**
 * libuv reports a UNIX socket path in a directory that does not exist as EACCES ("permission
 * denied"); it is said as it is (ENOENT), as nbdkit says "No such file or directory".
 */
function socketPathError(socketPath: string, err: NodeJS.ErrnoException): NodeJS.ErrnoException {
  const dir = path.dirname(socketPath);
  if (err.code !== 'EACCES') return err;
  try {
    fs.statSync(dir);
    return err;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') return err; // a directory this user cannot see into, say
  }
  const e = new Error(`${socketPath}: no such file or directory: the directory ${dir} does not exist`) as NodeJS.ErrnoException;
  e.code = 'ENOENT';
  return e;
}

/**
 * The path an inherited UNIX socket is bound to (its URI), which Node's server.address() does not
 * give for a listener on an fd: the socket's inode (/proc/self/fd) looked up in /proc/net/unix
 * (Linux). Undefined for an abstract or unnamed socket, or where /proc cannot tell.
 */
export function unixSocketPath(fd: number): string | undefined {
  try {
    const inode = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/self/fd/${fd}`))?.[1];
    if (inode === undefined) return undefined;
    for (const line of fs.readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[6] === inode && f[7] !== undefined && f[7].startsWith('/')) return f.slice(7).join(' ');
    }
  } catch {
    // not Linux, or no /proc
  }
  return undefined;
}

export async function listen(target: ListenTarget, onSocket: (socket: net.Socket) => void, ipv6Only = false): Promise<{ server: net.Server; address: BoundAddress }> {
  checkTarget(target);
  if ('path' in target) await clearStaleSocket(target.path);
  return new Promise((resolve, reject) => {
    // allowHalfOpen: a client that shuts down its write side still gets its replies (transmission.disc-drains).
    const server = net.createServer({ allowHalfOpen: true, noDelay: true }, onSocket);
    const onError = (err: NodeJS.ErrnoException) => {
      server.close();
      reject('path' in target ? socketPathError(target.path, err) : err);
    };
    server.once('error', onError);
    const done = () => {
      server.off('error', onError);
      const a = server.address();
      let address: BoundAddress;
      if ('fd' in target) address = typeof a === 'object' && a ? { kind: 'fd', fd: target.fd, host: a.address, port: a.port } : { kind: 'fd', fd: target.fd, path: typeof a === 'string' ? a : unixSocketPath(target.fd) };
      else if ('path' in target) address = { kind: 'unix', path: target.path };
      else address = { kind: 'tcp', host: typeof a === 'object' && a ? a.address : target.host, port: typeof a === 'object' && a ? a.port : target.port };
      resolve({ server, address });
    };
    if ('path' in target) {
      server.listen(target.path, done);
    } else if ('fd' in target) {
      server.listen({ fd: target.fd }, done);
    } else {
      server.listen({ port: target.port, host: target.host ?? 'localhost', ipv6Only }, done);
    }
  });
}

/** The soft limit on open files (`ulimit -n`, /proc/self/limits), or undefined where it cannot be read. */
export function openFileLimit(): number | undefined {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A check for each accepted socket that says, in one `warn` line, when the process has run out of
 * file descriptors. Once the table is full the next accept fails with EMFILE, and libuv then accepts
 * and closes the waiting connections itself (its reserve-descriptor trick) without telling Node: the
 * clients are dropped with nothing logged. Descriptors are handed out lowest first, so a socket that
 * got the highest one (limit − 1) means none is left. At most one line per `intervalMs`; the times
 * it happened in between are counted in the next line.
 */
export function descriptorWatch(warn: (message: string) => void, limit = openFileLimit(), intervalMs = 1000, now: () => number = Date.now): (socket: net.Socket) => void {
  let last = -Infinity;
  let unreported = 0;
  return (socket) => {
    const fd = socketFd(socket);
    if (limit === undefined || fd === undefined || fd < limit - 1) return;
    unreported++;
    const t = now();
    if (t - last < intervalMs) return;
    const times = unreported > 1 ? ` (${unreported} times since the last such line)` : '';
    last = t;
    unreported = 0;
    warn(`out of file descriptors: all ${limit} (ulimit -n) are open${times}; new connections are dropped until some close`);
  };
}

/** NBD URI for an address and export (the NBD URI standard, doc/uri.md in the NBD repository). */
export function nbdUri(address: BoundAddress, exportName: string, tls = false): string | undefined {
  const name = encodeURIComponent(exportName).replace(/%2F/g, '/');
  if (address.kind === 'unix' || (address.kind === 'fd' && address.path)) {
    return `${tls ? 'nbds' : 'nbd'}+unix:///${name}?socket=${encodeURIComponent(address.path!).replace(/%2F/g, '/')}`;
  }
  if (address.port === undefined) return undefined;
  let host = address.host ?? 'localhost';
  if (host === '::' || host === '0.0.0.0') host = 'localhost';
  if (host.includes(':')) host = `[${host}]`;
  return `${tls ? 'nbds' : 'nbd'}://${host}:${address.port}/${name}`;
}
