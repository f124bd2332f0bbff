/**
 * Every number the NBD protocol puts on the wire, as `as const` tables.
 *
 * Names and values follow the spec (NetworkBlockDevice/nbd doc/proto.md,
 * its "Values" section and the message layouts). Reverse lookups (code →
 * name) are derived from the tables, never written by hand.
 */

/** Build a code → name map from a name → code table. */
function reverse<T extends Record<string, number | bigint>>(table: T): ReadonlyMap<T[keyof T], keyof T & string> {
  const map = new Map<T[keyof T], keyof T & string>();
  for (const [name, value] of Object.entries(table)) map.set(value as T[keyof T], name as keyof T & string);
  return map;
}

/** Name of a code in a table, or `UNKNOWN(0x…)` for logs. */
function namer<T extends Record<string, number | bigint>>(table: T) {
  const map = reverse(table);
  return (code: number | bigint): string =>
    (map.get(code as T[keyof T]) as string | undefined) ?? `UNKNOWN(0x${code.toString(16)})`;
}

/** `LIST_META_CONTEXT` → `listMetaContext`, as a type. */
type Camel<S extends string> = S extends `${infer H}_${infer T}` ? `${Lowercase<H>}${Capitalize<Camel<T>>}` : Lowercase<S>;
/** The camel-case name of a constant's name once `P` is dropped (`NBD_OPT_EXPORT_NAME`, `NBD_OPT_` ⇒ `exportName`). */
export type CamelName<K extends string, P extends string> = K extends `${P}${infer R}` ? Camel<R> : never;

/**
 * Code → camel-case name for the names of a table that start with `prefix`,
 * less `except` (e.g. OPT ⇒ `exportName`, `listMetaContext`…), for tables
 * keyed by code that name things the way the frames and the API do.
 */
export function camelNames<T extends Record<string, number>, P extends string, X extends keyof T & string = never>(
  table: T,
  prefix: P,
  except: readonly X[] = [],
): ReadonlyMap<number, CamelName<Exclude<keyof T & string, X>, P>> {
  type Name = CamelName<Exclude<keyof T & string, X>, P>;
  const map = new Map<number, Name>();
  for (const [name, value] of Object.entries(table)) {
    if (!name.startsWith(prefix) || (except as readonly string[]).includes(name)) continue;
    map.set(value, name.slice(prefix.length).toLowerCase().replace(/_([a-z])/g, (_, c: string) => c.toUpperCase()) as Name);
  }
  return map;
}

/** Magic numbers. 64-bit ones are bigint. */
export const MAGIC = {
  NBDMAGIC: 0x4e42444d41474943n,
  OLDSTYLE_MAGIC: 0x00420281861253n,
  IHAVEOPT: 0x49484156454f5054n,
  NBD_REP_MAGIC: 0x0003e889045565a9n,
  NBD_REQUEST_MAGIC: 0x25609513,
  NBD_SIMPLE_REPLY_MAGIC: 0x67446698,
  NBD_STRUCTURED_REPLY_MAGIC: 0x668e33ef,
  NBD_EXTENDED_REQUEST_MAGIC: 0x21e41c71,
  NBD_EXTENDED_REPLY_MAGIC: 0x6e8a278c,
} as const;

/** Handshake flags (u16, server → client). */
export const HANDSHAKE_FLAGS = {
  NBD_FLAG_FIXED_NEWSTYLE: 1 << 0,
  NBD_FLAG_NO_ZEROES: 1 << 1,
} as const;

/** Client flags (u32, client → server). */
export const CLIENT_FLAGS = {
  NBD_FLAG_C_FIXED_NEWSTYLE: 1 << 0,
  NBD_FLAG_C_NO_ZEROES: 1 << 1,
} as const;

/** Option codes. */
export const OPT = {
  NBD_OPT_EXPORT_NAME: 1,
  NBD_OPT_ABORT: 2,
  NBD_OPT_LIST: 3,
  NBD_OPT_PEEK_EXPORT: 4,
  NBD_OPT_STARTTLS: 5,
  NBD_OPT_INFO: 6,
  NBD_OPT_GO: 7,
  NBD_OPT_STRUCTURED_REPLY: 8,
  NBD_OPT_LIST_META_CONTEXT: 9,
  NBD_OPT_SET_META_CONTEXT: 10,
  NBD_OPT_EXTENDED_HEADERS: 11,
} as const;
export type OptCode = (typeof OPT)[keyof typeof OPT];

