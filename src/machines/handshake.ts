/**
 * The handshake (option haggling) phase as an xstate v5 machine.
 *
 * greeting → awaitingClientFlags → options ⇄ upgradingTls → negotiated
 *                                        ↘ aborted | rejected | disconnected
 *
 * options: exhausted | shuttingDown | unfixed | awaitingTls | open
 *   (the modes, by precedence: the client flags and STARTTLS's end name the
 *   mode to enter; any mode → exhausted once the option budget is spent,
 *   any mode but exhausted → shuttingDown on server.shutdown)
 *
 * The transitions are literal objects that the compiler checks against the
 * guard and action names below; a mode answers the options it restricts
 * with one `opt.*` wildcard transition and names the exceptions.
 *
 * Every reply goes out through the emitted `send` effect; the machine never
 * touches a socket. Comments, reject reasons and refusals cite the rules
 * they enforce by their IDs in docs/rules.md; every option error and every
 * reason to close is an entry of the error catalogue (src/protocol/errors.ts),
 * named by its code in the transitions.
 */
import { assertEvent, assign, emit, enqueueActions, setup } from 'xstate';
import {
  BASE_ALLOCATION,
  CLIENT_FLAGS,
  FLAG,
  HANDSHAKE_FLAGS,
  INFO,
  OPT,
  optName,
} from '../protocol/constants.js';
import {
  ERRORS,
  messageOf,
  quoteName,
  textOf,
  type CloseCode,
  type DetailsArg,
  type FixedCode,
  type OptionErrorCode,
} from '../protocol/errors.js';
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
import type { InfoGoOption, OptionFrame } from '../protocol/frames.js';
import type {
  ExportDescriptor,
  HandshakeEmitted,
  HandshakeEvent,
  HandshakeOutcome,
  MetaContextSelection,
  Negotiated,
  OptionEvent,
  TlsPolicy,
} from './types.js';
import { DEFAULTS } from '../defaults.js';

/** The machine's own event: the option that spends the budget raises it (never sent by the transport). */
type BudgetSpent = { type: 'options.spent' };

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

/**
 * Every option event, by name: what `assertEvent` narrows to where any option
 * will do (a list of names costs string comparisons; the `opt.*` descriptor
 * would split both strings on every call, and handshakes must stay cheap).
 */
const OPTION_EVENTS = [
  'opt.exportName',
  'opt.abort',
  'opt.list',
  'opt.starttls',
  'opt.info',
  'opt.go',
  'opt.structuredReply',
  'opt.listMetaContext',
  'opt.setMetaContext',
  'opt.extendedHeaders',
  'opt.unknown',
] as const satisfies ReadonlyArray<OptionEvent['type']>;
/** Options whose frame names an export. */
const NAMED_OPTIONS = ['opt.exportName', 'opt.info', 'opt.go', 'opt.listMetaContext', 'opt.setMetaContext'] as const;
/** Options that take no data (option.unexpected-data). */
const DATALESS_OPTIONS = ['opt.list', 'opt.starttls', 'opt.structuredReply', 'opt.extendedHeaders'] as const;
/** Options answered with a bare ACK. */
const ACKED_OPTIONS = ['opt.abort', 'opt.starttls', 'opt.structuredReply', 'opt.extendedHeaders'] as const;

function sendOf(frame: ReturnType<typeof encodeAck>, label: string): HandshakeEmitted {
  return { type: 'send', frame, label };
}

// ── what the client is told when an option is refused ─────────────────

/** NBD_OPT_GO, or "option 42" for a code without a name. */
function optionLabel(code: number): string {
  const name = optName(code);
  return name.startsWith('NBD_OPT_') ? name : `option ${code}`;
}

/** Client-supplied names in messages are quoted by the catalogue's `quoteName` (exported here too, as before). */
export { quoteName };

function requestedName(frame: OptionFrame): string {
  return 'name' in frame ? frame.name : '';
}

/** The frame's problem as the decoder worded it (bad lengths, bad strings, too big). */
const problemOf = (f: OptionFrame) => ({ option: optionLabel(f.code), problem: f.problem?.message ?? 'malformed option data' });

