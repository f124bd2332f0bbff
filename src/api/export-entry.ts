/**
 * One export as the server holds it: its configuration (ExportConfig),
 * checked and described once when the server is created (describeExport),
 * and the zero-copy WRITE placement built from its backend for each
 * connection that negotiates it (writePlacement).
 */
import type { ExportDescriptor } from '../machines/types.js';
import { CMD_FLAG } from '../protocol/constants.js';
import type { SessionHandlers } from '../transport/session-options.js';
import { backendCapabilities, flagCapabilities, transmissionFlags, type Backend, type Capabilities, type ExportFlags } from './backend.js';
import { NbdError } from './errors.js';
import type { ConnectionRef, ExportRef } from './request.js';
import { applyFilters, checkFilters, connectionSplit, layer, prepareFilters, type Filter, type FilterContext } from './filter.js';
import { silentLogger, type Logger } from '../transport/logger.js';
import type { MaybePromise } from './backend.js';
import { isPowerOf2 } from '../plugins/common.js';

export interface ExportConfig {
  readonly name: string;
  readonly description?: string;
  /** Size in bytes; defaults to the backend's `size`. */
  readonly size?: number;
  /** Serve from this backend; without one, requests go to `requests$`. */
  readonly backend?: Backend;
  /** For request-stream exports: what to advertise. */
  readonly flags?: ExportFlags;
  readonly readOnly?: boolean;
  /**
   * Block size constraints, over the backend's (option.block-size-constraints): the minimum a power of 2 ≤ 64 KiB,
   * the preferred size a power of 2 ≥ max(minimum, 512), the maximum ≥ the preferred size and a multiple of the
   * minimum (or 0xffffffff); anything else is refused by createServer (NbdError NBD_ERR_CONFIG). The maximum
   * advertised is at most the server's `maxPayload`, rounded down to a multiple of the minimum.
   */
  readonly blockSizes?: { readonly minimum?: number; readonly preferred?: number; readonly maximum?: number };
  /** Only served over TLS (SELECTIVETLS, with `tls.mode: 'on'`). */
  readonly tlsOnly?: boolean;
  /** Advertise NBD_FLAG_SEND_CACHE (default true; CACHE is a no-op without `backend.cache`). */
  readonly cache?: boolean;
  /** Filters over the backend, the first closest to the client (src/api/filter.ts). */
  readonly filters?: readonly Filter[];
}

export interface ExportEntry {
  readonly config: ExportConfig;
  readonly descriptor: ExportDescriptor;
  readonly caps: Capabilities;
  readonly ref: ExportRef;
  /** The backend with its filters: what every connection is served from, unless per-connection filters make it their own (`forConnection`). */
  readonly backend?: Backend;
  /** Clean-up the filters registered for the export (run when the server closes). */
  readonly closers: Array<() => MaybePromise<void>>;
  /** With per-connection filters: the chain for one connection, and its clean-up. */
  readonly forConnection?: (connection: ConnectionRef) => { backend: Backend; close(): Promise<void> };
}

/** Run clean-up functions in order; each failure is logged, none stops the rest. */
export async function runClosers(closers: ReadonlyArray<() => MaybePromise<void>>, logger: Logger, what: string): Promise<void> {
  for (const fn of closers) {
    try {
      await fn();
    } catch (err) {
      logger.error(`${what}: ${String(err)}`);
    }
  }
}

/** What the filters see below them: the backend, with the export's `size` when the backend has none. */
function filterBase(cfg: ExportConfig, backend: Backend): Backend {
  return cfg.size !== undefined && backend.size === undefined ? layer(backend, { size: cfg.size }, { forwardWriteTargets: true }) : backend;
}

/**
 * Run the `prepare` step of the exports' filters (src/api/filter.ts,
 * "Preparation"), to await before `createServer({ exports })` when a filter
 * needs one (the partition filter does). Exports without such filters are
 * left alone, so calling it is always safe. A failure (a damaged partition
 * table) rejects with the export's name in the message.
 */
