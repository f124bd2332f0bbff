/**
 * The error catalogue: every way nbd-engine refuses a request, refuses an
 * option, drops or ends a connection, or throws at the application, each
 * under one stable code, with its message and its wire status.
 *
 * Codes: an entry that enforces a rule of docs/rules.md is coded by the
 * rule's ID (`transmission.write-read-only`); when one rule is enforced in
 * several situations, each has its own entry, coded `<rule ID>/<situation>`
 * (`option.structured-reply/repeat`). Everything else is `NBD_ERR_*` (the
 * decoder's and the API's errors) or `NBD_CLOSED_*` (orderly ends that no
 * rule governs).
 *
 * Wire status: what the peer sees, named as in ./constants.ts (the numbers
 * come from there, never from here): an errno in a transmission error reply
 * (`NBD_EINVAL`…), an option error reply (`NBD_REP_ERR_*`), `disconnect`
 * (the connection is dropped without a reply), `close` (the connection
 * ends in order) or `thrown` (an `NbdError` thrown to the application;
 * nothing goes on the wire).
 *
 * Messages: a fixed text or a template of the details it needs. Transmission
 * refusals and reject reasons are sent or logged as `textOf` (the rule ID,
 * `: `, the message); option error replies carry the bare `messageOf` (the
 * client's user reads it: option.error-text). The message of a `thrown` entry
 * says what the error means; the thrower words the error's own text.
 *
 * docs/design.md ("One error catalogue") lists this table; a test keeps the
 * two equal and checks that every entry is used.
 */
import { ERRNO, REP, type NbdErrnoName, type RepErrName } from './constants.js';

export type WireStatus = NbdErrnoName | RepErrName | 'disconnect' | 'close' | 'thrown';

/** A message: fixed, or a template of the details it needs. */
type Message = string | ((details: never) => string);

export interface CatalogueEntry {
  readonly wire: WireStatus;
  readonly message: Message;
}

const entry = <W extends WireStatus, M extends Message>(wire: W, message: M): { readonly wire: W; readonly message: M } =>
  Object.freeze({ wire, message });

/** The command flags a client may only use once their transmission flag was advertised. */
export type AdvertisedFlag = 'FUA' | 'DF' | 'FAST_ZERO';

