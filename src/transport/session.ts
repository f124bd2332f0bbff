/**
 * One client connection, wired: socket bytes (rxjs) → FrameDecoder →
 * connection actor (xstate) → ReplyWriter. The jobs live next door: the
 * input in `input.ts`, flow control and the pump loop in `flow.ts`, the
 * machines' effects in `effects.ts` and their states in `machines.ts`, the
 * STARTTLS upgrade in `starttls.ts`, exports resolved by the server in `resolve.ts`, the clocks in `timers.ts`, zero-copy
 * WRITE placement in `placement.ts`, how the connection ends (why, the one
 * warning, the socket's errors and close, the wrap-up) in `endings.ts`. The
 * machines decide; the session carries out their effects and keeps no copy
 * of their states. Nothing here throws into the event loop: every
 * subscription and actor has an error path, and any failure drops this
 * connection alone.
 */
import type { Duplex } from 'node:stream';
import { FrameDecoder } from '../protocol/decoder.js';
import { createConnectionActor, type ConnectionActor, type SessionHandlers, type SessionOptions } from './session-options.js';
import type { ClientFrame, RequestFrame } from '../protocol/frames.js';
import { BufferPool } from './buffer-pool.js';
import { ReplyEncoder, replyModeOf, type ReadSegment, type ReplyMode } from '../protocol/replies.js';
import type { Extent } from '../protocol/encoder.js';
import type { ReplySink } from '../api/request.js';
import { cmdName, errnoName } from '../protocol/constants.js';
import type { Negotiated, Refusal } from '../machines/types.js';
import { ReplyWriter } from './socket.js';
import { releaseBytes } from './slab-account.js';
import { FlowControl } from './flow.js';
import { ConnectionTimers } from './timers.js';
import { acceptedTargets } from './placement.js';
import { handshakeEffect, transmissionEffect, type EffectHost } from './effects.js';
import type { CloseCode } from '../protocol/errors.js';
import { SocketInput } from './input.js';
import { ConnectionMachines } from './machines.js';
import { ConnectionEnding } from './endings.js';
import { plaintextDuringUpgrade, SessionUpgrade, startTls } from './starttls.js';
import type { Logger } from './logger.js';
import type { ConnectionTrace } from '../inspect/recorder.js';
import type { ConnectionViolations } from '../api/violations.js';
import { DEFAULTS } from '../defaults.js';
import { bytesTakenByPeer } from './user-buffer.js';

export { createConnectionActor, type ConnectionActor, type SessionHandlers, type SessionOptions } from './session-options.js';

export class Session implements ReplySink {
  readonly id: number;
  readonly peer: string;
  negotiated: Negotiated | null = null;
  /** PSK identity or client certificate CN once TLS is up. */
  tlsIdentity: string | undefined;
  private socket: Duplex;
  private writer: ReplyWriter;
  /** Every reply of the transmission phase gets its form here, answers and refusals alike. */
  private readonly replies: ReplyEncoder;
  private readonly decoder: FrameDecoder;
  private readonly actor: ConnectionActor;
  private readonly flow: FlowControl;
  private readonly timers: ConnectionTimers;
  private readonly machines: ConnectionMachines;
  private readonly input: SocketInput;
  private readonly upgrade: SessionUpgrade;
  private readonly ending: ConnectionEnding;
  private readonly log: Logger;
  /** READ buffers lent to the application and taken back once written (the server's pool, or this session's own). */
  private readonly readPool: BufferPool;
  /** The recorder while something records this connection (set by `record`, from server.ts); null otherwise: each tap is one check. */
  trace: ConnectionTrace | null = null;
  /** Reports the client's protocol violations (set by server.ts before `start`). */
  violations: ConnectionViolations | null = null;

