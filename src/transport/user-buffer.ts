/**
 * Reading an accepted `net.Socket` into memory we choose, instead of a
 * fresh 64 KiB buffer per read; how many bytes the peer's side has taken
 * (`bytesTakenByPeer`); and its file descriptor (`socketFd`). The only code
 * that touches `net.Socket` internals.
 *
 * Node's public way to do this is the `onread` option of `new net.Socket()`,
 * which only exists for sockets you construct yourself. Sockets accepted by a
 * `net.Server` are constructed by Node, and `net.createServer()` has no
 * `onread` option on Node 20 (its options are allowHalfOpen, pauseOnConnect,
 * noDelay, keepAlive, keepAliveInitialDelay and highWaterMark; the accepted
 * socket is built from those alone). So the accepted socket gets what the
 * `onread` constructor path would have set: the private symbols `kBuffer`,
 * `kBufferCb` and `kBufferGen` (Node ≥ 12), and `_handle.useUserBuffer()`.
 *
 * The feature test below finds those symbols on a probe socket constructed
 * with the public `onread` option. If anything is missing (another Node),
 * `canReadIntoUserBuffers` says no and the caller keeps 'data' events;
 * test/unit/transport/slab-reads.test.ts checks the user-buffer path is
 * really taken, so a Node that breaks it fails a test instead of silently
 * falling back.
 */
import net from 'node:net';
import type { Duplex } from 'node:stream';

interface OnreadSymbols {
  readonly kBuffer: symbol;
  readonly kBufferCb: symbol;
  readonly kBufferGen: symbol;
}

type UserBufferHandle = { useUserBuffer?: (b: Uint8Array) => void };

const onreadSymbols: OnreadSymbols | undefined = (() => {
  try {
    // @types/node 20 lacks `onread` in the constructor options (Node has had it since 12).
    const probe = new net.Socket({ onread: { buffer: () => Buffer.alloc(0), callback: () => true } } as net.SocketConstructorOpts);
    const by = (d: string) => Object.getOwnPropertySymbols(probe).find((x) => x.description === d);
    const kBuffer = by('kBuffer');
    const kBufferCb = by('kBufferCb');
    const kBufferGen = by('kBufferGen');
    return kBuffer && kBufferCb && kBufferGen ? { kBuffer, kBufferCb, kBufferGen } : undefined;
  } catch {
    return undefined;
  }
})();

function userBufferHandle(socket: Duplex): UserBufferHandle | undefined {
  if (!onreadSymbols || !(socket instanceof net.Socket) || (socket as { encrypted?: boolean }).encrypted) return undefined;
  const handle = (socket as unknown as { _handle?: UserBufferHandle })._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function' || socket.destroyed) return undefined;
  return handle;
}

/** Whether `readIntoUserBuffers` works on this socket: a plain, open `net.Socket` (not TLS) on a Node that has the fields. */
export function canReadIntoUserBuffers(socket: Duplex): boolean {
  return userBufferHandle(socket) !== undefined;
}

/**
 * From now on the socket reads into `first`, then into whatever `next()`
 * returns for each following read; `onRead(n, buffer)` is told each read's
 * byte count and the buffer it landed in (bytes [0, n)). Once switched, the
 * socket emits no 'data' events for those reads. Returns false (nothing
 * changed) when `canReadIntoUserBuffers(socket)` is false.
 */
export function readIntoUserBuffers(socket: Duplex, first: Buffer, next: () => Buffer, onRead: (n: number, buffer: Buffer) => void): boolean {
  const handle = userBufferHandle(socket);
  if (handle === undefined) return false;
  const syms = onreadSymbols!;
  const s = socket as unknown as Record<symbol, unknown>;
  s[syms.kBufferCb] = onRead;
  s[syms.kBufferGen] = next;
  s[syms.kBuffer] = first;
  handle.useUserBuffer!(first);
  return true;
}

/**
 * Bytes written to `socket` that left this process (the kernel took them): what Node handed to the
 * handle (`_bytesDispatched`) less what libuv still queues (`_handle.writeQueueSize`). It stops
 * moving when the client stops reading, even in the middle of one big write. Undefined for a
 * stream that is not a `net.Socket` (`-s` over two pipes). Without the handle's figure (another
 * Node, a TLS socket's handle) it is the bytes handed to the handle.
 */
export function bytesTakenByPeer(socket: Duplex): number | undefined {
  const s = socket as Duplex & { _bytesDispatched?: unknown; _handle?: { writeQueueSize?: unknown } | null };
  if (typeof s._bytesDispatched !== 'number') return undefined;
  const queued = s._handle?.writeQueueSize;
  return s._bytesDispatched - (typeof queued === 'number' ? queued : 0);
}

/** The file descriptor of an accepted socket (its libuv handle's `fd`), or undefined where Node does not show it. */
export function socketFd(socket: net.Socket): number | undefined {
  const fd = (socket as net.Socket & { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' ? fd : undefined;
}