/** The catalogue, in the order docs/design.md lists it. */
export const ERRORS = Object.freeze({
  // ── transmission: a request refused with an errno, the connection goes on ──
  // (in the order the transmission machine checks them: nbdkit's)
  'transmission.write-read-only': entry('NBD_EPERM', 'write to a read-only export'),
  'transmission.write-out-of-bounds': entry('NBD_ENOSPC', 'write past the end of the export'),
  'transmission.unknown-command': entry('NBD_EINVAL', 'unknown command'),
  'transmission.payload-too-large': entry('NBD_EINVAL', 'payload over the size limit (consumed)'),
  'transmission.payload-unexpected': entry('NBD_EINVAL', 'payload on a command without one (consumed)'),
  'transmission.unknown-flag': entry('NBD_EINVAL', 'unknown command flag'),
  'transmission.flag-not-for-command': entry('NBD_EINVAL', 'flag not valid for this command'),
  'transmission.flag-not-advertised': entry('NBD_EINVAL', (d: { flag: AdvertisedFlag }) => `${d.flag} without SEND_${d.flag}`),
  'transmission.command-not-advertised': entry('NBD_EINVAL', 'command not advertised'),
  'transmission.block-status-needs-context': entry('NBD_EINVAL', 'BLOCK_STATUS without a meta context'),
  'transmission.flush-with-range': entry('NBD_EINVAL', 'FLUSH with offset or length'),
  'transmission.out-of-bounds': entry('NBD_EINVAL', 'request past the end of the export'),
  'transmission.misaligned-request': entry('NBD_EINVAL', 'not aligned to the minimum block size'),
  'transmission.read-too-large': entry('NBD_EINVAL', 'read larger than the maximum payload'),
  'reply.df-one-chunk': entry('NBD_EOVERFLOW', 'DF read larger than one chunk may carry (the advertised maximum payload)'),
  'transmission.block-status-zero-length': entry('NBD_EINVAL', 'BLOCK_STATUS of length 0 (no extent can describe it)'),
  'transmission.shutdown-drains': entry('NBD_ESHUTDOWN', 'server is shutting down'),

  // ── option haggling: an option refused with an error reply, the connection goes on ──
  // `option` is the option's name (NBD_OPT_GO, or "option 42" for a code without one).
  'option.shutting-down': entry('NBD_REP_ERR_SHUTDOWN', 'server is shutting down'),
  'handshake.fixed-newstyle-required': entry(
    'NBD_REP_ERR_INVALID',
    (d: { option: string }) => `${d.option} needs the fixed newstyle handshake (the client did not set NBD_FLAG_C_FIXED_NEWSTYLE)`,
  ),
  'tls.mode-forcedtls/option': entry('NBD_REP_ERR_TLS_REQD', (d: { option: string }) => `TLS is required: send NBD_OPT_STARTTLS before ${d.option}`),
  'option.too-big': entry('NBD_REP_ERR_TOO_BIG', (d: { option: string; problem: string }) => `${d.option}: ${d.problem}`),
  // Option data the decoder could not parse: lengths that do not add up (option.length-mismatch) or a bad string (general.string-limits).
  NBD_ERR_BAD_OPTION_DATA: entry('NBD_REP_ERR_INVALID', (d: { option: string; problem: string }) => `${d.option}: ${d.problem}`),
  'option.unexpected-data': entry('NBD_REP_ERR_INVALID', (d: { option: string; length: number }) => `${d.option} takes no data (got ${d.length} bytes)`),
  'tls.starttls-repeat': entry('NBD_REP_ERR_INVALID', 'TLS is already active'),
  'tls.mode-notls': entry('NBD_REP_ERR_POLICY', 'TLS is not enabled on this server'),
  'option.export-unknown': entry('NBD_REP_ERR_UNKNOWN', (d: { name: string; hasDefault: boolean }) =>
    d.name === '' && d.hasDefault === false ? 'export "" not present (this server has no default export)' : `export ${quoteName(d.name)} not present`,
  ),
  'tls.mode-selectivetls': entry('NBD_REP_ERR_TLS_REQD', (d: { name: string }) => `export ${quoteName(d.name)} requires TLS`),
  'option.structured-reply/disabled': entry('NBD_REP_ERR_UNSUP', 'structured replies are not enabled on this server'),
  'option.structured-reply/repeat': entry('NBD_REP_ERR_INVALID', 'structured replies are already negotiated'),
  'option.structured-reply/extended-headers': entry('NBD_REP_ERR_EXT_HEADER_REQD', 'extended headers are already negotiated, and they include structured replies'),
  'option.extended-headers/disabled': entry('NBD_REP_ERR_UNSUP', 'extended headers are not enabled on this server'),
  'option.extended-headers/repeat': entry('NBD_REP_ERR_INVALID', 'extended headers are already negotiated'),
  'option.meta-context-needs-structured': entry('NBD_REP_ERR_INVALID', 'NBD_OPT_SET_META_CONTEXT needs structured replies (or extended headers) negotiated first'),
  'option.unknown-code': entry('NBD_REP_ERR_UNSUP', (d: { option: string }) => `${d.option} is not supported`),
  // A server hook failed (openExport, a computed default export, listExports); the server's log line says why, the client is not told.
  NBD_ERR_EXPORT_OPEN: entry('NBD_REP_ERR_UNKNOWN', (d: { name: string }) => `export ${quoteName(d.name)} could not be opened (see the server's log)`),
  NBD_ERR_EXPORT_LIST: entry('NBD_REP_ERR_PLATFORM', "the export list could not be made (see the server's log)"),

  // ── the connection is dropped without a reply ──
  'handshake.client-flags-unknown': entry('disconnect', 'unknown client flags'),
  'option.too-many-options': entry('disconnect', 'too many options (DoS guard)'),
  'option.export-name-terminates/malformed': entry('disconnect', 'malformed EXPORT_NAME'),
  'option.export-name-terminates/too-long': entry('disconnect', 'EXPORT_NAME too long'),
  'option.export-name-terminates/unknown-export': entry('disconnect', 'EXPORT_NAME for an unknown export'),
  'option.export-name-terminates/tls-only': entry('disconnect', 'EXPORT_NAME for a TLS-only export without TLS'),
  'option.export-name-terminates/shutting-down': entry('disconnect', 'EXPORT_NAME while shutting down'),
  'option.export-name-terminates/open-failed': entry('disconnect', 'EXPORT_NAME for an export that could not be opened'),
  'tls.mode-forcedtls/export-name': entry('disconnect', 'EXPORT_NAME before TLS in FORCEDTLS mode'),
  'option.extended-headers/export-name': entry('disconnect', 'EXPORT_NAME after EXTENDED_HEADERS'),
  'tls.handshake-failed': entry('disconnect', 'TLS handshake failed'),
  NBD_ERR_HANDSHAKE_TIMEOUT: entry('disconnect', 'handshake timeout'),
  // The transport's own drops (src/transport): no machine emits these.
  'tls.plaintext-after-starttls': entry('disconnect', 'plaintext pipelined behind STARTTLS'),
  NBD_ERR_TLS_NOT_CONFIGURED: entry('disconnect', 'STARTTLS accepted but no TLS credentials are configured'),
  NBD_ERR_INTERNAL: entry('disconnect', 'internal error (the log line says what failed)'),
  // The byte stream cannot be followed. The decoder says why (the codes below); this one is for a report without a code.
  NBD_ERR_PROTOCOL: entry('disconnect', 'protocol violation'),
  NBD_ERR_BAD_OPTION_MAGIC: entry('disconnect', (d: { magic: string }) => `bad option magic 0x${d.magic}`),
  NBD_ERR_BAD_REQUEST_MAGIC: entry('disconnect', (d: { magic: string }) => `bad request magic 0x${d.magic}`),
  NBD_ERR_OPTION_TOO_LONG: entry('disconnect', (d: { option: number; length: number; limit: number }) => `option ${d.option} declares ${d.length} bytes of data (limit ${d.limit})`),
  NBD_ERR_PAYLOAD_TOO_LONG: entry('disconnect', (d: { length: number | bigint; limit: number }) => `payload of ${d.length} bytes exceeds ${d.limit}`),
  NBD_ERR_BUFFER_LIMIT: entry('disconnect', (d: { limit: number }) => `more than ${d.limit} bytes buffered`),

  // ── the connection ends in order ──
  'option.abort-ack': entry('close', 'client sent NBD_OPT_ABORT'),
  'transmission.disc-drains': entry('close', 'NBD_CMD_DISC'),
  NBD_CLOSED_BY_CLIENT: entry('close', 'client closed'),
  NBD_CLOSED_SOCKET: entry('close', 'socket closed'),
  NBD_CLOSED_SHUTDOWN: entry('close', 'server shutdown'),
  NBD_CLOSED_IDLE_TIMEOUT: entry('close', 'idle timeout'),

  // ── thrown to the application (NbdError), never on the wire ──
  NBD_ERR_CONFIG: entry('thrown', 'a server, export, limit, TLS or listen option is invalid (the message names it)'),
  NBD_ERR_CLOSED: entry('thrown', 'the server is closed'),
  NBD_ERR_ALREADY_ANSWERED: entry('thrown', 'a request was answered twice'),
  NBD_ERR_BAD_REPLY: entry('thrown', 'a reply does not fit its request'),
  NBD_ERR_PAYLOAD_RELEASED: entry('thrown', 'a WRITE payload was read after the server released it'),
});

