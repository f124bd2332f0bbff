/**
 * Deterministic state and transition coverage of the transmission machine
 * with xstate's own graph tools (`xstate/graph`), through the harness it
 * shares with graph.test.ts (the handshake machine): graph-support.ts.
 *
 * For a few machine inputs (read-only vs writable export; structured replies
 * with a meta context vs simple replies vs extended headers without one;
 * minimum block 512 vs 1; optional transmission flags advertised or not) we
 * traverse the machine with a representative event per event type and per
 * guard branch: an acceptable request, DISC, a request frame built so that
 * each refusal of the REFUSALS table is the first one to match, a `requests`
 * burst, and the in-flight and lifecycle events (`getAdjacencyMap` +
 * `getShortestPaths`). For every transition definition of the machine (each
 * guarded branch of each event) and each state value it leads to we pick a
 * graph edge that selects it, replay
 * "shortest path to the edge's source + the edge's event" on a real actor,
 * and check that the actor ends in the predicted state and really took that
 * transition (from `@xstate.microstep` inspection events). Finally the union
 * of taken transitions must be every transition of the machine, the union
 * of visited states every state, and the refusals emitted on the way every
 * refusal of the table (each code, each message).
 */
import { describe, expect, it } from 'vitest';
import type { SnapshotFrom } from 'xstate';
import { REFUSALS, transmissionMachine, type TransmissionInput } from '../../../src/machines/transmission.js';
import type { ExportDescriptor, TransmissionEvent } from '../../../src/machines/types.js';
import type { RequestFrame } from '../../../src/protocol/frames.js';
import { GraphCoverage } from './graph-support.js';
import { EXPORTS, KiB, negotiatedFor, request } from './support.js';

/** The machine under test (one name, so a mutated copy can be swapped in to see the coverage check fail). */
const MACHINE = transmissionMachine;
type Snap = SnapshotFrom<typeof transmissionMachine>;

// Numbers written out here on purpose (not imported from src), as in support.ts.
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7, RESIZE: 8 } as const;
const CF = { FUA: 1 << 0, NO_HOLE: 1 << 1, DF: 1 << 2, REQ_ONE: 1 << 3, FAST_ZERO: 1 << 4, PAYLOAD_LEN: 1 << 5 } as const;
const TF = { HAS_FLAGS: 1 << 0, READ_ONLY: 1 << 1, SEND_DF: 1 << 7 } as const;

const DISK = EXPORTS[0]!; // writable, 1 MiB, minimum block 1, FLUSH FUA TRIM WRITE_ZEROES CACHE FAST_ZERO
const RO = EXPORTS[1]!; // read-only, 64 KiB, minimum block 512
/** Writable, minimum block 1, no optional transmission flag advertised. */
const BARE: ExportDescriptor = { name: 'bare', size: 256 * KiB, flags: 0, blockSizes: { minimum: 1, preferred: 4096, maximum: 1024 * KiB } };

/** Inputs whose union reaches every refusal of the REFUSALS table. */
const INPUTS: Array<[string, TransmissionInput]> = [
  // Simple replies, every optional flag but DF, a small payload limit (readTooLarge).
  ['writable, simple replies, minimum block 1, flags advertised, maxPayload 4 KiB', { negotiated: negotiatedFor(DISK), maxPayload: 4 * KiB }],
  // Structured replies with a meta context (BLOCK_STATUS acceptable), DF advertised, minimum block 512.
  [
    'read-only, structured replies + meta context, minimum block 512',
    { negotiated: negotiatedFor(RO, { flags: RO.flags | TF.HAS_FLAGS | TF.SEND_DF, structuredReplies: true, metaContexts: [{ id: 1, name: 'base:allocation' }] }) },
  ],
  // Extended headers (PAYLOAD_LEN known) but no meta context; nothing optional advertised.
  ['writable, extended headers without a meta context, minimum block 1, no flags advertised', { negotiated: negotiatedFor(BARE, { flags: TF.HAS_FLAGS, extendedHeaders: true }) }],
  // Structured replies and DF on an export advertising a 128 KiB maximum (dfTooLarge).
  [
    'writable, structured replies, DF, maximum 128 KiB',
    { negotiated: negotiatedFor({ ...BARE, blockSizes: { ...BARE.blockSizes, maximum: 128 * KiB } }, { flags: TF.HAS_FLAGS | TF.SEND_DF, structuredReplies: true }) },
  ],
];

