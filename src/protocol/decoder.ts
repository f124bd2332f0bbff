/**
 * Incremental, pull-mode decoder for client → server bytes.
 *
 * `push(chunk)` appends bytes; `next()` returns one frame, `null` when more
 * bytes are needed, or a `DecodeFailure` once the stream is unusable (bad
 * magic, a limit exceeded). It never throws on hostile input.
 *
 * Bytes are parsed in place: a frame that lies inside one chunk is a
 * zero-copy view (`subarray`); only a frame spanning chunks is copied, once.
 * The phase switches at frame boundaries (`startTransmission()`), and bytes
 * already buffered carry over: a client may pipeline its first request right
 * behind NBD_OPT_GO (option.go-starts-transmission).
 *
 * Limits are checked on the length fields, before anything is buffered
 * (general.string-limits, transmission.payload-too-large, option.too-big).
 */
import { ByteQueue, ignoreDeadBytes, type DeadBytes } from './byte-queue.js';
import { CMD, CMD_FLAG, MAGIC, SIZE, cmdName, optName } from './constants.js';
import type { ClientFrame, OptionFrame, OptionProblem, RequestFrame } from './frames.js';
import { PARSED_OPTIONS, parseOption, skippedOption } from './option-data.js';
import { advancePlacement, fillPlacement, unfilledWindow, PLACE_MIN, type Placement, type PlacementProvider } from './payload-placement.js';
import { SCATTER_MIN, ScatteredRequest } from './request-payload.js';
import { messageOf, type DetailsArg } from './errors.js';
import { DEFAULTS } from '../defaults.js';

export { decodeString, parseOption } from './option-data.js';
export { payloadParts, releasePayload } from './request-payload.js';
export { PLACE_MIN, type PlacementProvider, type PlacementTargets } from './payload-placement.js';

export interface DecoderLimits {
  /** Largest option data we buffer and parse (bigger known options get ERR_TOO_BIG). */
  maxOptionLength: number;
  /** Largest option data we are willing to skip at all; past it ⇒ hard disconnect (DoS). */
  maxOptionSkip: number;
  /** Largest strings (names, queries) accepted: the spec says 4096 (general.string-limits). */
  maxStringLength: number;
  /** Largest WRITE payload buffered; larger payloads are skipped and refused. */
  maxPayload: number;
  /** Largest payload we are willing to skip; past it ⇒ hard disconnect (DoS). */
  maxPayloadSkip: number;
  /** Hard cap on bytes held by the decoder at once. */
  maxBufferedBytes: number;
}

/** nbdkit-like defaults (nbdkit caps requests at 64 MiB and strings at 4096 bytes). */
export const DEFAULT_DECODER_LIMITS: Readonly<DecoderLimits> = Object.freeze({
  maxOptionLength: DEFAULTS.maxOptionLength,
  maxOptionSkip: DEFAULTS.maxOptionSkip,
  maxStringLength: SIZE.MAX_STRING,
  maxPayload: DEFAULTS.maxPayload,
  maxPayloadSkip: DEFAULTS.maxPayloadSkip,
  maxBufferedBytes: DEFAULTS.maxPayload + DEFAULTS.bufferedSlack,
});

export type DecodePhase = 'clientFlags' | 'options' | 'requests' | 'stopped';

/** Why the decoder gives up on a stream: its entries in the error catalogue (./errors.ts). */
export type DecodeFailureCode =
  | 'NBD_ERR_BAD_OPTION_MAGIC'
  | 'NBD_ERR_BAD_REQUEST_MAGIC'
  | 'NBD_ERR_OPTION_TOO_LONG'
  | 'NBD_ERR_PAYLOAD_TOO_LONG'
  | 'NBD_ERR_BUFFER_LIMIT';

/** A fatal decoding outcome: the connection must be dropped. */
export interface DecodeFailure {
  readonly kind: 'fatal';
  readonly code: DecodeFailureCode;
  /** The catalogue's message for the code, filled in. */
  readonly message: string;
}

