/**
 * The transmission phase's request rules: the table every request is
 * validated against, and its compiler.
 *
 * The spec's server rules (docs/rules.md, the `transmission.*` rules,
 * checked in nbdkit's order) are one table: COMMANDS (what each command
 * allows and needs) and REFUSALS (the refusals in the order they are
 * checked). `checkFor` compiles them once per negotiated export into the
 * function the transmission machine's `validate` action calls on every
 * request (src/machines/transmission.ts).
 */
import { CMD, CMD_FLAG, FLAG, SIZE } from '../protocol/constants.js';
import { textOf, wireValue, type DetailsArg, type RefusalCode } from '../protocol/errors.js';
import type { RequestFrame } from '../protocol/frames.js';

/** What the checks need to know about the negotiated export (the transmission context carries these fields). */
export interface CheckedExport {
  readonly size: number;
  readonly flags: number;
  readonly minimumBlock: number;
  /** The export's maximum payload size, as NBD_INFO_BLOCK_SIZE advertises it (≤ maxPayload): no reply chunk carries more data. */
  readonly maximumBlock: number;
  readonly maxPayload: number;
  readonly structuredReplies: boolean;
  readonly extendedHeaders: boolean;
  readonly metaContextIds: readonly number[];
}

/**
 * What the transmission phase needs to know about each command, one row per
 * command of the protocol's CMD table (null: not served). Every per-command
 * check of the refusal order below reads this table and nothing else.
 */
export interface CommandRule {
  /** Command flags valid on it (PAYLOAD_LEN aside: it is a property of the header, see `flags` below). */
  readonly flags: number;
  /** Its offset/length address the export (bounds and alignment are checked). */
  readonly ranged: boolean;
  /** It changes the export (EPERM on a read-only export). */
  readonly writes: boolean;
  /** It stores data, so past the end is ENOSPC rather than EINVAL (as nbdkit). */
  readonly writesData: boolean;
  /** It carries a payload (anything else with one is refused, the payload consumed). */
  readonly payload: boolean;
  /** The transmission flag that must have been advertised for it (0: none). */
  readonly needs: number;
  /** It is answered only with structured replies and a selected meta context. */
  readonly needsMetaContext: boolean;
  /** Its offset and length must both be 0. */
  readonly unranged: boolean;
  /** Its reply carries `length` bytes, so `length` is capped by the payload limit. */
  readonly readsData: boolean;
  /** Its reply must describe at least one byte of the range, so a length of 0 is refused (BLOCK_STATUS: every extent has a length ≥ 1, none past the request). */
  readonly needsLength: boolean;
}

const FUA = CMD_FLAG.NBD_CMD_FLAG_FUA;
const row = (over: Partial<CommandRule>): CommandRule => ({
  // FUA may be set on any command (the spec lets the server ignore it where it means nothing).
  flags: FUA,
  ranged: false,
  writes: false,
  writesData: false,
  payload: false,
  needs: 0,
  needsMetaContext: false,
  unranged: false,
  readsData: false,
  needsLength: false,
  ...over,
});

/** The per-command table, keyed by the names of CMD so a new command cannot be left out. */
export const COMMANDS: { readonly [K in keyof typeof CMD]: CommandRule | null } = {
  NBD_CMD_READ: row({ flags: FUA | CMD_FLAG.NBD_CMD_FLAG_DF, ranged: true, readsData: true }),
  NBD_CMD_WRITE: row({ ranged: true, writes: true, writesData: true, payload: true }),
  NBD_CMD_DISC: row({}),
  NBD_CMD_FLUSH: row({ needs: FLAG.NBD_FLAG_SEND_FLUSH, unranged: true }),
  NBD_CMD_TRIM: row({ ranged: true, writes: true, needs: FLAG.NBD_FLAG_SEND_TRIM }),
  NBD_CMD_CACHE: row({ ranged: true, needs: FLAG.NBD_FLAG_SEND_CACHE }),
  NBD_CMD_WRITE_ZEROES: row({
    flags: FUA | CMD_FLAG.NBD_CMD_FLAG_NO_HOLE | CMD_FLAG.NBD_CMD_FLAG_FAST_ZERO,
    ranged: true,
    writes: true,
    writesData: true,
    needs: FLAG.NBD_FLAG_SEND_WRITE_ZEROES,
  }),
  NBD_CMD_BLOCK_STATUS: row({ flags: FUA | CMD_FLAG.NBD_CMD_FLAG_REQ_ONE, ranged: true, needsMetaContext: true, needsLength: true }),
  // An experimental extension we do not offer.
  NBD_CMD_RESIZE: null,
};

