/**
 * A scripted NBD "server" on an in-process UNIX socket, for feeding the
 * client library crafted bytes: each test writes exactly what a server
 * would (or should not) send, and reads what the client sent, with the
 * same exact-length reader the client uses.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach } from 'vitest';
import { ByteReader } from '../../../src/client/byte-reader.js';
import { NbdConnection, type ConnectOptions } from '../../../src/client/index.js';
import { MAGIC, OPT, REP } from '../../../src/protocol/constants.js';
import { chunkHeader, encodeGreeting, encodeInfoExport, encodeOptionReply } from '../../../src/protocol/encoder.js';

export interface ServerSide {
  readonly reader: ByteReader;
  /** Send the usual greeting and read the client flags. */
  greet(): Promise<void>;
  write(...frames: Array<Buffer | readonly Buffer[]>): void;
  /** The next option the client sent. */
  option(): Promise<{ code: number; data: Buffer }>;
  /** The next request header (compact or extended) the client sent, and its payload for a WRITE. */
  request(extended?: boolean): Promise<{ type: number; flags: number; cookie: bigint; offset: bigint; length: bigint }>;
  end(): void;
}

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const f of cleanups.splice(0)) f();
});

/** Start a server running `script` for its one connection; returns a client connected to it. */
export async function scripted(script: (s: ServerSide) => Promise<void>, opts: ConnectOptions = {}): Promise<{ client: NbdConnection; done: Promise<void> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-client-unit-'));
  const sock = path.join(dir, 's');
  let start!: (side: ServerSide) => void;
  const done = new Promise<void>((resolve, reject) => (start = (side) => void script(side).then(resolve, reject)));
  done.catch(() => {});
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    const reader = new ByteReader(socket);
    const side: ServerSide = {
      reader,
      write: (...frames) => {
        for (const f of frames) socket.write(Buffer.isBuffer(f) ? f : Buffer.concat(f as Buffer[]));
      },
      greet: async () => {
        socket.write(encodeGreeting());
        await reader.read(4, 5000);
      },
      option: async () => {
        const h = await reader.read(16, 5000);
        const len = h.readUInt32BE(12);
        return { code: h.readUInt32BE(8), data: len ? await reader.read(len, 5000) : Buffer.alloc(0) };
      },
      request: async (extended = false) => {
        const h = await reader.read(extended ? 32 : 28, 5000);
        const r = {
          flags: h.readUInt16BE(4),
          type: h.readUInt16BE(6),
          cookie: h.readBigUInt64BE(8),
          offset: h.readBigUInt64BE(16),
          length: extended ? h.readBigUInt64BE(24) : BigInt(h.readUInt32BE(24)),
        };
        if (r.type === 1) await reader.read(Number(r.length), 5000);
        return r;
      },
      end: () => socket.end(),
    };
    start(side);
  });
  await new Promise<void>((r) => server.listen(sock, r));
  const client = await NbdConnection.connect({ path: sock }, { timeoutMs: 3000, ...opts });
  cleanups.push(() => {
    client.destroy();
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { client, done };
}

/** Server side of a plain handshake: greeting, client flags, then the options up to GO (ACKed, export of `size`). */
export async function serveUntilGo(s: ServerSide, size = 1 << 20, flags = 0x0001): Promise<void> {
  await s.greet();
  for (;;) {
    const o = await s.option();
    if (o.code === OPT.NBD_OPT_GO) {
      s.write(encodeInfoExport(o.code, size, flags), encodeOptionReply(o.code, REP.NBD_REP_ACK));
      return;
    }
    if (o.code === OPT.NBD_OPT_SET_META_CONTEXT) {
      const id = Buffer.alloc(4);
      id.writeUInt32BE(1);
      s.write(encodeOptionReply(o.code, REP.NBD_REP_META_CONTEXT, Buffer.concat([id, Buffer.from('base:allocation')])));
    }
    s.write(encodeOptionReply(o.code, REP.NBD_REP_ACK));
  }
}

/** Client side matching `serveUntilGo`: handshake, the reply mode asked for, base:allocation, GO. */
export async function goWith(c: NbdConnection, mode: 'simple' | 'structured' | 'extended' = 'structured'): Promise<void> {
  await c.handshake();
  if (mode === 'structured') await c.structuredReply();
  if (mode === 'extended') await c.extendedHeaders();
  if (mode !== 'simple') await c.setMetaContext('', ['base:allocation']);
  await c.go('', []);
}

/** A structured (or extended) chunk: header plus payload. */
export function chunk(cookie: bigint, type: number, payload: Buffer, o: { done?: boolean; flags?: number; extended?: boolean; offset?: bigint } = {}): Buffer {
  const flags = o.flags ?? (o.done ? 1 : 0);
  return Buffer.concat([chunkHeader(!!o.extended, cookie, flags, type, payload.length, o.offset ?? 0n), payload]);
}

/** A u64 · rest payload (OFFSET_DATA, OFFSET_HOLE). */
export function at(offset: number, rest: Buffer): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(offset));
  return Buffer.concat([b, rest]);
}

/** A 16-byte simple reply header. */
export function simpleReply(cookie: bigint, error = 0): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(MAGIC.NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}
