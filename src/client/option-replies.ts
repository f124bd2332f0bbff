/**
 * Option replies (fixed newstyle), parsed strictly: the 20-byte header
 * (magic, the option code echoed, reply type, length), then the data as its
 * type says. What does not fit the spec becomes a deviation on the reply;
 * the reply is still returned with whatever could be read from it.
 */
import { FLAG, INFO, MAGIC, OPT, REP, SIZE, isRepError, repName } from '../protocol/constants.js';
import { deviation, hexOf, type Deviation } from './deviations.js';

/** What an NBD_REP_INFO carries. */
export type InfoDetail =
  | { readonly info: 'export'; readonly size: bigint; readonly flags: number }
  | { readonly info: 'name'; readonly name: string }
  | { readonly info: 'description'; readonly description: string }
  | { readonly info: 'blockSize'; readonly minimum: number; readonly preferred: number; readonly maximum: number }
  | { readonly info: 'unknown'; readonly code: number; readonly data: Buffer };

/** An option reply's data, decoded by its type. */
export type RepDetail =
  | { readonly kind: 'ack' }
  | { readonly kind: 'server'; readonly name: string; readonly description: string }
  | ({ readonly kind: 'info' } & { readonly detail: InfoDetail })
  | { readonly kind: 'metaContext'; readonly id: number; readonly name: string }
  | { readonly kind: 'error'; readonly message: string }
  | { readonly kind: 'unknown' }
  | { readonly kind: 'malformed' };

/** One option reply as received. */
export interface OptionReply {
  /** The option code the reply names (should echo the one sent). */
  readonly option: number;
  /** NBD_REP_* value. */
  readonly type: number;
  /** `NBD_REP_ACK`, `NBD_REP_ERR_UNSUP`, … or `UNKNOWN(0x…)`. */
  readonly typeName: string;
  readonly data: Buffer;
  /** The 20 header bytes as received. */
  readonly header: Buffer;
  readonly detail: RepDetail;
  /** ACK or an error: the last reply to this option. */
  readonly final: boolean;
  /** What was wrong with this reply. */
  readonly deviations: Deviation[];
}

const strict = new TextDecoder('utf-8', { fatal: true });

/** A string of the server's: UTF-8, no NUL, at most 4096 bytes (general.string-limits). */
function text(bytes: Buffer, what: string, devs: Deviation[]): string {
  if (bytes.length > SIZE.MAX_STRING) devs.push(deviation('general.string-limits', `${what} is ${bytes.length} bytes, longer than 4096`, bytes.subarray(0, 64)));
  try {
    const s = strict.decode(bytes);
    if (s.includes('\0')) devs.push(deviation('general.string-limits', `${what} contains NUL`, bytes));
    return s;
  } catch {
    devs.push(deviation('general.string-limits', `${what} is not valid UTF-8`, bytes));
    return bytes.toString('utf8');
  }
}

/** Which options each non-final reply type may answer. */
const ALLOWED_FOR: ReadonlyMap<number, readonly number[]> = new Map([
  [REP.NBD_REP_SERVER, [OPT.NBD_OPT_LIST]],
  [REP.NBD_REP_INFO, [OPT.NBD_OPT_INFO, OPT.NBD_OPT_GO]],
  [REP.NBD_REP_META_CONTEXT, [OPT.NBD_OPT_LIST_META_CONTEXT, OPT.NBD_OPT_SET_META_CONTEXT]],
]);

/** The fixed 20-byte header: magic (checked by the caller), option, type, length. */
export function replyHeaderFields(header: Buffer): { magicOk: boolean; option: number; type: number; length: number } {
  return {
    magicOk: header.readBigUInt64BE(0) === MAGIC.NBD_REP_MAGIC,
    option: header.readUInt32BE(8),
    type: header.readUInt32BE(12),
    length: header.readUInt32BE(16),
  };
}

