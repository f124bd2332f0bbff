/**
 * The transcript's line for each record kind (src/inspect/transcript.ts),
 * the connection / machine filters, and reading lines back (parseTraceLine).
 */
import { describe, expect, it } from 'vitest';
import { Transcript, describeRecord, parseTraceLine, stateText } from '../../../src/inspect/transcript.js';
import type { TraceRecord } from '../../../src/inspect/trace-format.js';

const T = 1_700_000_000_000;
const conn = 1;

const describeCases: Array<[TraceRecord, string]> = [
    [{ type: 'trace', v: 1, t: T, server: 'nbd-engine', version: '0.1.0', pid: 42 }, `trace v1 from nbd-engine 0.1.0 (pid 42) started ${new Date(T).toISOString()}`],
    [{ type: 'open', t: T, conn, peer: '127.0.0.1:5000' }, 'open from 127.0.0.1:5000'],
    [{ type: 'event', t: T, conn, actor: 'handshake', event: 'opt.go', fields: { frame: { frame: 'NBD_OPT_GO' } } }, 'handshake: event opt.go'],
    [{ type: 'event', t: T, conn, actor: 'transmission', event: 'timer.idle', fields: { ms: 500 } }, 'transmission: event timer.idle ms=500'],
    [
      { type: 'step', t: T, conn, actor: 'handshake', event: 'opt.go', transitions: ['handshake.options.open|opt.go|0'], guards: ['exportFound'], value: 'negotiated', active: ['handshake', 'handshake.negotiated'] },
      'handshake: options.open → negotiated (opt.go) [exportFound]',
    ],
    [
      { type: 'step', t: T, conn, actor: 'connection', event: 'budget.full', transitions: ['connection.reading.flowing|budget.full|0'], value: { phase: 'transmission', reading: 'paused' }, active: [] },
      'connection: reading.flowing → phase.transmission,reading.paused (budget.full)',
    ],
    [{ type: 'action', t: T, conn, actor: 'connection', action: 'xstate.spawnChild' }, 'connection: action xstate.spawnChild'],
    [
      { type: 'action', t: T, conn, actor: 'handshake', action: 'xstate.emit', params: { event: { type: 'send', frame: [{ length: 20 }], label: 'NBD_REP_ACK' } } },
      'handshake: action xstate.emit → send NBD_REP_ACK',
    ],
    [{ type: 'snapshot', t: T, conn, actor: 'handshake', value: { options: 'open' }, status: 'active' }, 'handshake: in options.open'],
    [{ type: 'snapshot', t: T, conn, actor: 'handshake', value: 'negotiated', status: 'done' }, 'handshake: done negotiated'],
    [
      { type: 'frame', t: T, conn, dir: 'in', name: 'NBD_OPT_GO', fields: { name: 'disk', info: ['NBD_INFO_BLOCK_SIZE'], length: 12 } },
      'C→S NBD_OPT_GO name="disk" info=[NBD_INFO_BLOCK_SIZE] length=12',
    ],
    [
      { type: 'frame', t: T, conn, dir: 'out', name: 'NBD_REP_INFO', fields: { option: 'NBD_OPT_GO', info: 'NBD_INFO_EXPORT', size: 1073741824, flags: ['NBD_FLAG_HAS_FLAGS', 'NBD_FLAG_SEND_FLUSH'] } },
      'S→C NBD_REP_INFO NBD_INFO_EXPORT size=1073741824 flags=HAS_FLAGS|SEND_FLUSH',
    ],
    [
      { type: 'frame', t: T, conn, dir: 'in', name: 'NBD_CMD_WRITE', fields: { cookie: '7', offset: 0, length: 4, flags: ['NBD_CMD_FLAG_FUA'] }, payload: { length: 4, prefix: 'deadbeef' } },
      'C→S NBD_CMD_WRITE cookie=7 offset=0 length=4 flags=FUA payload=4B prefix=deadbeef',
    ],
    [
      { type: 'frame', t: T, conn, dir: 'out', name: 'NBD_REPLY_TYPE_OFFSET_DATA', fields: { cookie: '7', flags: ['NBD_REPLY_FLAG_DONE'], offset: 0, dataLength: 4096 }, payload: { length: 4096 } },
      'S→C NBD_REPLY_TYPE_OFFSET_DATA cookie=7 flags=DONE offset=0 dataLength=4096 payload=4096B',
    ],
    [{ type: 'frame', t: T, conn, dir: 'out', name: 'simpleReply', fields: { cookie: '9', error: 'NBD_EINVAL' } }, 'S→C simpleReply cookie=9 error=NBD_EINVAL'],
    [{ type: 'tls', t: T, conn, step: 'start' }, 'TLS start'],
    [{ type: 'tls', t: T, conn, step: 'established', detail: 'TLSv1.3' }, 'TLS established: TLSv1.3'],
    [
      { type: 'refusal', t: T, conn, code: 'transmission.out-of-bounds', errno: 'NBD_EINVAL', command: 'NBD_CMD_READ', cookie: '77', message: 'request past the end' },
      'refused NBD_CMD_READ cookie=77 with NBD_EINVAL (transmission.out-of-bounds): request past the end',
    ],
    [{ type: 'close', t: T, conn, outcome: 'aborted', code: 'option.abort-ack', reason: 'client sent NBD_OPT_ABORT' }, 'close aborted (option.abort-ack): client sent NBD_OPT_ABORT'],
    [{ type: 'end', t: T, reason: 'cap' }, 'trace ends (cap)'],
    [{ type: 'end', t: T, reason: 'rotate', next: '/tmp/t.jsonl' }, 'trace ends (rotate; continues in /tmp/t.jsonl)'],
];