/** Option reply types. Errors have bit 31 set. */
export const REP = {
  NBD_REP_ACK: 1,
  NBD_REP_SERVER: 2,
  NBD_REP_INFO: 3,
  NBD_REP_META_CONTEXT: 4,
  NBD_REP_ERR_UNSUP: 0x80000001,
  NBD_REP_ERR_POLICY: 0x80000002,
  NBD_REP_ERR_INVALID: 0x80000003,
  NBD_REP_ERR_PLATFORM: 0x80000004,
  NBD_REP_ERR_TLS_REQD: 0x80000005,
  NBD_REP_ERR_UNKNOWN: 0x80000006,
  NBD_REP_ERR_SHUTDOWN: 0x80000007,
  NBD_REP_ERR_BLOCK_SIZE_REQD: 0x80000008,
  NBD_REP_ERR_TOO_BIG: 0x80000009,
  NBD_REP_ERR_EXT_HEADER_REQD: 0x8000000a,
} as const;
export type RepType = (typeof REP)[keyof typeof REP];
export type RepErrName = Extract<keyof typeof REP, `NBD_REP_ERR_${string}`>;
export const isRepError = (type: number): boolean => (type & 0x80000000) !== 0;

/** Info types inside NBD_REP_INFO. */
export const INFO = {
  NBD_INFO_EXPORT: 0,
  NBD_INFO_NAME: 1,
  NBD_INFO_DESCRIPTION: 2,
  NBD_INFO_BLOCK_SIZE: 3,
} as const;
export type InfoType = (typeof INFO)[keyof typeof INFO];

/** Transmission flags (u16). */
export const FLAG = {
  NBD_FLAG_HAS_FLAGS: 1 << 0,
  NBD_FLAG_READ_ONLY: 1 << 1,
  NBD_FLAG_SEND_FLUSH: 1 << 2,
  NBD_FLAG_SEND_FUA: 1 << 3,
  NBD_FLAG_ROTATIONAL: 1 << 4,
  NBD_FLAG_SEND_TRIM: 1 << 5,
  NBD_FLAG_SEND_WRITE_ZEROES: 1 << 6,
  NBD_FLAG_SEND_DF: 1 << 7,
  NBD_FLAG_CAN_MULTI_CONN: 1 << 8,
  NBD_FLAG_SEND_RESIZE: 1 << 9,
  NBD_FLAG_SEND_CACHE: 1 << 10,
  NBD_FLAG_SEND_FAST_ZERO: 1 << 11,
  NBD_FLAG_BLOCK_STATUS_PAYLOAD: 1 << 12,
} as const;

/** Command types. */
export const CMD = {
  NBD_CMD_READ: 0,
  NBD_CMD_WRITE: 1,
  NBD_CMD_DISC: 2,
  NBD_CMD_FLUSH: 3,
  NBD_CMD_TRIM: 4,
  NBD_CMD_CACHE: 5,
  NBD_CMD_WRITE_ZEROES: 6,
  NBD_CMD_BLOCK_STATUS: 7,
  NBD_CMD_RESIZE: 8,
} as const;
export type CmdCode = (typeof CMD)[keyof typeof CMD];

/** Command flags (u16). */
export const CMD_FLAG = {
  NBD_CMD_FLAG_FUA: 1 << 0,
  NBD_CMD_FLAG_NO_HOLE: 1 << 1,
  NBD_CMD_FLAG_DF: 1 << 2,
  NBD_CMD_FLAG_REQ_ONE: 1 << 3,
  NBD_CMD_FLAG_FAST_ZERO: 1 << 4,
  NBD_CMD_FLAG_PAYLOAD_LEN: 1 << 5,
} as const;

/** Structured reply chunk flags and types. */
export const REPLY_FLAG = {
  NBD_REPLY_FLAG_DONE: 1 << 0,
} as const;

export const REPLY_TYPE = {
  NBD_REPLY_TYPE_NONE: 0,
  NBD_REPLY_TYPE_OFFSET_DATA: 1,
  NBD_REPLY_TYPE_OFFSET_HOLE: 2,
  NBD_REPLY_TYPE_BLOCK_STATUS: 5,
  NBD_REPLY_TYPE_BLOCK_STATUS_EXT: 6,
  NBD_REPLY_TYPE_ERROR: 0x8001,
  NBD_REPLY_TYPE_ERROR_OFFSET: 0x8002,
} as const;

/** base:allocation status flags. */
export const STATE = {
  NBD_STATE_HOLE: 1 << 0,
  NBD_STATE_ZERO: 1 << 1,
} as const;

