/**
 * What the handshake machine (handshake.ts) knows and answers with: its
 * context, the pure helpers it decides with (which export a name means,
 * the flags advertised, the meta contexts a query selects), the option
 * names it narrows events to, and the replies it sends — INFO/GO
 * sequences and option errors, whose messages and reply types are the
 * error catalogue's (src/protocol/errors.ts).
 */
import { BASE_ALLOCATION, CLIENT_FLAGS, FLAG, HANDSHAKE_FLAGS, INFO, optName } from '../protocol/constants.js';
import { ERRORS, messageOf, textOf, type CloseCode, type DetailsArg, type FixedCode, type OptionErrorCode } from '../protocol/errors.js';
import {
  encodeAck,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeMetaContext,
  encodeOptionError,
  withHasFlags,
} from '../protocol/encoder.js';
import type { InfoGoOption, OptionFrame } from '../protocol/frames.js';
import type { ExportDescriptor, HandshakeEmitted, HandshakeEvent, HandshakeOutcome, ListedExport, MetaContextSelection, Negotiated, OptionEvent, TlsPolicy } from './types.js';

/**
 * What the server set for every connection (from HandshakeInput, with its defaults): one object the context
 * refers to, never copied by an assign.
 */
export interface HandshakeSettings {
  readonly exports: readonly ExportDescriptor[];
  readonly defaultExport: string | undefined;
  readonly tlsPolicy: TlsPolicy;
  readonly maxOptions: number;
  readonly offerExtendedHeaders: boolean;
  readonly offerStructuredReplies: boolean;
  /** Names the server does not hold statically (and the empty name, without a static default) are resolved per connection. */
  readonly resolveExports: boolean;
  /** NBD_OPT_LIST asks the server for this connection's list. */
  readonly resolveList: boolean;
}

/**
 * The handshake's context: the server's settings and what this connection negotiated. Kept to a few fields:
 * every assign copies the context (xstate's `Object.assign({}, context, update)`), and V8 turns a copy of
 * 20 or more fields into a slow dictionary-mode object.
 */
