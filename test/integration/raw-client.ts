/**
 * The integration tests' byte-level NBD client, on a raw socket (UNIX or
 * TCP), optionally wrapped with node:tls after STARTTLS. It can behave
 * (greeting, client flags, NBD_OPT_GO, simple replies) or misbehave: a test
 * writes whatever bytes it wants and reads exact lengths back, so it sees
 * the option replies and disconnects that real clients never show.
 *
 * Three ways in:
 *  - `RawClient.connect(target)`: just the socket; the test drives the
 *    handshake (`readGreeting`, `greet`, `option`, `startTls`, `go`, or
 *    `handshake(name)` for all of it);
 *  - `RawClient.open(target, name)`: connected, through STARTTLS when the
 *    target says so, and through GO; ready for requests (the pipelining
 *    tests send a whole burst with `send` and read `readSimpleReply`s).
 *
 * Wire numbers and byte builders come from test/helpers/wire.ts (written
 * from the spec, independent of src/).
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { ByteReader } from '../helpers/byte-reader.js';
import { CLIENT_FLAG, INFO, OPT, REP, SIZE, W, encodeClientFlags, encodeInfoGoData, encodeOption, encodeRequest, isFinalRep, isRepError } from '../helpers/wire.js';

export { CMD } from '../helpers/wire.js';

/** Where the server listens; `tls` makes `open` do STARTTLS and trust `ca` (server name localhost). */
export type Target = ({ path: string } | { port: number; host: string }) & { tls?: { ca: string; cert?: string; key?: string } };

export interface ConnectOptions {
  /** Default cap, in ms, on every read (a hang detector); none when absent. */
  readTimeout?: number;
}

/** A request for `requestBytes`: flags default to 0, `payload` follows the header (WRITE). */
export interface Request {
  type: number;
  offset: number;
  length: number;
  cookie: bigint;
  flags?: number;
  payload?: Buffer;
}

/** A compact request header, followed by its payload when it has one. */
export function requestBytes(r: Request): Buffer {
  return encodeRequest({ flags: r.flags ?? 0, type: r.type, cookie: r.cookie, offset: r.offset, length: r.length }, r.payload);
}

/** One fixed-newstyle option reply. */
export interface RawReply {
  option: number;
  type: number;
  data: Buffer;
}

/** FIXED_NEWSTYLE | NO_ZEROES. */
const CLIENT_FLAGS = CLIENT_FLAG.FIXED_NEWSTYLE | CLIENT_FLAG.NO_ZEROES;

export class RawClient {
  /** The stream requests go out on and replies come in from: the socket, or TLS over it. */
  stream: Duplex;
  /** Resolves when the connection closed (the server dropped us, or we did). */
  readonly closedP: Promise<void>;
  /** From NBD_INFO_EXPORT during GO. */
  exportSize = 0n;
  transmissionFlags = 0;
  private readonly reader: ByteReader;
  private markClosed!: () => void;

  private constructor(
    readonly socket: net.Socket,
    private readonly readTimeout: number | undefined,
  ) {
    this.stream = socket;
    this.reader = new ByteReader(socket);
    // ECONNRESET / EPIPE after the server dropped us are expected in these tests (the reader records them).
    this.closedP = new Promise((resolve) => (this.markClosed = resolve));
    socket.once('close', this.markClosed);
  }