const TWO_32 = 0x1_0000_0000;
/** The payload of every zero-length WRITE. */
const EMPTY: Buffer = Buffer.alloc(0);
/** Largest high word that keeps hi·2^32 + lo a safe integer. */
const MAX_SAFE_HI = 0x1f_ffff;

interface PendingOption {
  code: number;
  length: number;
  /** Skip the data instead of buffering it. */
  skip: boolean;
  problem?: OptionProblem;
}

interface PendingRequest {
  extended: boolean;
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
  huge: boolean;
  /** The offset as sent, when it did not fit a safe integer. */
  wireOffset?: bigint;
  payloadLength: number;
  skip: boolean;
  /** Zero-copy WRITE: where the payload goes (see `setPlacement`), and the cursor in it. */
  place?: Placement;
}

export class FrameDecoder {
  readonly limits: Readonly<DecoderLimits>;
  private readonly queue: ByteQueue;
  private phaseValue: DecodePhase = 'clientFlags';
  private extended = false;
  private pendingOption: PendingOption | null = null;
  private pendingRequest: PendingRequest | null = null;
  private failure: DecodeFailure | null = null;
  private placement: PlacementProvider | null = null;
  /** Largest payload read at all; past it ⇒ hard disconnect (maxPayloadSkip, or less with extended headers: startTransmission). */
  private payloadLimit: number;

  /**
   * @param dead told of the bytes the decoder is done with (parsed headers,
   *   options, copied or skipped bytes) so their owner may reuse the memory;
   *   payload views it hands out are reported by whoever holds them
   *   (`releasePayload`). Default: nobody is told.
   */
  constructor(
    limits: Partial<DecoderLimits> = {},
    private readonly dead: DeadBytes = ignoreDeadBytes,
  ) {
    this.limits = { ...DEFAULT_DECODER_LIMITS, ...limits };
    this.payloadLimit = this.limits.maxPayloadSkip;
    this.queue = new ByteQueue(dead);
  }

  get phase(): DecodePhase {
    return this.phaseValue;
  }

  /** Bytes held right now (for backpressure decisions). */
  get bufferedBytes(): number {
    return this.queue.length;
  }

  /**
   * Append bytes from the socket. Returns false (and fails the decoder) past
   * the buffer cap, or once it failed. Once stopped, bytes are ignored (true).
   */
  push(chunk: Buffer): boolean {
    if (this.failure) return false;
    if (this.phaseValue === 'stopped') return true;
    if (chunk.length === 0) return true;
    // Skipped data is dropped as it arrives, never buffered (see ByteQueue.push).
    if (this.queue.push(chunk, this.limits.maxBufferedBytes)) return true;
    this.fail('NBD_ERR_BUFFER_LIMIT', { limit: this.limits.maxBufferedBytes });
    return false;
  }

  /**
   * Zero-copy WRITEs: large payloads go straight into the views `provider`
   * returns instead of being buffered. Bytes already buffered are copied in;
   * the rest arrives by `push` (copied) or, better, is read by the socket
   * into `placementWindow()` and reported with `placed(n)`. The request is
   * returned as usual only once complete, with `placed: true`, no payload,
   * and the targets' `commit` as `commitPlacement`.
   */
  setPlacement(provider: PlacementProvider | null): void {
    this.placement = provider;
  }

  /**
   * Where the next socket read may land directly: the unfilled part of the
   * current placement target (never more than the payload still to come),
   * or null. Only while nothing else is buffered, so bytes stay in order.
   */
  placementWindow(): Buffer | null {
    const p = this.pendingRequest?.place;
    if (p === undefined || p.left === 0 || this.queue.length > 0 || this.failure !== null || this.phaseValue !== 'requests') return null;
    return unfilledWindow(p);
  }

