/**
 * `NbdConnection`: the handshake of connection.ts plus typed option helpers
 * (STRUCTURED_REPLY, EXTENDED_HEADERS, LIST, INFO, GO, the META_CONTEXT
 * options, EXPORT_NAME, ABORT) and the requests of the transmission phase
 * (raw `request()` and typed READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, CACHE,
 * BLOCK_STATUS, DISC).
 */
import net from 'node:net';
import { CMD, INFO, MAGIC, OPT, REP, SIZE } from '../protocol/constants.js';
import { NbdClientError, deviation } from './deviations.js';
import { infoGoData, metaContextData, optionBytes, requestHeaderBytes, type RequestHeader } from './encode.js';
import { DEFAULTS, NbdConnectionBase, type ConnectOptions, type ConnectTarget } from './connection.js';
import { checkBlockSizes, checkInfoAnswer, checkMetaContextAnswer, checkTransmissionFlags, type InfoDetail, type OptionReply } from './option-replies.js';
import type { Reply } from './reply.js';

/** The answer to an option: `ok` when its final reply is NBD_REP_ACK. */
export interface OptionAnswer {
  readonly ok: boolean;
  readonly replies: readonly OptionReply[];
}

/** What INFO / GO told about an export. */
export interface ExportDetails extends OptionAnswer {
  readonly size?: bigint;
  /** Transmission flags (NBD_FLAG_*). */
  readonly flags?: number;
  readonly name?: string;
  readonly description?: string;
  readonly blockSize?: { readonly minimum: number; readonly preferred: number; readonly maximum: number };
  /** Every NBD_REP_INFO in order, unknown types included. */
  readonly infos: readonly InfoDetail[];
}

/** Any request, valid or not. Numbers may be given as number or bigint. */
export interface RequestInput {
  readonly type: number;
  readonly flags?: number;
  /** Default: the next free cookie. */
  readonly cookie?: bigint;
  readonly offset?: number | bigint;
  /** Default: the payload's length, else 0. May differ from the payload on purpose. */
  readonly length?: number | bigint;
  /** Bytes written after the header (WRITE data, or anything). */
  readonly payload?: Buffer;
  /** Extended header (default: as negotiated). */
  readonly extended?: boolean;
  /** A different request magic, on purpose. */
  readonly magic?: number;
  /** Milliseconds to wait for the reply (default: the connection's). */
  readonly timeoutMs?: number;
}

/** Request flags for the typed helpers. */
export interface RequestFlags {
  readonly flags?: number;
  readonly timeoutMs?: number;
}

export class NbdConnection extends NbdConnectionBase {
  /** Export size and transmission flags, once GO / EXPORT_NAME succeeded. */
  size = 0n;
  transmissionFlags = 0;
  private nextCookie = 1n;