/** A refusal: its code in the error catalogue (the rule ID in docs/rules.md), the errno, and the message sent (rule ID first). */
export interface RequestRefusal {
  readonly code: RefusalCode;
  readonly errno: number;
  readonly message: string;
}

/** A refusal as the error catalogue (src/protocol/errors.ts) words it: errno and text come from there. */
const refusal = <C extends RefusalCode>(code: C, ...details: DetailsArg<C>): RequestRefusal =>
  Object.freeze({ code, errno: wireValue(code)!, message: textOf(code, ...details) });

/** Every refusal the transmission phase can give, by name. */
export const REFUSAL = {
  writeOnReadOnly: refusal('transmission.write-read-only'),
  writePastEnd: refusal('transmission.write-out-of-bounds'),
  commandUnknown: refusal('transmission.unknown-command'),
  payloadTooLarge: refusal('transmission.payload-too-large'),
  payloadUnexpected: refusal('transmission.payload-unexpected'),
  flagsUnknown: refusal('transmission.unknown-flag'),
  flagNotForCommand: refusal('transmission.flag-not-for-command'),
  fuaNotNegotiated: refusal('transmission.flag-not-advertised', { flag: 'FUA' }),
  dfNotNegotiated: refusal('transmission.flag-not-advertised', { flag: 'DF' }),
  fastZeroNotNegotiated: refusal('transmission.flag-not-advertised', { flag: 'FAST_ZERO' }),
  commandNotNegotiated: refusal('transmission.command-not-advertised'),
  blockStatusWithoutContext: refusal('transmission.block-status-needs-context'),
  flushWithRange: refusal('transmission.flush-with-range'),
  rangePastEnd: refusal('transmission.out-of-bounds'),
  misaligned: refusal('transmission.misaligned-request'),
  readTooLarge: refusal('transmission.read-too-large'),
  dfTooLarge: refusal('reply.df-one-chunk'),
  lengthZero: refusal('transmission.block-status-zero-length'),
} as const;

/**
 * The refusals in the order they are checked: nbdkit's order, read-only
 * first, then the range check for writes, so EPERM and ENOSPC win over the
 * EINVAL reasons after them. `checkFor` below implements exactly this order.
 */
export const REFUSALS: readonly RequestRefusal[] = Object.values(REFUSAL);

/** Command flags that need a transmission flag advertised, in the order they are checked. */
const FLAG_NEEDS: ReadonlyArray<{ flag: number; needs: number; refusal: RequestRefusal }> = [
  { flag: CMD_FLAG.NBD_CMD_FLAG_FUA, needs: FLAG.NBD_FLAG_SEND_FUA, refusal: REFUSAL.fuaNotNegotiated },
  { flag: CMD_FLAG.NBD_CMD_FLAG_DF, needs: FLAG.NBD_FLAG_SEND_DF, refusal: REFUSAL.dfNotNegotiated },
  { flag: CMD_FLAG.NBD_CMD_FLAG_FAST_ZERO, needs: FLAG.NBD_FLAG_SEND_FAST_ZERO, refusal: REFUSAL.fastZeroNotNegotiated },
];

/** Command flags valid on some command (PAYLOAD_LEN is added when extended headers are on). */
const KNOWN_FLAGS = Object.values(COMMANDS).reduce((bits, r) => bits | (r?.flags ?? 0), 0);

