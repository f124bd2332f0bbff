/**
 * One request's reply, put together from what arrives for its cookie (a
 * simple reply, or structured / extended chunks up to the one flagged DONE),
 * with the checks that need the request: the reply form the connection
 * negotiated, READ chunks inside the request, not overlapping and covering
 * it, block status for the contexts selected, the extended offset echo.
 */
import { CMD, CMD_FLAG, REPLY_FLAG, SIZE, SPEC_ERRNOS, cmdName } from '../protocol/constants.js';
import type { Chunk, Extent } from './chunks.js';
import { deviation, type Deviation } from './deviations.js';
import type { RequestHeader } from './encode.js';

/** The reply form the connection negotiated. */
export type ReplyMode = 'simple' | 'structured' | 'extended';

/** A request as it was sent (any values). */
export type SentRequest = Omit<RequestHeader, 'magic'>;

/** A complete reply. `error` 0 is success. */
export interface Reply {
  readonly cookie: bigint;
  readonly request: SentRequest;
  /** How the server answered: a simple reply, structured chunks or extended chunks. */
  readonly form: ReplyMode;
  /** The simple reply's error, or the first error chunk's (0: success). */
  readonly error: number;
  readonly errorMessage?: string;
  /** For ERROR_OFFSET: where the error is. */
  readonly errorOffset?: bigint;
  /** READ data (holes as zeroes), when the read succeeded. */
  readonly data?: Buffer;
  /** Block status, one entry per chunk. */
  readonly blockStatus: ReadonlyArray<{ readonly contextId: number; readonly extents: readonly Extent[] }>;
  /** Every chunk as received (empty for a simple reply). */
  readonly chunks: readonly Chunk[];
  /** The simple reply's 16 header bytes. */
  readonly simpleHeader?: Buffer;
  /** Deviations in this reply. */
  readonly deviations: readonly Deviation[];
}

/** What the connection knows that the checks need. */
export interface ReplyContext {
  readonly mode: ReplyMode;
  /** Meta contexts selected with SET_META_CONTEXT (id → name); empty if none. */
  readonly contexts: ReadonlyMap<number, string>;
  /** The maximum payload the server advertised for the export (NBD_INFO_BLOCK_SIZE), if it did. */
  readonly advertisedMaxPayload?: number;
}

/** Bytes of a chunk's payload copied into a deviation's evidence. */
const EVIDENCE_PAYLOAD = 256;

/** Largest READ the client assembles into one buffer. */
const MAX_ASSEMBLED = 1 << 30;

export class ReplyBuilder {
  readonly deviations: Deviation[] = [];
  readonly chunks: Chunk[] = [];
  private readonly ranges: Array<[bigint, bigint]> = [];
  private readonly statuses: Array<{ contextId: number; extents: readonly Extent[] }> = [];
  private readonly data: Buffer | undefined;
  private error = 0;
  private errorMessage: string | undefined;
  private errorOffset: bigint | undefined;
  private contentChunks = 0;

  constructor(
    readonly request: SentRequest,
    private readonly ctx: ReplyContext,
    private readonly report: (d: Deviation) => void,
  ) {
    const isRead = request.type === CMD.NBD_CMD_READ;
    this.data = isRead && request.length <= BigInt(MAX_ASSEMBLED) ? Buffer.alloc(Number(request.length)) : undefined;
  }

  private flag(rule: string, message: string, evidence: Buffer | readonly Buffer[]): void {
    const d = deviation(rule, `${cmdName(this.request.type)} cookie ${this.request.cookie}: ${message}`, evidence);
    this.deviations.push(d);
    this.report(d);
  }

  private errno(error: number, evidence: Buffer): void {
    if (error !== 0 && !SPEC_ERRNOS.has(error)) this.flag('peer.error-value', `error value ${error} is not one the spec defines`, evidence);
  }

