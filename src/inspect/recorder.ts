/**
 * The trace recorder: what one connection did, as trace records
 * (`./trace-format.ts`), sent to every sink attached to the server (the
 * `trace` option, `server.tap()`). The machines' side comes from xstate's
 * inspection events, observed on the connection actor's system only while a
 * sink is attached (with no observer xstate builds no inspection events);
 * the wire's side from the session's frame taps, which are a null check when
 * nothing records.
 */
import type { AnyActorRef, AnyTransitionDefinition, InspectionEvent, Observer } from 'xstate';
import type { ClientFrame } from '../protocol/frames.js';
import { errnoName, cmdName } from '../protocol/constants.js';
import type { RequestFrame } from '../protocol/frames.js';
import type { HandshakeEmitted } from '../machines/types.js';
import { transitionId } from './ids.js';
import { clientFrame, handshakeFrame, jsonSafe, replyFrames, type FrameSummary } from './trace-frames.js';
import type { Json, OpenRecord, SnapshotRecord, TraceActor, TraceRecord, TraceSink } from './trace-format.js';

/** Unix time in milliseconds, fractional. */
export const now = (): number => performance.timeOrigin + performance.now();

/** The server's sinks: records fan out to all of them. */
export class TraceHub {
  private sinks: TraceSink[] = [];
  prefixBytes = 0;

  get active(): boolean {
    return this.sinks.length > 0;
  }

  add(sink: TraceSink): void {
    this.sinks = [...this.sinks, sink];
    this.prefixBytes = Math.max(0, ...this.sinks.map((s) => s.prefixBytes ?? 0));
  }

  remove(sink: TraceSink): void {
    this.sinks = this.sinks.filter((s) => s !== sink);
    this.prefixBytes = Math.max(0, ...this.sinks.map((s) => s.prefixBytes ?? 0));
  }

  write(record: TraceRecord): void {
    for (const s of this.sinks) {
      try {
        s.write(record);
      } catch {
        // A sink that throws loses its record; the connection and the other sinks go on.
      }
    }
  }
}

const ACTORS: ReadonlySet<string> = new Set<TraceActor>(['connection', 'handshake', 'transmission']);

/** Which of the connection's machines an actor runs (undefined for anything else). */
function actorName(ref: AnyActorRef | undefined): TraceActor | undefined {
  const id = (ref as { logic?: { id?: unknown } } | undefined)?.logic?.id;
  return typeof id === 'string' && ACTORS.has(id) ? (id as TraceActor) : undefined;
}

interface MachineSnapshot {
  readonly value: unknown;
  readonly status: SnapshotRecord['status'];
  readonly context?: unknown;
  readonly _nodes?: ReadonlyArray<{ readonly id: string }>;
  readonly children?: Record<string, AnyActorRef | undefined>;
}

/** A context without the parts no reader needs: functions, actors, buffers (as lengths). */
function contextSummary(context: unknown): { [key: string]: Json } | undefined {
  const j = jsonSafe(context, 4);
  return j && typeof j === 'object' && !Array.isArray(j) ? j : undefined;
}

function guardName(t: AnyTransitionDefinition): string | undefined {
  const g = t.guard as unknown;
  if (g === undefined) return undefined;
  if (typeof g === 'string') return g;
  if (typeof g === 'function') return g.name || 'inline';
  const type = (g as { type?: unknown }).type;
  return typeof type === 'string' ? type : 'inline';
}

/** The fields of an event other than its type, JSON-safe. */
function eventFields(event: Record<string, unknown>): { [key: string]: Json } | undefined {
  let out: { [key: string]: Json } | undefined;
  for (const [k, v] of Object.entries(event)) {
    if (k === 'type') continue;
    const j = jsonSafe(v, 3);
    if (j === undefined) continue;
    (out ??= {})[k] = j;
  }
  return out;
}

/** One connection's recorder: its inspection observer and the session's frame taps. */
export class ConnectionTrace {
  private subscription: { unsubscribe(): void } | null = null;
  readonly openRecord: OpenRecord;

  constructor(
    private readonly hub: TraceHub,
    readonly conn: number,
    peer: string,
    openedAt: number,
    private readonly actor: AnyActorRef,
  ) {
    this.openRecord = { type: 'open', t: openedAt, conn, peer };
  }

  /** Start observing the machines. */
  attach(): void {
    if (this.subscription) return;
    const observer: Observer<InspectionEvent> = { next: (e) => this.inspected(e) };
    this.subscription = this.actor.system.inspect(observer);
  }

  detach(): void {
    this.subscription?.unsubscribe();
    this.subscription = null;
  }

  /** A late sink's start: this connection's open record and one snapshot per running machine. */
  replay(sink: TraceSink): void {
    sink.write(this.openRecord);
    const t = now();
    const conn = this.actor.getSnapshot() as MachineSnapshot;
    sink.write(this.snapshotRecord('connection', conn, t));
    for (const child of Object.values(conn.children ?? {})) {
      const name = actorName(child);
      if (name && child) sink.write(this.snapshotRecord(name, child.getSnapshot() as MachineSnapshot, t));
    }
  }

  private snapshotRecord(actor: TraceActor, s: MachineSnapshot, t: number): SnapshotRecord {
    const context = contextSummary(s.context);
    const value = (jsonSafe(s.value) ?? null) as Json;
    return context ? { type: 'snapshot', t, conn: this.conn, actor, value, status: s.status, context } : { type: 'snapshot', t, conn: this.conn, actor, value, status: s.status };
  }

