/**
 * The handshake (option haggling) phase as an xstate v5 machine.
 *
 * greeting → awaitingClientFlags → options ⇄ upgradingTls → negotiated
 *                                        ↘ aborted | rejected | disconnected
 *
 * Every reply goes out through the emitted `send` effect; the machine never
 * touches a socket. Comments, reject reasons and refusals cite the rules
 * they enforce by their IDs in docs/rules.md.
 */
import { assign, emit, setup, enqueueActions } from 'xstate';
import {
  BASE_ALLOCATION,
  CLIENT_FLAGS,
  FLAG,
  HANDSHAKE_FLAGS,
  INFO,
  OPT,
  optName,
  type RepErrName,
} from '../protocol/constants.js';
import {
  encodeAck,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeMetaContext,
  encodeOptionError,
  encodeRepServer,
  withHasFlags,
} from '../protocol/encoder.js';
import type {
  ExportNameOption,
  InfoGoOption,
  MetaContextOption,
  OptionFrame,
  SimpleOption,
} from '../protocol/frames.js';
import type {
  ExportDescriptor,
  HandshakeEmitted,
  HandshakeEvent,
  HandshakeOutcome,
  MetaContextSelection,
  Negotiated,
  TlsPolicy,
} from './types.js';
import { DEFAULTS } from '../defaults.js';

export interface HandshakeInput {
  readonly exports: readonly ExportDescriptor[];
  /** Name of the export served for the empty name; undefined ⇒ no default export. */
  readonly defaultExport?: string;
  /** TLS policy (the spec's TLS modes): off = NOTLS, optional = SELECTIVETLS, required = FORCEDTLS. */
  readonly tls?: TlsPolicy;
  /** DoS guard: options accepted before a hard disconnect (nbdkit: 32). */
  readonly maxOptions?: number;
  /** Offer NBD_OPT_EXTENDED_HEADERS (experimental). */
  readonly extendedHeaders?: boolean;
  /** Offer NBD_OPT_STRUCTURED_REPLY. */
  readonly structuredReplies?: boolean;
  /** The connection is already TLS (e.g. a TLS listener), rarely used. */
  readonly tlsActive?: boolean;
}

export interface HandshakeContext {
  readonly exports: readonly ExportDescriptor[];
  readonly defaultExport: string | undefined;
  readonly tlsPolicy: TlsPolicy;
  readonly maxOptions: number;
  readonly offerExtendedHeaders: boolean;
  readonly offerStructuredReplies: boolean;
  /** Client flags as received. */
  clientFlags: number;
  fixedNewstyle: boolean;
  noZeroes: boolean;
  tls: boolean;
  structuredReplies: boolean;
  extendedHeaders: boolean;
  /** SET_META_CONTEXT result, tied to the export name it was made for (option.meta-context-export). */
  metaContexts: { readonly exportName: string; readonly contexts: readonly MetaContextSelection[] } | null;
  optionCount: number;
  shuttingDown: boolean;
  outcome: HandshakeOutcome | null;
}

/** The id we hand out for base:allocation. Transient per the spec; fixed here. */
export const BASE_ALLOCATION_ID = 1;

const SERVER_HANDSHAKE_FLAGS = HANDSHAKE_FLAGS.NBD_FLAG_FIXED_NEWSTYLE | HANDSHAKE_FLAGS.NBD_FLAG_NO_ZEROES;
const KNOWN_CLIENT_FLAGS = CLIENT_FLAGS.NBD_FLAG_C_FIXED_NEWSTYLE | CLIENT_FLAGS.NBD_FLAG_C_NO_ZEROES;

// ── pure helpers (also used by tests) ──────────────────────────────────

/** Resolve a requested name to an export ("" ⇒ the default export). */
export function findExport(ctx: Pick<HandshakeContext, 'exports' | 'defaultExport'>, name: string): ExportDescriptor | undefined {
  const wanted = name === '' ? ctx.defaultExport : name;
  if (wanted === undefined) return undefined;
  return ctx.exports.find((e) => e.name === wanted);
}