describe('describeRecord', () => {
  for (const [record, text] of describeCases) it(`${record.type}: ${text}`, () => expect(describeRecord(record)).toBe(text));

  it('state values as dotted paths', () => {
    expect(stateText('open')).toBe('open');
    expect(stateText({ options: { tls: 'waiting' } })).toBe('options.tls.waiting');
  });
});

describe('Transcript', () => {
  const records: TraceRecord[] = [
    { type: 'trace', v: 1, t: T, server: 'nbd-engine', version: '0', pid: 1 },
    { type: 'open', t: T + 1, conn: 1, peer: 'local' },
    { type: 'open', t: T + 2, conn: 2, peer: 'local' },
    { type: 'frame', t: T + 1.412, conn: 1, dir: 'in', name: 'NBD_OPT_LIST', fields: {} },
    { type: 'step', t: T + 1.5, conn: 1, actor: 'handshake', event: 'opt.list', transitions: ['handshake.options.open|opt.list|0'], value: { options: 'open' }, active: [] },
    { type: 'close', t: T + 1503, conn: 2, outcome: 'disconnected', code: 'c', reason: 'r' },
  ];
  const lines = (t: Transcript) => records.map((r) => t.line(r)).filter((l) => l !== null);

  it('prefixes each line with its connection and the time since that connection opened', () => {
    expect(lines(new Transcript())).toEqual([
      `[trace] trace v1 from nbd-engine 0 (pid 1) started ${new Date(T).toISOString()}`,
      '[conn 1 +0.000ms] open from local',
      '[conn 2 +0.000ms] open from local',
      '[conn 1 +0.412ms] C→S NBD_OPT_LIST',
      '[conn 1 +0.500ms] handshake: options.open → options.open (opt.list)',
      '[conn 2 +1501ms] close disconnected (c): r',
    ]);
  });

  it('a connection opened before this file (a rotated trace): its first line says when, later ones count from it', () => {
    const t = new Transcript();
    const first: TraceRecord = { type: 'frame', t: T + 5000, conn: 7, dir: 'in', name: 'NBD_CMD_WRITE', fields: {} };
    const next: TraceRecord = { ...first, t: T + 5002 };
    expect(t.line(first)).toBe(`[conn 7 ${new Date(T + 5000).toISOString().slice(11, 23)}Z, opened before this file] ${describeRecord(first)}`);
    expect(t.line(next)).toBe(`[conn 7 +2.000ms] ${describeRecord(next)}`);
  });

  it('--connection and --no-machines', () => {
    expect(lines(new Transcript({ connection: 1, machines: false }))).toEqual(['[conn 1 +0.000ms] open from local', '[conn 1 +0.412ms] C→S NBD_OPT_LIST']);
  });
});

describe('parseTraceLine', () => {
  it('a record, or why not', () => {
    expect(parseTraceLine('{"type":"open","t":1,"conn":1,"peer":"x"}')).toMatchObject({ type: 'open' });
    expect(parseTraceLine('{"type":')).toMatch(/^not JSON/);
    expect(parseTraceLine('[1]')).toMatch(/not a record/);
    expect(parseTraceLine('{"type":"nope","t":1}')).toBe('unknown record type "nope"');
    expect(parseTraceLine('{"type":"open"}')).toBe('a open record without a time ("t")');
  });

  it('every record the describe cases above use parses back as itself (the checks accept what the recorder writes)', () => {
    for (const [r] of describeCases) expect(parseTraceLine(JSON.stringify(r))).toEqual(r);
  });

  it.each([
    ['{"type":"frame","t":1,"conn":1,"dir":"in","name":"clientFlags"}', 'a frame record without "fields" (expected an object)'],
    ['{"type":"step","t":1,"conn":1,"actor":"handshake","event":"x","active":[]}', 'a step record without "transitions" (expected a list of strings)'],
    ['{"type":"step","t":1,"conn":1,"actor":"nosuch","event":"x","transitions":["a|b|1"],"active":[]}', 'a step record with an invalid "actor" (expected "connection" or "handshake" or "transmission")'],
    ['{"type":"step","t":1,"conn":1,"actor":"handshake","event":"x","transitions":[],"active":"open"}', 'a step record with an invalid "active" (expected a list of strings)'],
    ['{"type":"open","t":1,"conn":"1","peer":"x"}', 'a open record with an invalid "conn" (expected a number)'],
    ['{"type":"close","t":1,"conn":1,"outcome":"closed","code":"x"}', 'a close record without "reason" (expected a string)'],
    ['{"type":"frame","t":1,"conn":1,"dir":"in","name":"x","fields":{},"payload":{}}', 'a frame record with an invalid "payload" (expected an object with a length)'],
  ])('a record missing what readers need is refused with the reason, not a crash later: %s', (line, reason) => {
    expect(parseTraceLine(line)).toBe(reason);
  });
});