/**
 * The details each option error's message needs, from the context and the
 * refused option. The messages themselves, and the reply type each is sent
 * with, are the catalogue's (the spec allows a UTF-8 message as an error
 * reply's data; clients show it: qemu prints "server reported: …", libnbd
 * logs it: option.error-text); the encoder caps the text at 4096 bytes.
 */
const OPTION_ERROR_DETAILS: { readonly [C in OptionErrorCode]: (ctx: HandshakeContext, f: OptionFrame) => DetailsArg<C> } = {
  'option.shutting-down': () => [],
  'handshake.fixed-newstyle-required': (_ctx, f) => [{ option: optionLabel(f.code) }],
  'tls.mode-forcedtls/option': (_ctx, f) => [{ option: optionLabel(f.code) }],
  'option.too-big': (_ctx, f) => [problemOf(f)],
  NBD_ERR_BAD_OPTION_DATA: (_ctx, f) => [problemOf(f)],
  'option.unexpected-data': (_ctx, f) => [{ option: optionLabel(f.code), length: f.length }],
  'tls.starttls-repeat': () => [],
  'tls.mode-notls': () => [],
  'option.export-unknown': (ctx, f) => [{ name: requestedName(f), hasDefault: ctx.defaultExport !== undefined }],
  'tls.mode-selectivetls': (_ctx, f) => [{ name: requestedName(f) }],
  'option.structured-reply/disabled': () => [],
  'option.structured-reply/repeat': () => [],
  'option.structured-reply/extended-headers': () => [],
  'option.extended-headers/disabled': () => [],
  'option.extended-headers/repeat': () => [],
  'option.meta-context-needs-structured': () => [],
  'option.unknown-code': (_ctx, f) => [{ option: optionLabel(f.code) }],
};

/** The error reply for `code`: the catalogue's reply type and message. */
function errorReply<C extends OptionErrorCode>(code: C, ctx: HandshakeContext, frame: OptionFrame): HandshakeEmitted {
  const error = ERRORS[code].wire;
  const message = messageOf(code, ...OPTION_ERROR_DETAILS[code](ctx, frame));
  return sendOf(encodeOptionError(frame.code, error, message), `${error}: ${message}`);
}

/** What a hard close names: a catalogue entry with a fixed message. */
type RejectCode = Extract<CloseCode, FixedCode>;

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

// ── the machine ────────────────────────────────────────────────────────