/** Transmission flags as advertised on this connection (transmission.flags-advertised). */
export function advertisedFlags(exp: ExportDescriptor, structuredReplies: boolean): number {
  let flags = withHasFlags(exp.flags);
  // SEND_DF iff structured replies; never BLOCK_STATUS_PAYLOAD / RESIZE (unsupported).
  flags &= ~(FLAG.NBD_FLAG_SEND_DF | FLAG.NBD_FLAG_BLOCK_STATUS_PAYLOAD | FLAG.NBD_FLAG_SEND_RESIZE);
  if (structuredReplies) flags |= FLAG.NBD_FLAG_SEND_DF;
  // SEND_FAST_ZERO only with SEND_WRITE_ZEROES; nothing writable on a read-only export.
  if (!(flags & FLAG.NBD_FLAG_SEND_WRITE_ZEROES)) flags &= ~FLAG.NBD_FLAG_SEND_FAST_ZERO;
  return flags;
}

/** Contexts a LIST/SET query selects (option.meta-context-query). Unknown namespaces and leaves are ignored. */
export function matchMetaContexts(queries: readonly string[], mode: 'list' | 'set'): string[] {
  if (queries.length === 0) return mode === 'list' ? [BASE_ALLOCATION] : [];
  const out = new Set<string>();
  for (const q of queries) {
    if (q === BASE_ALLOCATION) out.add(BASE_ALLOCATION);
    // `base:` is a wildcard in LIST (MUST be supported) and ignored in SET.
    else if (q === 'base:' && mode === 'list') out.add(BASE_ALLOCATION);
  }
  return [...out];
}

function isTlsBlocked(ctx: HandshakeContext): boolean {
  return ctx.tlsPolicy === 'required' && !ctx.tls;
}

function exportTlsBlocked(ctx: HandshakeContext, exp: ExportDescriptor | undefined): boolean {
  return !!exp?.tlsOnly && !ctx.tls && ctx.tlsPolicy !== 'off';
}

type OptEvent<O extends OptionFrame['opt']> = { type: `opt.${O}`; frame: Extract<OptionFrame, { opt: O }> };

function frameOf(event: HandshakeEvent): OptionFrame {
  return (event as { frame: OptionFrame }).frame;
}

function sendOf(frame: ReturnType<typeof encodeAck>, label: string): HandshakeEmitted {
  return { type: 'send', frame, label };
}

function errorReply(option: number, error: RepErrName, message: string): HandshakeEmitted {
  return sendOf(encodeOptionError(option, error, message), `${error}: ${message}`);
}

// ── what the client is told when an option is refused ─────────────────

/** NBD_OPT_GO, or "option 42" for a code without a name. */
function optionLabel(code: number): string {
  const name = optName(code);
  return name.startsWith('NBD_OPT_') ? name : `option ${code}`;
}

/**
 * A client-supplied name for a message: quoted, at most 128 characters,
 * with quotes, backslashes, control characters and bidirectional
 * overrides escaped (the client's user reads it on a terminal).
 */
