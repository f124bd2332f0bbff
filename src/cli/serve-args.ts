/**
 * `nbd-engine serve`'s command line: the options, and their values checked
 * and converted. Every malformed value is a UsageError whose one-line
 * message names its option (the command prints it and exits with status 2).
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { ServerLimits } from '../api/server.js';
import { LIMIT_RANGES, MAX_TIMER_MS, formatLimitValue, validateLimits, type LimitName } from '../api/limits.js';
import { parseSize } from './size.js';
import { TRACE_MAX_BYTES, type TraceFileOptions } from '../inspect/trace-file.js';
import { DEFAULTS, INSPECT_PORT } from '../defaults.js';

/** A bad command line: one line on stderr, exit status 2. */
export class UsageError extends Error {}

const OPTIONS = {
  memory: { type: 'string' },
  file: { type: 'string' },
  export: { type: 'string', short: 'e' },
  description: { type: 'string' },
  'read-only': { type: 'boolean', short: 'r' },
  socket: { type: 'string', short: 'U' },
  port: { type: 'string', short: 'p' },
  host: { type: 'string', short: 'i' },
  run: { type: 'string' },
  filter: { type: 'string', multiple: true },
  single: { type: 'boolean', short: 's' },
  foreground: { type: 'boolean', short: 'f' },
  'exit-with-parent': { type: 'boolean' },
  pidfile: { type: 'string', short: 'P' },
  'print-uri': { type: 'boolean' },
  version: { type: 'boolean', short: 'V' },
  tls: { type: 'string' },
  'tls-certificates': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-ca': { type: 'string' },
  'tls-verify-peer': { type: 'boolean' },
  'tls-psk': { type: 'string' },
  'max-in-flight': { type: 'string' },
  'max-in-flight-bytes': { type: 'string' },
  'max-payload': { type: 'string' },
  'max-options': { type: 'string' },
  'max-extents': { type: 'string' },
  'read-buffer-pool': { type: 'string' },
  'max-connections': { type: 'string' },
  'max-queued-reply-bytes': { type: 'string' },
  'max-option-length': { type: 'string' },
  'max-option-skip': { type: 'string' },
  'max-payload-skip': { type: 'string' },
  'max-buffered-bytes': { type: 'string' },
  'handshake-timeout': { type: 'string' },
  'idle-timeout': { type: 'string' },
  'linger-timeout': { type: 'string' },
  'shutdown-timeout': { type: 'string' },
  trace: { type: 'string' },
  'trace-max': { type: 'string' },
  'trace-prefix': { type: 'string' },
  'trace-rotate': { type: 'string' },
  inspect: { type: 'string' },
  strict: { type: 'boolean' },
  'no-warm-up': { type: 'boolean' },
  verbose: { type: 'boolean', short: 'v' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** nbdkit's spellings of our options (`--unix` is `--socket`, `--ipaddr` is `--host` …): the same option under another name. */
const ALIASES: Readonly<Record<string, keyof typeof OPTIONS>> = {
  unix: 'socket',
  ipaddr: 'host',
  'ip-addr': 'host',
  exportname: 'export',
  'export-name': 'export',
  readonly: 'read-only',
  stdin: 'single',
  'no-fork': 'foreground',
  'pid-file': 'pidfile',
};

/** Whether `--name` is one of serve's own options (or nbdkit's name for one). */
export const isServeOption = (name: string): boolean => Object.hasOwn(OPTIONS, name) || Object.hasOwn(ALIASES, name);

/** Short options that take a value (`-U SOCKET`), by letter: their long name. */
const SHORT_VALUES: Readonly<Record<string, string>> = Object.fromEntries(
  Object.entries(OPTIONS as Record<string, { type: string; short?: string }>)
    .filter(([, o]) => o.short !== undefined && o.type === 'string')
    .map(([name, o]) => [o.short!, name]),
);

/** Options whose value is optional (`--inspect` or `--inspect=PORT`): alone, they take this default. */
const OPTIONAL_VALUES: Readonly<Record<string, string>> = { inspect: String(INSPECT_PORT) };

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];

/** Numeric flags that set a server limit, and how their text is read. */
const LIMIT_FLAGS: ReadonlyArray<{ flag: keyof typeof OPTIONS; limit: LimitName; kind: 'count' | 'size' | 'seconds' }> = [
  { flag: 'max-in-flight', limit: 'maxInFlight', kind: 'count' },
  { flag: 'max-in-flight-bytes', limit: 'maxInFlightBytes', kind: 'size' },
  { flag: 'max-payload', limit: 'maxPayload', kind: 'size' },
  { flag: 'max-options', limit: 'maxOptions', kind: 'count' },
  { flag: 'max-extents', limit: 'maxExtents', kind: 'count' },
  { flag: 'read-buffer-pool', limit: 'readBufferPool', kind: 'size' },
  { flag: 'max-connections', limit: 'maxConnections', kind: 'count' },
  { flag: 'max-queued-reply-bytes', limit: 'maxQueuedReplyBytes', kind: 'size' },
  { flag: 'max-option-length', limit: 'maxOptionLength', kind: 'size' },
  { flag: 'max-option-skip', limit: 'maxOptionSkip', kind: 'size' },
  { flag: 'max-payload-skip', limit: 'maxPayloadSkip', kind: 'size' },
  { flag: 'max-buffered-bytes', limit: 'maxBufferedBytes', kind: 'size' },
  { flag: 'handshake-timeout', limit: 'handshakeTimeout', kind: 'seconds' },
  { flag: 'idle-timeout', limit: 'idleTimeout', kind: 'seconds' },
  { flag: 'linger-timeout', limit: 'lingerTimeout', kind: 'seconds' },
];

/**
 * `--opt VALUE` and `-o VALUE` become `--opt=VALUE` for options that take a
 * value, so a value starting with a dash (`--port -1`, `-U -`) reaches the
 * checks as a value, as getopt reads it, instead of parseArgs calling it
 * ambiguous; nbdkit's other names for an option (ALIASES) become ours.
 */
function joinValues(args: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') {
      out.push(...args.slice(i));
      break;
    }
    let name: string | undefined;
    let inline: string | undefined;
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      name = eq < 0 ? a.slice(2) : a.slice(2, eq);
      inline = eq < 0 ? undefined : a.slice(eq + 1);
      if (Object.hasOwn(ALIASES, name)) name = ALIASES[name]!;
    } else if (a.length === 2 && a[0] === '-' && Object.hasOwn(SHORT_VALUES, a[1]!)) {
      name = SHORT_VALUES[a[1]!]!;
    }
    const spec = name !== undefined && Object.hasOwn(OPTIONS, name) ? (OPTIONS as Record<string, { type: string }>)[name] : undefined;
    if (name === undefined || !spec) {
      out.push(a);
    } else if (inline !== undefined) {
      out.push(`--${name}=${inline}`);
    } else if (Object.hasOwn(OPTIONAL_VALUES, name)) {
      out.push(`--${name}=${OPTIONAL_VALUES[name]}`);
    } else if (spec.type === 'string') {
      if (i + 1 >= args.length) throw new UsageError(`${a}: missing value`);
      out.push(`--${name}=${args[++i]}`);
    } else {
      out.push(`--${name}`);
    }
  }
  return out;
}