export const handshakeMachine = setup({
  types: {
    context: {} as HandshakeContext,
    events: {} as HandshakeEvent | BudgetSpent,
    input: {} as HandshakeInput,
    emitted: {} as HandshakeEmitted,
    output: {} as HandshakeOutcome,
  },
  guards: {
    // handshake.client-flags-unknown: unknown or un-advertised client flag bits ⇒ drop the connection.
    clientFlagsInvalid: ({ event }) => {
      assertEvent(event, 'wire.clientFlags');
      return (event.flags & ~KNOWN_CLIENT_FLAGS & 0xffffffff) !== 0;
    },
    // option.too-many-options: too many options on one connection (DoS guard).
    tooManyOptions: ({ context }) => context.optionCount >= context.maxOptions,
    // option.shutting-down: while shutting down answer options (except ABORT) with ERR_SHUTDOWN.
    shuttingDown: ({ context }) => context.shuttingDown,
    // handshake.fixed-newstyle-required: without fixed newstyle only EXPORT_NAME is legal.
    clientNotFixedNewstyle: ({ event }) => {
      assertEvent(event, 'wire.clientFlags');
      return (event.flags & CLIENT_FLAGS.NBD_FLAG_C_FIXED_NEWSTYLE) === 0;
    },
    // tls.mode-forcedtls: FORCEDTLS and no TLS yet.
    tlsRequiredNotActive: ({ context }) => isTlsBlocked(context),
    // The option data could not be parsed (option.length-mismatch, general.string-limits) or was too big (option.too-big).
    optionMalformed: ({ event }) => {
      assertEvent(event, OPTION_EVENTS);
      return event.frame.problem?.reply === 'NBD_REP_ERR_INVALID';
    },
    optionTooBig: ({ event }) => {
      assertEvent(event, OPTION_EVENTS);
      return event.frame.problem?.reply === 'NBD_REP_ERR_TOO_BIG';
    },
    // option.unexpected-data: LIST/STARTTLS/STRUCTURED_REPLY/EXTENDED_HEADERS with data ⇒ ERR_INVALID.
    optionHasData: ({ event }) => {
      assertEvent(event, DATALESS_OPTIONS);
      return event.frame.hasData;
    },
    tlsActive: ({ context }) => context.tls,
    tlsPolicyOff: ({ context }) => context.tlsPolicy === 'off',
    exportUnknown: ({ context, event }) => {
      assertEvent(event, NAMED_OPTIONS);
      return findExport(context, event.frame.name) === undefined;
    },
    exportTlsOnly: ({ context, event }) => {
      assertEvent(event, NAMED_OPTIONS);
      return exportTlsBlocked(context, findExport(context, event.frame.name));
    },
    extendedHeadersOn: ({ context }) => context.extendedHeaders,
    structuredRepliesOn: ({ context }) => context.structuredReplies,
    structuredRepliesNotOffered: ({ context }) => !context.offerStructuredReplies,
    extendedHeadersNotOffered: ({ context }) => !context.offerExtendedHeaders,
    structuredRepliesOff: ({ context }) => !context.structuredReplies && !context.extendedHeaders,
  },
  actions: {
    sendGreeting: emit(() => sendOf([encodeGreeting(SERVER_HANDSHAKE_FLAGS)], 'greeting')),
    recordClientFlags: assign(({ event }) => {
      assertEvent(event, 'wire.clientFlags');
      return {
        clientFlags: event.flags,
        fixedNewstyle: (event.flags & CLIENT_FLAGS.NBD_FLAG_C_FIXED_NEWSTYLE) !== 0,
        // handshake.no-zeroes: NO_ZEROES only when both sides set it (the server always offers it).
        noZeroes: (event.flags & CLIENT_FLAGS.NBD_FLAG_C_NO_ZEROES) !== 0,
      };
    }),
    // option.too-many-options: the option that spends the budget raises options.spent (options ⇒ exhausted).
    countOption: enqueueActions(({ context, enqueue }) => {
      const optionCount = context.optionCount + 1;
      enqueue.assign({ optionCount });
      if (optionCount >= context.maxOptions) enqueue.raise({ type: 'options.spent' });
    }),
    // A hard close: the catalogue code, and one reason: its text (rule ID first), then what triggered it.
    // A decoder failure closes with the decoder's own code.
    reject: enqueueActions(({ enqueue, event }, params: { code: RejectCode }) => {
      const detail = event.type.startsWith('opt.')
        ? ` (${event.type})`
        : event.type === 'wire.fatal'
          ? `: ${event.message}`
          : event.type === 'timer.handshake'
            ? `: not finished within ${event.ms} ms`
            : '';
      const code: CloseCode = event.type === 'wire.fatal' && event.code !== undefined ? event.code : params.code;
      const reason = textOf(params.code) + detail;
      enqueue.assign({ outcome: { outcome: 'rejected', code, reason } });
      enqueue.emit({ type: 'close', hard: true, code, reason });
    }),
    // An option error reply: the catalogue entry's reply type and message (OPTION_ERROR_DETAILS fills it in).
    replyError: emit(({ context, event }, params: { code: OptionErrorCode }) => {
      assertEvent(event, OPTION_EVENTS);
      return errorReply(params.code, context, event.frame);
    }),
    replyAck: emit(({ event }) => {
      assertEvent(event, ACKED_OPTIONS);
      return sendOf(encodeAck(event.frame.code), 'NBD_REP_ACK');
    }),
    recordAbort: assign({ outcome: () => ({ outcome: 'aborted' }) as const }),
    closeSoft: emit(() => ({ type: 'close', hard: false, code: 'option.abort-ack', reason: messageOf('option.abort-ack') }) as const),
    enableStructuredReplies: assign({ structuredReplies: true }),
    enableExtendedHeaders: assign({ extendedHeaders: true, structuredReplies: true }),
    replyList: enqueueActions(({ enqueue, context, event }) => {
      assertEvent(event, 'opt.list');
      const code = event.frame.code;
      for (const exp of context.exports) {
        // SELECTIVETLS: LIST MAY hide TLS-only exports before TLS.
        if (exportTlsBlocked(context, exp)) continue;
        enqueue.emit(sendOf(encodeRepServer(code, exp.name, exp.description), `NBD_REP_SERVER(${exp.name})`));
      }
      enqueue.emit(sendOf(encodeAck(code), 'NBD_REP_ACK'));
    }),
    replyInfo: enqueueActions(({ enqueue, context, event }) => {
      assertEvent(event, ['opt.info', 'opt.go']);
      const exp = findExport(context, event.frame.name)!;
      for (const e of infoReplies(context, event.frame, exp)) enqueue.emit(e);
    }),
    recordGo: assign(({ context, event }) => {
      assertEvent(event, 'opt.go');
      const exp = findExport(context, event.frame.name)!;
      return { outcome: { outcome: 'negotiated', negotiated: negotiatedFrom(context, exp, false) } as const };
    }),
    replyExportName: enqueueActions(({ enqueue, context, event }) => {
      assertEvent(event, 'opt.exportName');
      const exp = findExport(context, event.frame.name)!;
      const negotiated = negotiatedFrom(context, exp, true);
      enqueue.assign({ outcome: { outcome: 'negotiated', negotiated } });
      enqueue.emit(
        sendOf([encodeExportNameReply(exp.size, negotiated.flags, context.noZeroes)], context.noZeroes ? 'export reply (10 bytes)' : 'export reply (134 bytes)'),
      );
    }),
    replyListMetaContext: enqueueActions(({ enqueue, event }) => {
      assertEvent(event, 'opt.listMetaContext');
      const frame = event.frame;
      // option.meta-context-reply: LIST replies carry context id 0 (the spec: it SHOULD be 0).
      for (const name of matchMetaContexts(frame.queries, 'list')) {
        enqueue.emit(sendOf(encodeMetaContext(frame.code, 0, name), `NBD_REP_META_CONTEXT(${name})`));
      }
      enqueue.emit(sendOf(encodeAck(frame.code), 'NBD_REP_ACK'));
    }),
    // option.meta-context-replace: SET replaces the previous selection, even when it fails.
    clearMetaContexts: assign({ metaContexts: null }),
    replySetMetaContext: enqueueActions(({ enqueue, context, event }) => {
      assertEvent(event, 'opt.setMetaContext');
      const frame = event.frame;
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
    'wire.fatal': { target: '.rejected', actions: { type: 'reject', params: { code: 'NBD_ERR_PROTOCOL' } } },
    // Outside `options` (before the client flags, during STARTTLS) only remembered: `options` starts in shuttingDown.
    'server.shutdown': { actions: 'markShuttingDown' },
    // The server's handshake timeout (as qemu-nbd since CVE-2024-7409): drop a client that never finishes.
    'timer.handshake': { target: '.rejected', actions: { type: 'reject', params: { code: 'NBD_ERR_HANDSHAKE_TIMEOUT' } } },
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
          { guard: 'clientFlagsInvalid', target: 'rejected', actions: { type: 'reject', params: { code: 'handshake.client-flags-unknown' } } },
          // The option mode the rules call for, by precedence (option.too-many-options, option.shutting-down,
          // handshake.fixed-newstyle-required, tls.mode-forcedtls).
          { guard: 'tooManyOptions', target: 'options.exhausted', actions: 'recordClientFlags' },
          { guard: 'shuttingDown', target: 'options.shuttingDown', actions: 'recordClientFlags' },
          { guard: 'clientNotFixedNewstyle', target: 'options.unfixed', actions: 'recordClientFlags' },
          { guard: 'tlsRequiredNotActive', target: 'options.awaitingTls', actions: 'recordClientFlags' },
          { target: 'options.open', actions: 'recordClientFlags' },
        ],
      },
    },
    /**
     * Option haggling, in one of five modes. Each mode answers the options
     * it restricts with one wildcard (`opt.*`) transition and lists the
     * options it treats otherwise; every option the server answers counts
     * towards maxOptions (`countOption`), refusals that close do not.
     * Precedence, as the rules apply: exhausted, shuttingDown, unfixed,
     * awaitingTls, open. The transitions into `options` name the mode
     * (the client flags, STARTTLS's end); `initial` is never used.
     */
    options: {
      initial: 'open',
      on: {
        // option.too-many-options: raised by countOption when the budget is spent.
        'options.spent': { target: '.exhausted' },
        // option.shutting-down: from now on every option but ABORT gets ERR_SHUTDOWN.
        'server.shutdown': { target: '.shuttingDown', actions: 'markShuttingDown' },
      },
      states: {
        // option.too-many-options: the budget is spent; the next option (but ABORT) closes the connection.
        exhausted: {
          on: {
            // option.abort-ack: ABORT ⇒ ACK, then the client closes; tolerate it closing first.
            'opt.abort': { target: '#handshake.aborted', actions: ['countOption', 'replyAck', 'recordAbort', 'closeSoft'] },
            'opt.*': { target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.too-many-options' } } },
            // Exhausted comes first: a shutdown changes nothing here.
            'server.shutdown': { actions: 'markShuttingDown' },
          },
        },
        // option.shutting-down: every option but ABORT gets ERR_SHUTDOWN; EXPORT_NAME cannot, so it closes.
        shuttingDown: {
          on: {
            'opt.abort': { target: '#handshake.aborted', actions: ['countOption', 'replyAck', 'recordAbort', 'closeSoft'] },
            // option.export-name-terminates: EXPORT_NAME cannot be answered with an error: terminate.
            'opt.exportName': { target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/shutting-down' } } },
            // option.meta-context-replace: a refused SET still drops the selection made before.
            'opt.setMetaContext': { actions: ['countOption', 'clearMetaContexts', { type: 'replyError', params: { code: 'option.shutting-down' } }] },
            'opt.*': { actions: ['countOption', { type: 'replyError', params: { code: 'option.shutting-down' } }] },
          },
        },
        // handshake.fixed-newstyle-required: the client did not set NBD_FLAG_C_FIXED_NEWSTYLE; only EXPORT_NAME
        // (and ABORT) are legal. Nothing can be negotiated here, so SET_META_CONTEXT has no selection to drop,
        // and EXTENDED_HEADERS is never on.
        unfixed: {
          on: {
            'opt.abort': { target: '#handshake.aborted', actions: ['countOption', 'replyAck', 'recordAbort', 'closeSoft'] },
            'opt.exportName': [
              { guard: 'optionMalformed', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/malformed' } } },
              { guard: 'optionTooBig', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/too-long' } } },
              // tls.mode-forcedtls: STARTTLS is refused here, so TLS can only come from the listener.
              { guard: 'tlsRequiredNotActive', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'tls.mode-forcedtls/export-name' } } },
              { guard: 'exportUnknown', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/unknown-export' } } },
              { guard: 'exportTlsOnly', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/tls-only' } } },
              { target: '#handshake.negotiated', actions: ['countOption', 'replyExportName'] },
            ],
            'opt.*': { actions: ['countOption', { type: 'replyError', params: { code: 'handshake.fixed-newstyle-required' } }] },
          },
        },
        // tls.mode-forcedtls: TLS is required and not up yet. Everything but STARTTLS / ABORT gets ERR_TLS_REQD,
        // oversized options included (the MUST names no exception); EXPORT_NAME cannot, so it closes.
        // Nothing was negotiated before TLS, so SET_META_CONTEXT has no selection to drop.
        awaitingTls: {
          on: {
            'opt.abort': { target: '#handshake.aborted', actions: ['countOption', 'replyAck', 'recordAbort', 'closeSoft'] },
            'opt.starttls': [
              { guard: 'optionHasData', actions: ['countOption', { type: 'replyError', params: { code: 'option.unexpected-data' } }] }, // option.unexpected-data
              { target: '#handshake.upgradingTls', actions: ['countOption', 'replyAck', 'requestTlsUpgrade'] },
            ],
            'opt.exportName': [
              { guard: 'optionMalformed', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/malformed' } } },
              { guard: 'optionTooBig', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/too-long' } } },
              { target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'tls.mode-forcedtls/export-name' } } },
            ],
            'opt.*': { actions: ['countOption', { type: 'replyError', params: { code: 'tls.mode-forcedtls/option' } }] },
          },
        },
        // Fixed newstyle, not shutting down, TLS up or not required: each option's own rules, in the order they apply.
        open: {
          on: {
            'opt.abort': { target: '#handshake.aborted', actions: ['countOption', 'replyAck', 'recordAbort', 'closeSoft'] },
            'opt.exportName': [
              { guard: 'optionMalformed', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/malformed' } } },
              { guard: 'optionTooBig', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/too-long' } } },
              { guard: 'extendedHeadersOn', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.extended-headers/export-name' } } },
              { guard: 'exportUnknown', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/unknown-export' } } },
              { guard: 'exportTlsOnly', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/tls-only' } } },
              { target: '#handshake.negotiated', actions: ['countOption', 'replyExportName'] },
            ],
            'opt.starttls': [
              { guard: 'optionHasData', actions: ['countOption', { type: 'replyError', params: { code: 'option.unexpected-data' } }] }, // option.unexpected-data
              // tls.starttls-repeat: a second STARTTLS after TLS is up ⇒ ERR_INVALID.
              { guard: 'tlsActive', actions: ['countOption', { type: 'replyError', params: { code: 'tls.starttls-repeat' } }] },
              // tls.mode-notls: ERR_POLICY, never ERR_TLS_REQD.
              { guard: 'tlsPolicyOff', actions: ['countOption', { type: 'replyError', params: { code: 'tls.mode-notls' } }] },
              { target: '#handshake.upgradingTls', actions: ['countOption', 'replyAck', 'requestTlsUpgrade'] },
            ],
            // option.too-big: an option over the data limit (its data was skipped) ⇒ ERR_TOO_BIG, before any other check.
            'opt.list': [
              { guard: 'optionTooBig', actions: ['countOption', { type: 'replyError', params: { code: 'option.too-big' } }] },
              { guard: 'optionHasData', actions: ['countOption', { type: 'replyError', params: { code: 'option.unexpected-data' } }] }, // option.unexpected-data
              { actions: ['countOption', 'replyList'] },
            ],
            'opt.info': [
              { guard: 'optionTooBig', actions: ['countOption', { type: 'replyError', params: { code: 'option.too-big' } }] },
              { guard: 'optionMalformed', actions: ['countOption', { type: 'replyError', params: { code: 'NBD_ERR_BAD_OPTION_DATA' } }] }, // option.length-mismatch
              { guard: 'exportUnknown', actions: ['countOption', { type: 'replyError', params: { code: 'option.export-unknown' } }] },
              { guard: 'exportTlsOnly', actions: ['countOption', { type: 'replyError', params: { code: 'tls.mode-selectivetls' } }] },
              { actions: ['countOption', 'replyInfo'] },
            ],
            'opt.go': [
              { guard: 'optionTooBig', actions: ['countOption', { type: 'replyError', params: { code: 'option.too-big' } }] },
              { guard: 'optionMalformed', actions: ['countOption', { type: 'replyError', params: { code: 'NBD_ERR_BAD_OPTION_DATA' } }] }, // option.length-mismatch
              { guard: 'exportUnknown', actions: ['countOption', { type: 'replyError', params: { code: 'option.export-unknown' } }] },
              { guard: 'exportTlsOnly', actions: ['countOption', { type: 'replyError', params: { code: 'tls.mode-selectivetls' } }] },
              // option.go-starts-transmission: after the ACK the next bytes are requests.
              { target: '#handshake.negotiated', actions: ['countOption', 'replyInfo', 'recordGo'] },
            ],
            'opt.structuredReply': [
              { guard: 'optionTooBig', actions: ['countOption', { type: 'replyError', params: { code: 'option.too-big' } }] },
              { guard: 'optionHasData', actions: ['countOption', { type: 'replyError', params: { code: 'option.unexpected-data' } }] }, // option.unexpected-data
              { guard: 'structuredRepliesNotOffered', actions: ['countOption', { type: 'replyError', params: { code: 'option.structured-reply/disabled' } }] },
              { guard: 'extendedHeadersOn', actions: ['countOption', { type: 'replyError', params: { code: 'option.structured-reply/extended-headers' } }] },
              // option.structured-reply: MAY refuse a repeat.
              { guard: 'structuredRepliesOn', actions: ['countOption', { type: 'replyError', params: { code: 'option.structured-reply/repeat' } }] },
              { actions: ['countOption', 'replyAck', 'enableStructuredReplies'] },
            ],
            'opt.extendedHeaders': [
              { guard: 'optionTooBig', actions: ['countOption', { type: 'replyError', params: { code: 'option.too-big' } }] },
              { guard: 'optionHasData', actions: ['countOption', { type: 'replyError', params: { code: 'option.unexpected-data' } }] }, // option.unexpected-data
              { guard: 'extendedHeadersNotOffered', actions: ['countOption', { type: 'replyError', params: { code: 'option.extended-headers/disabled' } }] },
              // option.extended-headers: refuse a repeat.
              { guard: 'extendedHeadersOn', actions: ['countOption', { type: 'replyError', params: { code: 'option.extended-headers/repeat' } }] },
              { actions: ['countOption', 'replyAck', 'enableExtendedHeaders'] },
            ],
            'opt.listMetaContext': [
              { guard: 'optionTooBig', actions: ['countOption', { type: 'replyError', params: { code: 'option.too-big' } }] },
              { guard: 'optionMalformed', actions: ['countOption', { type: 'replyError', params: { code: 'NBD_ERR_BAD_OPTION_DATA' } }] }, // option.length-mismatch
              { guard: 'exportUnknown', actions: ['countOption', { type: 'replyError', params: { code: 'option.export-unknown' } }] },
              { guard: 'exportTlsOnly', actions: ['countOption', { type: 'replyError', params: { code: 'tls.mode-selectivetls' } }] },
              { actions: ['countOption', 'replyListMetaContext'] },
            ],
            // option.meta-context-replace: every refusal drops the previous selection too.
            'opt.setMetaContext': [
              { guard: 'optionTooBig', actions: ['countOption', 'clearMetaContexts', { type: 'replyError', params: { code: 'option.too-big' } }] },
              { guard: 'optionMalformed', actions: ['countOption', 'clearMetaContexts', { type: 'replyError', params: { code: 'NBD_ERR_BAD_OPTION_DATA' } }] }, // option.length-mismatch
              // option.meta-context-needs-structured
              { guard: 'structuredRepliesOff', actions: ['countOption', 'clearMetaContexts', { type: 'replyError', params: { code: 'option.meta-context-needs-structured' } }] },
              { guard: 'exportUnknown', actions: ['countOption', 'clearMetaContexts', { type: 'replyError', params: { code: 'option.export-unknown' } }] },
              { guard: 'exportTlsOnly', actions: ['countOption', 'clearMetaContexts', { type: 'replyError', params: { code: 'tls.mode-selectivetls' } }] },
              { actions: ['countOption', 'replySetMetaContext'] },
            ],
            'opt.unknown': [
              { guard: 'optionTooBig', actions: ['countOption', { type: 'replyError', params: { code: 'option.too-big' } }] },
              // option.unknown-code: unknown option ⇒ ERR_UNSUP; its data was consumed by the decoder.
              { actions: ['countOption', { type: 'replyError', params: { code: 'option.unknown-code' } }] },
            ],
          },
        },
      },
    },
    // The session runs the TLS handshake while the machine is here (it asks `snapshot.matches('upgradingTls')`).
    upgradingTls: {
      on: {
        // STARTTLS needed fixed newstyle and TLS is now up: open, unless the budget is spent (STARTTLS was the
        // last option allowed) or the server began shutting down meanwhile.
        'tls.established': [
          { guard: 'tooManyOptions', target: 'options.exhausted', actions: 'forgetNegotiation' },
          { guard: 'shuttingDown', target: 'options.shuttingDown', actions: 'forgetNegotiation' },
          { target: 'options.open', actions: 'forgetNegotiation' },
        ],
        'tls.failed': { target: 'rejected', actions: { type: 'reject', params: { code: 'tls.handshake-failed' } } },
      },
    },
    negotiated: { type: 'final' },
    aborted: { type: 'final' },
    rejected: { type: 'final' },
    disconnected: { type: 'final' },
  },
  output: ({ context }) => context.outcome ?? { outcome: 'disconnected' },
});
