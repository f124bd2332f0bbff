/**
 * createServer(): exports, listeners, the request stream, connection events.
 */
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { Subject, type Observable } from 'rxjs';
import type { InspectionEvent, Observer } from 'xstate';
import type { Negotiated, TlsPolicy } from '../machines/types.js';
import type { HandshakeInput } from '../machines/handshake.js';
import type { DecoderLimits } from '../protocol/decoder.js';
import type { CloseCode } from '../protocol/errors.js';
import { withCode } from '../transport/effects.js';
import { createConnectionActor, Session, type ConnectionActor, type SessionHandlers } from '../transport/session.js';
import { activationFds, descriptorWatch, listen, listenHost, nbdUri, type BoundAddress, type ListenTarget } from '../transport/listen.js';
import { consoleLogger, type Logger } from '../transport/logger.js';
import { NbdError } from './errors.js';
import { NbdRequest, type ConnectionRef } from './request.js';
import { handleWithBackend } from './serve.js';
import { createTlsUpgrader, type TlsConfig, type TlsUpgrade } from '../transport/tls.js';
import { validateLimits, type ServerLimits } from './limits.js';
import { DEFAULTS } from '../defaults.js';
import { describeExport, writePlacement, type ExportConfig, type ExportEntry } from './export-entry.js';
import { checkExportOptions, closeEntry, ConnectionExports, type DynamicHost, type ExportHooks } from './dynamic-exports.js';
import type { Backend } from './backend.js';
import { ServerRecorder } from '../inspect/recorder.js';
import type { TraceSink } from '../inspect/trace-format.js';
import { ConnectionViolations, ViolationHub, type Violation } from './violations.js';
import { warmUpLogged, type WarmUpOptions } from './warm-up.js';
import { checkServerOptions, safeInspect, safeLogger } from './server-options.js';
import { BufferPool } from '../transport/buffer-pool.js';

export type { Violation } from './violations.js';

export type { ExportConfig } from './export-entry.js';
export type { ServerLimits } from './limits.js';


/** Exports per connection (nbdkit's list_exports, default_export, open): docs/exports.md. */
export interface ServerOptions extends ExportHooks {
  /** Static exports, shared by every connection (may be empty with `openExport`). */
  readonly exports: readonly ExportConfig[];
  /** What the empty name means: a name (default: the first static export), null for none, or a function of the connection. */
  readonly defaultExport?: ExportHooks['defaultExport'];
  readonly limits?: ServerLimits;
  /** xstate inspection hook, attached to every connection actor. */
  readonly inspect?: Observer<InspectionEvent> | ((event: InspectionEvent) => void);
  readonly logger?: Logger;
  readonly tls?: TlsConfig;
  /** Offer structured replies (default true). */
  readonly structuredReplies?: boolean;
  /** Offer the experimental extended headers (default true). */
  readonly extendedHeaders?: boolean;
  /** Record every connection (open, machine events and steps, frames both ways, TLS, refusals, close) here, e.g. `traceFile(path)`. */
  readonly trace?: TraceSink;
  /** Strict mode for client developers: log every client protocol violation (`violations$`) as a warning with its rule ID, frame and connection (default false). */
  readonly strict?: boolean;
  /**
   * Have listen() first run warmUp() (src/api/warm-up.ts, once): V8 compiles the connection code before the first real
   * client, which then does not wait for it. Costs ~40 ms CPU; this server's logger (debug aside), trace, inspect hook and
   * observables see nothing of it. Default false (`nbd-engine serve`: on, --no-warm-up). An object: warmUp()'s options.
   */
  readonly warmUp?: boolean | WarmUpOptions;
}

export interface ConnectionInfo extends ConnectionRef {
  readonly remote?: string;
}

export type ConnectionEvent =
  | { readonly type: 'opened'; readonly connection: ConnectionInfo }
  | { readonly type: 'negotiated'; readonly connection: ConnectionInfo; readonly export: string; readonly negotiated: Negotiated }
  /** `code`: why it ended, in the error catalogue (src/protocol/errors.ts); `reason`: its text with the details. */
  | { readonly type: 'closed'; readonly connection: ConnectionInfo; readonly outcome: string; readonly code: CloseCode; readonly reason: string };

export interface ListenResult {
  readonly address: BoundAddress;
  readonly uris: readonly string[];
}

