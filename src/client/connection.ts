/**
 * `NbdConnection`: one client connection to an NBD server, driven step by
 * step. The handshake is the caller's to run (greeting, client flags, any
 * option in any order, legal or not); the typed helpers (`go`, `list`,
 * `setMetaContext`, …) are conveniences over the raw `option()`. After GO or
 * EXPORT_NAME the transmission phase starts (see transmission.ts).
 * Everything the server gets wrong is kept in `deviations`.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { CLIENT_FLAGS, HANDSHAKE_FLAGS, MAGIC, OPT, REP, SIZE } from '../protocol/constants.js';
import { ByteReader } from './byte-reader.js';
import { NbdClientError, deviation, hexOf, type Deviation } from './deviations.js';
import { clientFlagsBytes, optionBytes } from './encode.js';
import { parseOptionReply, replyHeaderFields, type OptionReply } from './option-replies.js';
import type { ReplyMode } from './reply.js';
import { REPLY_OVERHEAD, Transmission } from './transmission.js';

/** Most deviations a connection keeps in `deviations`; later ones are only counted (`deviationsNotKept`). */
export const MAX_DEVIATIONS = 10_000;

/** Where the server is: a UNIX socket path, or a TCP host and port. */
export type ConnectTarget = { readonly path: string } | { readonly host: string; readonly port: number };

export interface ConnectOptions {
  /** Milliseconds allowed for each step (connect, each read of the handshake, each request). Default 30 000; 0 for none. */
  readonly timeoutMs?: number;
  /** Largest option reply data or chunk payload accepted; more is a deviation and the connection is given up. Default 64 MiB. */
  readonly maxPayload?: number;
  /**
   * Most bytes kept for one call: the replies to one option, the chunks of one request's reply (each
   * counted as its data plus REPLY_OVERHEAD = 1536 bytes, more than a kept chunk costs besides its
   * data). A server that sends more without a final reply makes the call fail with code `limit` and
   * the connection is given up. What the call holds stays within about 1.5 × this. Default twice `maxPayload`.
   */
  readonly maxReplyBytes?: number;
  /** Called with the bytes of every write (`out`) and every read from the socket (`in`, after TLS: the plaintext), in order: a wire log. */
  readonly onBytes?: (direction: 'in' | 'out', bytes: Buffer) => void;
}

/** STARTTLS parameters (node:tls client options). */
export interface StartTlsOptions {
  readonly ca?: string | Buffer;
  readonly cert?: string | Buffer;
  readonly key?: string | Buffer;
  /** A pre-shared key: identity and key bytes (TLS 1.2 PSK, as psktool files hold). */
  readonly psk?: { readonly identity: string; readonly key: Buffer };
  /** Server name to check the certificate against (default: none sent, `localhost` checked). */
  readonly servername?: string;
  /** Verify the server's certificate (default true; false for a PSK). */
  readonly rejectUnauthorized?: boolean;
}

/** The greeting as received. */
export interface Greeting {
  readonly bytes: Buffer;
  /** Handshake flags (u16) of a newstyle greeting. */
  readonly flags: number;
  readonly oldstyle: boolean;
  readonly deviations: readonly Deviation[];
}

export const DEFAULTS = { timeoutMs: 30_000, maxPayload: 64 * 1024 * 1024 };