export async function prepareExports(exports: readonly ExportConfig[], logger: Logger = silentLogger): Promise<void> {
  for (const cfg of exports) {
    const filters = checkFilters(cfg.filters, `export "${cfg.name}"`);
    if (!cfg.backend || !filters.some((f) => typeof f.prepare === 'function')) continue;
    const closers: Array<() => MaybePromise<void>> = [];
    const context: FilterContext = { export: cfg.name, logger, onClose: (fn) => void closers.push(fn) };
    try {
      await prepareFilters(filterBase(cfg, cfg.backend), filters, context);
    } catch (err) {
      throw new NbdError('NBD_ERR_CONFIG', `export "${cfg.name}": ${(err as Error).message}`);
    } finally {
      await runClosers(closers, logger, `export "${cfg.name}": filter clean-up after preparation`);
    }
  }
}

/** The backend with its filters: built once (shared part), and per connection where a filter is per connection. */
function filterChain(cfg: ExportConfig, logger: Logger): Pick<ExportEntry, 'backend' | 'closers' | 'forConnection'> {
  const closers: Array<() => MaybePromise<void>> = [];
  const filters = checkFilters(cfg.filters, `export "${cfg.name}"`);
  if (!cfg.backend || filters.length === 0) return { backend: cfg.backend, closers };
  const base = filterBase(cfg, cfg.backend);
  const exportContext = (sink: Array<() => MaybePromise<void>>, connection?: ConnectionRef): FilterContext => ({
    export: cfg.name,
    connection,
    logger,
    onClose: (fn) => void sink.push(fn),
  });
  const split = connectionSplit(filters);
  const shared = applyFilters(base, filters.slice(split), exportContext(closers));
  // The export-wide instance: what the export advertises, and what serves when no filter is per connection.
  const backend = applyFilters(shared, filters.slice(0, split), exportContext(closers));
  if (split === 0) return { backend, closers };
  const perConnection = filters.slice(0, split);
  return {
    backend,
    closers,
    forConnection: (connection) => {
      const own: Array<() => MaybePromise<void>> = [];
      return { backend: applyFilters(shared, perConnection, exportContext(own, connection)), close: () => runClosers(own, logger, `export "${cfg.name}": ${connection.peer}: filter clean-up`) };
    },
  };
}

const DEFAULT_BLOCK = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };

/** Validate and describe one export (sizes ≤ 2^53, block sizes per option.block-size-constraints). */
export function describeExport(cfg: ExportConfig, maxPayload: number, logger: Logger): ExportEntry {
  if (typeof cfg.name !== 'string' || Buffer.byteLength(cfg.name) > 4096 || cfg.name.includes('\0')) {
    throw new NbdError('NBD_ERR_CONFIG', `export name ${JSON.stringify(cfg.name)} is not a valid NBD string`);
  }
  // The server never sends a longer string (general.string-limits): libnbd clients refuse the reply.
  if (cfg.description !== undefined && (typeof cfg.description !== 'string' || Buffer.byteLength(cfg.description) > 4096 || cfg.description.includes('\0'))) {
    throw new NbdError('NBD_ERR_CONFIG', `export "${cfg.name}": description must be a string of at most 4096 bytes without NUL`);
  }
  // createServer checks its static exports' backends first (naming exports[i]); openExport's results get this check.
  const backend = cfg.backend as unknown;
  if (backend !== undefined && (backend === null || typeof backend !== 'object' || typeof (backend as { read?: unknown }).read !== 'function')) {
    throw new NbdError('NBD_ERR_CONFIG', `export "${cfg.name}": backend must be an object with read(offset, length)`);
  }
  const chain = filterChain(cfg, logger);
  const filtered = chain.backend !== cfg.backend ? chain.backend : undefined;
  const size = filtered?.size ?? cfg.size ?? cfg.backend?.size;
  if (size === undefined || !Number.isSafeInteger(size) || size < 0) {
    throw new NbdError('NBD_ERR_CONFIG', `export "${cfg.name}": size must be an integer between 0 and 2^53 (got ${size})`);
  }
  const bs = { ...DEFAULT_BLOCK, ...chain.backend?.blockSizes, ...cfg.blockSizes };
  if (!isPowerOf2(bs.minimum) || bs.minimum > 65536) throw new NbdError('NBD_ERR_CONFIG', `export "${cfg.name}": minimum block size must be a power of 2 ≤ 64 KiB`);
  // option.block-size-constraints: the maximum is a multiple of the minimum, or 0xffffffff. One the export (or its
  // backend) sets itself is refused otherwise; one lowered to maxPayload (a server-wide limit) is rounded down to it.
  if (bs.maximum !== 0xffffffff && (!Number.isSafeInteger(bs.maximum) || bs.maximum < 1 || bs.maximum % bs.minimum !== 0)) {
    throw new NbdError('NBD_ERR_CONFIG', `export "${cfg.name}": maximum block size (${bs.maximum}) must be a multiple of the minimum block size (${bs.minimum}), or 0xffffffff`);
  }
  if (bs.maximum > maxPayload) bs.maximum = maxPayload - (maxPayload % bs.minimum);
  // A maxPayload below the default's or the backend's preferred size (4 KiB) lowers the preferred size to what may
  // be sent: the largest power of 2 within the maximum. A preferred size the export sets itself is kept (and checked).
  if (cfg.blockSizes?.preferred === undefined && bs.maximum < bs.preferred && bs.maximum !== 0xffffffff && bs.maximum > 0) bs.preferred = 2 ** Math.floor(Math.log2(bs.maximum));
  if (!isPowerOf2(bs.preferred) || bs.preferred < Math.max(bs.minimum, 512)) {
    throw new NbdError('NBD_ERR_CONFIG', `export "${cfg.name}": preferred block size must be a power of 2 ≥ max(minimum, 512)`);
  }
  if (bs.maximum < bs.preferred && bs.maximum !== 0xffffffff) {
    throw new NbdError('NBD_ERR_CONFIG', `export "${cfg.name}": maximum payload (${bs.maximum}, maxPayload ${maxPayload}) must be ≥ the preferred block size (${bs.preferred})`);
  }
  const caps = chain.backend ? backendCapabilities(chain.backend, cfg.readOnly) : flagCapabilities(cfg.flags, cfg.readOnly);
  const descriptor: ExportDescriptor = {
    name: cfg.name,
    description: cfg.description,
    size,
    flags: transmissionFlags(caps, { cache: cfg.cache ?? true }),
    blockSizes: bs,
    tlsOnly: cfg.tlsOnly,
  };
  return { config: cfg, descriptor, caps, ref: { name: cfg.name, size }, ...chain };
}

/**
 * Zero-copy WRITEs for a writable backend that exposes its storage
 * (Backend.writeTargets): the session's `placeWrite` handler for a connection
 * that negotiated this export, or undefined when its WRITEs are buffered.
 */
export function writePlacement(entry: ExportEntry, b: Backend | undefined): SessionHandlers['placeWrite'] {
  if (!b?.writeTargets || !entry.caps.write) return undefined;
  // FUA only where the backend takes it natively (honoured by a flush once the payload is in).
  const placeable = entry.caps.fua === 'native' ? CMD_FLAG.NBD_CMD_FLAG_FUA : 0;
  return (_s, frame) => {
    if ((frame.flags & ~placeable) !== 0) return null;
    const p = b.writeTargets!(frame.offset, frame.length);
    if (p === null) return null;
    if (typeof p !== 'object' || !Array.isArray(p.targets) || typeof p.commit !== 'function') {
      throw new TypeError('writeTargets must return { targets, commit } or null');
    }
    // The views go to the decoder; the finished (complete) request carries commit, called before its reply.
    return Object.assign([...p.targets], { commit: () => p.commit() });
  };
}