  constructor(socket: Duplex, private readonly options: SessionOptions, private readonly handlers: SessionHandlers) {
    this.id = options.id;
    this.peer = options.peer ?? `connection ${options.id}`;
    this.socket = socket;
    this.log = options.logger;
    this.readPool = options.readPool ?? new BufferPool(DEFAULTS.readBufferPool);
    this.ending = new ConnectionEnding({
      log: this.log,
      peer: this.peer,
      actor: () => this.actor,
      send: (event) => this.sendToActive(event),
      incomplete: () => this.decoder.incomplete,
      closed: () => this.machines.closed,
      upgrading: () => this.machines.upgrading,
      dropSocket: () => this.writer.destroy(),
      halt: () => {
        this.timers.stop();
        this.input.detach();
      },
      notify: (info) => this.handlers.onClose?.(this, info),
    });
    this.decoder = new FrameDecoder(options.decoderLimits, releaseBytes);
    this.flow = new FlowControl(options, {
      decoder: this.decoder,
      queuedReplyBytes: () => this.writer.pendingBytes,
      closed: () => this.machines.closed,
      // Nothing is taken once no reply can reach the client (a reset or a write error dropped the socket):
      // requests still buffered would run against the backend for nobody, past the byte budget the
      // dropped replies no longer count against.
      pulling: () => this.writer.open && (this.machines.transmission !== null || (!this.machines.upgrading && !this.machines.resolving)),
      draining: () => this.machines.draining,
      readingPaused: () => this.machines.readingPaused,
      crossed: (full) => this.actor.send({ type: full ? 'budget.full' : 'budget.room' }),
      sendRequests: (frames) => {
        // Recording a frame may end the recording (a live page that falls behind is detached): ask each time.
        if (this.trace) for (const f of frames) this.trace?.frameIn(f);
        this.violations?.burstIn(frames);
        this.sendToActive(frames.length === 1 ? { type: 'request', frame: frames[0] } : { type: 'requests', frames });
      },
      dispatch: (f) => this.dispatch(f),
      fatal: (f) => this.ending.fatal(f),
      afterDisc: () => {
        if (this.decoder.phase !== 'stopped') this.input.ignore(this.decoder.stop());
      },
      eof: () => {
        this.ending.reportIncomplete('closed the connection');
        this.sendToActive({ type: 'client.eof' });
      },
      idle: () => this.sendToActive({ type: 'inflight.idle' }),
    });
    this.timers = new ConnectionTimers(options, {
      handshakeExpired: (ms) => this.onHandshakeTimeout(ms),
      working: () => this.flow.requestsInFlight > 0,
      repliesWaiting: () => this.writer.pendingBytes > 0,
      bytesTaken: () => bytesTakenByPeer(this.socket),
      idleExpired: (ms, unread) => {
        this.log.warn(`${this.peer}: idle for ${ms} ms${unread ? ' (its replies unread)' : ''}; closing`);
        this.sendToActive({ type: 'timer.idle', ms, unread });
      },
    });
    this.input = new SocketInput(this.decoder, {
      closed: () => this.machines.closed,
      upgrading: () => this.machines.upgrading,
      plaintextDuringUpgrade: (n) => plaintextDuringUpgrade(this.upgrade, n),
      touched: () => this.timers.touch(),
      pump: () => this.flow.pump(),
      fatal: (f) => this.ending.fatal(f),
      socketError: (err) => this.ending.socketError(err),
      eof: () => this.onEof(),
      internalError: (message) => this.ending.fail(message),
      ignored: (n) => this.violations?.ignored(n),
      log: this.log,
      peer: this.peer,
    });
    this.writer = this.writerOn(socket);
    this.replies = new ReplyEncoder(this.writer);
    this.actor = options.actor ?? createConnectionActor(options.handshake, this.decoder.limits.maxPayload, options.inspect);
    this.machines = new ConnectionMachines(this.actor, {
      handshake: (e) => {
        if (this.trace) this.trace.handshakeEffect(e);
        this.violations?.handshake(e);
        handshakeEffect(this.effectHost, e);
      },
      // The handshake's last replies (GO's ACK, EXPORT_NAME's reply) go out the moment it finishes,
      // before the transmission machine is built: the client is waiting for them.
      handshakeDone: () => this.writer.flushNow(),
      transmission: (e) => {
        this.violations?.transmission(e);
        transmissionEffect(this.effectHost, e);
      },
      failed: (message) => this.ending.fail(message),
    });
    this.upgrade = this.upgradeOf();
  }