export class NbdServer {
  /** Validated requests for exports without a backend. */
  readonly requests$: Observable<NbdRequest>;
  /** opened / negotiated / closed, per connection. */
  readonly connections$: Observable<ConnectionEvent>;
  /** Every protocol violation a client commits (src/api/violations.ts), strict mode or not. */
  readonly violations$: Observable<Violation>;
  private readonly violationHub: ViolationHub;
  private readonly requestSubject = new Subject<NbdRequest>();
  private readonly connectionSubject = new Subject<ConnectionEvent>();
  private readonly exports = new Map<string, ExportEntry>();
  private readonly handshakeInput: HandshakeInput;
  private readonly logger: Logger;
  private readonly listeners: Array<{ server: net.Server; address: BoundAddress }> = [];
  private readonly sessions = new Set<Session>();
  private readonly upgradeTls: ((s: Duplex) => Promise<TlsUpgrade>) | undefined;
  private readonly tlsPolicy: TlsPolicy;
  private nextId = 1;
  private closing: Promise<void> | null = null;
  private warmed: Promise<void> | undefined;
  /** Says when accepted sockets have used up the file descriptors (listen.ts descriptorWatch), for every listener. */
  private fdWatch: ((socket: net.Socket) => void) | undefined;
  /** The next connection's actor, built while idle (only without an inspect hook). */
  private spareActor: ConnectionActor | null = null;
  /** READ buffers lent to backends (readInto) and handlers (request.readBuffer), shared by every connection. */
  readonly readPool: BufferPool;
  private spareScheduled = false;
  private readonly recorder: ServerRecorder;
  private readonly dynamicHost: DynamicHost;
  /** The caller's inspect hook, wrapped so that a throw cannot break a connection. */
  private readonly inspect: ((event: InspectionEvent) => void) | undefined;
  /** Connections' clean-up still running (close() waits for it). */
  private readonly closings = new Set<Promise<void>>();

  constructor(private readonly options: ServerOptions) {
    checkServerOptions(options);
    this.logger = options.logger ? safeLogger(options.logger) : consoleLogger(false);
    this.inspect = options.inspect ? safeInspect(options.inspect, this.logger) : undefined;
    validateLimits(options.limits);
    const maxPayload = options.limits?.maxPayload ?? DEFAULTS.maxPayload;
    checkExportOptions(options);
    for (const cfg of options.exports) {
      if (this.exports.has(cfg.name)) throw new NbdError('NBD_ERR_CONFIG', `export "${cfg.name}" is defined twice`);
      this.exports.set(cfg.name, describeExport(cfg, maxPayload, this.logger));
    }
    const computedDefault = typeof options.defaultExport === 'function';
    const defaultExport = options.defaultExport === null || computedDefault ? undefined : (options.defaultExport ?? options.exports[0]?.name);
    // A default that is not static must be one openExport may open.
    if (defaultExport !== undefined && !this.exports.has(defaultExport) && !options.openExport) {
      throw new NbdError('NBD_ERR_CONFIG', `default export "${defaultExport}" is not defined`);
    }
    const tls = options.tls;
    this.tlsPolicy = !tls || tls.mode === 'off' ? 'off' : tls.mode === 'require' ? 'required' : 'optional';
    this.upgradeTls = tls && tls.mode !== 'off' ? createTlsUpgrader(tls) : undefined;
    this.handshakeInput = {
      exports: [...this.exports.values()].map((e) => e.descriptor),
      defaultExport,
      tls: this.tlsPolicy,
      maxOptions: options.limits?.maxOptions ?? DEFAULTS.maxOptions,
      structuredReplies: options.structuredReplies ?? true,
      extendedHeaders: options.extendedHeaders ?? true,
      // The handshake machine asks (`resolve`) for names it does not hold and, with listExports, for each LIST's list.
      resolveExports: !!options.openExport || computedDefault,
      resolveList: !!options.listExports,
    };
    this.dynamicHost = { hooks: options, logger: this.logger, maxPayload, maxListBytes: options.limits?.maxListBytes ?? DEFAULTS.maxListBytes, staticEntry: (name) => this.exports.get(name) };
    this.readPool = new BufferPool(options.limits?.readBufferPool ?? DEFAULTS.readBufferPool);
    this.requests$ = this.requestSubject.asObservable();
    this.connections$ = this.connectionSubject.asObservable();
    this.recorder = new ServerRecorder(options.trace);
    this.violationHub = new ViolationHub(options.strict ?? false, this.logger);
    this.violations$ = this.violationHub.violations$;
  }