/** parseArgs's messages, reduced to one line that names the option. */
function parseArgsMessage(err: Error & { code?: string }): string {
  const first = err.message.split('\n')[0]!;
  const quoted = /'([^']+)'/.exec(first)?.[1];
  switch (err.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown option ${quoted ?? first} (nbd-engine --help lists them)`;
    default:
      return first;
  }
}

/** An integer in decimal digits, within [min, max]. */
function parseCount(flag: string, text: string, min: number, max: number): number {
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`--${flag}: expected an integer from ${min} to ${max}, got ${JSON.stringify(text)}`);
  return n;
}

/** A size with nbdkit's suffixes, within [min, max] bytes. */
function parseSizeFlag(flag: string, text: string, min: number, max: number): number {
  let n = NaN;
  try {
    n = parseSize(text);
  } catch {
    /* reported below */
  }
  if (!(n >= min && n <= max)) {
    throw new UsageError(`--${flag}: expected a size ${min > 0 ? `from ${formatLimitValue(min, 'bytes')} to` : 'up to'} ${formatLimitValue(max, 'bytes')} (e.g. 1048576, 512K, 64M, 1G), got ${JSON.stringify(text)}`);
  }
  return n;
}

/** Seconds (decimals allowed, 0: off) as whole milliseconds. */
function parseSeconds(flag: string, text: string): number {
  const maxSeconds = Math.floor(MAX_TIMER_MS / 1000);
  const s = /^\d+(\.\d+)?$/.test(text) ? Number(text) : NaN;
  const ms = Math.round(s * 1000);
  if (!(s >= 0 && s <= maxSeconds) || (s > 0 && ms === 0)) {
    throw new UsageError(`--${flag}: expected seconds from 0 (off) to ${maxSeconds}, decimals allowed down to 0.001, got ${JSON.stringify(text)}`);
  }
  return ms;
}

/** What `serve`'s options ask for, checked; every malformed value is a UsageError naming its option. */
export interface ServeArgs {
  readonly values: Values;
  readonly help: boolean;
  /** `-V` / `--version`: print the version and exit. */
  readonly version?: boolean;
  /** The backend and its `key=value` parameters, nbdkit's way (`memory 1G`, `file file=disk.img`), routed by nbdkit-args.ts. */
  readonly positionals: readonly string[];
  /** `--filter=NAME`, in command-line order (the first closest to the client). */
  readonly filters: readonly string[];
  /** `--tls-certificates DIR` read as nbdkit does: DIR/server-cert.pem, server-key.pem and (if present) ca-cert.pem. */
  readonly tlsFiles?: { readonly cert: string; readonly key: string; readonly ca?: string };
  readonly memorySize: number;
  readonly limits: ServerLimits;
  readonly port?: number;
  /** `--inspect[=PORT]`: the live view's port on 127.0.0.1. */
  readonly inspectPort?: number;
  readonly tlsMode: 'off' | 'on' | 'require';
  /** `--trace FILE` and its cap, payload prefix and rotation. */
  readonly trace?: TraceFileOptions & { readonly path: string };
  /** `--shutdown-timeout SECONDS` as milliseconds: how long requests in flight may finish at shutdown (default DEFAULTS.shutdownTimeout). */
  readonly shutdownTimeoutMs: number;
}

/** Parse `serve`'s arguments; throws UsageError with a one-line message. */
export function parseServeArgs(args: readonly string[]): ServeArgs {
  let values: Values;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({ args: joinValues(args), options: OPTIONS, allowPositionals: true }));
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(parseArgsMessage(err as Error & { code?: string }));
  }
  const filters = values.filter ?? [];
  const early = { values, memorySize: 0, limits: {}, tlsMode: 'off' as const, positionals, filters, shutdownTimeoutMs: DEFAULTS.shutdownTimeout };
  if (values.help) return { ...early, help: true };
  if (values.version) return { ...early, help: false, version: true };
  if (values.memory !== undefined && values.file !== undefined) throw new UsageError('--memory and --file are exclusive');
  const legacy = values.memory !== undefined ? '--memory' : values.file !== undefined ? '--file' : undefined;
  if (legacy && positionals.length > 0 && !positionals[0]!.includes('=')) {
    throw new UsageError(`${legacy} and a backend name (${JSON.stringify(positionals[0])}) are exclusive: use one or the other`);
  }
  for (const f of ['file', 'socket', 'pidfile', 'tls-certificates'] as const) {
    if (values[f] === '') throw new UsageError(`--${f}: expected a path, got ""`);
  }
  for (const f of filters) if (f === '') throw new UsageError('--filter: expected a filter name, got ""');
  if (values.single) {
    // One connection on stdin/stdout: there is nothing to listen on, run or print (stdout carries the protocol).
    const clash = (['socket', 'port', 'host', 'run', 'print-uri'] as const).filter((f) => values[f] !== undefined);
    if (clash.length > 0) throw new UsageError(`-s (--single) serves stdin/stdout: it cannot be used with ${clash.map((f) => `--${f}`).join(', ')}`);
  }
  // Sizes over 2^53 bytes cannot be served (NBD sizes are 64-bit, ours exact integers).
  const memorySize = values.file === undefined ? parseSizeFlag('memory', values.memory ?? '1G', 0, Number.MAX_SAFE_INTEGER) : 0;
  const port = values.port !== undefined ? parseCount('port', values.port, 0, 65535) : undefined;
  const inspectPort = values.inspect !== undefined ? parseCount('inspect', values.inspect, 0, 65535) : undefined;
  const limits: Record<string, number> = {};
  for (const { flag, limit, kind } of LIMIT_FLAGS) {
    const text = values[flag] as string | undefined;
    if (text === undefined) continue;
    const r = LIMIT_RANGES[limit];
    limits[limit] = kind === 'count' ? parseCount(flag, text, r.min, r.max) : kind === 'size' ? parseSizeFlag(flag, text, r.min, r.max) : parseSeconds(flag, text);
  }
  // Limits that must agree with each other (maxBufferedBytes ≥ maxPayload + header): a usage error too, named by flag.
  try {
    validateLimits(limits);
  } catch (err) {
    const message = (err as Error).message;
    const f = LIMIT_FLAGS.find((l) => message.startsWith(`${l.limit}:`));
    throw new UsageError(f ? `--${f.flag}: ${message.slice(f.limit.length + 2)}` : message);
  }
  const tlsFlags = ['tls-cert', 'tls-key', 'tls-ca', 'tls-verify-peer', 'tls-psk', 'tls-certificates'] as const;
  const given = tlsFlags.filter((f) => values[f] !== undefined && values[f] !== false);
  // As nbdkit: credentials without --tls turn TLS on (`nbdkit --tls-certificates DIR` offers STARTTLS).
  const tlsMode = (values.tls ?? (given.length > 0 ? 'on' : 'off')) as ServeArgs['tlsMode'];
  if (!['off', 'on', 'require'].includes(tlsMode)) throw new UsageError(`--tls: expected off, on or require, got ${JSON.stringify(values.tls)}`);
  if (tlsMode === 'off' && given.length > 0) {
    // Serving plaintext when credentials were given is never what was meant.
    throw new UsageError(`${given.map((f) => `--${f}`).join(', ')} given but --tls=off: leave --tls out (on), or use --tls=on or --tls=require`);
  }
  let tlsFiles: ServeArgs['tlsFiles'];
  if (values['tls-certificates'] !== undefined) {
    const clash = (['tls-cert', 'tls-key', 'tls-ca'] as const).filter((f) => values[f] !== undefined);
    if (clash.length > 0) throw new UsageError(`--tls-certificates and ${clash.map((f) => `--${f}`).join(', ')} are exclusive: the directory names all three files`);
    const dir = values['tls-certificates'];
    // nbdkit-tls(1)'s file names; the CA is optional (only needed to verify client certificates).
    const ca = path.join(dir, 'ca-cert.pem');
    tlsFiles = { cert: path.join(dir, 'server-cert.pem'), key: path.join(dir, 'server-key.pem'), ca: fs.existsSync(ca) ? ca : undefined };
  }
  const traceFlag = (['trace-max', 'trace-prefix', 'trace-rotate'] as const).find((f) => values[f] !== undefined);
  if (values.trace === undefined && traceFlag) throw new UsageError(`--${traceFlag} given without --trace FILE`);
  if (values.trace === '') throw new UsageError('--trace: expected a path, got ""');
  const trace = values.trace === undefined ? undefined : {
    path: values.trace,
    maxBytes: parseSizeFlag('trace-max', values['trace-max'] ?? String(TRACE_MAX_BYTES), 4096, Number.MAX_SAFE_INTEGER),
    prefixBytes: parseCount('trace-prefix', values['trace-prefix'] ?? '0', 0, 4096),
    rotate: parseCount('trace-rotate', values['trace-rotate'] ?? '0', 0, 1000),
  };
  const shutdownTimeoutMs = values['shutdown-timeout'] === undefined ? DEFAULTS.shutdownTimeout : parseSeconds('shutdown-timeout', values['shutdown-timeout']);
  return { values, help: false, memorySize, limits, port, inspectPort, tlsMode, trace, positionals, filters, tlsFiles, shutdownTimeoutMs };
}
