/**
 * Strict mode for client developers: every protocol violation a client
 * commits, as the server already detects it, on `server.violations$`.
 *
 * Nothing here decides whether a frame is acceptable: the machines and the
 * decoder do that, and name their decision by a catalogue code
 * (../protocol/errors.ts). This module only says which of those codes are
 * the client's fault (CLIENT_VIOLATIONS below) and reports them, with the
 * rule of docs/rules.md, the offending frame (summarised as the trace
 * records it) and the connection.
 *
 * Not reported, on purpose: a client that closes the connection instead of
 * sending NBD_OPT_ABORT / NBD_CMD_DISC (the spec asks for a soft disconnect,
 * but nbdsh, qemu-img, qemu-io and fio all simply close, and nbdkit and
 * qemu-nbd take it as normal), and FUA on commands that do not write (a
 * SHOULD NOT that the spec itself says existing clients break).
 *
 * `violations$` always emits; with no subscriber and strict mode off the
 * per-connection watcher does little but remember the last frame it saw, and
 * log one warning line for each client fault the server answered with an
 * error (a refused request, a rejected option: the connection goes on), the
 * first REFUSAL_LINES of each connection (closes log their own line). Strict
 * mode (`strict: true`, `serve --strict`) logs every violation instead, with
 * its frame, tolerated ones too.
 */
import { Subject, type Observable } from 'rxjs';
import { ruleOf, type CloseCode, type ErrorCode } from '../protocol/errors.js';
import { CMD, CMD_FLAG } from '../protocol/constants.js';
import type { ClientFrame, RequestFrame } from '../protocol/frames.js';
import type { HandshakeEmitted, TransmissionEmitted } from '../machines/types.js';
import { clientFrame, type FrameSummary } from '../inspect/trace-frames.js';
import { now } from '../inspect/recorder.js';
import type { Logger } from '../transport/logger.js';
import type { ConnectionRef } from './request.js';

/** One protocol violation by a client. */
export interface Violation {
  /** The rule of docs/rules.md the client broke. */
  readonly rule: string;
  /** The catalogue code the server answered or disconnected with; absent for what the server tolerates. */
  readonly code?: ErrorCode;
  readonly connection: ConnectionRef & { readonly remote?: string };
  /** The offending frame as the trace records it (JSON-safe; payload bytes only as a length). */
  readonly frame: FrameSummary;
  /** What the server said or saw, without the rule ID in front. */
  readonly message: string;
  /** Unix time in milliseconds. */
  readonly t: number;
}

/**
 * Which catalogue entries are a client breaking a MUST / MUST NOT / SHOULD
 * NOT of the spec: `true` (reported under the entry's own rule), a rule ID
 * (for the decoder's `NBD_*` codes), or `false`: the server's own condition
 * or policy (shutdown, limits, TLS policy, a client probing for an export or
 * an option the server lacks, an orderly close). Every entry is classified:
 * a new catalogue entry does not typecheck until it is added here.
 */
