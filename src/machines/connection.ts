/**
 * One connection, two regions side by side:
 *
 *   phase:   handshake → transmission → closed
 *   reading: flowing ⇄ paused → stopped
 *
 * `phase` runs the handshake machine, then (if it negotiated an export)
 * the transmission machine, as invoked children with the ids `handshake`
 * and `transmission`; the transport sends wire events straight to the
 * active child so a request costs one machine event.
 *
 * `reading` is the connection's flow control, and the transport does what
 * its states say: entering `paused` pauses reading from the socket
 * (`pauseReading`), leaving it resumes (`resumeReading`), and `stopped` —
 * entered by the very transition that closes `phase` — stops the decoder and the socket
 * subscription for good (`stopReading`). The transport reports only the
 * budget crossings (`budget.full` when a budget of the connection is used
 * up, `budget.room` when all have room again; see the README's limits), so
 * the pause an inspector shows is the pause that happened. The machine is
 * done when both regions are final.
 */
import { assign, emit, setup } from 'xstate';
import { handshakeMachine, type HandshakeInput } from './handshake.js';
import { transmissionMachine } from './transmission.js';
import type { HandshakeOutcome, Negotiated } from './types.js';

export interface ConnectionInput {
  readonly handshake: HandshakeInput;
  /** Largest READ / WRITE payload served in transmission. */
  readonly maxPayload?: number;
}

export interface ConnectionContext {
  readonly input: ConnectionInput;
  negotiated: Negotiated | null;
  outcome: HandshakeOutcome['outcome'] | null;
}

/** Events the transport sends the connection itself (wire events go to its children). */
export type ConnectionEvent = { type: 'budget.full' } | { type: 'budget.room' };

/** What the connection asks the transport to do with the socket's input. */
export type ConnectionEmitted = { type: 'pauseReading' } | { type: 'resumeReading' } | { type: 'stopReading' };

/**
 * Where every end of the phase goes: phase.closed and reading.stopped, both regions in one
 * transition (no eventless re-check of the phase after every step).
 */
const CLOSE = ['#connection.phase.closed', '#connection.reading.stopped'];

export const connectionMachine = setup({
  types: {
    context: {} as ConnectionContext,
    events: {} as ConnectionEvent,
    input: {} as ConnectionInput,
    emitted: {} as ConnectionEmitted,
    output: {} as { outcome: string; negotiated: Negotiated | null },
  },
  actors: { handshake: handshakeMachine, transmission: transmissionMachine },
  guards: {
    negotiated: ({ event }) => (event as unknown as { output: HandshakeOutcome }).output.outcome === 'negotiated',
  },
  actions: {
    pauseReading: emit({ type: 'pauseReading' } as const),
    resumeReading: emit({ type: 'resumeReading' } as const),
    stopReading: emit({ type: 'stopReading' } as const),
  },
}).createMachine({
  id: 'connection',
  context: ({ input }) => ({ input, negotiated: null, outcome: null }),
  type: 'parallel',
  states: {
    phase: {
      initial: 'handshake',
      states: {
        handshake: {
          invoke: {
            id: 'handshake',
            src: 'handshake',
            input: ({ context }) => context.input.handshake,
            onDone: [
              {
                guard: 'negotiated',
                target: 'transmission',
                actions: assign(({ event }) => ({
                  negotiated: (event.output as Extract<HandshakeOutcome, { outcome: 'negotiated' }>).negotiated,
                  outcome: 'negotiated' as const,
                })),
              },
              {
                target: CLOSE,
                actions: assign({ outcome: ({ event }) => (event.output as HandshakeOutcome).outcome }),
              },
            ],
            onError: { target: CLOSE },
          },
        },
        transmission: {
          invoke: {
            id: 'transmission',
            src: 'transmission',
            input: ({ context }) => ({ negotiated: context.negotiated!, maxPayload: context.input.maxPayload }),
            onDone: { target: CLOSE },
            onError: { target: CLOSE },
          },
        },
        closed: { type: 'final' },
      },
    },
    reading: {
      initial: 'flowing',
      states: {
        flowing: {
          on: { 'budget.full': 'paused' },
        },
        // A budget is used up: the socket is not read until budget.room.
        paused: {
          entry: 'pauseReading',
          exit: 'resumeReading',
          on: { 'budget.room': 'flowing' },
        },
        // The connection is over (entered with phase.closed, by the same transition): nothing more is read or interpreted.
        stopped: { type: 'final', entry: 'stopReading' },
      },
    },
  },
  output: ({ context }) => ({ outcome: context.outcome ?? 'closed', negotiated: context.negotiated }),
});