  private inspected(e: InspectionEvent): void {
    const actor = actorName(e.actorRef as AnyActorRef);
    if (!actor) return;
    const t = now();
    const conn = this.conn;
    switch (e.type) {
      case '@xstate.event': {
        const fields = eventFields(e.event as Record<string, unknown>);
        this.hub.write(fields ? { type: 'event', t, conn, actor, event: e.event.type, fields } : { type: 'event', t, conn, actor, event: e.event.type });
        return;
      }
      case '@xstate.microstep': {
        const transitions = (e as { _transitions?: readonly AnyTransitionDefinition[] })._transitions ?? [];
        const guards = transitions.map(guardName).filter((g): g is string => g !== undefined);
        const s = e.snapshot as unknown as MachineSnapshot;
        this.hub.write({
          type: 'step',
          t,
          conn,
          actor,
          event: e.event.type,
          transitions: transitions.map(transitionId),
          ...(guards.length > 0 ? { guards } : {}),
          value: (jsonSafe(s.value) ?? null) as Json,
          active: (s._nodes ?? []).map((n) => n.id),
        });
        return;
      }
      case '@xstate.action': {
        const params = e.action.params === undefined ? undefined : jsonSafe(e.action.params, 3);
        const action = String(e.action.type);
        this.hub.write(params && typeof params === 'object' && !Array.isArray(params) ? { type: 'action', t, conn, actor, action, params } : { type: 'action', t, conn, actor, action });
        return;
      }
      case '@xstate.snapshot':
        this.hub.write(this.snapshotRecord(actor, e.snapshot as unknown as MachineSnapshot, t));
        return;
    }
  }

  private frame(dir: 'in' | 'out', s: FrameSummary, t = now()): void {
    this.hub.write(s.payload ? { type: 'frame', t, conn: this.conn, dir, name: s.name, fields: s.fields, payload: s.payload } : { type: 'frame', t, conn: this.conn, dir, name: s.name, fields: s.fields });
  }

  /** A frame from the client, as decoded. */
  frameIn(f: ClientFrame): void {
    this.frame('in', clientFrame(f, this.hub.prefixBytes));
  }

  /** What the handshake machine asks for: a frame to the client (`send`), or STARTTLS begins. */
  handshakeEffect(e: HandshakeEmitted): void {
    if (e.type === 'send') this.frame('out', handshakeFrame(e.frame, e.label));
    else if (e.type === 'startTls') this.tls('start');
  }

  /** One transmission reply to the client: a simple reply or its chunks. */
  replyOut(bytes: readonly Buffer[]): void {
    const t = now();
    for (const s of replyFrames(bytes, this.hub.prefixBytes)) this.frame('out', s, t);
  }

  tls(step: 'start' | 'established' | 'failed', detail?: string): void {
    this.hub.write(detail !== undefined ? { type: 'tls', t: now(), conn: this.conn, step, detail } : { type: 'tls', t: now(), conn: this.conn, step });
  }

  refusal(r: { readonly frame: RequestFrame; readonly code?: string; readonly errno: number; readonly message: string }): void {
    this.hub.write({
      type: 'refusal',
      t: now(),
      conn: this.conn,
      code: r.code ?? 'unknown',
      errno: errnoName(r.errno),
      command: cmdName(r.frame.type),
      cookie: r.frame.cookie.toString(),
      message: r.message,
    });
  }

  close(info: { readonly outcome: string; readonly code: string; readonly reason: string }): void {
    this.hub.write({ type: 'close', t: now(), conn: this.conn, outcome: info.outcome, code: info.code, reason: info.reason });
  }
}

/** A connection as the server's recorder sees it (the transport's Session). */
export interface RecordedSession {
  readonly id: number;
  readonly trace: ConnectionTrace | null;
  readonly connectionActor: AnyActorRef;
  record(trace: ConnectionTrace | null): void;
}

/**
 * The server's side: its sinks, and which connections are recorded. Every
 * connection is recorded from its open while a sink is attached; a sink
 * attached later starts each live connection's recording with a replay.
 */
export class ServerRecorder {
  private readonly hub = new TraceHub();
  private readonly opened = new Map<RecordedSession, { readonly t: number; readonly peer: string }>();

  constructor(trace?: TraceSink) {
    if (trace) this.hub.add(trace);
  }

  /** A new connection (before its greeting). */
  open(session: RecordedSession, peer: string): void {
    this.opened.set(session, { t: now(), peer });
    if (this.hub.active) this.hub.write(this.start(session)!.openRecord);
  }

  /** A connection ended: its close record, and its recording stops. */
  close(session: RecordedSession, info: { readonly outcome: string; readonly code: string; readonly reason: string }): void {
    this.opened.delete(session);
    const trace = session.trace;
    if (!trace) return;
    trace.close(info);
    trace.detach();
    session.record(null);
  }

  tap(sink: TraceSink): { unsubscribe(): void } {
    for (const session of this.opened.keys()) (session.trace ?? this.start(session))?.replay(sink);
    this.hub.add(sink);
    let done = false;
    return {
      unsubscribe: () => {
        if (done) return;
        done = true;
        this.hub.remove(sink);
        if (this.hub.active) return;
        // The last sink went: no connection is observed any more.
        for (const session of this.opened.keys()) {
          session.trace?.detach();
          session.record(null);
        }
      },
    };
  }

  private start(session: RecordedSession): ConnectionTrace | null {
    const o = this.opened.get(session);
    if (!o) return null;
    const trace = new ConnectionTrace(this.hub, session.id, o.peer, o.t, session.connectionActor);
    trace.attach();
    session.record(trace);
    return trace;
  }
}