function infoDetail(data: Buffer, devs: Deviation[]): InfoDetail | undefined {
  if (data.length < 2) {
    devs.push(deviation('peer.option-reply-data', `NBD_REP_INFO of ${data.length} bytes has no info type`, data));
    return undefined;
  }
  const code = data.readUInt16BE(0);
  const exact = (n: number, what: string): boolean => {
    if (data.length === n) return true;
    devs.push(deviation('peer.option-reply-data', `${what} of ${data.length} bytes, expected ${n}`, data));
    return false;
  };
  switch (code) {
    case INFO.NBD_INFO_EXPORT:
      if (!exact(12, 'NBD_INFO_EXPORT')) return data.length >= 12 ? { info: 'export', size: data.readBigUInt64BE(2), flags: data.readUInt16BE(10) } : undefined;
      return { info: 'export', size: data.readBigUInt64BE(2), flags: data.readUInt16BE(10) };
    case INFO.NBD_INFO_NAME:
      return { info: 'name', name: text(data.subarray(2), 'NBD_INFO_NAME', devs) };
    case INFO.NBD_INFO_DESCRIPTION:
      return { info: 'description', description: text(data.subarray(2), 'NBD_INFO_DESCRIPTION', devs) };
    case INFO.NBD_INFO_BLOCK_SIZE:
      if (data.length < 14) return void exact(14, 'NBD_INFO_BLOCK_SIZE');
      exact(14, 'NBD_INFO_BLOCK_SIZE');
      return { info: 'blockSize', minimum: data.readUInt32BE(2), preferred: data.readUInt32BE(6), maximum: data.readUInt32BE(10) };
    default:
      return { info: 'unknown', code, data: data.subarray(2) };
  }
}

function detailOf(type: number, data: Buffer, devs: Deviation[]): RepDetail {
  if (isRepError(type)) return { kind: 'error', message: text(data, `${repName(type)} message`, devs) };
  switch (type) {
    case REP.NBD_REP_ACK:
      if (data.length !== 0) devs.push(deviation('peer.option-reply-data', `NBD_REP_ACK with ${data.length} bytes of data`, data));
      return { kind: 'ack' };
    case REP.NBD_REP_SERVER: {
      const n = data.length >= 4 ? data.readUInt32BE(0) : -1;
      if (n < 0 || n > data.length - 4) {
        devs.push(deviation('peer.option-reply-data', `NBD_REP_SERVER name length does not fit its ${data.length} bytes`, data));
        return { kind: 'malformed' };
      }
      return { kind: 'server', name: text(data.subarray(4, 4 + n), 'export name', devs), description: text(data.subarray(4 + n), 'export description', devs) };
    }
    case REP.NBD_REP_INFO: {
      const detail = infoDetail(data, devs);
      return detail ? { kind: 'info', detail } : { kind: 'malformed' };
    }
    case REP.NBD_REP_META_CONTEXT:
      if (data.length < 5) {
        devs.push(deviation('peer.option-reply-data', `NBD_REP_META_CONTEXT of ${data.length} bytes has no name`, data));
        return { kind: 'malformed' };
      }
      return { kind: 'metaContext', id: data.readUInt32BE(0), name: text(data.subarray(4), 'meta context name', devs) };
    default:
      devs.push(deviation('peer.option-reply-type', `unknown option reply type 0x${type.toString(16)} without the error bit`, data));
      return { kind: 'unknown' };
  }
}

/** Parse one reply to option `sent` from its header and data. */
export function parseOptionReply(sent: number, header: Buffer, data: Buffer): OptionReply {
  const devs: Deviation[] = [];
  const h = replyHeaderFields(header);
  if (!h.magicOk) devs.push(deviation('option.reply-header', `option reply magic is 0x${header.readBigUInt64BE(0).toString(16)}`, header));
  if (h.option !== sent) devs.push(deviation('option.reply-header', `reply names option ${h.option}, the option sent was ${sent}`, header));
  const allowed = ALLOWED_FOR.get(h.type);
  if (allowed && !allowed.includes(sent)) devs.push(deviation('peer.option-reply-type', `${repName(h.type)} in answer to option ${sent}`, header));
  const detail = detailOf(h.type, data, devs);
  return {
    option: h.option,
    type: h.type,
    typeName: repName(h.type),
    data,
    header,
    detail,
    final: h.type === REP.NBD_REP_ACK || isRepError(h.type),
    deviations: devs,
  };
}