  /** Open a connection over a UNIX socket (`{ path }`) or TCP (`{ host, port }`); nothing is read or sent yet. */
  static connect(target: ConnectTarget, opts: ConnectOptions = {}): Promise<NbdConnection> {
    const timeoutMs = opts.timeoutMs ?? DEFAULTS.timeoutMs;
    return new Promise((resolve, reject) => {
      const s = 'path' in target ? net.connect(target.path) : net.connect(target.port, target.host);
      const t =
        timeoutMs > 0
          ? setTimeout(() => {
              s.destroy();
              reject(new NbdClientError(`connect timed out after ${timeoutMs} ms`, 'timeout'));
            }, timeoutMs)
          : undefined;
      s.once('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
      s.once('connect', () => {
        clearTimeout(t);
        s.removeAllListeners('error');
        resolve(new NbdConnection(s, opts));
      });
    });
  }

  // ── typed options ──────────────────────────────────────────────────────

  private answer(replies: readonly OptionReply[]): OptionAnswer {
    return { ok: replies.at(-1)!.type === REP.NBD_REP_ACK, replies };
  }

  /** NBD_OPT_STRUCTURED_REPLY; on ACK transmission uses structured replies. */
  async structuredReply(): Promise<OptionAnswer> {
    const a = this.answer(await this.option(OPT.NBD_OPT_STRUCTURED_REPLY));
    if (a.ok && this.mode === 'simple') this.mode = 'structured';
    return a;
  }

  /** NBD_OPT_EXTENDED_HEADERS; on ACK both sides use 32-byte headers. */
  async extendedHeaders(): Promise<OptionAnswer> {
    const a = this.answer(await this.option(OPT.NBD_OPT_EXTENDED_HEADERS));
    if (a.ok) this.mode = 'extended';
    return a;
  }

  /** NBD_OPT_LIST: the exports the server names. */
  async list(): Promise<OptionAnswer & { exports: Array<{ name: string; description: string }> }> {
    const replies = await this.option(OPT.NBD_OPT_LIST);
    const exports = replies.flatMap((r) => (r.detail.kind === 'server' ? [{ name: r.detail.name, description: r.detail.description }] : []));
    return { ...this.answer(replies), exports };
  }

  private details(replies: readonly OptionReply[]): ExportDetails {
    checkInfoAnswer(replies).forEach((d) => (replies.at(-1)!.deviations.push(d), this.note(d)));
    for (const r of replies) {
      if (r.detail.kind !== 'info') continue;
      const i = r.detail.detail;
      const found = i.info === 'export' ? checkTransmissionFlags(i.flags, this.mode, r.data) : i.info === 'blockSize' ? checkBlockSizes(i, r.data) : [];
      found.forEach((d) => (r.deviations.push(d), this.note(d)));
    }
    const infos = replies.flatMap((r) => (r.detail.kind === 'info' ? [r.detail.detail] : []));
    let out: ExportDetails = { ...this.answer(replies), infos };
    for (const i of infos) {
      if (i.info === 'export') out = { ...out, size: i.size, flags: i.flags };
      else if (i.info === 'name') out = { ...out, name: i.name };
      else if (i.info === 'description') out = { ...out, description: i.description };
      else if (i.info === 'blockSize') out = { ...out, blockSize: { minimum: i.minimum, preferred: i.preferred, maximum: i.maximum } };
    }
    return out;
  }

  /** NBD_OPT_INFO for export `name`, asking for the info types `infos` (INFO.NBD_INFO_*). */
  async info(name: string, infos: readonly number[] = []): Promise<ExportDetails> {
    return this.details(await this.option(OPT.NBD_OPT_INFO, infoGoData(name, infos)));
  }

  /** NBD_OPT_GO: on ACK the transmission phase starts. */
  async go(name: string, infos: readonly number[] = [INFO.NBD_INFO_NAME, INFO.NBD_INFO_DESCRIPTION, INFO.NBD_INFO_BLOCK_SIZE]): Promise<ExportDetails> {
    const d = this.details(await this.option(OPT.NBD_OPT_GO, infoGoData(name, infos)));
    if (d.ok) {
      this.size = d.size ?? 0n;
      this.transmissionFlags = d.flags ?? 0;
      this.advertisedMaxPayload = d.blockSize?.maximum;
      this.startTransmission();
    }
    return d;
  }

  private async metaContext(code: number, name: string, queries: ReadonlyArray<string>): Promise<OptionAnswer & { contexts: Array<{ id: number; name: string }> }> {
    const replies = await this.option(code, metaContextData(name, queries));
    checkMetaContextAnswer(code === OPT.NBD_OPT_SET_META_CONTEXT, replies).forEach((d) => (replies.at(-1)!.deviations.push(d), this.note(d)));
    const contexts = replies.flatMap((r) => (r.detail.kind === 'metaContext' ? [{ id: r.detail.id, name: r.detail.name }] : []));
    return { ...this.answer(replies), contexts };
  }

  /** NBD_OPT_LIST_META_CONTEXT. */
  listMetaContext(name: string, queries: ReadonlyArray<string> = []): ReturnType<NbdConnection['metaContext']> {
    return this.metaContext(OPT.NBD_OPT_LIST_META_CONTEXT, name, queries);
  }

  /** NBD_OPT_SET_META_CONTEXT; the selection (`contexts`) is replaced by what the server answers. */
  async setMetaContext(name: string, queries: ReadonlyArray<string>): ReturnType<NbdConnection['metaContext']> {
    const a = await this.metaContext(OPT.NBD_OPT_SET_META_CONTEXT, name, queries);
    this.contexts.clear();
    if (a.ok) for (const c of a.contexts) this.contexts.set(c.id, c.name);
    return a;
  }

  /**
   * NBD_OPT_EXPORT_NAME: no option reply, just size and flags (and 124 zero
   * bytes unless both sides set NO_ZEROES); an unknown export ends the
   * connection. `noZeroes` overrides what the flags exchanged imply.
   */
  async exportName(name: string, o: { noZeroes?: boolean } = {}): Promise<{ size: bigint; flags: number; bytes: Buffer }> {
    const noZeroes = o.noZeroes ?? (this.handshakeFlags & this.clientFlags & 2) !== 0;
    this.raw(optionBytes(OPT.NBD_OPT_EXPORT_NAME, Buffer.from(name, 'utf8')));
    const head = await this.readBytes(SIZE.EXPORT_NAME_REPLY);
    if (head.readBigUInt64BE(0) === MAGIC.NBD_REP_MAGIC) {
      // An option reply where none may be: the server refused EXPORT_NAME instead of closing.
      const rest = await this.readBytes(SIZE.OPTION_REPLY_HEADER - SIZE.EXPORT_NAME_REPLY);
      const header = Buffer.concat([head, rest]);
      const len = header.readUInt32BE(16);
      const data = len && len <= this.maxPayload ? await this.readBytes(len) : Buffer.alloc(0);
      const d = deviation('option.export-name-terminates', `EXPORT_NAME answered with option reply type 0x${header.readUInt32BE(12).toString(16)} instead of closing`, [header, data]);
      this.note(d);
      throw new NbdClientError(d.message, 'refused', [d]);
    }
    const pad = noZeroes ? Buffer.alloc(0) : await this.readBytes(SIZE.EXPORT_NAME_ZEROES);
    if (pad.some((b) => b !== 0)) this.note(deviation('handshake.no-zeroes', 'the 124 bytes after the EXPORT_NAME reply are not all zero', pad));
    this.size = head.readBigUInt64BE(0);
    this.transmissionFlags = head.readUInt16BE(8);
    checkTransmissionFlags(this.transmissionFlags, this.mode, head).forEach(this.note);
    this.startTransmission();
    return { size: this.size, flags: this.transmissionFlags, bytes: Buffer.concat([head, pad]) };
  }

  /** NBD_OPT_ABORT: the server's ACK if it sends one before closing (undefined if it just closes), then the socket is closed. */
  async abort(): Promise<OptionReply | undefined> {
    this.raw(optionBytes(OPT.NBD_OPT_ABORT));
    try {
      return await this.optionReply(OPT.NBD_OPT_ABORT);
    } catch (e) {
      if (e instanceof NbdClientError && e.code === 'closed') return undefined;
      throw e;
    } finally {
      this.destroy();
    }
  }

  // ── transmission ───────────────────────────────────────────────────────

  private cookie(): bigint {
    return this.nextCookie++;
  }

  /** The header fields of `r`, with the defaults filled in. */
  private header(r: RequestInput): RequestHeader {
    return {
      type: r.type,
      flags: r.flags ?? 0,
      cookie: r.cookie ?? this.cookie(),
      offset: BigInt(r.offset ?? 0),
      length: BigInt(r.length ?? r.payload?.length ?? 0),
      extended: r.extended ?? this.mode === 'extended',
      ...(r.magic !== undefined ? { magic: r.magic } : {}),
    };
  }

  /** Send any request and wait for its reply, matched by cookie (any order, many in flight). */
  request(r: RequestInput): Promise<Reply> {
    if (!this.transmission) return Promise.reject(new NbdClientError('request before GO or EXPORT_NAME succeeded', 'state'));
    return this.transmission.request(this.header(r), r.payload, r.timeoutMs ?? this.timeoutMs);
  }

  /** Send a request that gets no reply (DISC), or one whose reply is not awaited. */
  send(r: Omit<RequestInput, 'timeoutMs'>): void {
    const h = requestHeaderBytes(this.header(r));
    this.raw(r.payload ? Buffer.concat([h, r.payload]) : h);
  }

  /** Requests sent whose reply has not come. */
  get inFlight(): number {
    return this.transmission?.inFlight ?? 0;
  }

  read(offset: number | bigint, length: number, o: RequestFlags = {}): Promise<Reply> {
    return this.request({ type: CMD.NBD_CMD_READ, offset, length, ...o });
  }

  write(offset: number | bigint, data: Buffer, o: RequestFlags = {}): Promise<Reply> {
    return this.request({ type: CMD.NBD_CMD_WRITE, offset, payload: data, ...o });
  }

  flush(o: RequestFlags = {}): Promise<Reply> {
    return this.request({ type: CMD.NBD_CMD_FLUSH, ...o });
  }

  trim(offset: number | bigint, length: number | bigint, o: RequestFlags = {}): Promise<Reply> {
    return this.request({ type: CMD.NBD_CMD_TRIM, offset, length, ...o });
  }

  writeZeroes(offset: number | bigint, length: number | bigint, o: RequestFlags = {}): Promise<Reply> {
    return this.request({ type: CMD.NBD_CMD_WRITE_ZEROES, offset, length, ...o });
  }

  cache(offset: number | bigint, length: number | bigint, o: RequestFlags = {}): Promise<Reply> {
    return this.request({ type: CMD.NBD_CMD_CACHE, offset, length, ...o });
  }

  /** BLOCK_STATUS for the contexts selected by `setMetaContext` (REQ_ONE: `flags: CMD_FLAG.NBD_CMD_FLAG_REQ_ONE`). */
  blockStatus(offset: number | bigint, length: number | bigint, o: RequestFlags = {}): Promise<Reply> {
    return this.request({ type: CMD.NBD_CMD_BLOCK_STATUS, offset, length, ...o });
  }

  /** NBD_CMD_DISC, then wait (up to the timeout) for the server to close; true if it did. */
  async disc(): Promise<boolean> {
    this.send({ type: CMD.NBD_CMD_DISC });
    this.stream.end();
    const closed = await this.closedWithin();
    this.destroy();
    return closed;
  }
}
