/**
 * Shared pieces of the hostile-client programme (test/hostile/*): a seeded
 * random source, an in-process socket pair, a well-behaved verifying client,
 * and the bookkeeping the tests assert on (crashes, descriptors, RSS).
 *
 * Wire numbers come from test/helpers/wire.ts (written from the spec, not
 * from src/), so what these tests send and check is independent of what
 * the server under test believes.
 */
import fs from 'node:fs';
import net from 'node:net';
import { Duplex } from 'node:stream';
import { ByteReader } from '../helpers/byte-reader.js';
import { CLIENT_FLAG, CMD, INFO, OPT, REP, SIZE, W, encodeClientFlags, encodeInfoGoData, encodeOption, encodeRequest, isRepError } from '../helpers/wire.js';

// ── seeded randomness ────────────────────────────────────────────────────

/** 32-bit hash mixing (splitmix-style), to derive one stream's seed from (seed, index). */
export function mix32(a: number, b: number): number {
  let h = (Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b + 0x632be5ab, 0xc2b2ae35)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d) >>> 0;
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** A small, fast, seeded PRNG (sfc32). Never Math.random: every run is replayable from its seed. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d = 1;

  constructor(seed: number) {
    this.a = seed >>> 0;
    this.b = mix32(seed, 1);
    this.c = mix32(seed, 2);
    for (let i = 0; i < 12; i++) this.u32();
  }

  /** Uniform 32-bit unsigned integer. */
  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return n <= 0x1_0000_0000 ? Math.floor((this.u32() / 0x1_0000_0000) * n) : Math.floor(this.float() * n);
  }

  /** Integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  float(): number {
    return (this.u32() * 0x20_0000 + (this.u32() >>> 11)) / 2 ** 53;
  }

  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }

  /** A 64-bit unsigned value as a bigint. */
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) b.writeUInt32LE(this.u32(), i);
    for (; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }

  /** Lengths skewed towards small values: most streams stay short, a few are long. */
  skewed(max: number): number {
    const f = this.float();
    return Math.floor(max * f * f * f);
  }
}

/** The run's seed: FUZZ_SEED (decimal or 0x-hex) when set, else a fresh one (printed by the caller). */
export function runSeed(): number {
  const env = process.env.FUZZ_SEED;
  if (env !== undefined && env !== '') return Number(env) >>> 0;
  return (Date.now() ^ (process.pid << 16)) >>> 0;
}

// ── an in-process socket pair ────────────────────────────────────────────

/**
 * One end of an in-memory stream pair that behaves like a connected socket
 * for our purposes: what one end writes, the other reads; `end()` is a FIN
 * (the peer reads EOF); `destroy()` drops both directions (the peer sees
 * 'close'). allowHalfOpen is off, as on a net.Server's sockets.
 */
export class PairEnd extends Duplex {
  peer!: PairEnd;

  constructor() {
    super({ allowHalfOpen: false });
  }

  override _read(): void {
    /* data is pushed by the peer's writes */
  }

  // The writer may reuse its buffer once the callback ran (a kernel socket copies at write time): copy.
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (!this.peer.destroyed && !this.peer.readableEnded) this.peer.push(Buffer.from(chunk));
    cb();
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    if (!this.peer.destroyed && !this.peer.readableEnded) this.peer.push(Buffer.concat(chunks.map((c) => c.chunk)));
    cb();
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (!this.peer.destroyed) this.peer.push(null);
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const peer = this.peer;
    if (!peer.destroyed) queueMicrotask(() => peer.destroy());
    cb(err);
  }
}

/** A connected pair: hand `server` to `NbdServer.accept()`, drive `client` from the test. */
export function duplexPair(): { client: PairEnd; server: PairEnd } {
  const client = new PairEnd();
  const server = new PairEnd();
  client.peer = server;
  server.peer = client;
  return { client, server };
}

// ── bookkeeping ──────────────────────────────────────────────────────────

/** Open descriptors of this process. */
export function fdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

