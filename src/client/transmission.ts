/**
 * The transmission phase: requests go out as they are asked for (any number
 * in flight), one loop reads replies and hands each to the request with its
 * cookie, in whatever order they come. Every request has its own timeout, so
 * a server that never answers cannot hang a caller.
 */
import { CMD, MAGIC, SIZE } from '../protocol/constants.js';
import type { ByteReader } from './byte-reader.js';
import { chunkContent, chunkTypeName, type Chunk } from './chunks.js';
import { NbdClientError, deviation, hexOf, type Deviation } from './deviations.js';
import { requestHeaderBytes, type RequestHeader } from './encode.js';
import { ReplyBuilder, type Reply, type ReplyContext, type SentRequest } from './reply.js';

interface Pending {
  readonly builder: ReplyBuilder;
  readonly resolve: (r: Reply) => void;
  readonly reject: (e: Error) => void;
  timer: NodeJS.Timeout | undefined;
  /** The caller gave up (timeout); the reply is still read and checked when it comes. */
  abandoned: boolean;
  /** Bytes kept of its chunks so far (payload + REPLY_OVERHEAD each), against maxReplyBytes. */
  kept: number;
}

export interface TransmissionOptions {
  /** Largest chunk payload (or simple READ data) accepted before the stream is given up. */
  readonly maxPayload: number;
  /** Most bytes kept of one request's chunks (payload + REPLY_OVERHEAD each) before the stream is given up (`limit`). */
  readonly maxReplyBytes: number;
}

/**
 * What one kept reply or chunk is counted as besides its data, against `maxReplyBytes` (its header,
 * buffers and record). Measured on Node 20 (test/unit/client/reply-memory.test.ts): a kept
 * 12-byte OFFSET_HOLE chunk costs about 1 KiB of heap and buffers besides its payload; counted as
 * 1.5 KiB so the bound holds with room. (It was 256: a server sending tiny chunks drove the
 * client to 550 MiB before a 128 MiB maxReplyBytes tripped.)
 */
export const REPLY_OVERHEAD = 1536;

/** How many finished cookies are remembered, to tell "a chunk after DONE" from "a cookie never sent". */
const RECENT = 4096;

export class Transmission {
  /** Requests in flight by cookie; a cookie reused on purpose queues its requests, answered in order. */
  private readonly pending = new Map<bigint, Pending[]>();
  private count = 0;
  private readonly finished = new Set<bigint>();
  private stopped: NbdClientError | undefined;

  constructor(
    private readonly reader: ByteReader,
    private readonly write: (b: Buffer) => void,
    private readonly ctx: ReplyContext,
    private readonly report: (d: Deviation) => void,
    private readonly giveUp: () => void,
    private readonly opts: TransmissionOptions,
  ) {
    void this.loop();
  }

  /** Requests sent and not answered yet (timed-out ones included until their reply comes). */
  get inFlight(): number {
    return this.count;
  }

  /** Send a request whose reply is awaited. */
  request(h: RequestHeader, payload: Buffer | undefined, timeoutMs: number): Promise<Reply> {
    if (this.stopped) return Promise.reject(this.stopped);
    const sent: SentRequest = { type: h.type, flags: h.flags, cookie: h.cookie, offset: h.offset, length: h.length, extended: h.extended };
    const promise = new Promise<Reply>((resolve, reject) => {
      const p: Pending = { builder: new ReplyBuilder(sent, this.ctx, this.report), resolve, reject, timer: undefined, abandoned: false, kept: 0 };
      if (timeoutMs > 0)
        p.timer = setTimeout(() => {
          p.abandoned = true;
          reject(new NbdClientError(`no reply to cookie ${h.cookie} within ${timeoutMs} ms`, 'timeout', p.builder.deviations));
        }, timeoutMs);
      const queue = this.pending.get(h.cookie);
      if (queue) queue.push(p);
      else this.pending.set(h.cookie, [p]);
      this.count++;
    });
    this.write(payload ? Buffer.concat([requestHeaderBytes(h), payload]) : requestHeaderBytes(h));
    return promise;
  }

  /** Stop: every pending request fails with `err` (the connection closed, or its bytes cannot be followed). */
  stop(err: NbdClientError): void {
    if (this.stopped) return;
    this.stopped = err;
    for (const [cookie, p] of [...this.pending].flatMap(([k, q]) => q.map((x) => [k, x] as const))) {
      clearTimeout(p.timer);
      if (p.builder.chunks.length)
        this.report(deviation('reply.structured-chunks', `cookie ${cookie}: ${p.builder.chunks.length} chunks but no DONE before the connection ended`, p.builder.chunks.at(-1)!.header));
      if (!p.abandoned) p.reject(new NbdClientError(err.message, err.code, p.builder.deviations));
    }
    this.pending.clear();
    this.count = 0;
  }

  private complete(cookie: bigint, p: Pending, r: Reply): void {
    clearTimeout(p.timer);
    const queue = this.pending.get(cookie)!;
    queue.shift();
    if (!queue.length) this.pending.delete(cookie);
    this.count--;
    this.finished.add(cookie);
    if (this.finished.size > RECENT) this.finished.delete(this.finished.values().next().value!);
    if (!p.abandoned) p.resolve(r);
  }