  /**
   * Record every live and future connection to `sink` until unsubscribed. A
   * live connection first gives the sink its open record and a snapshot of
   * each running machine, then everything after. With no tap and no `trace`
   * option, no connection is observed.
   */
  tap(sink: TraceSink): { unsubscribe(): void } {
    return this.recorder.tap(sink);
  }

  /** Whether TLS is required (URIs then use nbds://). */
  get tlsRequired(): boolean {
    return this.tlsPolicy === 'required';
  }

  /** Addresses bound so far. */
  get addresses(): BoundAddress[] {
    return this.listeners.map((l) => l.address);
  }

  /** NBD URIs for every listener and export. */
  get uris(): string[] {
    const out: string[] = [];
    for (const l of this.listeners) for (const name of this.exports.keys()) {
      const u = nbdUri(l.address, name, this.tlsRequired);
      if (u) out.push(u);
    }
    return out;
  }

  /** Number of open connections. */
  get connectionCount(): number {
    return this.sessions.size;
  }

  /**
   * Listen on a UNIX socket (`{ path }`), TCP (`{ port, host }`), an
   * inherited fd (`{ fd }`), or the systemd-activated fds (`'activation'`).
   */
  async listen(target: ListenTarget | 'activation' = { port: 10809, host: 'localhost' }): Promise<ListenResult[]> {
    // Before binding, so that no client arrives before the code is warm; close() may come meanwhile.
    if (this.options.warmUp && !this.closing) await (this.warmed ??= warmUpLogged(this.options.warmUp, this.logger));
    if (this.closing) throw new NbdError('NBD_ERR_CLOSED', 'server is closed');
    const targets: ListenTarget[] = target === 'activation' ? activationFds().map((fd) => ({ fd })) : [target];
    if (targets.length === 0) throw new NbdError('NBD_ERR_CONFIG', 'socket activation requested but LISTEN_FDS/LISTEN_PID name no sockets');
    const results: ListenResult[] = [];
    this.fdWatch ??= descriptorWatch((m) => this.logger.warn(m));
    const fdWatch = this.fdWatch;
    for (const t of targets) {
      const onSocket = (socket: net.Socket) => {
        fdWatch(socket);
        this.accept(socket);
      };
      // A TCP host name: every address it resolves to.
      for (const l of 'port' in t ? await listenHost(t, onSocket, { warn: (m) => this.logger.warn(m) }) : [await listen(t, onSocket)]) {
        l.server.on('error', (err) => this.logger.error(`listener error: ${err.message}`));
        this.listeners.push(l);
        this.prepareSpareActor();
        const uris = [...this.exports.keys()].map((n) => nbdUri(l.address, n, this.tlsRequired)).filter((u): u is string => !!u);
        results.push({ address: l.address, uris });
      }
    }
    return results;
  }