/** Poll `cond` until it holds; throw with `what` (and the last state) after `capMs`. Not a timing assertion. */
export async function waitUntil(cond: () => boolean, capMs: number, what: () => string): Promise<void> {
  const end = Date.now() + capMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`gave up after ${capMs} ms waiting for ${what()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Counts uncaught exceptions and unhandled rejections while installed. */
export function watchCrashes(): { readonly count: number; readonly first: unknown; stop(): void } {
  const state = { count: 0, first: undefined as unknown };
  const on = (e: unknown) => {
    if (state.count++ === 0) state.first = e;
    console.error('hostile: uncaught', e);
  };
  process.on('uncaughtException', on);
  process.on('unhandledRejection', on);
  return {
    get count() {
      return state.count;
    },
    get first() {
      return state.first;
    },
    stop() {
      process.off('uncaughtException', on);
      process.off('unhandledRejection', on);
    },
  };
}

/** Samples RSS every `everyMs` and keeps the peak. */
export function rssPeak(everyMs = 50): { readonly peak: number; sample(): void; stop(): void } {
  let peak = process.memoryUsage.rss();
  const sample = () => {
    const r = process.memoryUsage.rss();
    if (r > peak) peak = r;
  };
  const timer = setInterval(sample, everyMs);
  timer.unref();
  return {
    get peak() {
      return peak;
    },
    sample,
    stop: () => clearInterval(timer),
  };
}

export const MiB = 1024 * 1024;
export const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;

export type Target = { path: string } | { port: number; host: string };

/** A connected socket and its reader; socket errors (the server dropped us) are recorded by the reader, never thrown. */
export async function connectReader(target: Target): Promise<{ sock: net.Socket; reader: ByteReader }> {
  const sock = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect(target as net.NetConnectOpts);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
  return { sock, reader: new ByteReader(sock) };
}

/** The 18-byte greeting (within `capMs` when given); checks the magics. Returns the handshake flags. */
export async function readGreeting(reader: ByteReader, capMs?: number): Promise<number> {
  const read = reader.read(SIZE.GREETING);
  const g = capMs === undefined ? await read : await within(read, capMs, 'greeting');
  if (g.readBigUInt64BE(0) !== W.NBDMAGIC || g.readBigUInt64BE(8) !== W.IHAVEOPT) throw new Error(`bad greeting ${g.toString('hex')}`);
  return g.readUInt16BE(16);
}

/** Race `p` against a cap; the cap is a hang detector, never a timing assertion. */
export async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new HangError(`${what}: no answer within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

export class HangError extends Error {
  override readonly name = 'HangError';
}

/** Data of one block for the verifying clients: the tag, the block number, then a seeded filler. */
export function blockPattern(size: number, tag: number, block: number): Buffer {
  const b = Buffer.alloc(size);
  const rng = new Rng(mix32(tag, block));
  for (let at = 0; at + 16 <= size; at += 16) {
    b.writeUInt32BE(tag >>> 0, at);
    b.writeUInt32BE(block >>> 0, at + 4);
    b.writeUInt32BE(rng.u32(), at + 8);
    b.writeUInt32BE(rng.u32(), at + 12);
  }
  return b;
}

// ── a well-behaved client ────────────────────────────────────────────────

/**
 * A well-behaved NBD client on any Duplex: fixed newstyle, NO_ZEROES, GO
 * without information requests, simple replies. Every reply is checked
 * (magic, cookie); reads are compared by the caller.
 */
export class GoodClient {
  size = 0n;
  flags = 0;
  private cookie = 1n;

  /** `reader` when the test already reads this stream (one reader per stream). */
  constructor(
    readonly stream: Duplex,
    readonly reader = new ByteReader(stream),
  ) {}

  static async connect(target: Target): Promise<GoodClient> {
    const { sock, reader } = await connectReader(target);
    return new GoodClient(sock, reader);
  }

  private send(b: Buffer): void {
    this.stream.write(b);
  }

  async handshake(exportName: string): Promise<void> {
    await readGreeting(this.reader);
    this.send(Buffer.concat([encodeClientFlags(CLIENT_FLAG.FIXED_NEWSTYLE | CLIENT_FLAG.NO_ZEROES), encodeOption(OPT.GO, encodeInfoGoData(exportName))]));
    for (;;) {
      const h = await this.reader.read(SIZE.OPTION_REPLY_HEADER);
      if (h.readBigUInt64BE(0) !== W.REP_MAGIC) throw new Error(`bad option reply magic ${h.toString('hex')}`);
      if (h.readUInt32BE(8) !== OPT.GO) throw new Error(`option reply echoes option ${h.readUInt32BE(8)}, not GO`);
      const type = h.readUInt32BE(12);
      const body = await this.reader.read(h.readUInt32BE(16));
      if (type === REP.ACK) return;
      if (isRepError(type)) throw new Error(`GO refused: 0x${type.toString(16)} ${body.toString()}`);
      if (type === REP.INFO && body.readUInt16BE(0) === INFO.EXPORT) {
        this.size = body.readBigUInt64BE(2);
        this.flags = body.readUInt16BE(10);
      }
    }
  }

  private async simpleReply(cookie: bigint, what: string): Promise<void> {
    const r = await this.reader.read(SIZE.SIMPLE_REPLY);
    if (r.readUInt32BE(0) !== W.SIMPLE_REPLY_MAGIC) throw new Error(`${what}: bad reply magic ${r.toString('hex')}`);
    if (r.readBigUInt64BE(8) !== cookie) throw new Error(`${what}: reply cookie ${r.readBigUInt64BE(8)} for request ${cookie}`);
    const err = r.readUInt32BE(4);
    if (err !== 0) throw new Error(`${what}: error ${err}`);
  }

  async write(offset: number, data: Buffer, flags = 0): Promise<void> {
    const c = this.cookie++;
    this.send(encodeRequest({ flags, type: CMD.WRITE, cookie: c, offset, length: data.length }, data));
    await this.simpleReply(c, `WRITE at ${offset}`);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const c = this.cookie++;
    this.send(encodeRequest({ flags: 0, type: CMD.READ, cookie: c, offset, length }));
    await this.simpleReply(c, `READ at ${offset}`);
    return this.reader.read(length);
  }

  async flush(): Promise<void> {
    const c = this.cookie++;
    this.send(encodeRequest({ flags: 0, type: CMD.FLUSH, cookie: c, offset: 0, length: 0 }));
    await this.simpleReply(c, 'FLUSH');
  }

  /** Write a pattern, read it back, compare; throws on any difference. */
  async verify(offset: number, data: Buffer): Promise<void> {
    await this.write(offset, data);
    const got = await this.read(offset, data.length);
    if (!got.equals(data)) {
      let at = 0;
      while (got[at] === data[at]) at++;
      throw new Error(`read back of ${data.length} bytes at ${offset} differs from what was written, first at byte ${at}`);
    }
  }

  /** NBD_CMD_DISC, then FIN. */
  disconnect(): void {
    this.send(encodeRequest({ flags: 0, type: CMD.DISC, cookie: this.cookie++, offset: 0, length: 0 }));
    this.stream.end();
  }

  destroy(): void {
    this.stream.destroy();
  }
}