  static connect(target: Target, opts: ConnectOptions = {}): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = 'path' in target ? net.connect(target.path) : net.connect(target.port, target.host);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new RawClient(s, opts.readTimeout));
      });
      s.once('error', reject);
    });
  }

  /** Connected, through STARTTLS when `target.tls` is set, and through GO for `exportName`. */
  static async open(target: Target, exportName = '', opts: ConnectOptions = {}): Promise<RawClient> {
    const c = await RawClient.connect(target, opts);
    if (!target.tls) {
      await c.handshake(exportName);
      return c;
    }
    await c.greet();
    const r = await c.option(OPT.STARTTLS);
    if (r.at(-1)!.type !== REP.ACK) throw new Error(`STARTTLS refused: 0x${r.at(-1)!.type.toString(16)}`);
    await c.startTls({ ...target.tls, servername: 'localhost' });
    await c.go(exportName);
    return c;
  }

  /** The connection ended (FIN, close or error): reads past what is queued reject. */
  get ended(): boolean {
    return this.reader.ended;
  }

  /** Bytes received but not yet read. */
  get pending(): number {
    return this.reader.available;
  }

  /** Exactly n bytes; rejects if the connection closes first, or after `timeout` ms. */
  read(n: number, timeout = this.readTimeout): Promise<Buffer> {
    return this.reader.read(n, timeout);
  }

  /**
   * Write, resolving once the bytes are handed to the kernel. A failed write
   * (the server already dropped us) rejects only for a caller that awaits it.
   */
  write(b: Buffer): Promise<void> {
    const p = new Promise<void>((resolve, reject) => this.stream.write(b, (err) => (err ? reject(err) : resolve())));
    p.catch(() => {});
    return p;
  }

  /** Send bytes without waiting for them to be written (the server may be throttling us). */
  send(b: Buffer): void {
    void this.write(b);
  }

  /** The 18-byte greeting; checks the magics. Returns the handshake flags. */
  async readGreeting(): Promise<number> {
    const g = await this.read(SIZE.GREETING);
    if (g.readBigUInt64BE(0) !== W.NBDMAGIC || g.readBigUInt64BE(8) !== W.IHAVEOPT) throw new Error(`bad greeting ${g.toString('hex')}`);
    return g.readUInt16BE(16);
  }

  /** Greeting and client flags (default FIXED_NEWSTYLE | NO_ZEROES). Returns the handshake flags. */
  async greet(clientFlags = CLIENT_FLAGS): Promise<number> {
    const flags = await this.readGreeting();
    this.send(encodeClientFlags(clientFlags));
    return flags;
  }

  /** Greeting, client flags FIXED_NEWSTYLE | NO_ZEROES and NBD_OPT_GO in one write, then GO's replies. */
  async handshake(exportName: string): Promise<void> {
    const flags = await this.readGreeting();
    if ((flags & CLIENT_FLAGS) !== CLIENT_FLAGS) throw new Error(`handshake flags ${flags}`);
    await this.write(Buffer.concat([encodeClientFlags(CLIENT_FLAGS), encodeOption(OPT.GO, encodeInfoGoData(exportName))]));
    await this.goReplies();
  }

  /** NBD_OPT_GO without information requests; reads until the ACK (throws on an error reply). */
  async go(exportName: string): Promise<void> {
    this.send(encodeOption(OPT.GO, encodeInfoGoData(exportName)));
    await this.goReplies();
  }

  private async goReplies(): Promise<void> {
    for (;;) {
      const r = await this.optionReply();
      if (r.type === REP.ACK) return;
      if (r.type === REP.INFO && r.data.readUInt16BE(0) === INFO.EXPORT) {
        this.exportSize = r.data.readBigUInt64BE(2);
        this.transmissionFlags = r.data.readUInt16BE(10);
      } else if (isRepError(r.type)) throw new Error(`GO refused: reply type 0x${r.type.toString(16)} ${r.data.toString()}`);
    }
  }

  /** One option reply (magic checked). */
  async optionReply(timeout?: number): Promise<RawReply> {
    const h = await this.read(SIZE.OPTION_REPLY_HEADER, timeout);
    if (h.readBigUInt64BE(0) !== W.REP_MAGIC) throw new Error(`bad option reply magic ${h.toString('hex')}`);
    const len = h.readUInt32BE(16);
    const data = len ? await this.read(len, timeout) : Buffer.alloc(0);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }

  /** All option replies up to and including the final one (ACK or an error). */
  async optionReplies(timeout?: number): Promise<RawReply[]> {
    const out: RawReply[] = [];
    for (;;) {
      const r = await this.optionReply(timeout);
      out.push(r);
      if (isFinalRep(r.type)) return out;
    }
  }

  /** Send one option and collect its replies. */
  async option(code: number, data?: Buffer): Promise<RawReply[]> {
    this.send(encodeOption(code, data));
    return this.optionReplies();
  }

  /** Wrap the socket with TLS (call after STARTTLS's ACK); reads come from the TLS stream from then on. */
  startTls(options: tls.ConnectionOptions): Promise<tls.TLSSocket> {
    this.reader.detach();
    return new Promise((resolve, reject) => {
      const secure = tls.connect({ ...options, socket: this.socket }, () => {
        secure.off('error', reject);
        this.stream = secure;
        this.reader.attach(secure);
        secure.once('close', this.markClosed);
        resolve(secure);
      });
      secure.once('error', reject);
    });
  }

  /** A 28-byte compact request header. */
  static request(type: number, offset: number, length: number, cookie = 1n, flags = 0): Buffer {
    return encodeRequest({ flags, type, cookie, offset, length });
  }

  /**
   * One 16-byte simple reply: { error, cookie }. With `dataLength`, a
   * successful reply is followed by that many data bytes for its cookie
   * (read into `data` when there are any).
   */
  async readSimpleReply(dataLength?: (cookie: bigint) => number): Promise<{ error: number; cookie: bigint; data?: Buffer }> {
    const r = await this.read(SIZE.SIMPLE_REPLY);
    if (r.readUInt32BE(0) !== W.SIMPLE_REPLY_MAGIC) throw new Error(`bad reply magic ${r.toString('hex')}`);
    const error = r.readUInt32BE(4);
    const cookie = r.readBigUInt64BE(8);
    const n = error === 0 && dataLength ? dataLength(cookie) : 0;
    return n > 0 ? { error, cookie, data: await this.read(n) } : { error, cookie };
  }

  /** Resolves true when the connection closes within `timeout` ms, false otherwise. */
  async closed(timeout = 5000): Promise<boolean> {
    let t: NodeJS.Timeout | undefined;
    const r = await Promise.race([this.closedP.then(() => true), new Promise<boolean>((res) => (t = setTimeout(() => res(false), timeout)))]);
    clearTimeout(t);
    return r;
  }

  /** Wait for the server to close the connection, or fail after `ms`. */
  async expectClosedWithin(ms: number): Promise<void> {
    if (!(await this.closed(ms))) throw new Error(`server did not close the connection within ${ms} ms`);
  }

  destroy(): void {
    this.stream.destroy();
    this.socket.destroy();
  }
}