export function quoteName(name: string): string {
  const chars = [...name];
  const shown = chars.length > 128 ? `${chars.slice(0, 128).join('')}…` : name;
  const escaped = shown.replace(/["\\\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, (c) =>
    c === '"' || c === '\\' ? `\\${c}` : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
  return `"${escaped}"`;
}

function requestedName(frame: OptionFrame): string {
  return 'name' in frame ? frame.name : '';
}

/**
 * The human-readable text of every option error reply (the spec allows a
 * UTF-8 message as an error reply's data; clients show it: qemu prints
 * "server reported: …", libnbd logs it: option.error-text). Each refusal in
 * the routing table names one of these; the encoder caps the text at 4096
 * bytes.
 */
export const REFUSAL_TEXT = {
  shuttingDown: () => 'server is shutting down',
  notFixedNewstyle: (_ctx: HandshakeContext, f: OptionFrame) =>
    `${optionLabel(f.code)} needs the fixed newstyle handshake (the client did not set NBD_FLAG_C_FIXED_NEWSTYLE)`,
  tlsRequired: (_ctx: HandshakeContext, f: OptionFrame) => `TLS is required: send NBD_OPT_STARTTLS before ${optionLabel(f.code)}`,
  // The decoder's reason: bad lengths, bad strings, too big.
  problem: (_ctx: HandshakeContext, f: OptionFrame) => `${optionLabel(f.code)}: ${f.problem?.message ?? 'malformed option data'}`,
  hasData: (_ctx: HandshakeContext, f: OptionFrame) => `${optionLabel(f.code)} takes no data (got ${f.length} bytes)`,
  tlsActive: () => 'TLS is already active',
  tlsOff: () => 'TLS is not enabled on this server',
  exportUnknown: (ctx: HandshakeContext, f: OptionFrame) => {
    const name = requestedName(f);
    return name === '' && ctx.defaultExport === undefined ? 'export "" not present (this server has no default export)' : `export ${quoteName(name)} not present`;
  },
  exportTlsOnly: (_ctx: HandshakeContext, f: OptionFrame) => `export ${quoteName(requestedName(f))} requires TLS`,
  structuredRepliesNotOffered: () => 'structured replies are not enabled on this server',
  structuredRepliesOn: () => 'structured replies are already negotiated',
  extendedHeadersNotOffered: () => 'extended headers are not enabled on this server',
  extendedHeadersOn: () => 'extended headers are already negotiated',
  extendedHeadersOnNoStructured: () => 'extended headers are already negotiated, and they include structured replies',
  structuredRepliesOff: () => 'NBD_OPT_SET_META_CONTEXT needs structured replies (or extended headers) negotiated first',
  unsupported: (_ctx: HandshakeContext, f: OptionFrame) => `${optionLabel(f.code)} is not supported`,
} satisfies Record<string, (ctx: HandshakeContext, frame: OptionFrame) => string>;

export type RefusalReason = keyof typeof REFUSAL_TEXT;

/** Build the INFO/GO reply sequence (option.info-export, option.block-size-not-required, option.info-go-consistent). */
function infoReplies(ctx: HandshakeContext, frame: InfoGoOption, exp: ExportDescriptor): HandshakeEmitted[] {
  const out: HandshakeEmitted[] = [];
  const flags = advertisedFlags(exp, ctx.structuredReplies || ctx.extendedHeaders);
  // NBD_INFO_EXPORT always, even if not requested (qemu relies on it).
  out.push(sendOf(encodeInfoExport(frame.code, exp.size, flags), 'NBD_REP_INFO(EXPORT)'));
  const seen = new Set<number>();
  for (const info of frame.requests) {
    if (seen.has(info)) continue;
    seen.add(info);
    switch (info) {
      case INFO.NBD_INFO_NAME:
        out.push(sendOf(encodeInfoName(frame.code, exp.name), 'NBD_REP_INFO(NAME)'));
        break;
      case INFO.NBD_INFO_DESCRIPTION:
        if (exp.description !== undefined) out.push(sendOf(encodeInfoDescription(frame.code, exp.description), 'NBD_REP_INFO(DESCRIPTION)'));
        break;
      case INFO.NBD_INFO_BLOCK_SIZE:
        out.push(sendOf(encodeInfoBlockSize(frame.code, exp.blockSizes), 'NBD_REP_INFO(BLOCK_SIZE)'));
        break;
      default:
        // option.info-unknown-ignored: unknown info requests MUST be ignored.
        break;
    }
  }
  out.push(sendOf(encodeAck(frame.code), 'NBD_REP_ACK'));
  return out;
}

function negotiatedFrom(ctx: HandshakeContext, exp: ExportDescriptor, viaExportName: boolean): Negotiated {
  const sr = ctx.structuredReplies || ctx.extendedHeaders;
  const metaContexts = ctx.metaContexts && ctx.metaContexts.exportName === exp.name && sr ? ctx.metaContexts.contexts : [];
  return {
    export: exp,
    flags: advertisedFlags(exp, sr),
    structuredReplies: sr,
    extendedHeaders: ctx.extendedHeaders,
    metaContexts,
    tls: ctx.tls,
    viaExportName,
  };
}

// ── option routing table ───────────────────────────────────────────────

type Transition = {
  guard?: string;
  target?: string;
  actions: ReadonlyArray<string | { type: string; params: Record<string, unknown> }>;
};

/** An option error reply and why (the text sent with it: REFUSAL_TEXT). */
const err = (error: RepErrName, why: RefusalReason) => ({ type: 'replyError', params: { error, why } });
const rej = (reason: string) => ({ type: 'reject', params: { reason } });

/**
 * Each option's guarded transitions, in the order the spec's rules apply.
 * Every one of them counts the option first (DoS guard: option.too-many-options).
 */
function optionTransitions() {
  const counted = (list: Transition[]): Transition[] =>
    list.map((t) => (t.target === 'rejected' ? t : { ...t, actions: ['countOption', ...t.actions] }));
  // Rules that come before any option-specific one.
  const prelude = (opts: { clear?: boolean } = {}): Transition[] => {
    const pre = opts.clear ? ['clearMetaContexts'] : [];
    return [
      { guard: 'tooManyOptions', target: 'rejected', actions: [rej('option.too-many-options: too many options (DoS guard)')] },
      { guard: 'shuttingDown', actions: [...pre, err('NBD_REP_ERR_SHUTDOWN', 'shuttingDown')] },
      { guard: 'notFixedNewstyle', actions: [...pre, err('NBD_REP_ERR_INVALID', 'notFixedNewstyle')] },
      // tls.mode-forcedtls: everything but STARTTLS / ABORT gets ERR_TLS_REQD,
      // oversized options included: checked before TOO_BIG (the MUST names no exception).
      { guard: 'tlsRequiredNotActive', actions: [...pre, err('NBD_REP_ERR_TLS_REQD', 'tlsRequired')] },
      { guard: 'optionTooBig', actions: [...pre, err('NBD_REP_ERR_TOO_BIG', 'problem')] },
    ];
  };
  return {
    'opt.abort': counted([
      // option.abort-ack: ABORT ⇒ ACK, then the client closes; tolerate it closing first.
      { target: 'aborted', actions: ['replyAck', 'recordAbort', 'closeSoft'] },
    ]),
    'opt.exportName': counted([
      { guard: 'tooManyOptions', target: 'rejected', actions: [rej('option.too-many-options: too many options (DoS guard)')] },
      // option.export-name-terminates: EXPORT_NAME cannot be answered with an error: terminate.
      { guard: 'shuttingDown', target: 'rejected', actions: [rej('option.export-name-terminates: EXPORT_NAME while shutting down')] },
      { guard: 'optionMalformed', target: 'rejected', actions: [rej('option.export-name-terminates: malformed EXPORT_NAME')] },
      { guard: 'optionTooBig', target: 'rejected', actions: [rej('option.export-name-terminates: EXPORT_NAME too long')] },
      { guard: 'tlsRequiredNotActive', target: 'rejected', actions: [rej('tls.mode-forcedtls: EXPORT_NAME before TLS in FORCEDTLS mode')] },
      { guard: 'extendedHeadersOn', target: 'rejected', actions: [rej('option.extended-headers: EXPORT_NAME after EXTENDED_HEADERS')] },
      { guard: 'exportUnknown', target: 'rejected', actions: [rej('option.export-name-terminates: EXPORT_NAME for an unknown export')] },
      { guard: 'exportTlsOnly', target: 'rejected', actions: [rej('option.export-name-terminates: EXPORT_NAME for a TLS-only export without TLS')] },
      { target: 'negotiated', actions: ['replyExportName'] },
    ]),
    'opt.starttls': counted([
      { guard: 'tooManyOptions', target: 'rejected', actions: [rej('option.too-many-options: too many options (DoS guard)')] },
      { guard: 'shuttingDown', actions: [err('NBD_REP_ERR_SHUTDOWN', 'shuttingDown')] },
      { guard: 'notFixedNewstyle', actions: [err('NBD_REP_ERR_INVALID', 'notFixedNewstyle')] },
      { guard: 'optionHasData', actions: [err('NBD_REP_ERR_INVALID', 'hasData')] },
      // tls.starttls-repeat: a second STARTTLS after TLS is up ⇒ ERR_INVALID.
      { guard: 'tlsActive', actions: [err('NBD_REP_ERR_INVALID', 'tlsActive')] },
      // tls.mode-notls: ERR_POLICY, never ERR_TLS_REQD.
      { guard: 'tlsPolicyOff', actions: [err('NBD_REP_ERR_POLICY', 'tlsOff')] },
      { target: 'upgradingTls', actions: ['replyAck', 'requestTlsUpgrade'] },
    ]),
    'opt.list': counted([
      ...prelude(),
      { guard: 'optionHasData', actions: [err('NBD_REP_ERR_INVALID', 'hasData')] }, // option.unexpected-data
      { actions: ['replyList'] },
    ]),
    'opt.info': counted([
      ...prelude(),
      { guard: 'optionMalformed', actions: [err('NBD_REP_ERR_INVALID', 'problem')] }, // option.length-mismatch
      { guard: 'exportUnknown', actions: [err('NBD_REP_ERR_UNKNOWN', 'exportUnknown')] },
      { guard: 'exportTlsOnly', actions: [err('NBD_REP_ERR_TLS_REQD', 'exportTlsOnly')] },
      { actions: ['replyInfo'] },
    ]),
    'opt.go': counted([
      ...prelude(),
      { guard: 'optionMalformed', actions: [err('NBD_REP_ERR_INVALID', 'problem')] }, // option.length-mismatch
      { guard: 'exportUnknown', actions: [err('NBD_REP_ERR_UNKNOWN', 'exportUnknown')] },
      { guard: 'exportTlsOnly', actions: [err('NBD_REP_ERR_TLS_REQD', 'exportTlsOnly')] },
      // option.go-starts-transmission: after the ACK the next bytes are requests.
      { target: 'negotiated', actions: ['replyInfo', 'recordGo'] },
    ]),
    'opt.structuredReply': counted([
      ...prelude(),
      { guard: 'optionHasData', actions: [err('NBD_REP_ERR_INVALID', 'hasData')] }, // option.unexpected-data
      { guard: 'structuredRepliesNotOffered', actions: [err('NBD_REP_ERR_UNSUP', 'structuredRepliesNotOffered')] },
      { guard: 'extendedHeadersOn', actions: [err('NBD_REP_ERR_EXT_HEADER_REQD', 'extendedHeadersOnNoStructured')] },
      { guard: 'structuredRepliesOn', actions: [err('NBD_REP_ERR_INVALID', 'structuredRepliesOn')] }, // option.structured-reply: MAY on repeat
      { actions: ['replyAck', 'enableStructuredReplies'] },
    ]),
    'opt.extendedHeaders': counted([
      ...prelude(),
      { guard: 'optionHasData', actions: [err('NBD_REP_ERR_INVALID', 'hasData')] }, // option.unexpected-data
      { guard: 'extendedHeadersNotOffered', actions: [err('NBD_REP_ERR_UNSUP', 'extendedHeadersNotOffered')] },
      { guard: 'extendedHeadersOn', actions: [err('NBD_REP_ERR_INVALID', 'extendedHeadersOn')] }, // option.extended-headers
      { actions: ['replyAck', 'enableExtendedHeaders'] },
    ]),
    'opt.listMetaContext': counted([
      ...prelude(),
      { guard: 'optionMalformed', actions: [err('NBD_REP_ERR_INVALID', 'problem')] }, // option.length-mismatch
      { guard: 'exportUnknown', actions: [err('NBD_REP_ERR_UNKNOWN', 'exportUnknown')] },
      { guard: 'exportTlsOnly', actions: [err('NBD_REP_ERR_TLS_REQD', 'exportTlsOnly')] },
      { actions: ['replyListMetaContext'] },
    ]),
    'opt.setMetaContext': counted([
      ...prelude({ clear: true }),
      { guard: 'optionMalformed', actions: ['clearMetaContexts', err('NBD_REP_ERR_INVALID', 'problem')] }, // option.length-mismatch
      { guard: 'structuredRepliesOff', actions: ['clearMetaContexts', err('NBD_REP_ERR_INVALID', 'structuredRepliesOff')] }, // option.meta-context-needs-structured
      { guard: 'exportUnknown', actions: ['clearMetaContexts', err('NBD_REP_ERR_UNKNOWN', 'exportUnknown')] },
      { guard: 'exportTlsOnly', actions: ['clearMetaContexts', err('NBD_REP_ERR_TLS_REQD', 'exportTlsOnly')] },
      { actions: ['replySetMetaContext'] },
    ]),
    'opt.unknown': counted([
      ...prelude(),
      // option.unknown-code: unknown option ⇒ ERR_UNSUP; its data was consumed by the decoder.
      { actions: [err('NBD_REP_ERR_UNSUP', 'unsupported')] },
    ]),
  };
}

// ── the machine ────────────────────────────────────────────────────────

export const handshakeMachine = setup({
  types: {
    context: {} as HandshakeContext,
    events: {} as HandshakeEvent,
    input: {} as HandshakeInput,
    emitted: {} as HandshakeEmitted,
    output: {} as HandshakeOutcome,
  },
  guards: {
    // handshake.client-flags-unknown: unknown or un-advertised client flag bits ⇒ drop the connection.
    clientFlagsInvalid: ({ event }) =>
      event.type === 'wire.clientFlags' && (event.flags & ~KNOWN_CLIENT_FLAGS & 0xffffffff) !== 0,
    // option.too-many-options: too many options on one connection (DoS guard).
    tooManyOptions: ({ context }) => context.optionCount >= context.maxOptions,
    // option.shutting-down: while shutting down answer options (except ABORT) with ERR_SHUTDOWN.
    shuttingDown: ({ context }) => context.shuttingDown,
    // handshake.fixed-newstyle-required: without fixed newstyle only EXPORT_NAME is legal.
    notFixedNewstyle: ({ context }) => !context.fixedNewstyle,
    // The option data could not be parsed (option.length-mismatch, general.string-limits) or was too big (option.too-big).
    optionMalformed: ({ event }) => frameOf(event).problem?.reply === 'NBD_REP_ERR_INVALID',
    optionTooBig: ({ event }) => frameOf(event).problem?.reply === 'NBD_REP_ERR_TOO_BIG',
    // option.unexpected-data: LIST/STARTTLS/STRUCTURED_REPLY/EXTENDED_HEADERS with data ⇒ ERR_INVALID.
    optionHasData: ({ event }) => (frameOf(event) as SimpleOption).hasData === true,
    // tls.mode-forcedtls: FORCEDTLS and no TLS yet.
    tlsRequiredNotActive: ({ context }) => isTlsBlocked(context),
    tlsActive: ({ context }) => context.tls,
    tlsPolicyOff: ({ context }) => context.tlsPolicy === 'off',
    exportUnknown: ({ context, event }) => findExport(context, (frameOf(event) as InfoGoOption).name) === undefined,
    exportTlsOnly: ({ context, event }) => exportTlsBlocked(context, findExport(context, (frameOf(event) as InfoGoOption).name)),
    extendedHeadersOn: ({ context }) => context.extendedHeaders,
    structuredRepliesOn: ({ context }) => context.structuredReplies,
    structuredRepliesNotOffered: ({ context }) => !context.offerStructuredReplies,
    extendedHeadersNotOffered: ({ context }) => !context.offerExtendedHeaders,
    structuredRepliesOff: ({ context }) => !context.structuredReplies && !context.extendedHeaders,
  },
  actions: {
    sendGreeting: emit(() => sendOf([encodeGreeting(SERVER_HANDSHAKE_FLAGS)], 'greeting')),
    recordClientFlags: assign(({ event }) => {
      const flags = (event as { flags: number }).flags;
      return {
        clientFlags: flags,
        fixedNewstyle: (flags & CLIENT_FLAGS.NBD_FLAG_C_FIXED_NEWSTYLE) !== 0,
        // handshake.no-zeroes: NO_ZEROES only when both sides set it (the server always offers it).
        noZeroes: (flags & CLIENT_FLAGS.NBD_FLAG_C_NO_ZEROES) !== 0,
      };
    }),
    countOption: assign({ optionCount: ({ context }) => context.optionCount + 1 }),
    reject: enqueueActions(({ enqueue, event }, params: { reason: string }) => {
      const detail = event.type.startsWith('opt.')
        ? ` (${event.type})`
        : event.type === 'wire.fatal'
          ? `: ${(event as { message: string }).message}`
          : event.type === 'timer.handshake'
            ? `: not finished within ${event.ms} ms`
            : '';
      enqueue.assign({ outcome: { outcome: 'rejected', reason: params.reason + detail } });
      enqueue.emit({ type: 'close', hard: true, reason: params.reason + detail });
    }),
    replyError: emit(({ context, event }, params: { error: RepErrName; why: RefusalReason }) =>
      errorReply(frameOf(event).code, params.error, REFUSAL_TEXT[params.why](context, frameOf(event))),
    ),
    replyAck: emit(({ event }) => sendOf(encodeAck(frameOf(event).code), 'NBD_REP_ACK')),
    recordAbort: assign({ outcome: () => ({ outcome: 'aborted' }) as const }),
    closeSoft: emit(() => ({ type: 'close', hard: false, reason: 'client sent NBD_OPT_ABORT' }) as const),
    enableStructuredReplies: assign({ structuredReplies: true }),
    enableExtendedHeaders: assign({ extendedHeaders: true, structuredReplies: true }),
    replyList: enqueueActions(({ enqueue, context, event }) => {
      const code = frameOf(event).code;
      for (const exp of context.exports) {
        // SELECTIVETLS: LIST MAY hide TLS-only exports before TLS.
        if (exportTlsBlocked(context, exp)) continue;
        enqueue.emit(sendOf(encodeRepServer(code, exp.name, exp.description), `NBD_REP_SERVER(${exp.name})`));
      }
      enqueue.emit(sendOf(encodeAck(code), 'NBD_REP_ACK'));
    }),
    replyInfo: enqueueActions(({ enqueue, context, event }) => {
      const frame = frameOf(event) as InfoGoOption;
      const exp = findExport(context, frame.name)!;
      for (const e of infoReplies(context, frame, exp)) enqueue.emit(e);
    }),
    recordGo: assign(({ context, event }) => {
      const exp = findExport(context, (frameOf(event) as InfoGoOption).name)!;
      return { outcome: { outcome: 'negotiated', negotiated: negotiatedFrom(context, exp, false) } as const };
    }),
    replyExportName: enqueueActions(({ enqueue, context, event }) => {
      const exp = findExport(context, (frameOf(event) as ExportNameOption).name)!;
      const negotiated = negotiatedFrom(context, exp, true);
      enqueue.assign({ outcome: { outcome: 'negotiated', negotiated } });
      enqueue.emit(
        sendOf([encodeExportNameReply(exp.size, negotiated.flags, context.noZeroes)], context.noZeroes ? 'export reply (10 bytes)' : 'export reply (134 bytes)'),
      );
    }),
    replyListMetaContext: enqueueActions(({ enqueue, event }) => {
      const frame = frameOf(event) as MetaContextOption;
      // option.meta-context-reply: LIST replies carry context id 0 (the spec: it SHOULD be 0).
      for (const name of matchMetaContexts(frame.queries, 'list')) {
        enqueue.emit(sendOf(encodeMetaContext(frame.code, 0, name), `NBD_REP_META_CONTEXT(${name})`));
      }
      enqueue.emit(sendOf(encodeAck(frame.code), 'NBD_REP_ACK'));
    }),
    // option.meta-context-replace: SET replaces the previous selection, even when it fails.
    clearMetaContexts: assign({ metaContexts: null }),
    replySetMetaContext: enqueueActions(({ enqueue, context, event }) => {
      const frame = frameOf(event) as MetaContextOption;
      const exp = findExport(context, frame.name)!;
      const contexts = matchMetaContexts(frame.queries, 'set').map((name) => ({ id: BASE_ALLOCATION_ID, name }));
      enqueue.assign({ metaContexts: { exportName: exp.name, contexts } });
      for (const c of contexts) enqueue.emit(sendOf(encodeMetaContext(frame.code, c.id, c.name), `NBD_REP_META_CONTEXT(${c.name})`));
      enqueue.emit(sendOf(encodeAck(frame.code), 'NBD_REP_ACK'));
    }),
    requestTlsUpgrade: emit({ type: 'startTls' } as const),
    // tls.starttls-resets: STARTTLS success ⇒ forget everything negotiated so far.
    forgetNegotiation: assign({
      tls: true,
      structuredReplies: false,
      extendedHeaders: false,
      metaContexts: null,
    }),
    markShuttingDown: assign({ shuttingDown: true }),
    recordDisconnect: assign({ outcome: () => ({ outcome: 'disconnected' }) as const }),
  },
}).createMachine({
  id: 'handshake',
  context: ({ input }) => ({
    exports: input.exports,
    defaultExport: input.defaultExport,
    tlsPolicy: input.tls ?? 'off',
    maxOptions: input.maxOptions ?? DEFAULTS.maxOptions,
    offerExtendedHeaders: input.extendedHeaders ?? true,
    offerStructuredReplies: input.structuredReplies ?? true,
    clientFlags: 0,
    fixedNewstyle: false,
    noZeroes: false,
    tls: input.tlsActive ?? false,
    structuredReplies: false,
    extendedHeaders: false,
    metaContexts: null,
    optionCount: 0,
    shuttingDown: false,
    outcome: null,
  }),
  initial: 'greeting',
  on: {
    'socket.closed': { target: '.disconnected', actions: 'recordDisconnect' },
    'wire.fatal': { target: '.rejected', actions: { type: 'reject', params: { reason: 'protocol violation' } } },
    'server.shutdown': { actions: 'markShuttingDown' },
    // The server's handshake timeout (as qemu-nbd since CVE-2024-7409): drop a client that never finishes.
    'timer.handshake': { target: '.rejected', actions: { type: 'reject', params: { reason: 'handshake timeout' } } },
  },
  states: {
    greeting: {
      // The newstyle greeting: 18 bytes, handshake flags with only bits 0–1 (handshake.greeting-flags).
      entry: 'sendGreeting',
      always: 'awaitingClientFlags',
    },
    awaitingClientFlags: {
      on: {
        'wire.clientFlags': [
          { guard: 'clientFlagsInvalid', target: 'rejected', actions: { type: 'reject', params: { reason: 'handshake.client-flags-unknown: unknown client flags' } } },
          { target: 'options', actions: 'recordClientFlags' },
        ],
      },
    },
    options: {
      on: optionTransitions() as never,
    },
    upgradingTls: {
      on: {
        'tls.established': { target: 'options', actions: 'forgetNegotiation' },
        'tls.failed': { target: 'rejected', actions: { type: 'reject', params: { reason: 'TLS handshake failed' } } },
      },
    },
    negotiated: { type: 'final' },
    aborted: { type: 'final' },
    rejected: { type: 'final' },
    disconnected: { type: 'final' },
  },
  output: ({ context }) => context.outcome ?? { outcome: 'disconnected' },
});
