/**
 * Trace records as a readable transcript, one line per record:
 *
 *   [conn 1 +0.412ms] C→S NBD_OPT_GO name="disk" info=[NBD_INFO_BLOCK_SIZE]
 *   [conn 1 +0.530ms] S→C NBD_REP_INFO NBD_INFO_EXPORT size=1073741824 flags=HAS_FLAGS|SEND_FLUSH
 *   [conn 1 +0.610ms] handshake: options.open → negotiated (opt.go)
 *
 * Used by `nbd-engine trace show`, and by the viewers for their text.
 * `describeRecord` is a record's text alone; `Transcript` adds the
 * connection and the time since that connection opened.
 */
import type { Json, StepRecord, TraceRecord } from './trace-format.js';

/** Records about the machines (hidden by `--no-machines`). */
export function isMachineRecord(r: TraceRecord): boolean {
  return r.type === 'event' || r.type === 'step' || r.type === 'action' || r.type === 'snapshot';
}

/** A flag list without the table's prefix: HAS_FLAGS|SEND_FLUSH. */
function flagList(names: readonly Json[]): string {
  return names.map((n) => String(n).replace(/^NBD_(?:FLAG_C_|FLAG_|CMD_FLAG_|REPLY_FLAG_)/, '')).join('|');
}

function value(v: Json): string {
  if (typeof v === 'string') return /^[A-Za-z0-9_.:\-/]+$/.test(v) ? v : JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(value).join(',')}]`;
  return JSON.stringify(v);
}

/** `key=value` pairs; strings quoted, flag lists joined with |, empty flag lists left out. */
function fieldText(fields: { readonly [key: string]: Json }, skip: readonly string[] = []): string {
  const out: string[] = [];
  for (const [k, v] of Object.entries(fields)) {
    if (skip.includes(k)) continue;
    if (k === 'flags' && Array.isArray(v)) {
      if (v.length > 0) out.push(`flags=${flagList(v)}`);
      continue;
    }
    out.push(`${k}=${typeof v === 'string' && (k === 'name' || k === 'description' || k === 'message' || k === 'label') ? JSON.stringify(v) : value(v)}`);
  }
  return out.join(' ');
}

/** A machine's state value as dotted paths: `options.open`, `phase.transmission,reading.flowing`. */
export function stateText(v: Json): string {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return String(v);
  return Object.entries(v)
    .map(([k, sub]) => (sub !== null && typeof sub === 'object' && Object.keys(sub).length === 0 ? k : `${k}.${stateText(sub)}`))
    .join(',');
}

/** A step's source states (from its transition ids, without the machine's own name). */
function stepSources(r: StepRecord): string {
  const sources = new Set<string>();
  for (const t of r.transitions) {
    const source = t.split('|')[0]!;
    sources.add(source === r.actor ? '(root)' : source.startsWith(`${r.actor}.`) ? source.slice(r.actor.length + 1) : source);
  }
  return [...sources].join(',');
}

/** One record's text, without the connection and time. */
export function describeRecord(r: TraceRecord): string {
  switch (r.type) {
    case 'trace':
      return `trace v${r.v} from ${r.server} ${r.version} (pid ${r.pid}) started ${new Date(r.t).toISOString()}`;
    case 'open':
      return `open from ${r.peer}`;
    case 'event':
      return `${r.actor}: event ${r.event}${r.fields ? ` ${fieldText(r.fields, ['input', 'output', 'frame', 'frames'])}`.trimEnd() : ''}`;
    case 'step': {
      const from = stepSources(r);
      const guards = r.guards && r.guards.length > 0 ? ` [${r.guards.join(', ')}]` : '';
      return `${r.actor}: ${from ? `${from} → ` : '→ '}${stateText(r.value)} (${r.event})${guards}`;
    }
    case 'action': {
      // An emitted effect names itself: `xstate.emit → send NBD_REP_ACK`.
      const ev = r.params?.event;
      const emitted = ev && typeof ev === 'object' && !Array.isArray(ev) && typeof ev.type === 'string' ? ` → ${[ev.type, ev.label ?? ev.reason].filter((x) => typeof x === 'string').join(' ')}` : '';
      return `${r.actor}: action ${r.action}${emitted}`;
    }
    case 'snapshot':
      return `${r.actor}: ${r.status === 'active' ? 'in' : r.status} ${stateText(r.value)}`;
    case 'frame': {
      const arrow = r.dir === 'in' ? 'C→S' : 'S→C';
      // NBD_REP_INFO's info type reads as part of the name: NBD_REP_INFO NBD_INFO_EXPORT size=…
      const info = r.name === 'NBD_REP_INFO' && typeof r.fields.info === 'string' ? ` ${r.fields.info}` : '';
      const skip = info ? ['info', 'option'] : ['option'];
      const fields = fieldText(r.fields, skip);
      const payload = r.payload ? ` payload=${r.payload.length}B${r.payload.prefix ? ` prefix=${r.payload.prefix}` : ''}` : '';
      return `${arrow} ${r.name}${info}${fields ? ` ${fields}` : ''}${payload}`;
    }
    case 'tls':
      return `TLS ${r.step}${r.detail ? `: ${r.detail}` : ''}`;
    case 'refusal':
      return `refused ${r.command} cookie=${r.cookie} with ${r.errno} (${r.code}): ${r.message}`;
    case 'close':
      return `close ${r.outcome} (${r.code}): ${r.reason}`;
    case 'end':
      return `trace ends (${r.reason}${r.next ? `; continues in ${r.next}` : ''})`;
  }
}

export interface TranscriptOptions {
  /** Only this connection's records (and the file's own). */
  readonly connection?: number;
  /** Show the machines' records (default true). */
  readonly machines?: boolean;
}

/** Milliseconds as `+0.412ms`, `+12.3ms`, `+1503ms`. */
function elapsed(ms: number): string {
  return `+${ms < 10 ? ms.toFixed(3) : ms < 1000 ? ms.toFixed(1) : ms.toFixed(0)}ms`;
}

/** Lines for records in file order, each prefixed with its connection and the time since it opened. */
export class Transcript {
  private readonly opened = new Map<number, number>();

  constructor(private readonly options: TranscriptOptions = {}) {}

  /** The record's line, or null when the options hide it. */
  line(r: TraceRecord): string | null {
    const conn = 'conn' in r ? r.conn : undefined;
    if (conn === undefined) return this.options.connection === undefined || r.type === 'end' ? `[trace] ${describeRecord(r)}` : null;
    if (this.options.connection !== undefined && conn !== this.options.connection) return null;
    if (this.options.machines === false && isMachineRecord(r)) return null;
    let start = this.opened.get(conn);
    if (start === undefined || r.type === 'open') {
      start = r.t;
      this.opened.set(conn, start);
      // A connection whose open record is in an earlier file (after a rotation): its times here count
      // from this, its first record in the file, which says so and when it was, instead of a bare +0.
      if (r.type !== 'open') return `[conn ${conn} ${new Date(r.t).toISOString().slice(11, 23)}Z, opened before this file] ${describeRecord(r)}`;
    }
    return `[conn ${conn} ${elapsed(r.t - start)}] ${describeRecord(r)}`;
  }
}

/** A line of a trace file as a record, or an error message saying why it is not one. */
export function parseTraceLine(text: string): TraceRecord | string {
  let r: unknown;
  try {
    r = JSON.parse(text);
  } catch (err) {
    return `not JSON (${(err as Error).message})`;
  }
  if (r === null || typeof r !== 'object' || Array.isArray(r)) return 'not a record (expected a JSON object)';
  const { type, t } = r as { type?: unknown; t?: unknown };
  if (typeof type !== 'string') return 'not a record (no "type")';
  const shape = SHAPES[type];
  if (shape === undefined) return `unknown record type ${JSON.stringify(type)}`;
  if (typeof t !== 'number') return `a ${type} record without a time ("t")`;
  // Every field the readers use, checked here: a hand-edited line or another version's is skipped with its reason, never a crash.
  for (const [field, [check, expected, optional]] of Object.entries(shape)) {
    const v = (r as Record<string, unknown>)[field];
    if (v === undefined && optional) continue;
    if (!check(v)) return `a ${type} record ${v === undefined ? 'without' : 'with an invalid'} "${field}" (expected ${expected})`;
  }
  return r as TraceRecord;
}

type FieldCheck = readonly [(v: unknown) => boolean, string, optional?: boolean];
const isNum = (v: unknown) => typeof v === 'number' && Number.isFinite(v);
const isStr = (v: unknown) => typeof v === 'string';
const isObj = (v: unknown) => v !== null && typeof v === 'object' && !Array.isArray(v);
const isStrList = (v: unknown) => Array.isArray(v) && v.every(isStr);
const oneOf = (...xs: string[]): FieldCheck => [(v) => xs.includes(v as string), xs.map((x) => JSON.stringify(x)).join(' or ')];
const NUM: FieldCheck = [isNum, 'a number'];
const STR: FieldCheck = [isStr, 'a string'];
const STRS: FieldCheck = [isStrList, 'a list of strings'];
const OBJ: FieldCheck = [isObj, 'an object'];
const ACTOR = oneOf('connection', 'handshake', 'transmission');
const optional = (c: FieldCheck): FieldCheck => [c[0], c[1], true];

/** The fields of each record type (trace-format.ts) that readers rely on, and what each must be. */
const SHAPES: Readonly<Record<string, Readonly<Record<string, FieldCheck>>>> = {
  trace: { v: NUM },
  open: { conn: NUM, peer: STR },
  event: { conn: NUM, actor: ACTOR, event: STR, fields: optional(OBJ) },
  step: { conn: NUM, actor: ACTOR, event: STR, transitions: STRS, guards: optional(STRS), active: STRS },
  action: { conn: NUM, actor: ACTOR, action: STR, params: optional(OBJ) },
  snapshot: { conn: NUM, actor: ACTOR, status: STR, context: optional(OBJ) },
  frame: { conn: NUM, dir: oneOf('in', 'out'), name: STR, fields: OBJ, payload: optional([(v) => isObj(v) && isNum((v as { length?: unknown }).length), 'an object with a length']) },
  tls: { conn: NUM, step: STR, detail: optional(STR) },
  refusal: { conn: NUM, code: STR, errno: STR, command: STR, cookie: STR, message: STR },
  close: { conn: NUM, outcome: STR, code: STR, reason: STR },
  end: { reason: STR, next: optional(STR) },
};