export interface HandshakeContext {
  readonly server: HandshakeSettings;
  /**
   * The last name resolved on this connection and what it meant (an export,
   * null for none, or the hook's failure, answered once and then forgotten):
   * INFO then GO for one name ask once.
   */
  lookup: ExportLookup | null;
  /** The list made for the NBD_OPT_LIST being answered (forgotten once answered: each LIST asks again). */
  listing: { readonly exports: readonly ListedExport[] } | { readonly error: string } | null;
  /** The option waiting in `resolving`, answered when the answer comes. */
  pending: OptionEvent | null;
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

export const SERVER_HANDSHAKE_FLAGS = HANDSHAKE_FLAGS.NBD_FLAG_FIXED_NEWSTYLE | HANDSHAKE_FLAGS.NBD_FLAG_NO_ZEROES;
export const KNOWN_CLIENT_FLAGS = CLIENT_FLAGS.NBD_FLAG_C_FIXED_NEWSTYLE | CLIENT_FLAGS.NBD_FLAG_C_NO_ZEROES;

// ── pure helpers (also used by tests) ──────────────────────────────────

export interface ExportLookup {
  /** The name as the client asked for it ("" included). */
  readonly name: string;
  readonly export: ExportDescriptor | null;
  /** The hook failed (for the log); the option gets NBD_ERR_EXPORT_OPEN. */
  readonly error?: string;
}

/** A static export by requested name ("" ⇒ the static default export). */
export function staticExport(server: Pick<HandshakeSettings, 'exports' | 'defaultExport'>, name: string): ExportDescriptor | undefined {
  const wanted = name === '' ? server.defaultExport : name;
  if (wanted === undefined) return undefined;
  return server.exports.find((e) => e.name === wanted);
}

/** Resolve a requested name to an export: a static one, else what this connection's last lookup found for that name. */
export function findExport(ctx: { readonly server: Pick<HandshakeSettings, 'exports' | 'defaultExport'>; readonly lookup?: ExportLookup | null }, name: string): ExportDescriptor | undefined {
  const found = staticExport(ctx.server, name);
  if (found !== undefined || !ctx.lookup || ctx.lookup.name !== name) return found;
  return ctx.lookup.export ?? undefined;
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

export function isTlsBlocked(ctx: HandshakeContext): boolean {
  return ctx.server.tlsPolicy === 'required' && !ctx.tls;
}

export function exportTlsBlocked(ctx: HandshakeContext, exp: ExportDescriptor | undefined): boolean {
  return !!exp?.tlsOnly && !ctx.tls && ctx.server.tlsPolicy !== 'off';
}

/**
 * Every option event, by name: what `assertEvent` narrows to where any option
 * will do (a list of names costs string comparisons; the `opt.*` descriptor
 * would split both strings on every call, and handshakes must stay cheap).
 */
export const OPTION_EVENTS = [
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
export const NAMED_OPTIONS = ['opt.exportName', 'opt.info', 'opt.go', 'opt.listMetaContext', 'opt.setMetaContext'] as const;
/** Options that take no data (option.unexpected-data). */
export const DATALESS_OPTIONS = ['opt.list', 'opt.starttls', 'opt.structuredReply', 'opt.extendedHeaders'] as const;
/** Options answered with a bare ACK. */
export const ACKED_OPTIONS = ['opt.abort', 'opt.starttls', 'opt.structuredReply', 'opt.extendedHeaders'] as const;

export function sendOf(frame: ReturnType<typeof encodeAck>, label: string): HandshakeEmitted {
  return { type: 'send', frame, label };
}

// ── what the client is told when an option is refused ─────────────────

/** NBD_OPT_GO, or "option 42" for a code without a name. */
export function optionLabel(code: number): string {
  const name = optName(code);
  return name.startsWith('NBD_OPT_') ? name : `option ${code}`;
}


export function requestedName(frame: OptionFrame): string {
  return 'name' in frame ? frame.name : '';
}

/** The frame's problem as the decoder worded it (bad lengths, bad strings, too big). */
export const problemOf = (f: OptionFrame) => ({ option: optionLabel(f.code), problem: f.problem?.message ?? 'malformed option data' });

/**
 * The details each option error's message needs, from the context and the
 * refused option. The messages themselves, and the reply type each is sent
 * with, are the catalogue's (the spec allows a UTF-8 message as an error
 * reply's data; clients show it: qemu prints "server reported: …", libnbd
 * logs it: option.error-text); the encoder caps the text at 4096 bytes.
 */
export const OPTION_ERROR_DETAILS: { readonly [C in OptionErrorCode]: (ctx: HandshakeContext, f: OptionFrame) => DetailsArg<C> } = {
  'option.shutting-down': () => [],
  'handshake.fixed-newstyle-required': (_ctx, f) => [{ option: optionLabel(f.code) }],
  'tls.mode-forcedtls/option': (_ctx, f) => [{ option: optionLabel(f.code) }],
  'option.too-big': (_ctx, f) => [problemOf(f)],
  NBD_ERR_BAD_OPTION_DATA: (_ctx, f) => [problemOf(f)],
  'option.unexpected-data': (_ctx, f) => [{ option: optionLabel(f.code), length: f.length }],
  'tls.starttls-repeat': () => [],
  'tls.mode-notls': () => [],
  'option.export-unknown': (ctx, f) => [{ name: requestedName(f), hasDefault: ctx.server.defaultExport !== undefined || ctx.server.resolveExports }],
  NBD_ERR_EXPORT_OPEN: (_ctx, f) => [{ name: requestedName(f) }],
  NBD_ERR_EXPORT_LIST: () => [],
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
export function errorReply<C extends OptionErrorCode>(code: C, ctx: HandshakeContext, frame: OptionFrame): HandshakeEmitted {
  const error = ERRORS[code].wire;
  const message = messageOf(code, ...OPTION_ERROR_DETAILS[code](ctx, frame));
  return { type: 'send', frame: encodeOptionError(frame.code, error, message), label: `${error}: ${message}`, code };
}

/** What a hard close names: a catalogue entry with a fixed message. */
export type RejectCode = Extract<CloseCode, FixedCode>;

/**
 * A hard close: the catalogue code, and one reason: its text (rule ID first), then what triggered it.
 * A decoder failure closes with the decoder's own code.
 */
export function rejection(event: HandshakeEvent | { type: string }, rejectCode: RejectCode): { code: CloseCode; reason: string } {
  const e = event as HandshakeEvent;
  // An option whose data was refused says why (the decoder's or parser's words: "string of 5000 bytes exceeds 4096").
  const problem = e.type.startsWith('opt.') ? (e as { frame?: { problem?: { message: string } } }).frame?.problem?.message : undefined;
  const detail = e.type.startsWith('opt.')
    ? problem
      ? `: ${problem} (${e.type})`
      : ` (${e.type})`
    : e.type === 'wire.fatal'
      ? `: ${e.message}`
      : e.type === 'timer.handshake'
        ? `: not finished within ${e.ms} ms`
        : '';
  const code: CloseCode = e.type === 'wire.fatal' && e.code !== undefined ? e.code : rejectCode;
  return { code, reason: textOf(rejectCode) + detail };
}

/** NBD_OPT_SET_META_CONTEXT's selection for `exp` (tied to its name: option.meta-context-export) and its replies. */
export function metaContextSelection(
  frame: { readonly code: number; readonly queries: readonly string[] },
  exp: ExportDescriptor,
): { metaContexts: NonNullable<HandshakeContext['metaContexts']>; replies: HandshakeEmitted[] } {
  const contexts = matchMetaContexts(frame.queries, 'set').map((name) => ({ id: BASE_ALLOCATION_ID, name }));
  const replies = contexts.map((c) => sendOf(encodeMetaContext(frame.code, c.id, c.name), `NBD_REP_META_CONTEXT(${c.name})`));
  replies.push(sendOf(encodeAck(frame.code), 'NBD_REP_ACK'));
  return { metaContexts: { exportName: exp.name, contexts }, replies };
}

/** NBD_OPT_LIST_META_CONTEXT's replies (option.meta-context-reply: LIST replies carry context id 0; the spec: it SHOULD be 0). */
export function metaContextListReplies(frame: { readonly code: number; readonly queries: readonly string[] }): HandshakeEmitted[] {
  const out = matchMetaContexts(frame.queries, 'list').map((name) => sendOf(encodeMetaContext(frame.code, 0, name), `NBD_REP_META_CONTEXT(${name})`));
  out.push(sendOf(encodeAck(frame.code), 'NBD_REP_ACK'));
  return out;
}

/** Build the INFO/GO reply sequence (option.info-export, option.block-size-not-required, option.info-go-consistent). */
export function infoReplies(ctx: HandshakeContext, frame: InfoGoOption, exp: ExportDescriptor): HandshakeEmitted[] {
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

export function negotiatedFrom(ctx: HandshakeContext, exp: ExportDescriptor, viaExportName: boolean): Negotiated {
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