  /** `n` bytes were read straight into the last `placementWindow()`. */
  placed(n: number): void {
    const p = this.pendingRequest?.place;
    if (p === undefined || n > p.left) throw new RangeError(`placed ${n} bytes with ${p?.left ?? 0} expected`);
    advancePlacement(p, n);
  }

  /**
   * Switch to the transmission phase at the current frame boundary; buffered bytes carry over.
   * `maxExtendedPayload`: with extended headers, the export's maximum payload (what NBD_INFO_BLOCK_SIZE
   * advertises): a request declaring a longer payload is a hard disconnect (transmission.payload-too-large),
   * as the extended-headers spec asks, instead of being read and refused.
   */
  startTransmission(extendedHeaders: boolean, maxExtendedPayload = Infinity): void {
    this.phaseValue = 'requests';
    this.extended = extendedHeaders;
    this.payloadLimit = extendedHeaders ? Math.min(this.limits.maxPayloadSkip, maxExtendedPayload) : this.limits.maxPayloadSkip;
  }

  /** Go back to expecting options (after a TLS upgrade the byte stream starts afresh). */
  restartOptions(): void {
    this.phaseValue = 'options';
    this.extended = false;
    this.payloadLimit = this.limits.maxPayloadSkip;
    this.failure = null;
  }

  /**
   * Drop everything buffered (e.g. plaintext that followed STARTTLS, which
   * must never be interpreted: tls.plaintext-after-starttls). Returns the bytes dropped.
   */
  discardBuffered(): number {
    this.pendingOption = null;
    this.pendingRequest = null;
    return this.queue.discard();
  }

  /**
   * What is cut short if the stream ends here, for logs ("in the middle of a
   * frame (…)" for a client that disconnects mid-frame, "with N bytes of
   * requests not yet decoded" for a throttled one); null at a frame boundary
   * or once stopped/failed.
   */
  get incomplete(): string | null {
    if (this.failure || this.phaseValue === 'stopped') return null;
    const cut = (what: string) => `in the middle of a frame (${what})`;
    const r = this.pendingRequest;
    const buffered = this.queue.length;
    if (r) return cut(`${cmdName(r.type)} at offset ${r.offset} with ${r.place ? r.payloadLength - r.place.left : buffered} of ${r.payloadLength} payload bytes`);
    const o = this.pendingOption;
    if (o) return cut(`option ${optName(o.code)} with ${o.skip ? 'part' : buffered} of ${o.length} data bytes`);
    const dropping = this.queue.dropPending;
    if (dropping > 0) return cut(`a discarded payload with ${dropping} bytes still to come`);
    // A throttled connection holds whole requests it has not decoded yet: not (only) a frame cut short.
    if (this.phaseValue === 'requests' && buffered >= (this.extended ? SIZE.EXTENDED_REQUEST : SIZE.REQUEST)) return `with ${buffered} bytes of requests not yet decoded`;
    if (buffered > 0) return cut(`${buffered} bytes of an incomplete ${this.phaseValue === 'requests' ? 'request header' : this.phaseValue === 'options' ? 'option header' : 'client flags field'}`);
    return null;
  }

  /**
   * Stop decoding (after DISC: anything the client sends after it is
   * ignored, never an error). Returns the buffered bytes dropped.
   */
  stop(): number {
    this.phaseValue = 'stopped';
    return this.discardBuffered();
  }

  /** Decode one frame. */
  next(): ClientFrame | DecodeFailure | null {
    if (this.failure) return this.failure;
    if (this.queue.dropPending > 0 && this.queue.dropBuffered() > 0) return null;
    switch (this.phaseValue) {
      case 'clientFlags':
        return this.nextClientFlags();
      case 'options':
        return this.nextOption();
      case 'requests':
        return this.nextRequest();
      case 'stopped':
        return null;
    }
  }

  // ── phases ────────────────────────────────────────────────────────────

