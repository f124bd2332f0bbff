/**
 * Checks of `createServer`'s options that are not limits (src/api/limits.ts) or exports
 * (export-entry.ts): each wrong value an `NbdError('NBD_ERR_CONFIG')` naming the option, at
 * createServer, rather than a TypeError (or a plaintext server) later. And the wrappers that keep
 * a caller's logger or inspect hook from taking the server down when they throw.
 */
import type { InspectionEvent, Observer } from 'xstate';
import { NbdError } from './errors.js';
import { writeStderr, type Logger } from '../transport/logger.js';

const TLS_MODES = ['off', 'on', 'require'] as const;

const kind = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'string' ? JSON.stringify(v) : typeof v);

/** Throw NBD_ERR_CONFIG for the first option of the wrong shape. */
export function checkServerOptions(options: unknown): void {
  if (options === null || typeof options !== 'object') throw new NbdError('NBD_ERR_CONFIG', `createServer: expected an options object, got ${kind(options)}`);
  const o = options as Record<string, unknown>;
  if (Array.isArray(o.exports)) {
    o.exports.forEach((e: unknown, i) => {
      if (e === null || typeof e !== 'object') throw new NbdError('NBD_ERR_CONFIG', `exports[${i}]: expected an export object, got ${kind(e)}`);
      const backend = (e as { backend?: unknown }).backend;
      if (backend !== undefined) {
        if (backend === null || typeof backend !== 'object') throw new NbdError('NBD_ERR_CONFIG', `exports[${i}].backend: expected a backend object, got ${kind(backend)}`);
        if (typeof (backend as { read?: unknown }).read !== 'function') throw new NbdError('NBD_ERR_CONFIG', `exports[${i}].backend: read(offset, length) is required`);
      }
      for (const flag of ['readOnly', 'tlsOnly', 'cache'] as const) {
        const v = (e as Record<string, unknown>)[flag];
        if (v !== undefined && typeof v !== 'boolean') throw new NbdError('NBD_ERR_CONFIG', `exports[${i}].${flag}: expected true or false, got ${kind(v)}`);
      }
      const flags = (e as { flags?: unknown }).flags;
      if (flags !== undefined) {
        if (flags === null || typeof flags !== 'object') throw new NbdError('NBD_ERR_CONFIG', `exports[${i}].flags: expected an object, got ${kind(flags)}`);
        for (const [k, v] of Object.entries(flags)) {
          if (v !== undefined && typeof v !== 'boolean') throw new NbdError('NBD_ERR_CONFIG', `exports[${i}].flags.${k}: expected true or false, got ${kind(v)}`);
        }
      }
    });
  }
  if (o.logger !== undefined) {
    const l = o.logger as Partial<Logger> | null;
    if (l === null || typeof l !== 'object' || typeof l.warn !== 'function' || typeof l.error !== 'function') {
      throw new NbdError('NBD_ERR_CONFIG', 'logger: expected an object with warn(message) and error(message) (debug and info optional)');
    }
  }
  if (o.tls !== undefined) {
    const t = o.tls as { mode?: unknown } | null;
    if (t === null || typeof t !== 'object') throw new NbdError('NBD_ERR_CONFIG', `tls: expected an object, got ${kind(t)}`);
    // A typo ('required') must not give a plaintext server.
    if (!(TLS_MODES as readonly unknown[]).includes(t.mode)) throw new NbdError('NBD_ERR_CONFIG', `tls.mode: expected "off", "on" or "require", got ${kind(t.mode)}`);
  }
  if (o.inspect !== undefined && typeof o.inspect !== 'function' && (o.inspect === null || typeof o.inspect !== 'object')) {
    throw new NbdError('NBD_ERR_CONFIG', `inspect: expected a function or an observer, got ${kind(o.inspect)}`);
  }
}

/**
 * The caller's logger, made safe: a logger that throws (a full disk under a file logger, a bug)
 * must not take a connection or the process down from inside the server's own code. Its first
 * failure is reported once on stderr; the message is dropped.
 */
export function safeLogger(logger: Logger): Logger {
  let reported = false;
  const guard =
    (f: ((m: string) => void) | undefined) =>
    (m: string): void => {
      try {
        f?.call(logger, m);
      } catch (err) {
        if (reported) return;
        reported = true;
        writeStderr(`nbd-engine: the logger threw (${String(err)}); its messages are dropped when it does\n`);
      }
    };
  return {
    warn: guard(logger.warn),
    error: guard(logger.error),
    ...(logger.info ? { info: guard(logger.info) } : {}),
    ...(logger.debug ? { debug: guard(logger.debug) } : {}),
  };
}

/** The caller's inspect hook, made safe the same way: xstate calls it inside a connection's transitions. */
export function safeInspect(inspect: Observer<InspectionEvent> | ((event: InspectionEvent) => void), logger: Logger): (event: InspectionEvent) => void {
  let reported = false;
  const next = typeof inspect === 'function' ? inspect : (e: InspectionEvent) => inspect.next?.(e);
  return (event) => {
    try {
      next(event);
    } catch (err) {
      if (reported) return;
      reported = true;
      logger.error(`the inspect hook threw (${String(err)}); the server goes on, the hook's later failures are not logged`);
    }
  };
}
