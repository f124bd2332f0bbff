/**
 * One connection: the handshake machine, then (if it negotiated an export)
 * the transmission machine. Both run as invoked children with the ids
 * `handshake` and `transmission`; the transport sends wire events straight
 * to the active child so a request costs one machine event.
 */
import { assign, setup } from 'xstate';
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

export const connectionMachine = setup({
  types: {
    context: {} as ConnectionContext,
    input: {} as ConnectionInput,
    output: {} as { outcome: string; negotiated: Negotiated | null },
  },
  actors: { handshake: handshakeMachine, transmission: transmissionMachine },
  guards: {
    negotiated: ({ event }) => (event as unknown as { output: HandshakeOutcome }).output.outcome === 'negotiated',
  },
}).createMachine({
  id: 'connection',
  context: ({ input }) => ({ input, negotiated: null, outcome: null }),
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
            target: 'closed',
            actions: assign({ outcome: ({ event }) => (event.output as HandshakeOutcome).outcome }),
          },
        ],
        onError: { target: 'closed' },
      },
    },
    transmission: {
      invoke: {
        id: 'transmission',
        src: 'transmission',
        input: ({ context }) => ({ negotiated: context.negotiated!, maxPayload: context.input.maxPayload }),
        onDone: 'closed',
        onError: 'closed',
      },
    },
    closed: { type: 'final' },
  },
  output: ({ context }) => ({ outcome: context.outcome ?? 'closed', negotiated: context.negotiated }),
});
