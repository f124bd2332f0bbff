/**
 * A pipelining NBD client on a raw socket (UNIX, TCP or TLS after
 * STARTTLS): negotiates with NBD_OPT_GO (simple replies), then sends a
 * whole burst of requests in one write and reads the replies, checking
 * that every cookie is answered exactly once and READ data is right.
 * Used by the backpressure tests: the server must answer everything in
 * the burst without the client sending another byte.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const REP_MAGIC = 0x0003e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const OPT_STARTTLS = 5;
const OPT_GO = 7;
const REP_ACK = 1;
const REP_INFO = 3;

export type Target =
  | { kind: 'unix'; path: string }
  | { kind: 'tcp'; port: number; host: string }
  | { kind: 'tls'; path: string; ca: string; cert?: string; key?: string };

/** A byte queue over a stream, read by exact lengths (no quadratic concatenation). */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0;
  private size = 0;
  private waiter: (() => void) | null = null;
  ended = false;
  error: Error | null = null;

  constructor(private stream: Duplex) {
    this.attach(stream);
  }

  attach(stream: Duplex): void {
    this.stream = stream;
    stream.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.size += d.length;
      this.wake();
    });
    stream.on('end', () => this.end());
    stream.on('close', () => this.end());
    stream.on('error', (e) => {
      this.error ??= e;
      this.end();
    });
  }

  detach(): void {
    this.stream.removeAllListeners('data');
    this.stream.removeAllListeners('end');
    this.stream.removeAllListeners('close');
  }

  private end(): void {
    this.ended = true;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  get available(): number {
    return this.size;
  }

  /** Exactly n bytes; rejects if the stream ends first. */
  async read(n: number): Promise<Buffer> {
    while (this.size < n) {
      if (this.ended) throw new Error(`connection closed with ${this.size}/${n} bytes${this.error ? ` (${this.error.message})` : ''}`);
      await new Promise<void>((r) => (this.waiter = r));
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const m = Math.min(c.length - this.head, n - filled);
      c.copy(out, filled, this.head, this.head + m);
      filled += m;
      this.head += m;
      if (this.head === c.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    this.size -= n;
    return out;
  }
}

function option(code: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(code, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

export interface Request {
  type: number;
  offset: number;
  length: number;
  cookie: bigint;
  flags?: number;
  payload?: Buffer;
}

export function encodeRequest(r: Request): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(REQUEST_MAGIC, 0);
  h.writeUInt16BE(r.flags ?? 0, 4);
  h.writeUInt16BE(r.type, 6);
  h.writeBigUInt64BE(r.cookie, 8);
  h.writeBigUInt64BE(BigInt(r.offset), 16);
  h.writeUInt32BE(r.length, 24);
  return r.payload ? Buffer.concat([h, r.payload]) : h;
}

export class PipelineClient {
  exportSize = 0n;
  flags = 0;
  private constructor(
    public stream: Duplex,
    readonly raw: net.Socket,
    readonly q: ByteQueue,
  ) {}

  static async connect(target: Target, exportName = ''): Promise<PipelineClient> {
    const raw = await new Promise<net.Socket>((resolve, reject) => {
      const s = target.kind === 'tcp' ? net.connect(target.port, target.host) : net.connect(target.path);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(s);
      });
      s.once('error', reject);
    });
    raw.on('error', () => {});
    const c = new PipelineClient(raw, raw, new ByteQueue(raw));
    const g = await c.q.read(18);
    if (g.readBigUInt64BE(0) !== NBDMAGIC || g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('bad greeting');
    const cf = Buffer.alloc(4);
    cf.writeUInt32BE(3);
    raw.write(cf);
    if (target.kind === 'tls') {
      raw.write(option(OPT_STARTTLS));
      const r = await c.optionReply();
      if (r.type !== REP_ACK) throw new Error(`STARTTLS refused: 0x${r.type.toString(16)}`);
      c.q.detach();
      const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
        const s = tls.connect({ socket: raw, ca: target.ca, cert: target.cert, key: target.key, servername: 'localhost' }, () => {
          s.off('error', reject);
          resolve(s);
        });
        s.once('error', reject);
      });
      secure.on('error', () => {});
      c.q.attach(secure);
      c.stream = secure;
    }
    const name = Buffer.from(exportName);
    const data = Buffer.alloc(4 + name.length + 2);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    c.stream.write(option(OPT_GO, data));
    for (;;) {
      const r = await c.optionReply();
      if (r.type === REP_ACK) break;
      if (r.type === REP_INFO && r.data.readUInt16BE(0) === 0) {
        c.exportSize = r.data.readBigUInt64BE(2);
        c.flags = r.data.readUInt16BE(10);
      } else if (r.type & 0x80000000) throw new Error(`GO refused: 0x${r.type.toString(16)} ${r.data.toString()}`);
    }
    return c;
  }

  private async optionReply(): Promise<{ type: number; data: Buffer }> {
    const h = await this.q.read(20);
    if (h.readBigUInt64BE(0) !== REP_MAGIC) throw new Error('bad option reply magic');
    const len = h.readUInt32BE(16);
    return { type: h.readUInt32BE(12), data: len ? await this.q.read(len) : Buffer.alloc(0) };
  }

  /** Send bytes without waiting for them to be written (the server may be throttling us). */
  send(bytes: Buffer): void {
    this.stream.write(bytes);
  }

  /**
   * Read one simple reply; `dataLength` says how many data bytes follow a
   * successful reply to the request with that cookie.
   */
  async reply(dataLength: (cookie: bigint) => number): Promise<{ cookie: bigint; error: number; data?: Buffer }> {
    const h = await this.q.read(16);
    if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error(`bad reply magic ${h.subarray(0, 4).toString('hex')}`);
    const error = h.readUInt32BE(4);
    const cookie = h.readBigUInt64BE(8);
    const n = error === 0 ? dataLength(cookie) : 0;
    return { cookie, error, data: n > 0 ? await this.q.read(n) : undefined };
  }

  close(): void {
    this.stream.destroy();
    this.raw.destroy();
  }
}