export const CLIENT_VIOLATIONS: { readonly [C in ErrorCode]: boolean | string } = {
  'transmission.write-read-only': true,
  'transmission.write-out-of-bounds': true,
  'transmission.unknown-command': true,
  'transmission.payload-too-large': true,
  'transmission.payload-unexpected': true,
  'transmission.unknown-flag': true,
  'transmission.flag-not-for-command': true,
  'transmission.flag-not-advertised': true,
  'transmission.command-not-advertised': true,
  'transmission.block-status-needs-context': true,
  'transmission.flush-with-range': true,
  'transmission.out-of-bounds': true,
  'transmission.misaligned-request': true,
  'transmission.read-too-large': true,
  // The spec lets the client ask (the server MAY refuse with EOVERFLOW): a limit of this server, not a violation.
  'reply.df-one-chunk': false,
  // Unspecified rather than forbidden: reported as the zero-length requests the server accepts are.
  'transmission.block-status-zero-length': 'transmission.zero-length',
  'transmission.shutdown-drains': false,
  'option.shutting-down': false,
  'handshake.fixed-newstyle-required': true,
  'tls.mode-forcedtls/option': false,
  'option.too-big': false,
  NBD_ERR_BAD_OPTION_DATA: 'option.length-mismatch',
  'option.unexpected-data': true,
  'tls.starttls-repeat': true,
  'tls.mode-notls': false,
  'option.export-unknown': false,
  'tls.mode-selectivetls': false,
  'option.structured-reply/disabled': false,
  'option.structured-reply/repeat': true,
  'option.structured-reply/extended-headers': true,
  'option.extended-headers/disabled': false,
  'option.extended-headers/repeat': true,
  'option.meta-context-needs-structured': true,
  'option.unknown-code': false,
  NBD_ERR_EXPORT_OPEN: false,
  NBD_ERR_EXPORT_LIST: false,
  'handshake.client-flags-unknown': true,
  'option.too-many-options': false,
  'option.export-name-terminates/malformed': true,
  'option.export-name-terminates/too-long': true,
  'option.export-name-terminates/unknown-export': false,
  'option.export-name-terminates/tls-only': false,
  'option.export-name-terminates/shutting-down': false,
  'option.export-name-terminates/open-failed': false,
  'tls.mode-forcedtls/export-name': false,
  'option.extended-headers/export-name': true,
  'tls.handshake-failed': false,
  NBD_ERR_HANDSHAKE_TIMEOUT: false,
  'tls.plaintext-after-starttls': true,
  NBD_ERR_TLS_NOT_CONFIGURED: false,
  NBD_ERR_INTERNAL: false,
  NBD_ERR_PROTOCOL: false,
  NBD_ERR_BAD_OPTION_MAGIC: 'handshake.option-magic',
  NBD_ERR_BAD_REQUEST_MAGIC: 'transmission.request-magic',
  NBD_ERR_OPTION_TOO_LONG: false,
  NBD_ERR_PAYLOAD_TOO_LONG: 'transmission.payload-too-large',
  NBD_ERR_BUFFER_LIMIT: false,
  'option.abort-ack': false,
  'transmission.disc-drains': false,
  NBD_CLOSED_BY_CLIENT: false,
  NBD_CLOSED_SOCKET: false,
  NBD_CLOSED_SHUTDOWN: false,
  NBD_CLOSED_IDLE_TIMEOUT: false,
  NBD_ERR_CONFIG: false,
  NBD_ERR_CLOSED: false,
  NBD_ERR_ALREADY_ANSWERED: false,
  NBD_ERR_BAD_REPLY: false,
  NBD_ERR_PAYLOAD_RELEASED: false,
};

/** The rule a catalogue code is a client violation of, or undefined when it is not one. */
export function violatedRule(code: ErrorCode): string | undefined {
  const v = CLIENT_VIOLATIONS[code];
  if (v === false) return undefined;
  return v === true ? ruleOf(code) : v;
}

/** Refusal lines logged per connection outside strict mode; past it one line says the rest are not. */
export const REFUSAL_LINES = 10;

/** Commands whose zero length the spec leaves unspecified (libnbd's strict mode refuses to send them). */
const ZERO_LENGTH_UNSPECIFIED: ReadonlySet<number> = new Set([CMD.NBD_CMD_READ, CMD.NBD_CMD_WRITE, CMD.NBD_CMD_TRIM, CMD.NBD_CMD_WRITE_ZEROES, CMD.NBD_CMD_BLOCK_STATUS, CMD.NBD_CMD_CACHE]);

/** The server's side: the stream, strict mode's log lines. */
export class ViolationHub {
  private readonly subject = new Subject<Violation>();
  readonly violations$: Observable<Violation> = this.subject.asObservable();

  constructor(
    readonly strict: boolean,
    private readonly logger: Logger,
  ) {}

  /** Whether anyone wants violations (strict mode, or a subscriber). */
  get active(): boolean {
    return this.strict || this.subject.observed;
  }

  /**
   * Outside strict mode: the `n`th client fault on a connection that the server answered with an
   * error. One warning line each for the first REFUSAL_LINES, then one saying the rest are not logged.
   */
  refusal(peer: string, rule: string, message: string, n: number): void {
    if (this.strict || n > REFUSAL_LINES) return;
    const text = message.startsWith(`${rule}: `) ? message.slice(rule.length + 2) : message;
    this.logger.warn(`${peer}: refused: ${rule}: ${text}`);
    if (n === REFUSAL_LINES) this.logger.warn(`${peer}: further refusals on this connection are not logged (strict mode logs every one)`);
  }