  private nextClientFlags(): ClientFrame | null {
    if (this.queue.length < SIZE.CLIENT_FLAGS) return null;
    const b = this.queue.take(SIZE.CLIENT_FLAGS);
    this.phaseValue = 'options';
    return { kind: 'clientFlags', flags: b.readUInt32BE(0) };
  }

  private nextOption(): OptionFrame | DecodeFailure | null {
    let p = this.pendingOption;
    if (!p) {
      if (this.queue.length < SIZE.OPTION_HEADER) return null;
      const h = this.queue.take(SIZE.OPTION_HEADER);
      if (h.readUInt32BE(0) !== 0x49484156 || h.readUInt32BE(4) !== 0x454f5054) {
        // Not IHAVEOPT: the stream is out of sync and cannot be resynchronised.
        return this.fail('NBD_ERR_BAD_OPTION_MAGIC', { magic: h.subarray(0, 8).toString('hex') });
      }
      const code = h.readUInt32BE(8);
      const length = h.readUInt32BE(12);
      if (length > this.limits.maxOptionSkip) {
        return this.fail('NBD_ERR_OPTION_TOO_LONG', { option: code, length, limit: this.limits.maxOptionSkip });
      }
      const parsed = PARSED_OPTIONS.has(code);
      let problem: OptionProblem | undefined;
      if (parsed && length > this.limits.maxOptionLength) {
        problem = { reply: 'NBD_REP_ERR_TOO_BIG', message: `option data of ${length} bytes exceeds ${this.limits.maxOptionLength}` };
      }
      p = { code, length, skip: !parsed || problem !== undefined, problem };
      if (p.skip) {
        // Consume and discard the data without buffering it (option.unknown-code, option.too-big).
        this.queue.drop(length);
        return skippedOption(code, length, problem);
      }
      this.pendingOption = p;
    }
    if (this.queue.length < p.length) return null;
    this.pendingOption = null;
    const data = this.queue.take(p.length);
    return parseOption(p.code, data, this.limits.maxStringLength);
  }