  /** A simple reply: header and, for a successful READ, its data. Completes the reply. */
  simple(header: Buffer, data: Buffer | undefined): Reply {
    const error = header.readUInt32BE(4);
    if (this.ctx.mode === 'extended') this.flag('reply.negotiated-mode', 'simple reply although extended headers were negotiated', header);
    else if (this.ctx.mode === 'structured' && this.request.type === CMD.NBD_CMD_READ)
      this.flag('reply.negotiated-mode', 'simple reply to a READ although structured replies were negotiated', header);
    if (this.chunks.length) this.flag('reply.structured-chunks', `simple reply after ${this.chunks.length} chunks without DONE`, header);
    if (error === 0 && this.request.type === CMD.NBD_CMD_BLOCK_STATUS) this.flag('reply.block-status-chunks', 'successful BLOCK_STATUS answered with a simple reply: no status chunk', header);
    this.errno(error, header);
    if (data && this.data) data.copy(this.data);
    return {
      cookie: this.request.cookie,
      request: this.request,
      form: 'simple',
      error,
      ...(error === 0 && this.data ? { data: this.data } : {}),
      blockStatus: [],
      chunks: [],
      simpleHeader: header,
      deviations: this.deviations,
    };
  }

  /** One chunk; returns the complete reply when it carries DONE. */
  chunk(c: Chunk, chunkDevs: readonly Deviation[]): Reply | undefined {
    // Evidence: the header and the start of the payload (the whole chunk stays in `chunks`).
    const evidence = [c.header, c.payload.subarray(0, EVIDENCE_PAYLOAD)];
    for (const d of chunkDevs) this.flag(d.rule, d.message, d.evidence);
    if (c.form === 'structured' && this.ctx.mode !== 'structured')
      this.flag('reply.negotiated-mode', this.ctx.mode === 'extended' ? 'compact structured chunk although extended headers were negotiated' : 'structured chunk although structured replies were not negotiated', c.header);
    if (c.form === 'extended' && this.ctx.mode !== 'extended') this.flag('reply.negotiated-mode', 'extended chunk although extended headers were not negotiated', c.header);
    if (c.form === 'extended' && c.offset !== this.request.offset)
      this.flag('reply.extended-offset-echo', `chunk header offset ${c.offset} is not the request's ${this.request.offset}`, c.header);
    this.chunks.push(c);
    this.content(c, evidence);
    return c.flags & REPLY_FLAG.NBD_REPLY_FLAG_DONE ? this.finish() : undefined;
  }

  private inRequest(start: bigint, end: bigint): boolean {
    return start >= this.request.offset && end <= this.request.offset + this.request.length;
  }

  private dataRange(start: bigint, size: bigint, bytes: Buffer | undefined, evidence: readonly Buffer[]): void {
    const end = start + size;
    if (this.request.type !== CMD.NBD_CMD_READ) return this.flag('reply.structured-chunks', 'data chunk in the reply to a command that is not READ', evidence);
    this.contentChunks++;
    if (!this.inRequest(start, end)) return this.flag('reply.structured-chunks', `data chunk [${start}, ${end}) outside the request [${this.request.offset}, ${this.request.offset + this.request.length})`, evidence);
    if (this.ranges.some(([s, e]) => start < e && s < end)) this.flag('reply.structured-chunks', `data chunk [${start}, ${end}) overlaps an earlier one`, evidence);
    this.ranges.push([start, end]);
    if (bytes && this.data) bytes.copy(this.data, Number(start - this.request.offset));
  }

