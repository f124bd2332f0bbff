/**
 * Filters: a typed layer between the client and a backend, the way an
 * nbdkit filter sits in front of a plugin and gets `next`.
 *
 * A filter's `wrap(next, context)` returns the Backend the layer above sees.
 * Inside, it may change arguments, call `next` zero or more times, catch and
 * rewrite errors, and decide what the export advertises: the methods present
 * on the backend it returns are the capabilities (a filter that removes
 * `trim` hides SEND_TRIM), its `blockSizes` are the block sizes, its `size`
 * the export's size. `layer(next, overrides)` builds such a backend: every
 * member of `next`, forwarded, with the overrides applied.
 *
 * Order: `filters[0]` is closest to the client, as with nbdkit's
 * `--filter` (the first named filter sees requests first).
 *
 * Scope is explicit:
 *  - 'shared': the filter's state is one for the export, whatever the
 *    connection (a cache, a copy-on-write overlay, stats). Keep that state
 *    in the filter object; `wrap` is called once for the export, and again
 *    per connection only if a per-connection filter sits below it.
 *  - 'connection': `wrap` is called once per connection, when it has
 *    negotiated the export (state per client: read-ahead windows, a
 *    connection's rate limit). `context.connection` names it and
 *    `context.onClose` registers the clean-up for when it ends. One extra
 *    instance, without a connection, is made when the server is created,
 *    to learn what the export advertises: a per-connection filter's shape
 *    (its methods and block sizes) must not depend on the connection.
 *
 * Preparation: `wrap` is synchronous, and the server describes every
 * export (its size, its flags) when it is created, also synchronously. A
 * filter that must read the backend below before it can say what it serves
 * (the partition filter reads the partition table to learn the export's
 * size) has an async `prepare(next, context)`; `prepareExports(exports)`
 * (export-entry.ts) awaits every such filter, innermost first, before
 * `createServer`. Such a filter's `wrap` refuses to run unprepared, so a
 * forgotten `prepareExports` is a clear error at `createServer`, never an
 * export of the wrong size.
 */
import type { Logger } from '../transport/logger.js';
import type { Backend, MaybePromise } from './backend.js';
import type { ConnectionRef } from './request.js';

export interface FilterContext {
  /** The export the chain serves. */
  readonly export: string;
  /** The connection, for a per-connection filter's instance made for one (undefined otherwise). */
  readonly connection?: ConnectionRef;
  readonly logger: Logger;
  /** Register clean-up for this instance: when its connection closes, or, for shared instances, when the server closes. */
  onClose(fn: () => MaybePromise<void>): void;
}

export interface Filter {
  /** Short name, as on the command line (`--filter=NAME`). */
  readonly name: string;
  readonly scope: 'shared' | 'connection';
  /** The backend the layer above sees, given the one below. */
  wrap(next: Backend, context: FilterContext): Backend;
  /**
   * Optional async set-up that needs the backend below: awaited once by
   * `prepareExports` before the server is created (see "Preparation"
   * above). Keep what it learns in the filter object for `wrap`. `next` is
   * the chain below built for this purpose only: its instances' clean-up
   * runs as soon as every filter of the export is prepared.
   */
  prepare?(next: Backend, context: FilterContext): Promise<void>;
}

/** Backend members that are data rather than operations. */
const PROPERTIES = ['size', 'fua', 'canFastZero', 'multiConn', 'rotational', 'readOnly', 'blockSizes'] as const;
/** Operations `layer` forwards to `next` unless overridden (writeTargets only on request: see `layer`). */
const OPERATIONS = ['read', 'write', 'writev', 'flush', 'trim', 'zero', 'cache', 'extents', 'close'] as const;

type Overrides = { -readonly [K in keyof Backend]?: Backend[K] | undefined };

/**
 * A backend that forwards every member of `next` (its operations bound to
 * it), with `overrides` applied on top. An override set to `undefined`
 * removes the member, so the capability it stands for is no longer
 * advertised (`{ trim: undefined }` hides SEND_TRIM).
 *
 * Two members are forwarded only when they cannot bypass the filter:
 * `writev` is dropped when `write` is overridden (unless `writev` is given
 * too), and `writeTargets` (zero-copy WRITEs straight into the backend's
 * memory, which no filter would see) is forwarded only with
 * `forwardWriteTargets: true`, for filters that never look at WRITEs.
 * `readInto` (READs into buffers the server lends) is forwarded only when
 * `read` is not overridden: a filter that changes reads never sees it bypassed.
 */
export function layer(next: Backend, overrides: Overrides = {}, options: { forwardWriteTargets?: boolean } = {}): Backend {
  const out: Record<string, unknown> = {};
  for (const key of PROPERTIES) if (next[key] !== undefined) out[key] = next[key];
  for (const key of OPERATIONS) {
    const fn = next[key] as ((...args: unknown[]) => unknown) | undefined;
    if (typeof fn === 'function') out[key] = fn.bind(next);
  }
  if (options.forwardWriteTargets && typeof next.writeTargets === 'function' && !('write' in overrides)) {
    out.writeTargets = next.writeTargets.bind(next);
  }
  if ('write' in overrides && !('writev' in overrides)) delete out.writev;
  if (typeof next.readInto === 'function' && !('read' in overrides)) out.readInto = next.readInto.bind(next);
  for (const [key, value] of Object.entries(overrides)) {
    if (value === undefined) delete out[key];
    else out[key] = value;
  }
  return out as unknown as Backend;
}

/**
 * Stack `filters` over `backend` (filters[0] outermost, closest to the
 * client) for one context: the chain a connection, or the server, uses.
 */
export function applyFilters(backend: Backend, filters: readonly Filter[], context: FilterContext): Backend {
  let b = backend;
  for (let i = filters.length - 1; i >= 0; i--) b = filters[i]!.wrap(b, context);
  return b;
}

/**
 * Await `prepare` of every filter that has one, innermost first, each with
 * the chain below it (wrapped with `context`, used only for this). Filters
 * above the outermost one with `prepare` are not wrapped.
 */
export async function prepareFilters(backend: Backend, filters: readonly Filter[], context: FilterContext): Promise<void> {
  const outermost = filters.findIndex((f) => typeof f.prepare === 'function');
  if (outermost < 0) return;
  let b = backend;
  for (let i = filters.length - 1; i >= outermost; i--) {
    const f = filters[i]!;
    if (f.prepare) await f.prepare(b, context);
    if (i > outermost) b = f.wrap(b, context);
  }
}

/**
 * Where per-connection instances start: filters[0 .. split) are wrapped
 * for every connection, filters[split ..] once for the export (the
 * innermost run of shared filters).
 */
export function connectionSplit(filters: readonly Filter[]): number {
  let split = filters.length;
  while (split > 0 && filters[split - 1]!.scope === 'shared') split--;
  return split;
}

/** Check a filter list given by a caller (plain JavaScript may pass anything). */
export function checkFilters(filters: unknown, where: string): readonly Filter[] {
  if (filters === undefined) return [];
  if (!Array.isArray(filters)) throw new TypeError(`${where}: filters must be an array`);
  for (const f of filters as unknown[]) {
    const ok = f !== null && typeof f === 'object' && typeof (f as Filter).wrap === 'function' && ((f as Filter).scope === 'shared' || (f as Filter).scope === 'connection');
    if (!ok) throw new TypeError(`${where}: each filter needs wrap(next, context) and scope 'shared' or 'connection'`);
  }
  return filters as readonly Filter[];
}