  /** Serve one already-connected stream (a socket from elsewhere, a pipe pair, a test). */
  accept(socket: Duplex & { remoteAddress?: string; setNoDelay?: (b: boolean) => unknown }): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const max = this.options.limits?.maxConnections;
    if (max !== undefined && this.sessions.size >= max) {
      // Closed before the greeting: the client sees the connection end at once.
      const from = socket.remoteAddress ? ` from ${socket.remoteAddress}` : '';
      this.logger.warn(`connection${from} refused: ${max} connections open (maxConnections)`);
      socket.on('error', () => {});
      socket.destroy();
      return;
    }
    socket.setNoDelay?.(true); // the spec: both sides SHOULD set TCP_NODELAY
    const id = this.nextId++;
    const peer = socket.remoteAddress ? `connection ${id} (${socket.remoteAddress})` : `connection ${id}`;
    let info: ConnectionInfo = { id, peer, tls: false };
    let closeFilters: (() => Promise<void>) | undefined;
    // Exports opened for this connection (openExport), when the server makes them.
    const own = this.handshakeInput.resolveExports || this.handshakeInput.resolveList ? new ConnectionExports(this.dynamicHost, () => ({ ...info, tls: session.tls, tlsIdentity: session.tlsIdentity })) : undefined;
    const handlers: SessionHandlers = {
      resolve: own && ((_s, request) => own.resolve(request)),
      onNegotiated: (s, negotiated) => {
        info = { ...info, tls: negotiated.tls, tlsIdentity: s.tlsIdentity };
        this.connectionSubject.next({ type: 'negotiated', connection: info, export: negotiated.export.name, negotiated });
        // Bind the request handler to this export once (hot path: no lookups).
        const entry = own ? own.negotiated(negotiated.export)! : this.exports.get(negotiated.export.name)!;
        // Per-connection filters make this connection its own chain, cleaned up when it closes.
        const chain = entry.forConnection?.(info);
        if (chain) closeFilters = chain.close;
        const backend = chain?.backend ?? entry.backend;
        handlers.onRequest = this.requestHandler(entry, backend, negotiated, info);
        // Zero-copy WRITEs where the backend exposes its storage (undefined: WRITEs are buffered).
        handlers.placeWrite = writePlacement(entry, backend);
      },
      onRequest: (s) => s.destroy('request before negotiation', 'NBD_ERR_INTERNAL'),
      onClose: (_s, closeInfo) => {
        this.sessions.delete(session);
        // The connection's own filters first, then what openExport opened for it (the filters sit above it).
        const closing = Promise.resolve(closeFilters?.()).then(() => own?.close());
        this.closings.add(closing);
        void closing.finally(() => this.closings.delete(closing));
        this.recorder.close(session, closeInfo);
        this.prepareSpareActor();
        this.connectionSubject.next({ type: 'closed', connection: info, outcome: closeInfo.outcome, code: closeInfo.code, reason: closeInfo.reason });
        this.logger.info?.(`${peer}: closed (${closeInfo.outcome}, ${withCode(closeInfo.code, closeInfo.reason)})`);
      },
    };
    const session = new Session(
      socket,
      {
        id,
        peer,
        handshake: this.handshakeInput,
        decoderLimits: this.decoderLimits(),
        maxInFlight: this.options.limits?.maxInFlight ?? DEFAULTS.maxInFlight,
        maxInFlightBytes: this.options.limits?.maxInFlightBytes ?? DEFAULTS.maxInFlightBytes,
        maxQueuedReplyBytes: this.options.limits?.maxQueuedReplyBytes ?? DEFAULTS.maxQueuedReplyBytes,
        handshakeTimeout: this.options.limits?.handshakeTimeout ?? DEFAULTS.handshakeTimeout,
        idleTimeout: this.options.limits?.idleTimeout ?? DEFAULTS.idleTimeout,
        lingerTimeout: this.options.limits?.lingerTimeout ?? DEFAULTS.lingerTimeout,
        maxExtents: this.options.limits?.maxExtents ?? DEFAULTS.maxExtents,
        inspect: this.inspect,
        logger: this.logger,
        upgradeTls: this.upgradeTls,
        actor: this.takeSpareActor(),
        readPool: this.readPool,
      },
      handlers,
    );
    session.violations = new ConnectionViolations(this.violationHub, () => info);
    this.sessions.add(session);
    this.recorder.open(session, socket.remoteAddress ? `${socket.remoteAddress}:${(socket as { remotePort?: number }).remotePort}` : 'local');
    this.connectionSubject.next({ type: 'opened', connection: info });
    this.logger.info?.(`${peer}: opened`);
    session.start();
  }

  /** The actor built ahead of time for the next connection, if there is one. */
  private takeSpareActor(): ConnectionActor | undefined {
    const actor = this.spareActor ?? undefined;
    this.spareActor = null;
    return actor;
  }

  /**
   * Build the next connection's actor once the event loop is idle: building
   * resolves the connection and handshake machines' initial states, most of
   * what stands between accept() and the greeting. Done when listening
   * starts and after a connection closes (not after an accept, where it would
   * delay that connection's first replies). Not done with an inspect hook,
   * whose watchers would see an actor before its connection.
   */
  private prepareSpareActor(): void {
    if (this.inspect || this.spareActor || this.spareScheduled || this.closing) return;
    this.spareScheduled = true;
    setImmediate(() => {
      this.spareScheduled = false;
      if (this.closing || this.spareActor) return;
      try {
        this.spareActor = createConnectionActor(this.handshakeInput, this.decoderLimits().maxPayload!, undefined);
      } catch (err) {
        // The next connection builds its own (and reports the failure on its own connection).
        this.logger.warn(`building the next connection's machine failed: ${String(err)}`);
      }
    });
  }

  private requestHandler(entry: ExportEntry, backend: Backend | undefined, negotiated: Negotiated, connection: ConnectionInfo): SessionHandlers['onRequest'] {
    const ctxs = negotiated.metaContexts;
    const caps = entry.caps;
    const logger = this.logger;
    if (backend) {
      return (sess, frame) => {
        const req = new NbdRequest(frame, sess, entry.ref, connection, ctxs);
        const r = handleWithBackend(req, backend, caps, logger);
        if (r) r.catch((e: unknown) => logger.error(`${sess.peer}: ${String(e)}`));
      };
    }
    return (sess, frame) => {
      const req = new NbdRequest(frame, sess, entry.ref, connection, ctxs);
      // Without an extents handler: reply() synthesises one allocated-data extent, as nbdkit does.
      if (req.type === 'blockStatus' && !caps.extents) return req.reply();
      if (!this.requestSubject.observed) {
        // CACHE is only a hint; anything else needs someone to answer it.
        if (req.type === 'cache') return req.reply();
        logger.error(`${sess.peer}: no subscriber on requests$ for export "${entry.ref.name}"; failing ${req.type} with EIO`);
        return req.fail('EIO', 'no request handler');
      }
      this.requestSubject.next(req);
    };
  }

  private decoderLimits(): Partial<DecoderLimits> {
    const l = this.options.limits ?? {};
    const maxPayload = l.maxPayload ?? DEFAULTS.maxPayload;
    return {
      maxPayload,
      maxOptionLength: l.maxOptionLength ?? DEFAULTS.maxOptionLength,
      // A skip limit below a raised buffering limit is refused at createServer; one left at its default follows it.
      maxOptionSkip: Math.max(l.maxOptionSkip ?? DEFAULTS.maxOptionSkip, l.maxOptionLength ?? 0),
      maxPayloadSkip: Math.max(l.maxPayloadSkip ?? DEFAULTS.maxPayloadSkip, maxPayload),
      maxBufferedBytes: l.maxBufferedBytes ?? maxPayload + DEFAULTS.bufferedSlack,
    };
  }

  /**
   * Stop accepting, let in-flight requests finish (new ones get
   * ESHUTDOWN), flush and close the backends. Connections still open after
   * `timeout` ms are dropped.
   */
  close(options: { timeout?: number } = {}): Promise<void> {
    this.closing ??= this.doClose(options.timeout ?? DEFAULTS.closeTimeout);
    return this.closing;
  }

  private async doClose(timeout: number): Promise<void> {
    // Stop accepting now; net.Server's close callback only fires once every
    // connection has ended, so wait for it after the sessions are drained.
    const listenersClosed = Promise.all(this.listeners.map((l) => new Promise<void>((r) => l.server.close(() => r()))));
    for (const s of this.sessions) s.shutdown();
    const deadline = Date.now() + timeout;
    while (this.sessions.size > 0 && Date.now() < deadline) {
      // Sessions still negotiating get ERR_SHUTDOWN to their options; idle ones close when drained.
      await new Promise((r) => setTimeout(r, 20));
      for (const s of this.sessions) if (!s.negotiated && Date.now() > deadline - timeout + 1000) s.destroy('server closing', 'NBD_CLOSED_SHUTDOWN');
    }
    // One line for the operator who wonders why stopping took the whole timeout (each connection's own close line is info).
    if (this.sessions.size > 0) this.logger.warn(`closing: ${this.sessions.size} connection(s) still busy after ${timeout} ms; dropping them`);
    for (const s of this.sessions) s.destroy('server closing (timeout)', 'NBD_CLOSED_SHUTDOWN');
    // A destroyed connection says it closed once its socket has (connections$ 'closed', the log line):
    // give that a moment, so that the stream does not complete before them.
    for (const grace = Date.now() + 1000; this.sessions.size > 0 && Date.now() < grace; ) await new Promise((r) => setTimeout(r, 10));
    await listenersClosed;
    // A backend whose flush or close never settles must not keep close() from resolving: what is left at the
    // deadline (the timeout again, from here) is given up with one line.
    const giveUpAt = Date.now() + timeout;
    const bounded = async (work: Promise<unknown>, what: string): Promise<void> => {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), Math.max(0, giveUpAt - Date.now()))));
      const r = await Promise.race([work.then(() => 'done' as const), late]);
      clearTimeout(timer);
      if (r === 'late') this.logger.error(`${what} did not finish within ${timeout} ms of closing; given up`);
    };
    await bounded(Promise.all(this.closings), "connections' exports and filters closing");
    for (const e of this.exports.values()) await bounded(closeEntry(e, this.logger, `closing export "${e.ref.name}"`), `closing export "${e.ref.name}" (flush, close)`);
    this.requestSubject.complete();
    this.connectionSubject.complete();
    this.violationHub.complete();
  }
}

export function createServer(options: ServerOptions): NbdServer {
  return new NbdServer(options);
}
