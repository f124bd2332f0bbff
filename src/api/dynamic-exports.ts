/**
 * Exports made per connection: nbdkit's list_exports, default_export and
 * open as server hooks (ServerOptions.listExports, defaultExport as a
 * function, openExport), and the lifecycle of what they open.
 *
 * The handshake machine decides when to ask (it emits `resolve` for a name
 * it does not hold and waits in `resolving`); this answers, per connection:
 *  - a static export (ServerOptions.exports) always wins over openExport,
 *    and keeps its lifecycle (shared by every connection, closed when the
 *    server closes);
 *  - a name openExport opened is opened ONCE per connection: INFO then GO
 *    (or SET_META_CONTEXT, INFO, GO) for that name use the same open;
 *  - a successful open of a different name closes the earlier one, as does
 *    negotiating a static export; a null answer or a failure keeps it;
 *  - what is open when the connection ends is closed then (flush if
 *    writable, the backend's close, its filters' clean-up), and an open
 *    that completes after the connection ended is closed at once.
 * The export's filters are stacked on each open (describeExport).
 */
import type { ExportDescriptor, ListedExport, ResolveEvent, ResolveRequest } from '../machines/types.js';
import type { Logger } from '../transport/logger.js';
import type { MaybePromise } from './backend.js';
import { describeExport, runClosers, type ExportConfig, type ExportEntry } from './export-entry.js';
import type { ConnectionRef } from './request.js';
import { NbdError } from './errors.js';

/** The server's hooks (ServerOptions) for exports made per connection. */
export interface ExportHooks {
  /** NBD_OPT_LIST's entries for this connection, listed after the static exports (nbdkit's list_exports). */
  readonly listExports?: (connection: ConnectionRef) => MaybePromise<readonly ListedExport[]>;
  /** The export the empty name means: a name, null for none, or computed per connection (nbdkit's default_export). */
  readonly defaultExport?: string | null | ((connection: ConnectionRef) => MaybePromise<string | null>);
  /** An export for a name the server does not hold statically; null: there is none (nbdkit's open). */
  readonly openExport?: (name: string, connection: ConnectionRef) => MaybePromise<ExportConfig | null>;
}

/** What a connection's exports need of the server. */
export interface DynamicHost {
  readonly hooks: ExportHooks;
  readonly logger: Logger;
  readonly maxPayload: number;
  /** Bytes of NBD_REP_SERVER replies one LIST answer may make from listExports' list (maxListBytes). */
  readonly maxListBytes: number;
  /** The static export of this name. */
  staticEntry(name: string): ExportEntry | undefined;
}

/** The server's exports options, checked once (plain JavaScript may pass anything). */
export function checkExportOptions(options: ExportHooks & { readonly exports: unknown }): void {
  if (!Array.isArray(options.exports)) throw new NbdError('NBD_ERR_CONFIG', 'exports must be an array');
  if (options.exports.length === 0 && !options.openExport) throw new NbdError('NBD_ERR_CONFIG', 'at least one export (or openExport) is required');
  for (const hook of ['listExports', 'openExport'] as const) {
    if (options[hook] !== undefined && typeof options[hook] !== 'function') throw new NbdError('NBD_ERR_CONFIG', `${hook} must be a function`);
  }
}

/** A valid NBD string for an export name or description (≤ 4096 bytes, no NUL). */
function nbdString(value: unknown, what: string): string {
  if (typeof value !== 'string' || Buffer.byteLength(value) > 4096 || value.includes('\0')) {
    throw new TypeError(`${what} must be a string of at most 4096 bytes without NUL (got ${typeof value === 'string' ? `${Buffer.byteLength(value)} bytes` : typeof value})`);
  }
  return value;
}

/**
 * Most names a `listExports` hook may return (nbdkit's limit too): a LIST is answered in one go, so a
 * longer list would hold up every other connection while its replies are made. Their bytes are
 * bounded too (maxListBytes): 10 000 names and descriptions of 4 KiB each would be 82 MB.
 */
export const MAX_LISTED_EXPORTS = 10_000;

/** An NBD_REP_SERVER reply's bytes besides the name and description: reply header (20) and name length (4). */
const LIST_ENTRY_OVERHEAD = 24;