/** Checks across a whole INFO / GO answer: NBD_INFO_EXPORT before a successful ACK. */
export function checkInfoAnswer(replies: readonly OptionReply[]): Deviation[] {
  const last = replies.at(-1);
  if (!last || last.type !== REP.NBD_REP_ACK) return [];
  const hasExport = replies.some((r) => r.detail.kind === 'info' && r.detail.detail.info === 'export');
  return hasExport ? [] : [deviation('option.info-export', 'NBD_REP_ACK without an NBD_INFO_EXPORT before it', last.header)];
}

/** Checks across a META_CONTEXT answer: LIST ids are 0 is not required, SET ids must be unique. */
export function checkMetaContextAnswer(set: boolean, replies: readonly OptionReply[]): Deviation[] {
  const ids = new Map<number, string>();
  const out: Deviation[] = [];
  for (const r of replies) {
    if (r.detail.kind !== 'metaContext' || !set) continue;
    const seen = ids.get(r.detail.id);
    if (seen !== undefined) out.push(deviation('option.meta-context-reply', `context id ${r.detail.id} given to both ${seen} and ${r.detail.name}`, r.data));
    ids.set(r.detail.id, r.detail.name);
  }
  return out;
}

/** Transmission flags that contradict the spec or what was negotiated (`transmission.flags-advertised`). */
export function checkTransmissionFlags(flags: number, mode: 'simple' | 'structured' | 'extended', evidence: Buffer): Deviation[] {
  const out: Deviation[] = [];
  const bad = (why: string) => out.push(deviation('transmission.flags-advertised', `transmission flags 0x${flags.toString(16)}: ${why}`, evidence));
  if (!(flags & FLAG.NBD_FLAG_HAS_FLAGS)) bad('NBD_FLAG_HAS_FLAGS is not set');
  if (flags & FLAG.NBD_FLAG_SEND_DF && mode === 'simple') bad('NBD_FLAG_SEND_DF without structured replies');
  if (flags & FLAG.NBD_FLAG_SEND_FAST_ZERO && !(flags & FLAG.NBD_FLAG_SEND_WRITE_ZEROES)) bad('NBD_FLAG_SEND_FAST_ZERO without NBD_FLAG_SEND_WRITE_ZEROES');
  if (flags & FLAG.NBD_FLAG_BLOCK_STATUS_PAYLOAD && mode !== 'extended') bad('NBD_FLAG_BLOCK_STATUS_PAYLOAD without extended headers');
  return out;
}

const pow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;

/** Block size constraints that do not fit together (`option.block-size-constraints`). */
export function checkBlockSizes(b: { minimum: number; preferred: number; maximum: number }, evidence: Buffer): Deviation[] {
  const problems: string[] = [];
  if (!pow2(b.minimum) || b.minimum > 65536) problems.push(`minimum ${b.minimum} is not a power of 2 up to 64 KiB`);
  if (!pow2(b.preferred) || b.preferred < Math.max(b.minimum, 512)) problems.push(`preferred ${b.preferred} is not a power of 2 of at least max(minimum, 512)`);
  if (b.maximum < b.preferred) problems.push(`maximum ${b.maximum} is less than preferred ${b.preferred}`);
  return problems.map((p) => deviation('option.block-size-constraints', `NBD_INFO_BLOCK_SIZE: ${p}`, evidence));
}

/** Render a reply for an error message. */
export function describeReply(r: OptionReply): string {
  const msg = r.detail.kind === 'error' && r.detail.message ? `: ${r.detail.message}` : '';
  return `${r.typeName}${msg} (${hexOf(r.header)})`;
}