  /** Start the connection: greeting out, bytes in. */
  start(): void {
    this.socket.on('error', this.ending.socketError);
    this.socket.on('close', this.ending.socketClosed);
    this.socket.on('drain', this.onDrain);
    // The connection machine's reading region: what it says is what happens to the socket's input.
    this.actor.on('pauseReading', () => this.socket.pause());
    this.actor.on('resumeReading', () => this.socket.resume());
    this.actor.on('stopReading', () => this.stopReading());
    this.actor.subscribe({
      next: (snap) => this.onConnectionSnapshot((snap.value as { phase: string }).phase),
      error: (err) => this.ending.fail(`connection machine error: ${String(err)}`),
      complete: () => this.onConnectionDone(),
    });
    // The handshake child exists once the actor is built and emits the
    // greeting as soon as it starts, inside actor.start(): listen first.
    this.machines.attachChildren();
    try {
      this.actor.start();
    } catch (err) {
      this.ending.fail(`connection machine failed to start: ${String(err)}`);
      return;
    }
    // The client waits for the greeting: send it before setting up reads.
    this.writer.flushNow();
    // Without STARTTLS the raw socket is never handed to TLS: it may read into slabs.
    this.input.attach(this.socket, !this.options.upgradeTls);
    if (!this.machines.closed) this.timers.startHandshake();
  }

  /** TLS is up, as the handshake machine records it. */
  get tls(): boolean {
    return this.machines.tls;
  }

  /** Requests with the application right now. */
  get requestsInFlight(): number {
    return this.flow.requestsInFlight;
  }

  /** The connection actor (for inspection and tests). */
  get connectionActor(): ConnectionActor {
    return this.actor;
  }

  record(t: ConnectionTrace | null): void {
    this.trace = t;
    this.replies.tap = t ? (frame) => t.replyOut(frame) : null;
  }

  /** The reply form negotiation fixed. */
  get replyMode(): ReplyMode {
    return this.replies.mode;
  }

  // ── answers to requests handed to `onRequest` (ReplySink): each frees the request's slot ──

  ok(cookie: bigint, offset: number, released: number): void {
    this.replies.ok(cookie, offset);
    this.answered(released);
  }

  read(cookie: bigint, offset: number, data: Buffer | readonly ReadSegment[], df: boolean, released: number, lent?: boolean): void {
    this.replies.read(cookie, offset, data, df, lent === true ? this.readPool : undefined);
    this.answered(released);
  }

  /** ReplySink: a buffer for one READ's data, lent from the server's pool (back once the reply is written). */
  lend(length: number): Buffer {
    return this.readPool.take(length);
  }

  /** A request was answered: its slot is free; the last one in flight restarts the idle clock. */
  private answered(released: number): void {
    this.flow.completed(released);
    if (this.flow.requestsInFlight === 0) this.timers.touch();
  }

  /** ReplySink: what the request counts against the byte budget until answered (flow control decides). */
  heldBytes(frame: RequestFrame): number {
    return this.flow.held(frame);
  }

  /** ReplySink: the BLOCK_STATUS descriptor cap of this connection's server. */
  get maxExtents(): number {
    return this.options.maxExtents ?? DEFAULTS.maxExtents;
  }

  blockStatus(cookie: bigint, offset: number, contexts: ReadonlyArray<{ readonly id: number; readonly extents: readonly Extent[] }>, released: number): void {
    this.replies.blockStatus(cookie, offset, contexts);
    this.answered(released);
  }

  error(cookie: bigint, command: number, errno: number, message: string | undefined, offset: number, released: number): void {
    this.replies.error(cookie, command, errno, message, offset);
    this.answered(released);
  }