  report(v: Violation): void {
    if (this.strict) this.logger.warn(`${v.connection.peer}: strict: ${v.rule}: ${v.message}${v.code && v.code !== v.rule ? ` [${v.code}]` : ''}; frame ${JSON.stringify(v.frame)}`);
    this.subject.next(v);
  }

  complete(): void {
    this.subject.complete();
  }
}

const undecodable = (reason: string): FrameSummary => ({ name: 'undecodable', fields: { reason } });

const KNOWN_CMD_FLAGS = Object.values(CMD_FLAG).reduce((a, b) => a | b, 0);
const hex = (n: number, digits: number) => `0x${n.toString(16).padStart(digits, '0')}`;

/**
 * A client frame as the trace summarises it. The summary names only the flags it knows, so
 * client flags also come as their number, and a request's flags too when some bit has no name.
 */
function summary(f: ClientFrame): FrameSummary {
  const s = clientFrame(f);
  if (f.kind === 'clientFlags') return { name: s.name, fields: { ...s.fields, value: hex(f.flags, 8) } };
  if (f.kind === 'request' && (f.flags & ~KNOWN_CMD_FLAGS) !== 0) return { ...s, fields: { ...s.fields, flagsValue: hex(f.flags, 4) } };
  return s;
}

/**
 * One connection's watcher: the session hands it the machines' effects, the
 * frames it dispatches and the bytes it ignores; it reports what the
 * machines refused, rejected or dropped for a client fault, plus what they
 * tolerate although the spec forbids it (bytes after NBD_OPT_ABORT or
 * NBD_CMD_DISC, zero-length requests, an extended-header WRITE without
 * NBD_CMD_FLAG_PAYLOAD_LEN).
 */
export class ConnectionViolations {
  /** The last option or client-flags frame: what an option error or a handshake rejection answers. */
  private last: ClientFrame | undefined;
  /** The session ended on the client's word (ABORT, DISC): anything it sends after is a violation, reported once. */
  private ended: { readonly rule: string; readonly after: string } | undefined;
  private endReported = false;
  /** Client faults answered with an error so far (for the refusal lines outside strict mode). */
  private refusals = 0;
  /** The client's next bytes were already here when the last option was decoded. */
  private optionFollowed = false;
  /** The requests of the last burst, in wire order (the machine answers with accepted and refused apart). */
  private burst: readonly RequestFrame[] | undefined;

  constructor(
    private readonly hub: ViolationHub,
    private readonly connection: () => Violation['connection'],
  ) {}

  /**
   * A frame the session dispatches one at a time (client flags, options, DISC and other lone
   * requests); `decoder` holds what the client sent after it. Two things the server tolerates
   * are reported here: an option sent before the final reply to the one before it (its bytes
   * were already here when that option was decoded, so the client cannot have read the reply),
   * and a DISC with an offset or a length.
   */
  frameIn(f: ClientFrame, decoder: { readonly bufferedBytes: number }): void {
    if (f.kind === 'option' && this.optionFollowed) this.emit('option.wait-for-reply', undefined, () => summary(f), 'option sent before the final reply to the previous option');
    this.last = f;
    if (f.kind === 'request') {
      if (f.type === CMD.NBD_CMD_DISC && (f.offset !== 0 || f.length !== 0)) this.emit('transmission.disc-fields-zero', undefined, () => summary(f), 'DISC with an offset or a length');
      return;
    }
    // An option refused for its size is decoded before its data is skipped: that data is not the next option.
    this.optionFollowed = f.kind === 'option' && decoder.bufferedBytes > (f.problem ? f.length : 0);
  }

  /** Requests decoded from one read, in wire order, about to go to the machine as one event. */
  burstIn(frames: readonly RequestFrame[]): void {
    this.burst = frames;
  }

  handshake(e: HandshakeEmitted): void {
    if (e.type === 'send') {
      const last = this.last;
      if (e.code === undefined) return;
      // Option data the decoder could not parse: a bad string is general.string-limits (the decoder's string messages start "string").
      const badString = e.code === 'NBD_ERR_BAD_OPTION_DATA' && last?.kind === 'option' && /(^|: )string /.test(last.problem?.message ?? '');
      this.refusalLine(e.code, e.label, badString ? 'general.string-limits' : violatedRule(e.code));
      if (!last) return;
      if (badString) this.emit('general.string-limits', e.code, () => summary(last), e.label);
      else this.coded(e.code, () => summary(last), e.label);
    } else if (e.type === 'close') {
      if (e.code === 'option.abort-ack') this.ended = { rule: 'option.abort-ack', after: 'NBD_OPT_ABORT' };
      else this.closed(e.code, e.reason);
    }
  }

