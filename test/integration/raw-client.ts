/**
 * A minimal, deliberately misbehaving-capable NBD client on a raw socket:
 * greeting, client flags, NBD_OPT_GO, then whatever bytes a test wants to
 * send. Numbers are written here from the spec (doc/proto.md).
 */
import net from 'node:net';

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const REP_MAGIC = 0x0003e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const OPT_GO = 7;
const REP_ACK = 1;
const REP_INFO = 3;
const INFO_EXPORT = 0;

export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3 } as const;

/** A socket with a byte queue to read exact lengths from. */
export class RawClient {
  private buf: Buffer = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  closed = false;
  /** Resolves when the server closed (or reset) the connection. */
  readonly closedP: Promise<void>;
  exportSize = 0n;
  transmissionFlags = 0;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      this.wake();
    });
    socket.on('error', () => {
      /* ECONNRESET / EPIPE after the server dropped us: expected in these tests */
    });
    this.closedP = new Promise((resolve) =>
      socket.on('close', () => {
        this.closed = true;
        this.wake();
        resolve();
      }),
    );
  }

  static connect(target: { path: string } | { port: number; host: string }): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(target as net.NetConnectOpts);
      s.once('connect', () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Read exactly n bytes (rejects if the connection closes first). */
  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`connection closed after ${this.buf.length}/${n} bytes`);
      await new Promise<void>((r) => this.waiters.push(r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  write(b: Buffer): Promise<void> {
    return new Promise((resolve, reject) => this.socket.write(b, (err) => (err ? reject(err) : resolve())));
  }

  /** The 18-byte greeting; checks the magics. Returns the handshake flags. */
  async readGreeting(): Promise<number> {
    const g = await this.read(18);
    if (g.readBigUInt64BE(0) !== NBDMAGIC || g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error(`bad greeting ${g.toString('hex')}`);
    return g.readUInt16BE(16);
  }

  /** Greeting, client flags 3 (FIXED_NEWSTYLE | NO_ZEROES), NBD_OPT_GO, read until the ACK. */
  async handshake(exportName: string): Promise<void> {
    const flags = await this.readGreeting();
    if ((flags & 3) !== 3) throw new Error(`handshake flags ${flags}`);
    const cf = Buffer.alloc(4);
    cf.writeUInt32BE(3);
    const name = Buffer.from(exportName);
    const data = Buffer.alloc(4 + name.length + 2);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    data.writeUInt16BE(0, 4 + name.length); // no information requests
    const opt = Buffer.alloc(16);
    opt.writeBigUInt64BE(IHAVEOPT, 0);
    opt.writeUInt32BE(OPT_GO, 8);
    opt.writeUInt32BE(data.length, 12);
    await this.write(Buffer.concat([cf, opt, data]));
    for (;;) {
      const h = await this.read(20);
      if (h.readBigUInt64BE(0) !== REP_MAGIC) throw new Error(`bad option reply magic ${h.toString('hex')}`);
      const type = h.readUInt32BE(12);
      const len = h.readUInt32BE(16);
      const body = await this.read(len);
      if (type === REP_ACK) return;
      if (type === REP_INFO && body.readUInt16BE(0) === INFO_EXPORT) {
        this.exportSize = body.readBigUInt64BE(2);
        this.transmissionFlags = body.readUInt16BE(10);
        continue;
      }
      if (type & 0x80000000) throw new Error(`GO refused: reply type 0x${type.toString(16)} ${body.toString()}`);
    }
  }

  /** A 28-byte compact request header. */
  static request(type: number, offset: number, length: number, cookie = 1n, flags = 0): Buffer {
    const b = Buffer.alloc(28);
    b.writeUInt32BE(REQUEST_MAGIC, 0);
    b.writeUInt16BE(flags, 4);
    b.writeUInt16BE(type, 6);
    b.writeBigUInt64BE(cookie, 8);
    b.writeBigUInt64BE(BigInt(offset), 16);
    b.writeUInt32BE(length, 24);
    return b;
  }

  /** A 16-byte simple reply: { error, cookie }. */
  async readSimpleReply(): Promise<{ error: number; cookie: bigint }> {
    const r = await this.read(16);
    if (r.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error(`bad reply magic ${r.toString('hex')}`);
    return { error: r.readUInt32BE(4), cookie: r.readBigUInt64BE(8) };
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Wait for the server to close the connection, or fail after `ms`. */
  async expectClosedWithin(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.closedP,
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`server did not close the connection within ${ms} ms`)), ms))),
    ]).finally(() => clearTimeout(timer));
  }
}