const r = (over: Partial<RequestFrame>): TransmissionEvent => ({ type: 'request', frame: request(over) });
const FAR = 2 ** 40; // past the end of every export above

/**
 * One representative event per event type and per guard branch, and one
 * request per refusal. Each request is labelled with the refusal it is built
 * to get first under at least one input (the coverage check below is what
 * proves it does).
 */
const EVENTS: TransmissionEvent[] = [
  // accepted by validate (plain READ/WRITE, and a command with the other checks)
  r({ type: CMD.READ, offset: 0, length: 512 }),
  r({ type: CMD.WRITE, offset: 0, length: 512, payload: Buffer.alloc(512) }),
  r({ type: CMD.BLOCK_STATUS, offset: 0, length: 512 }),
  // isDisc
  r({ type: CMD.DISC }),
  // writeOnReadOnly: TRIM on the read-only export
  r({ type: CMD.TRIM, offset: 0, length: 512 }),
  // writePastEnd: WRITE past the end of a writable export
  r({ type: CMD.WRITE, offset: FAR, length: 512, payload: Buffer.alloc(512) }),
  // commandUnknown: RESIZE (not served) and a made-up command
  r({ type: CMD.RESIZE }),
  r({ type: 0x99 }),
  // payloadTooLarge: a WRITE whose payload was consumed unbuffered
  r({ type: CMD.WRITE, offset: 0, length: 1024, payloadDiscarded: true }),
  // payloadUnexpected: a READ carrying a payload (PAYLOAD_LEN)
  r({ type: CMD.READ, flags: CF.PAYLOAD_LEN, extended: true, offset: 0, length: 512, payload: Buffer.alloc(512) }),
  // flagsUnknown: an undefined bit; PAYLOAD_LEN without extended headers
  r({ type: CMD.READ, flags: 0x8000, offset: 0, length: 512 }),
  r({ type: CMD.READ, flags: CF.PAYLOAD_LEN, offset: 0, length: 512 }),
  // flagNotForCommand: REQ_ONE on READ
  r({ type: CMD.READ, flags: CF.REQ_ONE, offset: 0, length: 512 }),
  // fuaNotNegotiated: FUA on READ where SEND_FUA is not advertised
  r({ type: CMD.READ, flags: CF.FUA, offset: 0, length: 512 }),
  // dfNotNegotiated: DF on READ where SEND_DF is not advertised
  r({ type: CMD.READ, flags: CF.DF, offset: 0, length: 512 }),
  // fastZeroNotNegotiated: WRITE_ZEROES with FAST_ZERO where SEND_FAST_ZERO is not advertised
  r({ type: CMD.WRITE_ZEROES, flags: CF.FAST_ZERO, offset: 0, length: 512 }),
  // commandNotNegotiated: FLUSH where SEND_FLUSH is not advertised
  r({ type: CMD.FLUSH }),
  // blockStatusWithoutContext: BLOCK_STATUS with REQ_ONE (valid flag) but no structured replies / meta context
  r({ type: CMD.BLOCK_STATUS, flags: CF.REQ_ONE, offset: 0, length: 512 }),
  // flushWithRange: FLUSH with an offset
  r({ type: CMD.FLUSH, offset: 512 }),
  // rangePastEnd: READ past the end; a huge offset
  r({ type: CMD.READ, offset: FAR, length: 512 }),
  r({ type: CMD.CACHE, offset: Number.MAX_SAFE_INTEGER, length: 512, huge: true, wireOffset: 2n ** 63n }),
  // misaligned: READ at offset 1 where the minimum block is 512
  r({ type: CMD.READ, offset: 1, length: 512 }),
  // readTooLarge: READ longer than maxPayload, in bounds and aligned
  r({ type: CMD.READ, offset: 0, length: 8 * KiB }),
  // dfTooLarge: a DF READ longer than the advertised maximum (and than 64 KiB), in bounds, under maxPayload
  r({ type: CMD.READ, flags: CF.DF, offset: 0, length: 192 * KiB }),
  // lengthZero: BLOCK_STATUS of length 0 where it is otherwise acceptable
  r({ type: CMD.BLOCK_STATUS, offset: 0, length: 0 }),
  // a pipelined burst: accepted and refused frames (never DISC)
  {
    type: 'requests',
    frames: [request({ type: CMD.READ, offset: 0, length: 512 }), request({ type: CMD.READ, cookie: 2n, offset: FAR, length: 512 }), request({ type: CMD.FLUSH, cookie: 3n })],
  },
  { type: 'inflight.idle' },
  { type: 'client.eof' },
  { type: 'server.shutdown' },
  { type: 'timer.idle', ms: 10_000 },
  { type: 'timer.idle', ms: 10_000, unread: true },
  { type: 'wire.fatal', message: 'bad magic' },
  { type: 'socket.closed' },
];