/** One command's rule with this export's answers filled in. */
interface CompiledRule {
  /** No refusal depends on the command and the export alone, and it is ranged: without flags, payload trouble or length over `maxLength`, in bounds and aligned, it is accepted. */
  readonly plain: boolean;
  /** The refusal that depends on the command and the export alone, before any frame check (read-only). */
  readonly first: RequestRefusal | null;
  readonly writesData: boolean;
  readonly payload: boolean;
  readonly flags: number;
  /** The refusal that depends on the command and the export alone, after the flag checks. */
  readonly later: RequestRefusal | null;
  readonly unranged: boolean;
  readonly ranged: boolean;
  readonly maxLength: number;
  /** With DF, `length` up to this is answered with one chunk; above it EOVERFLOW (reply.df-one-chunk). Infinity where DF is not valid. */
  readonly dfMaxLength: number;
  readonly needsLength: boolean;
}

export type RequestCheck = (frame: RequestFrame) => RequestRefusal | null;

const READ = CMD.NBD_CMD_READ;
const WRITE = CMD.NBD_CMD_WRITE;
const DF = CMD_FLAG.NBD_CMD_FLAG_DF;

/** The table compiled for one export: what `checkRequest` reads. */
interface CompiledTable {
  readonly size: number;
  readonly minimumBlock: number;
  /** A READ without flags or payload, in bounds and aligned, up to this length is accepted (-1: never without the full checks). */
  readonly plainReadMax: number;
  /** A WRITE without flags, in bounds and aligned, is accepted. */
  readonly plainWrite: boolean;
  /** Command flags known on this export (PAYLOAD_LEN only with extended headers). */
  readonly known: number;
  /** Command flags whose transmission flag was not advertised, and their refusals in order. */
  readonly unadvertised: number;
  readonly notAdvertised: typeof FLAG_NEEDS;
  /** Indexed by command code; undefined: not served. */
  readonly rules: ReadonlyArray<CompiledRule | undefined>;
}

/**
 * The checks in REFUSALS order, against a compiled table. The common case
 * (a READ or WRITE without flags, in bounds and aligned) is the first
 * expression; anything else takes the checks after it.
 */
function checkRequest(t: CompiledTable, r: RequestFrame): RequestRefusal | null {
  if (
    r.flags === 0 &&
    !r.huge &&
    !r.payloadDiscarded &&
    r.offset + r.length <= t.size &&
    (t.minimumBlock <= 1 || (r.offset % t.minimumBlock === 0 && r.length % t.minimumBlock === 0)) &&
    (r.type === READ ? r.payload === undefined && r.length <= t.plainReadMax : r.type === WRITE && t.plainWrite)
  )
    return null;
  const rule = t.rules[r.type];
  if (rule === undefined) return REFUSAL.commandUnknown;
  if (rule.first !== null) return rule.first;
  const past = r.huge || r.offset + r.length > t.size;
  if (past && rule.writesData) return REFUSAL.writePastEnd;
  if (r.payloadDiscarded) return REFUSAL.payloadTooLarge;
  if (r.payload !== undefined && !rule.payload) return REFUSAL.payloadUnexpected;
  const flags = r.flags;
  if (flags !== 0) {
    if ((flags & ~t.known) !== 0) return REFUSAL.flagsUnknown;
    if ((flags & ~rule.flags) !== 0) return REFUSAL.flagNotForCommand;
    if ((flags & t.unadvertised) !== 0) for (const f of t.notAdvertised) if ((flags & f.flag) !== 0) return f.refusal;
  }
  if (rule.later !== null) return rule.later;
  if (rule.unranged) return r.offset !== 0 || r.length !== 0 ? REFUSAL.flushWithRange : null;
  if (rule.ranged) {
    if (past) return REFUSAL.rangePastEnd;
    if (t.minimumBlock > 1 && (r.offset % t.minimumBlock !== 0 || r.length % t.minimumBlock !== 0)) return REFUSAL.misaligned;
  }
  if (r.length > rule.maxLength) return REFUSAL.readTooLarge;
  if ((flags & DF) !== 0 && r.length > rule.dfMaxLength) return REFUSAL.dfTooLarge;
  return r.length === 0 && rule.needsLength ? REFUSAL.lengthZero : null;
}