  /** Begin a graceful shutdown: in-flight requests finish, new ones get ESHUTDOWN / ERR_SHUTDOWN. */
  shutdown(): void {
    if (this.machines.closed) return;
    this.sendToActive({ type: 'server.shutdown' });
  }

  /** Drop the connection now; `code` and `reason` say why (connections$, the log). */
  destroy(reason = 'destroyed', code: CloseCode = 'NBD_ERR_INTERNAL'): void {
    this.ending.destroy(reason, code);
  }

  /** The decoder's placement provider (placement.ts): the machine's own check decides, then the handler's offer. */
  private readonly placeWrite = (frame: RequestFrame): readonly Buffer[] | null =>
    acceptedTargets(frame, this.machines.transmission, this.machines.closed, this.handlers.placeWrite && ((f) => this.handlers.placeWrite!(this, f)), this.log, this.peer);

  private dispatch(f: ClientFrame): void {
    if (this.trace) this.trace.frameIn(f);
    this.violations?.frameIn(f, this.decoder);
    switch (f.kind) {
      case 'request':
        this.sendToActive({ type: 'request', frame: f });
        return;
      case 'option':
        this.sendToActive({ type: `opt.${f.opt}`, frame: f });
        return;
      case 'clientFlags':
        this.sendToActive({ type: 'wire.clientFlags', flags: f.flags });
        return;
    }
  }

  /** The connection is over (the machine's `reading.stopped`): nothing more is read or interpreted. */
  private stopReading(): void {
    this.input.stop();
    this.timers.stop();
  }

  private readonly onDrainNeeded = () => this.flow.update();

  /** The reply writer on `stream` (the socket, or the TLS stream after STARTTLS), with this session's linger time. */
  private writerOn(stream: Duplex): ReplyWriter {
    const writer = new ReplyWriter(stream, this.onDrainNeeded, this.flow.written);
    writer.lingerMs = this.options.lingerTimeout ?? DEFAULTS.lingerTimeout;
    return writer;
  }

  private readonly onDrain = () => {
    this.flow.update();
    if (!this.machines.closed && !this.machines.readingPaused) this.flow.pump();
  };

  // ── the machines ─────────────────────────────────────────────────────

  private sendToActive(event: { type: string; [k: string]: unknown }): void {
    this.machines.send(event);
  }

  /** What the machines' effects act on (effects.ts). */
  private readonly effectHost: EffectHost = {
    writer: () => this.writer,
    decoder: () => this.decoder,
    log: () => this.log,
    peer: () => this.peer,
    ending: (code, reason) => this.ending.because(code, reason),
    logDrop: (message) => this.ending.logDrop(message),
    ignoreAfterStop: (n) => this.input.ignore(n),
    startTls: () => startTls(this.upgrade, this.options.upgradeTls),
    resolver: () => this.handlers.resolve && ((r) => this.handlers.resolve!(this, r)),
    resolving: () => this.machines.resolving,
    answer: (event) => {
      this.sendToActive(event);
      if (!this.machines.closed) this.flow.pump();
    },
    deliver: (frame) => this.deliver(frame),
    refuse: (r) => this.refuse(r),
    draining: () => {
      this.timers.stop();
      if (this.flow.requestsInFlight === 0) queueMicrotask(() => this.sendToActive({ type: 'inflight.idle' }));
    },
  };

  /** Hand an accepted request to the application, counting it (its WRITE payload, its READ reply) in flight. */
  private deliver(frame: RequestFrame): void {
    this.flow.taken(frame);
    try {
      this.handlers.onRequest(this, frame);
    } catch (err) {
      this.log.error(`${this.peer}: request handler threw: ${String(err)}`);
    }
  }

  private refuse(e: Pick<Refusal, 'frame' | 'code' | 'errno' | 'message'>): void {
    if (this.trace) this.trace.refusal(e);
    this.log.debug?.(`${this.peer}: ${cmdName(e.frame.type)} refused with ${errnoName(e.errno)} (${e.message})`);
    this.replies.error(e.frame.cookie, e.frame.type, e.errno, e.message, e.frame.wireOffset ?? e.frame.offset);
  }