  private nextRequest(): RequestFrame | DecodeFailure | null {
    let r = this.pendingRequest;
    if (!r) {
      const size = this.extended ? SIZE.EXTENDED_REQUEST : SIZE.REQUEST;
      if (this.queue.length < size) return null;
      const h = this.queue.take(size);
      const magic = h.readUInt32BE(0);
      const expected = this.extended ? MAGIC.NBD_EXTENDED_REQUEST_MAGIC : MAGIC.NBD_REQUEST_MAGIC;
      if (magic !== expected) {
        return this.fail('NBD_ERR_BAD_REQUEST_MAGIC', { magic: magic.toString(16).padStart(8, '0') });
      }
      const flags = h.readUInt16BE(4);
      const type = h.readUInt16BE(6);
      const cookie = h.readBigUInt64BE(8);
      const offHi = h.readUInt32BE(16);
      const offLo = h.readUInt32BE(20);
      let huge = offHi > MAX_SAFE_HI;
      // Echoed verbatim in extended replies: never the clamped number.
      const wireOffset = huge ? h.readBigUInt64BE(16) : undefined;
      const offset = huge ? Number.MAX_SAFE_INTEGER : offHi * TWO_32 + offLo;
      let length: number;
      /** A 64-bit length past 2^53 − 1, as sent (`length` holds it clamped): for the log line. */
      let wireLength: bigint | undefined;
      if (this.extended) {
        const lenHi = h.readUInt32BE(24);
        const lenLo = h.readUInt32BE(28);
        if (lenHi > MAX_SAFE_HI) {
          huge = true;
          wireLength = h.readBigUInt64BE(24);
        }
        length = lenHi > MAX_SAFE_HI ? Number.MAX_SAFE_INTEGER : lenHi * TWO_32 + lenLo;
      } else {
        length = h.readUInt32BE(24);
      }
      // The header is parsed: its bytes are dead (a copied header's sources were reported by take).
      this.dead(h.buffer, size);
      // Which requests carry a payload: compact WRITE; extended WRITE, or any
      // extended request with PAYLOAD_LEN (transmission.payload-unexpected). An extended
      // WRITE without PAYLOAD_LEN (the client broke a MUST) is read as if it had the flag:
      // `length` payload bytes follow (transmission.write-payload-len).
      const hasPayload =
        type === CMD.NBD_CMD_WRITE || (this.extended && (flags & CMD_FLAG.NBD_CMD_FLAG_PAYLOAD_LEN) !== 0);
      const payloadLength = hasPayload ? length : 0;
      // Too long to read at all (transmission.payload-consumed): past maxPayloadSkip, or with extended headers past
      // the export's maximum payload (transmission.payload-too-large).
      if (payloadLength > this.payloadLimit) {
        return this.fail('NBD_ERR_PAYLOAD_TOO_LONG', { length: hasPayload && wireLength !== undefined ? wireLength : payloadLength, limit: this.payloadLimit });
      }
      r = { extended: this.extended, flags, type, cookie, offset, length, huge, payloadLength, skip: payloadLength > this.limits.maxPayload };
      if (wireOffset !== undefined) r.wireOffset = wireOffset;
      // A zero-length WRITE still has a payload, an empty one: every consumer may read `payload.length`.
      if (payloadLength === 0) return this.makeRequest(r, type === CMD.NBD_CMD_WRITE ? EMPTY : undefined);
      if (this.placement !== null && !r.skip && type === CMD.NBD_CMD_WRITE && payloadLength >= PLACE_MIN && this.queue.length < payloadLength) {
        const targets = this.placement(this.makeRequest(r, undefined));
        // Targets that do not add up to the payload are ignored: the payload is buffered as usual.
        if (targets !== null && targets.reduce((n, t) => n + t.length, 0) === payloadLength) r.place = { targets, ti: 0, at: 0, left: payloadLength };
      }
      if (r.skip) {
        // Over the payload limit: consume without buffering, then refuse (transmission.payload-too-large).
        this.queue.drop(payloadLength);
        return this.makeRequest(r, undefined);
      }
      this.pendingRequest = r;
    }
    if (r.place !== undefined) {
      fillPlacement(r.place, this.queue);
      if (r.place.left > 0) {
        this.pendingRequest = r;
        return null;
      }
      this.pendingRequest = null;
      return this.makeRequest(r, undefined, r.place);
    }
    if (this.queue.length < r.payloadLength) return null;
    this.pendingRequest = null;
    const n = r.payloadLength;
    if (n >= SCATTER_MIN && this.queue.firstRun < n) return new ScatteredRequest(r, this.queue.takeParts(n));
    return this.makeRequest(r, this.queue.take(n));
  }

  private makeRequest(r: PendingRequest, payload: Buffer | undefined, placed?: Placement): RequestFrame {
    const frame: RequestFrame = {
      kind: 'request',
      extended: r.extended,
      flags: r.flags,
      type: r.type,
      cookie: r.cookie,
      offset: r.offset,
      length: r.length,
      huge: r.huge,
      payload,
      payloadDiscarded: r.skip,
    };
    if (r.wireOffset !== undefined) return { ...frame, wireOffset: r.wireOffset };
    if (placed === undefined) return frame;
    // Only placed frames carry these fields (a placed payload is never skipped, so payloadDiscarded is false).
    const commit = placed.targets.commit;
    return commit === undefined ? { ...frame, placed: true } : { ...frame, placed: true, commitPlacement: commit };
  }

  private fail<C extends DecodeFailureCode>(code: C, ...details: DetailsArg<C>): DecodeFailure {
    this.failure = { kind: 'fatal', code, message: messageOf(code, ...details) };
    this.discardBuffered();
    return this.failure;
  }
}