  /** A reply for a cookie with no request in flight. */
  private stray(cookie: bigint, what: string, evidence: readonly Buffer[]): void {
    if (this.finished.has(cookie)) this.report(deviation('reply.structured-chunks', `${what} for cookie ${cookie}, whose reply was already complete`, evidence));
    else this.report(deviation('peer.unknown-cookie', `${what} for cookie ${cookie}, which no request in flight has`, evidence));
  }

  private desync(message: string, evidence: readonly Buffer[], rule: string): void {
    this.report(deviation(rule, message, evidence));
    this.stop(new NbdClientError(message, 'desync'));
    this.giveUp();
  }

  private async loop(): Promise<void> {
    try {
      for (;;) {
        const head = await this.next(4);
        const magic = head.readUInt32BE(0);
        if (magic === MAGIC.NBD_SIMPLE_REPLY_MAGIC) await this.simple(head);
        else if (magic === MAGIC.NBD_STRUCTURED_REPLY_MAGIC || magic === MAGIC.NBD_EXTENDED_REPLY_MAGIC) {
          if (!(await this.chunk(head, magic === MAGIC.NBD_EXTENDED_REPLY_MAGIC))) return;
        } else {
          const more = this.reader.available ? await this.next(Math.min(this.reader.available, 28)) : Buffer.alloc(0);
          return this.desync(`reply magic 0x${magic.toString(16).padStart(8, '0')} is none of simple, structured or extended (${hexOf(Buffer.concat([head, more]))})`, [head, more], 'peer.reply-magic');
        }
      }
    } catch (e) {
      // Reads fail only when the connection ended; anything else is a fault of this client, said so.
      this.stop(e instanceof NbdClientError ? e : new NbdClientError(`client fault while reading replies: ${(e as Error).stack ?? e}`, 'internal'));
      if (!(e instanceof NbdClientError)) this.giveUp();
    }
  }

  /** Exactly n bytes of the reply stream; the connection's end becomes an NbdClientError `closed`. */
  private async next(n: number): Promise<Buffer> {
    try {
      return await this.reader.read(n);
    } catch (e) {
      throw new NbdClientError(`connection ended: ${(e as Error).message}`, 'closed');
    }
  }

  private async simple(head: Buffer): Promise<void> {
    const header = Buffer.concat([head, await this.next(SIZE.SIMPLE_REPLY - 4)]);
    const cookie = header.readBigUInt64BE(8);
    const p = this.pending.get(cookie)?.[0];
    if (!p) return this.stray(cookie, 'simple reply', [header]);
    const req = p.builder.request;
    // A successful simple reply to a READ is followed by exactly the length asked for.
    let data: Buffer | undefined;
    if (req.type === CMD.NBD_CMD_READ && header.readUInt32BE(4) === 0 && req.length > 0n) {
      if (req.length > BigInt(this.opts.maxPayload)) {
        // The length is the one this client asked for, so this is no fault of the server: just stop.
        this.stop(new NbdClientError(`simple READ reply of ${req.length} bytes is more than maxPayload (${this.opts.maxPayload}); the data cannot be taken`, 'desync'));
        return this.giveUp();
      }
      data = await this.next(Number(req.length));
    }
    this.complete(cookie, p, p.builder.simple(header, data));
  }

  /** One structured or extended chunk; false when the stream had to be given up. */
  private async chunk(head: Buffer, extended: boolean): Promise<boolean> {
    const header = Buffer.concat([head, await this.next((extended ? SIZE.EXTENDED_REPLY : SIZE.STRUCTURED_REPLY) - 4)]);
    const length = extended ? header.readBigUInt64BE(24) : BigInt(header.readUInt32BE(16));
    if (length > BigInt(this.opts.maxPayload)) {
      this.desync(`chunk payload of ${length} bytes is more than maxPayload (${this.opts.maxPayload})`, [header], 'peer.chunk-payload');
      return false;
    }
    const payload = length ? await this.next(Number(length)) : Buffer.alloc(0);
    const flags = header.readUInt16BE(4);
    const type = header.readUInt16BE(6);
    const cookie = header.readBigUInt64BE(8);
    const devs: Deviation[] = [];
    const c: Chunk = {
      form: extended ? 'extended' : 'structured',
      flags,
      type,
      typeName: chunkTypeName(type),
      cookie,
      ...(extended ? { offset: header.readBigUInt64BE(16) } : {}),
      header,
      payload,
      content: chunkContent(type, flags, payload, devs),
    };
    const p = this.pending.get(cookie)?.[0];
    if (!p) {
      for (const d of devs) this.report(d);
      this.stray(cookie, `${c.typeName} chunk`, [header, payload.subarray(0, 256)]);
      return true;
    }
    p.kept += payload.length + REPLY_OVERHEAD;
    if (p.kept > this.opts.maxReplyBytes) {
      // An endless reply (chunks and never DONE) would otherwise be kept for as long as the server sends.
      for (const d of devs) this.report(d);
      this.stop(new NbdClientError(`cookie ${cookie}: ${p.builder.chunks.length + 1} chunks (${p.kept} bytes counted) and no DONE: more than maxReplyBytes (${this.opts.maxReplyBytes}); connection given up`, 'limit'));
      this.giveUp();
      return false;
    }
    const done = p.builder.chunk(c, devs);
    if (done) this.complete(cookie, p, done);
    return true;
  }
}