function checkList(list: unknown, maxBytes: number): ListedExport[] {
  if (!Array.isArray(list)) throw new TypeError(`listExports must return an array (got ${typeof list})`);
  if (list.length > MAX_LISTED_EXPORTS) throw new RangeError(`listExports returned ${list.length} exports, more than ${MAX_LISTED_EXPORTS}`);
  let bytes = 0;
  return list.map((e: unknown, i) => {
    const entry = (e ?? {}) as { name?: unknown; description?: unknown };
    const name = nbdString(entry.name, `listExports()[${i}].name`);
    const out = entry.description === undefined ? { name } : { name, description: nbdString(entry.description, `listExports()[${i}].description`) };
    bytes += LIST_ENTRY_OVERHEAD + Buffer.byteLength(name) + (out.description === undefined ? 0 : Buffer.byteLength(out.description));
    if (bytes > maxBytes) throw new RangeError(`listExports returned ${list.length} exports, whose replies pass maxListBytes (${maxBytes} bytes) at entry ${i}`);
    return out;
  });
}

/** Flush (if writable), close the backend, run the filters' clean-up: each failure one log line. */
export async function closeEntry(entry: ExportEntry, logger: Logger, what: string): Promise<void> {
  // A failed flush (a disk gone bad, an error filter) must not leave the backend open: close runs regardless.
  try {
    if (entry.backend?.flush && entry.caps.write) await entry.backend.flush();
  } catch (err) {
    logger.error(`${what}: flush: ${String(err)}`);
  }
  try {
    await entry.backend?.close?.();
  } catch (err) {
    logger.error(`${what}: ${String(err)}`);
  }
  await runClosers(entry.closers, logger, what);
}

/** One connection's exports: answers its handshake machine's `resolve`, holds what openExport opened. */
export class ConnectionExports {
  private current: { readonly key: string; readonly entry: ExportEntry } | null = null;
  private ended = false;
  /** The close of an export left behind at negotiation (close() waits for it). */
  private leftBehind: Promise<void> = Promise.resolve();

  constructor(
    private readonly host: DynamicHost,
    private readonly connection: () => ConnectionRef,
  ) {}

  /** The answer to the machine's `resolve` (a rejection becomes `resolve.failed`, logged by the session). */
  async resolve(request: ResolveRequest): Promise<ResolveEvent> {
    const hooks = this.host.hooks;
    if (request.kind === 'list') {
      if (!hooks.listExports) throw new Error('no listExports hook');
      return { type: 'resolve.list', exports: checkList(await hooks.listExports(this.connection()), this.host.maxListBytes) };
    }
    const name = request.name === '' ? await this.defaultName() : request.name;
    return { type: 'resolve.export', export: name === null ? null : await this.open(name) };
  }

  /** The entry a negotiated export is served from; any other open export is closed now (it is no longer wanted). */
  negotiated(exp: ExportDescriptor): ExportEntry | undefined {
    const current = this.current;
    if (current && current.entry.descriptor === exp) return current.entry;
    if (current) this.leftBehind = this.closeCurrent();
    return this.host.staticEntry(exp.name);
  }

  /** The connection ended: close what is open, and anything opened later. */
  async close(): Promise<void> {
    this.ended = true;
    await this.leftBehind;
    await this.closeCurrent();
  }

  private async defaultName(): Promise<string | null> {
    const d = this.host.hooks.defaultExport;
    if (typeof d !== 'function') return d ?? null;
    const name = await d(this.connection());
    return name === null ? null : nbdString(name, 'defaultExport()');
  }

  private async open(name: string): Promise<ExportDescriptor | null> {
    const found = this.host.staticEntry(name);
    if (found) return found.descriptor;
    const openExport = this.host.hooks.openExport;
    if (!openExport) return null;
    const conn = this.connection();
    // What was opened for the plaintext client is not what a TLS client (or another identity) gets: asked again then.
    const key = JSON.stringify([name, conn.tls, conn.tlsIdentity ?? null]);
    if (this.current?.key === key) return this.current.entry.descriptor;
    const cfg = await openExport(name, conn);
    if (cfg === null || cfg === undefined) return null;
    let entry: ExportEntry;
    try {
      entry = describeExport(cfg, this.host.maxPayload, this.host.logger);
    } catch (err) {
      // Handed over but unusable: closed here, the client told the export could not be opened.
      await Promise.resolve(cfg.backend?.close?.()).catch(() => {});
      throw err;
    }
    if (this.ended) {
      await closeEntry(entry, this.host.logger, `${this.connection().peer}: closing export "${cfg.name}" opened after the connection ended`);
      return null;
    }
    // Held before the earlier one is closed, so a connection ending meanwhile closes this one too.
    const previous = this.current;
    this.current = { key, entry };
    if (previous) await closeEntry(previous.entry, this.host.logger, `${conn.peer}: closing export "${previous.entry.ref.name}"`);
    return entry.descriptor;
  }

  private async closeCurrent(): Promise<void> {
    const current = this.current;
    if (!current) return;
    this.current = null;
    await closeEntry(current.entry, this.host.logger, `${this.connection().peer}: closing export "${current.entry.ref.name}"`);
  }
}