/** The handshake half of a connection; `NbdConnection` (client.ts) adds the typed options and the requests. */
export class NbdConnectionBase {
  /** Every deviation seen on this connection, in order (the first MAX_DEVIATIONS). */
  readonly deviations: Deviation[] = [];
  /** Deviations seen after `deviations` held MAX_DEVIATIONS (counted, not kept). */
  deviationsNotKept = 0;
  /** Reply form once transmission starts: follows STRUCTURED_REPLY / EXTENDED_HEADERS ACKs. */
  mode: ReplyMode = 'simple';
  /** Meta contexts selected by the last successful SET_META_CONTEXT (id → name). */
  readonly contexts = new Map<number, string>();
  /** The maximum payload the server advertised for the export it served (GO's NBD_INFO_BLOCK_SIZE), if any. */
  advertisedMaxPayload: number | undefined;
  /** Handshake flags from the greeting, client flags sent. */
  handshakeFlags = 0;
  clientFlags = 0;
  /** The transmission phase, once GO or EXPORT_NAME succeeded. */
  protected transmission: Transmission | undefined;
  protected stream: Duplex;
  protected readonly reader: ByteReader;
  readonly timeoutMs: number;
  readonly maxPayload: number;
  readonly maxReplyBytes: number;
  private readonly onBytes: ConnectOptions['onBytes'];
  /** Resolves when the connection is closed (by either side). */
  readonly closed: Promise<void>;

