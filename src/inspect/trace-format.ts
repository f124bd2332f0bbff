/**
 * The trace file: JSON Lines, one record per line, written by the recorder
 * (`serve --trace FILE`, the `trace` server option) and read by `trace show`
 * and `trace view`. Every record has `type` and `t` (Unix time in
 * milliseconds, fractional); every record about a connection has `conn`, the
 * server's connection id. Values are JSON: cookies and 64-bit numbers that may
 * not fit a double are decimal strings, payload bytes are never written (only
 * their length and, if asked, a short hex prefix). State and transition names
 * are those of `./ids.ts`, so a record points at the same element a diagram
 * drawn from the machine definitions shows.
 */

export const TRACE_VERSION = 1;

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Which machine an xstate record is about. */
export type TraceActor = 'connection' | 'handshake' | 'transmission';

/** First line of every file. */
export interface TraceHeader {
  readonly type: 'trace';
  readonly v: typeof TRACE_VERSION;
  readonly t: number;
  readonly server: 'nbd-engine';
  readonly version: string;
  readonly pid: number;
}

export interface OpenRecord {
  readonly type: 'open';
  readonly t: number;
  readonly conn: number;
  readonly peer: string;
}

/** An event delivered to one of the connection's machines (xstate's `@xstate.event`). */
export interface EventRecord {
  readonly type: 'event';
  readonly t: number;
  readonly conn: number;
  readonly actor: TraceActor;
  /** The event type, e.g. `opt.go`, `request`, `inflight.idle`. */
  readonly event: string;
  /** The event's other fields, JSON-safe (frames summarised as in FrameRecord.fields). */
  readonly fields?: { readonly [key: string]: Json };
}

/** One microstep (xstate's `@xstate.microstep`): the transitions taken and the state after. */
export interface StepRecord {
  readonly type: 'step';
  readonly t: number;
  readonly conn: number;
  readonly actor: TraceActor;
  readonly event: string;
  /** Transition ids (`ids.ts` transitionId), in the order xstate took them. */
  readonly transitions: readonly string[];
  /** The guards that decided, by name, as the definitions name them. */
  readonly guards?: readonly string[];
  /** The machine's state value after the step (xstate's StateValue). */
  readonly value: Json;
  /** The ids (`ids.ts` stateId) of every active state after the step. */
  readonly active: readonly string[];
}

/** An action a machine ran (xstate's `@xstate.action`), by name. */
export interface ActionRecord {
  readonly type: 'action';
  readonly t: number;
  readonly conn: number;
  readonly actor: TraceActor;
  readonly action: string;
  /** The action's parameters, JSON-safe; for `xstate.emit`, `event` is the effect emitted (e.g. `send` with its label). */
  readonly params?: { readonly [key: string]: Json };
}

/** A machine's snapshot after it settled on an event: status and a JSON-safe summary of its context. */
export interface SnapshotRecord {
  readonly type: 'snapshot';
  readonly t: number;
  readonly conn: number;
  readonly actor: TraceActor;
  readonly value: Json;
  readonly status: 'active' | 'done' | 'error' | 'stopped';
  readonly context?: { readonly [key: string]: Json };
}

/**
 * A decoded frame, either way. `name` is the spec's constant: NBD_OPT_GO,
 * NBD_REP_INFO, NBD_CMD_READ, NBD_REPLY_TYPE_OFFSET_DATA…; also `greeting`,
 * `clientFlags`, `simpleReply` for the frames the spec does not name by a
 * constant. `fields` holds the frame's decoded fields (for option replies
 * with NBD_REP_INFO, `info` names the info type; for options with info
 * requests, `info` lists their names); `payload` describes elided bytes.
 */
export interface FrameRecord {
  readonly type: 'frame';
  readonly t: number;
  readonly conn: number;
  readonly dir: 'in' | 'out';
  readonly name: string;
  readonly fields: { readonly [key: string]: Json };
  readonly payload?: { readonly length: number; readonly prefix?: string };
}

/** The STARTTLS upgrade. */
export interface TlsRecord {
  readonly type: 'tls';
  readonly t: number;
  readonly conn: number;
  readonly step: 'start' | 'established' | 'failed';
  readonly detail?: string;
}

/** A request the transmission machine refused, with its catalogue code. */
export interface RefusalRecord {
  readonly type: 'refusal';
  readonly t: number;
  readonly conn: number;
  readonly code: string;
  readonly errno: string;
  readonly command: string;
  readonly cookie: string;
  readonly message: string;
}

export interface CloseRecord {
  readonly type: 'close';
  readonly t: number;
  readonly conn: number;
  readonly outcome: string;
  readonly code: string;
  readonly reason: string;
}

/** The recorder stopped writing this file (size cap reached, rotated to `next`, or the disk fell too far behind: `behind`). */
export interface EndRecord {
  readonly type: 'end';
  readonly t: number;
  readonly reason: 'cap' | 'rotate' | 'closed' | 'behind';
  readonly next?: string;
}

export type TraceRecord =
  | TraceHeader
  | OpenRecord
  | EventRecord
  | StepRecord
  | ActionRecord
  | SnapshotRecord
  | FrameRecord
  | TlsRecord
  | RefusalRecord
  | CloseRecord
  | EndRecord;

/**
 * Where records go: a trace file (`./trace-file.ts`), the live view, a test.
 * `write` is called synchronously on the connection's path, so it must only
 * queue. `prefixBytes`: how many leading payload bytes this sink wants as hex
 * (default none; the largest asked by any sink attached is recorded).
 */
export interface TraceSink {
  write(record: TraceRecord): void;
  readonly prefixBytes?: number;
}