  transmission(e: TransmissionEmitted): void {
    switch (e.type) {
      case 'refuse':
        this.refusalLine(e.code, e.message);
        return this.refused(e);
      case 'request':
        return this.accepted(e.frame);
      case 'requests': {
        const burst = this.burst;
        this.burst = undefined;
        for (const r of e.refused) this.refusalLine(r.code, r.message);
        if (!this.hub.active) return;
        if (burst?.length !== e.accepted.length + e.refused.length) {
          for (const f of e.accepted) this.accepted(f);
          for (const r of e.refused) this.refused(r);
          return;
        }
        // Reported in wire order.
        const refused = new Map(e.refused.map((r) => [r.frame, r]));
        for (const f of burst) {
          const r = refused.get(f);
          if (r) this.refused(r);
          else this.accepted(f);
        }
        return;
      }
      case 'draining':
        if (e.reason === 'disc') this.ended = { rule: 'transmission.disc-drains', after: 'NBD_CMD_DISC' };
        return;
      case 'close':
        return this.closed(e.code, e.reason);
    }
  }

  /** Bytes received after the session ended (and never interpreted). */
  ignored(bytes: number): void {
    if (!this.ended || this.endReported || bytes <= 0) return;
    this.endReported = true;
    const { rule, after } = this.ended;
    this.emit(rule, undefined, () => ({ name: 'bytesAfterEnd', fields: { after, bytes } }), `${bytes} bytes sent after ${after}`);
  }

  /** The transport dropped the connection itself (TLS). */
  dropped(code: CloseCode, reason: string): void {
    this.closed(code, reason);
  }

  /** A client fault answered with an error (the connection goes on): a log line outside strict mode. */
  private refusalLine(code: ErrorCode, message: string, rule = violatedRule(code)): void {
    if (this.hub.strict) return;
    if (rule !== undefined) this.hub.refusal(this.connection().peer, rule, message, ++this.refusals);
  }

  private refused(r: { readonly frame: RequestFrame; readonly code: ErrorCode; readonly message: string }): void {
    this.unflaggedWrite(r.frame);
    this.coded(r.code, () => summary(r.frame), r.message);
  }

  private accepted(f: RequestFrame): void {
    if (!this.hub.active) return;
    this.unflaggedWrite(f);
    if (f.length === 0 && ZERO_LENGTH_UNSPECIFIED.has(f.type)) {
      this.emit('transmission.zero-length', undefined, () => summary(f), 'zero-length request (its behaviour is unspecified; accepted)');
    }
  }

  /** Tolerated: an extended-header WRITE without NBD_CMD_FLAG_PAYLOAD_LEN (the decoder reads its length of payload anyway). */
  private unflaggedWrite(f: RequestFrame): void {
    if (f.extended && f.type === CMD.NBD_CMD_WRITE && (f.flags & CMD_FLAG.NBD_CMD_FLAG_PAYLOAD_LEN) === 0) {
      this.emit('transmission.write-payload-len', undefined, () => summary(f), 'extended-header WRITE without NBD_CMD_FLAG_PAYLOAD_LEN (read as carrying its length of payload)');
    }
  }

  private closed(code: CloseCode, reason: string): void {
    // The decoder's codes have no frame: the stream could not be read.
    const last = this.last;
    this.coded(code, () => (code.startsWith('NBD_') || !last ? undecodable(reason) : summary(last)), reason);
  }

  private coded(code: ErrorCode, frame: () => FrameSummary, message: string): void {
    const rule = violatedRule(code);
    if (rule !== undefined) this.emit(rule, code, frame, message);
  }

  /** Report, if anyone listens; the frame is summarised only then, and the message loses a leading rule ID. */
  private emit(rule: string, code: ErrorCode | undefined, frame: () => FrameSummary, message: string): void {
    if (!this.hub.active) return;
    const text = message.startsWith(`${rule}: `) ? message.slice(rule.length + 2) : message;
    this.hub.report({ rule, ...(code !== undefined ? { code } : {}), connection: this.connection(), frame: frame(), message: text, t: now() });
  }
}
