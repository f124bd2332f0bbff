/**
 * Listeners: UNIX sockets, TCP (IPv4 / IPv6), and systemd socket activation
 * (LISTEN_PID / LISTEN_FDS, first fd 3), each a `net.Server` whose sockets
 * are handed to `onSocket`.
 */
import net from 'node:net';
import fs from 'node:fs';

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

/** File descriptors passed by systemd-style socket activation, or [] (sd_listen_fds(3)). */
export function activationFds(env: NodeJS.ProcessEnv = process.env): number[] {
  const pid = env.LISTEN_PID;
  const count = Number(env.LISTEN_FDS ?? '');
  if (!pid || !Number.isInteger(count) || count <= 0) return [];
  if (Number(pid) !== process.pid) return [];
  return Array.from({ length: count }, (_, i) => 3 + i);
}

export function listen(target: ListenTarget, onSocket: (socket: net.Socket) => void): Promise<{ server: net.Server; address: BoundAddress }> {
  return new Promise((resolve, reject) => {
    // allowHalfOpen: a client that shuts down its write side still gets its replies (rule 35).
    const server = net.createServer({ allowHalfOpen: true, noDelay: true }, onSocket);
    const onError = (err: Error) => {
      server.close();
      reject(err);
    };
    server.once('error', onError);
    const done = () => {
      server.off('error', onError);
      const a = server.address();
      let address: BoundAddress;
      if ('fd' in target) address = typeof a === 'object' && a ? { kind: 'fd', fd: target.fd, host: a.address, port: a.port } : { kind: 'fd', fd: target.fd, path: typeof a === 'string' ? a : undefined };
      else if ('path' in target) address = { kind: 'unix', path: target.path };
      else address = { kind: 'tcp', host: typeof a === 'object' && a ? a.address : target.host, port: typeof a === 'object' && a ? a.port : target.port };
      resolve({ server, address });
    };
    if ('path' in target) {
      // A stale socket file from a previous run would make listen fail with EADDRINUSE.
      try {
        if (fs.statSync(target.path).isSocket()) fs.unlinkSync(target.path);
      } catch {
        /* not there */
      }
      server.listen(target.path, done);
    } else if ('fd' in target) {
      server.listen({ fd: target.fd }, done);
    } else {
      server.listen({ port: target.port, host: target.host ?? 'localhost', ipv6Only: false }, done);
    }
  });
}

/** NBD URI for an address and export (doc/uri.md; protocol.md §2). */
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