  private content(c: Chunk, evidence: readonly Buffer[]): void {
    const x = c.content;
    switch (x.kind) {
      case 'offsetData': {
        // reply.structured-chunks: no chunk carries more data than the advertised maximum (a DF READ up to 64 KiB excepted).
        const max = this.ctx.advertisedMaxPayload;
        const dfGuarantee = (this.request.flags & CMD_FLAG.NBD_CMD_FLAG_DF) !== 0 && this.request.length <= BigInt(SIZE.DF_UNFRAGMENTED);
        if (max !== undefined && x.data.length > max && !dfGuarantee) {
          this.flag('reply.structured-chunks', `data chunk of ${x.data.length} bytes, more than the advertised maximum payload ${max}`, evidence);
        }
        return this.dataRange(x.offset, BigInt(x.data.length), x.data, evidence);
      }
      case 'offsetHole':
        return this.dataRange(x.offset, BigInt(x.size), undefined, evidence);
      case 'blockStatus':
        return this.status(c, x.contextId, x.extents, x.wide, evidence);
      case 'error':
        if (this.error === 0) {
          this.error = x.error;
          this.errorMessage = x.message;
          this.errorOffset = x.offset;
        }
        if (x.offset !== undefined && !this.inRequest(x.offset, x.offset + 1n)) this.flag('reply.structured-chunks', `ERROR_OFFSET offset ${x.offset} outside the request`, evidence);
        return;
      default:
        return;
    }
  }

  private status(c: Chunk, contextId: number, extents: readonly Extent[], wide: boolean, evidence: readonly Buffer[]): void {
    if (this.request.type !== CMD.NBD_CMD_BLOCK_STATUS) return this.flag('reply.block-status-chunks', 'block status chunk in the reply to a command that is not BLOCK_STATUS', evidence);
    if (wide !== (this.ctx.mode === 'extended')) this.flag('reply.negotiated-mode', `${c.typeName} chunk in ${this.ctx.mode} mode`, c.header);
    if (this.ctx.contexts.size && !this.ctx.contexts.has(contextId)) this.flag('reply.block-status-chunks', `context id ${contextId} was not selected`, evidence);
    if (this.statuses.some((s) => s.contextId === contextId)) this.flag('reply.block-status-chunks', `second chunk for context id ${contextId}`, evidence);
    if (extents.some((e) => e.length === 0n)) this.flag('reply.block-status-chunks', 'extent of length 0', evidence);
    if (this.request.flags & CMD_FLAG.NBD_CMD_FLAG_REQ_ONE && extents.length !== 1) this.flag('reply.block-status-chunks', `${extents.length} extents although REQ_ONE was set`, evidence);
    const allButLast = extents.slice(0, -1).reduce((s, e) => s + e.length, 0n);
    if (extents.length > 1 && allButLast >= this.request.length) this.flag('reply.block-status-chunks', `extents before the last add up to ${allButLast}, not less than the request's ${this.request.length}`, evidence);
    this.statuses.push({ contextId, extents });
  }

  /** The reply once DONE arrived, with the checks on the whole. */
  private finish(): Reply {
    const r = this.request;
    if (this.error === 0 && r.type === CMD.NBD_CMD_READ) {
      const covered = this.ranges.reduce((s, [a, b]) => s + (b - a), 0n);
      if (covered !== r.length) this.flag('reply.structured-chunks', `successful READ reply covers ${covered} of the ${r.length} bytes asked for`, this.chunks.at(-1)!.header);
      if (r.flags & CMD_FLAG.NBD_CMD_FLAG_DF && this.contentChunks > 1) this.flag('reply.df-one-chunk', `${this.contentChunks} content chunks for a READ with DF`, this.chunks.at(-1)!.header);
    }
    if (this.error === 0 && r.type === CMD.NBD_CMD_BLOCK_STATUS) {
      for (const id of this.ctx.contexts.keys())
        if (!this.statuses.some((s) => s.contextId === id)) this.flag('reply.block-status-chunks', `no block status chunk for context id ${id}`, this.chunks.at(-1)!.header);
    }
    return {
      cookie: r.cookie,
      request: r,
      form: this.chunks.some((c) => c.form === 'extended') ? 'extended' : 'structured',
      error: this.error,
      ...(this.errorMessage !== undefined ? { errorMessage: this.errorMessage } : {}),
      ...(this.errorOffset !== undefined ? { errorOffset: this.errorOffset } : {}),
      ...(this.error === 0 && this.data ? { data: this.data } : {}),
      blockStatus: this.statuses,
      chunks: this.chunks,
      deviations: this.deviations,
    };
  }
}