  /** Use `NbdConnection.connect()`; this wraps a socket that is already connected. */
  constructor(
    readonly socket: net.Socket,
    opts: ConnectOptions,
  ) {
    this.timeoutMs = opts.timeoutMs ?? DEFAULTS.timeoutMs;
    this.maxPayload = opts.maxPayload ?? DEFAULTS.maxPayload;
    this.maxReplyBytes = opts.maxReplyBytes ?? 2 * this.maxPayload;
    this.stream = socket;
    this.reader = new ByteReader(socket);
    this.onBytes = opts.onBytes;
    if (opts.onBytes) {
      const tap = opts.onBytes;
      this.reader.tap = (d) => tap('in', d);
    }
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => {});
  }

  /** Record a deviation on the connection. */
  protected readonly note = (d: Deviation): void => {
    // A server repeating one fault endlessly (stray replies, say) must not grow this list without bound.
    if (this.deviations.length < MAX_DEVIATIONS) this.deviations.push(d);
    else this.deviationsNotKept++;
  };

  /** Whether transmission has started. */
  get transmitting(): boolean {
    return this.transmission !== undefined;
  }

  // ── raw access ──────────────────────────────────────────────────────────

  /** Write bytes as they are (anything: a malformed option, a request with a wrong magic). */
  raw(bytes: Buffer): void {
    if (this.stream.destroyed) return;
    this.onBytes?.('out', bytes);
    this.stream.write(bytes);
  }

  /** Read exactly `n` bytes during the handshake (before transmission starts). */
  readRaw(n: number, timeoutMs = this.timeoutMs): Promise<Buffer> {
    if (this.transmission) return Promise.reject(new NbdClientError('readRaw: transmission has started; replies are read by the client', 'state'));
    return this.readBytes(n, timeoutMs);
  }

  protected async readBytes(n: number, timeoutMs = this.timeoutMs): Promise<Buffer> {
    try {
      return await this.reader.read(n, timeoutMs > 0 ? timeoutMs : undefined);
    } catch (e) {
      const msg = (e as Error).message;
      throw new NbdClientError(msg, msg.startsWith('timed out') ? 'timeout' : 'closed');
    }
  }

  /** Whether the server closed the connection within `timeoutMs`. */
  async closedWithin(timeoutMs = this.timeoutMs): Promise<boolean> {
    let t: NodeJS.Timeout | undefined;
    const r = await Promise.race([this.closed.then(() => true), new Promise<boolean>((res) => (t = setTimeout(() => res(false), timeoutMs)))]);
    clearTimeout(t);
    return r;
  }

  /** Close the socket without a word to the server. */
  destroy(): void {
    this.transmission?.stop(new NbdClientError('connection destroyed by the client', 'closed'));
    this.stream.destroy();
    this.socket.destroy();
  }

  // ── handshake ──────────────────────────────────────────────────────────

  /** Read the greeting: NBDMAGIC, then IHAVEOPT and the handshake flags (or an oldstyle greeting). */
  async greeting(): Promise<Greeting> {
    const devs: Deviation[] = [];
    const head = await this.readBytes(16);
    const second = head.readBigUInt64BE(8);
    if (head.readBigUInt64BE(0) !== MAGIC.NBDMAGIC) devs.push(deviation('peer.greeting-magic', `greeting starts with 0x${head.readBigUInt64BE(0).toString(16)}, not NBDMAGIC`, head));
    if (second === MAGIC.OLDSTYLE_MAGIC) {
      // Oldstyle: size u64, flags u32, 124 zero bytes; no options.
      const rest = await this.readBytes(8 + 4 + 124);
      devs.push(deviation('handshake.greeting-flags', 'oldstyle greeting: no option haggling is possible', [head, rest.subarray(0, 12)]));
      devs.forEach(this.note);
      return { bytes: Buffer.concat([head, rest]), flags: 0, oldstyle: true, deviations: devs };
    }
    if (second !== MAGIC.IHAVEOPT) devs.push(deviation('peer.greeting-magic', `greeting has 0x${second.toString(16)} where IHAVEOPT belongs`, head));
    const flagBytes = await this.readBytes(2);
    const flags = flagBytes.readUInt16BE(0);
    const known = HANDSHAKE_FLAGS.NBD_FLAG_FIXED_NEWSTYLE | HANDSHAKE_FLAGS.NBD_FLAG_NO_ZEROES;
    if (flags & ~known) devs.push(deviation('handshake.greeting-flags', `handshake flags 0x${flags.toString(16)} set bits the spec does not define`, flagBytes));
    this.handshakeFlags = flags;
    devs.forEach(this.note);
    return { bytes: Buffer.concat([head, flagBytes]), flags, oldstyle: false, deviations: devs };
  }

  /** Send client flags, any bits (default: FIXED_NEWSTYLE, and NO_ZEROES if the server offered it). */
  sendClientFlags(flags = CLIENT_FLAGS.NBD_FLAG_C_FIXED_NEWSTYLE | (this.handshakeFlags & HANDSHAKE_FLAGS.NBD_FLAG_NO_ZEROES ? CLIENT_FLAGS.NBD_FLAG_C_NO_ZEROES : 0)): void {
    this.clientFlags = flags;
    this.raw(clientFlagsBytes(flags));
  }

  /** Greeting then the default client flags. */
  async handshake(): Promise<Greeting> {
    const g = await this.greeting();
    this.sendClientFlags();
    return g;
  }

  /** Read one option reply to option `sent`. */
  async optionReply(sent: number, timeoutMs = this.timeoutMs): Promise<OptionReply> {
    // After GO every byte from the server belongs to the reply reader; an option can still be sent with raw().
    if (this.transmission) throw new NbdClientError('option replies cannot be read once transmission has started (send the option with raw())', 'state');
    const header = await this.readBytes(SIZE.OPTION_REPLY_HEADER, timeoutMs);
    const h = replyHeaderFields(header);
    if (!h.magicOk) {
      const d = deviation('option.reply-header', `option reply magic is 0x${header.readBigUInt64BE(0).toString(16)} (${hexOf(header)}); the stream cannot be followed`, header);
      this.note(d);
      this.destroy();
      throw new NbdClientError(d.message, 'desync', [d]);
    }
    if (h.length > this.maxPayload) {
      const d = deviation('peer.option-reply-data', `option reply of ${h.length} bytes is more than maxPayload`, header);
      this.note(d);
      this.destroy();
      throw new NbdClientError(d.message, 'desync', [d]);
    }
    const data = h.length ? await this.readBytes(h.length, timeoutMs) : Buffer.alloc(0);
    const r = parseOptionReply(sent, header, data);
    r.deviations.forEach(this.note);
    return r;
  }

  /**
   * Send option `code` with `data` (raw: any code, any data; `length` may lie
   * on purpose) and read its replies up to the final one (ACK or an error).
   * `timeoutMs` (default the connection's) bounds the whole call, however
   * many replies come; `maxReplyBytes` bounds what is kept of them.
   */
  async option(code: number, data: Buffer = Buffer.alloc(0), o: { length?: number; timeoutMs?: number } = {}): Promise<OptionReply[]> {
    if (this.transmission) throw new NbdClientError('option() after transmission started: use raw(optionBytes(…)) to send one anyway', 'state');
    this.raw(optionBytes(code, data, o.length ?? data.length));
    const timeoutMs = o.timeoutMs ?? this.timeoutMs;
    const deadline = timeoutMs > 0 ? Date.now() + timeoutMs : undefined;
    const out: OptionReply[] = [];
    // Replies came, just never the final one: said so (not "no answer").
    const noFinal = () => new NbdClientError(`no final reply to option ${code} within ${timeoutMs} ms (${out.length} replies without one)`, 'timeout', out.flatMap((r) => r.deviations));
    let kept = 0;
    for (;;) {
      const left = deadline === undefined ? 0 : deadline - Date.now();
      if (deadline !== undefined && left <= 0) throw noFinal();
      let r: OptionReply;
      try {
        r = await this.optionReply(code, deadline === undefined ? 0 : left);
      } catch (e) {
        throw e instanceof NbdClientError && e.code === 'timeout' && out.length > 0 ? noFinal() : e;
      }
      out.push(r);
      if (r.final) return out;
      kept += r.data.length + REPLY_OVERHEAD;
      if (kept > this.maxReplyBytes) {
        this.destroy();
        throw new NbdClientError(
          `${out.length} replies to option ${code} (${kept} bytes counted) and no final one: more than maxReplyBytes (${this.maxReplyBytes}); connection given up`,
          'limit',
          out.flatMap((r) => r.deviations),
        );
      }
    }
  }

  /** STARTTLS: the option, then (after its ACK) node:tls over the same socket. Returns the option's replies. */
  async starttls(o: StartTlsOptions = {}): Promise<OptionReply[]> {
    const replies = await this.option(OPT.NBD_OPT_STARTTLS);
    if (replies.at(-1)!.type !== REP.NBD_REP_ACK) return replies;
    this.reader.detach();
    const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const t = this.timeoutMs > 0 ? setTimeout(() => reject(new NbdClientError(`TLS handshake timed out after ${this.timeoutMs} ms`, 'timeout')), this.timeoutMs) : undefined;
      const psk = o.psk;
      const s = tls.connect(
        {
          socket: this.socket,
          ...(o.ca ? { ca: o.ca } : {}),
          ...(o.cert ? { cert: o.cert } : {}),
          ...(o.key ? { key: o.key } : {}),
          servername: o.servername ?? 'localhost',
          rejectUnauthorized: o.rejectUnauthorized ?? !psk,
          ...(psk ? { pskCallback: () => ({ identity: psk.identity, psk: psk.key }), maxVersion: 'TLSv1.2' as const, ciphers: 'PSK' } : {}),
        },
        () => (clearTimeout(t), resolve(s)),
      );
      // 'on', not 'once': a failed handshake may report more than one error.
      s.on('error', (e) => (clearTimeout(t), reject(e)));
    });
    secure.on('error', () => {});
    this.stream = secure;
    this.reader.attach(secure);
    // tls.starttls-resets: the server forgot what was negotiated before STARTTLS; so does the client.
    this.mode = 'simple';
    return replies;
  }

  /** The TLS socket after STARTTLS, if any. */
  get tlsSocket(): tls.TLSSocket | undefined {
    return this.stream instanceof tls.TLSSocket ? this.stream : undefined;
  }

  /** Start the transmission phase (after GO's ACK or the EXPORT_NAME reply). */
  protected startTransmission(): void {
    if (this.transmission) return;
    this.transmission = new Transmission(this.reader, (b) => this.raw(b), this, this.note, () => this.destroy(), { maxPayload: this.maxPayload, maxReplyBytes: this.maxReplyBytes });
  }
}