  private onConnectionSnapshot(phase: string): void {
    if (phase === 'transmission' && !this.machines.transmission) {
      this.machines.attachChildren();
      const negotiated = this.actor.getSnapshot().context.negotiated!;
      this.negotiated = negotiated;
      this.replies.mode = replyModeOf(negotiated.structuredReplies, negotiated.extendedHeaders);
      this.flow.negotiated(negotiated.metaContexts.length, this.maxExtents, negotiated.extendedHeaders);
      // reply.structured-chunks: no chunk carries more data than the export advertises as its maximum payload.
      this.replies.maxChunk = negotiated.export.blockSizes.maximum;
      // option.go-starts-transmission: the bytes after GO's ACK are requests; the decoder keeps its leftovers.
      // transmission.payload-too-large: with extended headers, a payload over the export's maximum is a hard disconnect.
      this.decoder.startTransmission(negotiated.extendedHeaders, negotiated.export.blockSizes.maximum);
      // The handler may offer zero-copy WRITEs (decided in onNegotiated below): asked per large WRITE.
      this.decoder.setPlacement(this.placeWrite);
      this.timers.negotiated();
      this.log.info?.(
        `${this.peer}: negotiated export "${negotiated.export.name}" (${this.replyMode} replies, ${negotiated.metaContexts.length} meta contexts)`,
      );
      try {
        this.handlers.onNegotiated?.(this, negotiated);
      } catch (err) {
        // Nothing can serve this connection's requests (a per-connection filter's wrap threw, say): one line, dropped now.
        this.ending.fail(`setting up export "${negotiated.export.name}" for this connection failed: ${String(err)}`);
      }
    }
  }

  private onConnectionDone(): void {
    // The connection machine reached its end: make sure the socket goes too.
    if (!this.socket.destroyed && !this.socket.writableEnded) this.writer.end();
  }

  private onHandshakeTimeout(ms: number): void {
    if (this.machines.closed || this.machines.transmission) return;
    const upgrading = this.machines.upgrading;
    // The handshake machine decides: it rejects the connection (a hard close, one log line).
    this.sendToActive({ type: 'timer.handshake', ms });
    // Mid TLS upgrade the raw socket is not ours to close through the writer: drop everything.
    if (upgrading) this.upgrade.fail('NBD_ERR_HANDSHAKE_TIMEOUT', `handshake not finished within ${ms} ms; disconnecting`);
  }

  // ── STARTTLS (starttls.ts) ───────────────────────────────────────────

  /** The session's parts as the STARTTLS upgrade uses them (built last in the constructor). */
  private upgradeOf(): SessionUpgrade {
    return new SessionUpgrade({
      peer: this.peer,
      log: this.log,
      decoder: this.decoder,
      input: this.input,
      machines: this.machines,
      ending: this.ending,
      trace: () => this.trace,
      violations: () => this.violations,
      stream: () => this.socket,
      writer: () => this.writer,
      releaseDrain: () => this.socket.off('drain', this.onDrain),
      switchTo: (secure, identity) => {
        this.tlsIdentity = identity;
        this.socket = secure;
        this.writer = this.writerOn(secure);
        this.replies.out = this.writer;
        secure.on('error', this.ending.socketError);
        secure.on('close', this.ending.socketClosed);
        secure.on('drain', this.onDrain);
      },
      send: (event) => this.sendToActive(event),
      pump: () => this.flow.pump(),
    });
  }

  // ── the client's end of input (the socket's errors and close: endings.ts) ──

  private onEof(): void {
    if (this.machines.closed || this.machines.upgrading) return;
    // In transmission, requests still buffered were sent before the EOF: they are served first.
    if (this.machines.transmission) return this.flow.endOfInput();
    this.ending.reportIncomplete('closed the connection');
    this.sendToActive({ type: 'socket.closed' });
  }
}