/** Error values of the reply `error` field. */
export const ERRNO = {
  NBD_EPERM: 1,
  NBD_EIO: 5,
  NBD_ENOMEM: 12,
  NBD_EINVAL: 22,
  NBD_ENOSPC: 28,
  NBD_EOVERFLOW: 75,
  NBD_ENOTSUP: 95,
  NBD_ESHUTDOWN: 108,
} as const;
export type NbdErrnoName = keyof typeof ERRNO;
/** Short errno names accepted by the API (`'EIO'`, `'ENOSPC'`, …). */
export type ErrnoName = NbdErrnoName extends `NBD_${infer N}` ? N : never;
export type NbdErrno = (typeof ERRNO)[NbdErrnoName];
/** The error values the spec defines: no other reaches the wire from this server, and any other in a reply is a client's deviation. */
export const SPEC_ERRNOS: ReadonlySet<number> = new Set(Object.values(ERRNO));

/** Meta context namespace and the one context the spec defines. */
export const BASE_ALLOCATION = 'base:allocation' as const;

/** Sizes of fixed frames. */
export const SIZE = {
  GREETING: 18,
  CLIENT_FLAGS: 4,
  OPTION_HEADER: 16,
  OPTION_REPLY_HEADER: 20,
  EXPORT_NAME_REPLY: 10,
  EXPORT_NAME_ZEROES: 124,
  REQUEST: 28,
  EXTENDED_REQUEST: 32,
  SIMPLE_REPLY: 16,
  STRUCTURED_REPLY: 20,
  EXTENDED_REPLY: 32,
  /** Strings MUST be ≤ 4096 bytes (general.string-limits). */
  MAX_STRING: 4096,
  /** A READ with DF up to this length must be answered in one chunk, whatever the advertised maximum (reply.df-one-chunk). */
  DF_UNFRAGMENTED: 65536,
} as const;

export const magicName = namer(MAGIC);
export const optName = namer(OPT);
export const repName = namer(REP);
export const infoName = namer(INFO);
export const cmdName = namer(CMD);
export const replyTypeName = namer(REPLY_TYPE);
export const errnoName = namer(ERRNO);

/** Names of the bits set in `value` for a flag table, for logs. */
export function flagNames(table: Record<string, number>, value: number): string[] {
  const names: string[] = [];
  for (const [name, bit] of Object.entries(table)) if (value & bit) names.push(name);
  return names;
}

/** All bits of a flag table OR-ed together. */
export function allBits(table: Record<string, number>): number {
  let bits = 0;
  for (const bit of Object.values(table)) bits |= bit;
  return bits;
}

/** The options we know, as a set derived from the table. */
export const KNOWN_OPTIONS: ReadonlySet<number> = new Set(Object.values(OPT));
/** The commands we know. */
export const KNOWN_COMMANDS: ReadonlySet<number> = new Set(Object.values(CMD));

/** Map an errno name (`'ENOSPC'` or `'NBD_ENOSPC'`) to its wire value. */
export function errnoValue(name: ErrnoName | NbdErrnoName): NbdErrno {
  const key = (name.startsWith('NBD_') ? name : `NBD_${name}`) as NbdErrnoName;
  return ERRNO[key];
}

/**
 * Map a host errno code (as found on Node's SystemError `code`) to the NBD
 * spec's error set (transmission.error-values), much as nbdkit does.
 */
export function hostErrnoToNbd(code: string | undefined, opts: { fastZero?: boolean; df?: boolean } = {}): NbdErrno {
  switch (code) {
    case 'EROFS':
    case 'EPERM':
    case 'EACCES':
      return ERRNO.NBD_EPERM;
    case 'EIO':
      return ERRNO.NBD_EIO;
    case 'ENOMEM':
      return ERRNO.NBD_ENOMEM;
    case 'EDQUOT':
    case 'EFBIG':
    case 'ENOSPC':
      return ERRNO.NBD_ENOSPC;
    case 'ESHUTDOWN':
      return ERRNO.NBD_ESHUTDOWN;
    case 'ENOTSUP':
    case 'EOPNOTSUPP':
      // transmission.error-values: ENOTSUP only for FAST_ZERO.
      return opts.fastZero ? ERRNO.NBD_ENOTSUP : ERRNO.NBD_EINVAL;
    case 'EOVERFLOW':
      // transmission.error-values: EOVERFLOW only for DF reads.
      return opts.df ? ERRNO.NBD_EOVERFLOW : ERRNO.NBD_EINVAL;
    case 'EINVAL':
      return ERRNO.NBD_EINVAL;
    default:
      return ERRNO.NBD_EIO;
  }
}