/** The state plus the context that changes (only `reason`); the static config is left out. */
function serializeState(s: Snap): string {
  return JSON.stringify({ value: s.value, status: s.status, reason: s.context.reason });
}

describe('transmission machine: graph coverage with xstate/graph', () => {
  // Each replay also records `<code> <message>` of every refusal emitted (single or in a burst).
  const graph = new GraphCoverage({
    machine: MACHINE,
    serializeState,
    observe: (actor, into) => {
      actor.on('refuse', (e) => into.push(`${e.code} ${e.message}`));
      actor.on('requests', (e) => into.push(...e.refused.map((x) => `${x.code} ${x.message}`)));
    },
  });

  for (const [label, input] of INPUTS) {
    it(`every shortest path replays to its state, and each transition edge replays (${label})`, () => {
      // open, draining × 4 reasons, closed × 6 reasons
      graph.walk(input, EVENTS, { minPaths: 11, minEdges: 11 });
      // One `validate` transition serves every acceptance and refusal, so the edges reach it once: send each
      // request event to a fresh actor too, and collect what each is refused with.
      for (const event of EVENTS) {
        if (event.type !== 'request' && event.type !== 'requests') continue;
        const rp = graph.replay(input, [event]);
        if (event.type === 'request' && rp.observed.length > 0) expect(rp.taken).toEqual(['transmission.open request#1']);
        for (const x of rp.observed) graph.observed.add(x);
      }
    });
  }

  it('the replayed paths cover every state and every transition of the machine', () => {
    const summary = graph.expectFullCoverage(1);
    // A request is DISC (it drains) or is decided by the one `validate` transition, as a burst is.
    const open = [...graph.transitions].filter((k) => k.startsWith('transmission.open request'));
    expect(open.sort()).toEqual(['transmission.open request#0(isDisc)', 'transmission.open request#1', 'transmission.open requests#0']);
    // Every refusal of the table (code and message) was emitted on the replayed paths, and every code is a rule ID.
    const table = REFUSALS.map((x) => `${x.code} ${x.message}`);
    expect(table.filter((x) => !graph.observed.has(x))).toEqual([]);
    for (const x of REFUSALS) expect(x.message.startsWith(`${x.code}: `), x.message).toBe(true);
    expect(new Set(REFUSALS.map((x) => x.code)).size).toBe(16);
    console.log(`transmission graph coverage: ${summary}, ${graph.observed.size} distinct refusals (${REFUSALS.length} in the table)`);
  });
});