type Catalogue = typeof ERRORS;
export type ErrorCode = keyof Catalogue;
/** The codes whose wire status is one of `W`. */
export type CodeWith<W extends WireStatus> = { [C in ErrorCode]: Catalogue[C]['wire'] extends W ? C : never }[ErrorCode];
/** Transmission refusals: an errno in the reply. */
export type RefusalCode = CodeWith<NbdErrnoName>;
/** Option error replies. */
export type OptionErrorCode = CodeWith<RepErrName>;
/** Why a connection ended: dropped or closed in order. */
export type CloseCode = CodeWith<'disconnect' | 'close'>;
/** The drops the transport decides itself (every other close code comes from a machine or the decoder). */
export type TransportCloseCode = 'tls.plaintext-after-starttls' | 'NBD_ERR_TLS_NOT_CONFIGURED' | 'NBD_ERR_INTERNAL';
/** Errors thrown to the application. */
export type ApiErrorCode = CodeWith<'thrown'>;

/** The codes whose message is fixed (no details to fill in). */
export type FixedCode = { [C in ErrorCode]: Catalogue[C]['message'] extends string ? C : never }[ErrorCode];

/** The details an entry's template needs: `[details]`, or nothing for a fixed message. */
export type DetailsArg<C extends ErrorCode> = Catalogue[C]['message'] extends (details: infer D) => string ? [details: D] : [];

const CODES: ReadonlySet<string> = new Set(Object.keys(ERRORS));

export function isErrorCode(code: string): code is ErrorCode {
  return CODES.has(code);
}

/** The message of an entry, its template filled in. */
export function messageOf<C extends Exclude<ErrorCode, ApiErrorCode>>(code: C, ...details: DetailsArg<C>): string {
  const m = ERRORS[code].message as Message;
  return typeof m === 'string' ? m : (m as (d: unknown) => string)(details[0]);
}

/** The rule of docs/rules.md an entry enforces (its code up to a `/`), or undefined for `NBD_*` codes. */
export function ruleOf(code: ErrorCode): string | undefined {
  if (code.startsWith('NBD_')) return undefined;
  const slash = code.indexOf('/');
  return slash < 0 ? code : code.slice(0, slash);
}

/**
 * The text refusals and hard disconnects carry: the rule ID first (`rule: message`),
 * or the bare message for `NBD_*` codes. (Option error replies and orderly closes
 * carry the bare `messageOf`.)
 */
export function textOf<C extends Exclude<ErrorCode, ApiErrorCode>>(code: C, ...details: DetailsArg<C>): string {
  const rule = ruleOf(code);
  const message = messageOf(code, ...details);
  return rule === undefined ? message : `${rule}: ${message}`;
}

/** The number an entry puts on the wire (the errno or the option reply type), from ./constants.ts; undefined for the others. */
export function wireValue(code: ErrorCode): number | undefined {
  const wire: WireStatus = ERRORS[code].wire;
  if (wire in ERRNO) return ERRNO[wire as NbdErrnoName];
  if (wire in REP) return REP[wire as RepErrName];
  return undefined;
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