/** Tables compiled lately, by what they depend on (connections to one export share one); cleared when full. */
const compiled = new Map<string, RequestCheck>();
const COMPILED_KEPT = 64;

/**
 * The table for one negotiated export: a function giving the first refusal
 * in REFUSALS order for a request, or null when it is acceptable.
 * Everything that depends only on the export and the command is decided
 * once, so a plain READ or WRITE costs a few compares. A table is a pure
 * function of the fields of CheckedExport (of the meta contexts, only
 * whether there are any), so connections that negotiated the same get the
 * same one instead of compiling it again (~8 µs a connection).
 */
export function checkFor(c: CheckedExport): RequestCheck {
  const key = `${c.size}/${c.flags}/${c.minimumBlock}/${c.maximumBlock}/${c.maxPayload}/${+c.structuredReplies}${+c.extendedHeaders}${+(c.metaContextIds.length > 0)}`;
  let check = compiled.get(key);
  if (check === undefined) {
    if (compiled.size >= COMPILED_KEPT) compiled.clear();
    check = compile(c);
    compiled.set(key, check);
  }
  return check;
}

function compile(c: CheckedExport): RequestCheck {
  const advertised = (flag: number) => (c.flags & flag) !== 0;
  const rules: Array<CompiledRule | undefined> = [];
  for (const [name, code] of Object.entries(CMD) as Array<[keyof typeof CMD, number]>) {
    const r = COMMANDS[name];
    if (r === null) continue;
    const first = r.writes && advertised(FLAG.NBD_FLAG_READ_ONLY) ? REFUSAL.writeOnReadOnly : null;
    const later =
      r.needs !== 0 && !advertised(r.needs)
        ? REFUSAL.commandNotNegotiated
        : r.needsMetaContext && (!c.structuredReplies || c.metaContextIds.length === 0)
          ? REFUSAL.blockStatusWithoutContext
          : null;
    rules[code] = {
      plain: first === null && later === null && r.ranged,
      first,
      writesData: r.writesData,
      payload: r.payload,
      // PAYLOAD_LEN, once known (extended headers), is valid on any command: the payload itself is checked.
      flags: r.flags | CMD_FLAG.NBD_CMD_FLAG_PAYLOAD_LEN,
      later,
      unranged: r.unranged,
      ranged: r.ranged,
      maxLength: r.readsData ? c.maxPayload : Infinity,
      // One chunk carries at most the advertised maximum (reply.structured-chunks), but DF reads of 64 KiB must work.
      dfMaxLength: (r.flags & DF) !== 0 ? Math.max(c.maximumBlock, SIZE.DF_UNFRAGMENTED) : Infinity,
      needsLength: r.needsLength,
    };
  }
  const notAdvertised = FLAG_NEEDS.filter((f) => !advertised(f.needs));
  let unadvertised = 0;
  for (const f of notAdvertised) unadvertised |= f.flag;
  // The common case, read off the compiled rows (a row that is not plain here leaves it to the full checks).
  const read = rules[READ] as CompiledRule;
  const write = rules[WRITE] as CompiledRule;
  const table: CompiledTable = {
    size: c.size,
    minimumBlock: c.minimumBlock,
    plainReadMax: read.plain && !read.payload ? read.maxLength : -1,
    plainWrite: write.plain && write.payload && write.maxLength === Infinity,
    known: KNOWN_FLAGS | (c.extendedHeaders ? CMD_FLAG.NBD_CMD_FLAG_PAYLOAD_LEN : 0),
    unadvertised,
    notAdvertised,
    rules,
  };
  return (r) => checkRequest(table, r);
}

/** transmission.shutdown-drains: what anything new gets while draining (not one of the checks above). */
export const SHUTDOWN = refusal('transmission.shutdown-drains');
