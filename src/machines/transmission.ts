/**
 * The transmission phase as an xstate v5 machine.
 *
 *   open → draining → closed
 *
 * Requests are validated against the spec's server rules (docs/rules.md,
 * the `transmission.*` rules, checked in nbdkit's order) by one table in
 * request-rules.ts: COMMANDS (what each command allows and needs) and
 * REFUSALS (the refusals in the order they are checked), compiled once per
 * negotiated export into the context's `check`. One action, `validate`,
 * decides every request: a single `request` event (DISC aside: it drains)
 * comes out as a `request` effect for the application or a `refuse` effect
 * with the code, errno and message `check` returned; several requests
 * decoded from one socket read arrive as one `requests` event, which the
 * same action checks frame by frame into one `requests` effect listing the
 * accepted frames and the refusals — a pipelined burst costs one machine
 * event, not one per request. An inspector sees `validate` on each, and the
 * codes in its effects.
 * Completion bookkeeping stays outside the machine: the transport counts
 * requests in flight and reports only when none are left while draining
 * (`inflight.idle`), which keeps the hot path to one event (docs/design.md,
 * "One machine event per burst"). Pausing reading when a budget is used up
 * is the connection machine's `reading` region, for both phases.
 */
import { assertEvent, emit, setup, assign } from 'xstate';
import { CMD } from '../protocol/constants.js';
import { messageOf, type CloseCode, type FixedCode } from '../protocol/errors.js';
import type { RequestFrame } from '../protocol/frames.js';
import type { Negotiated, Refusal, TransmissionEmitted, TransmissionEvent } from './types.js';
import { DEFAULTS } from '../defaults.js';
import { checkFor, SHUTDOWN, type CheckedExport, type RequestCheck } from './request-rules.js';

export { COMMANDS, REFUSAL, REFUSALS, checkFor } from './request-rules.js';
export type { CheckedExport, CommandRule, RequestCheck, RequestRefusal } from './request-rules.js';

export interface TransmissionInput {
  readonly negotiated: Negotiated;
  /** Largest READ length / WRITE payload served (our limit, ≥ the advertised maximum). */
  readonly maxPayload?: number;
}

export interface TransmissionContext extends CheckedExport {
  readonly exportName: string;
  /** The refusal table compiled for this export (`checkFor`): the first refusal for a request, or null. */
  readonly check: RequestCheck;
  /** Why we are draining / closed: the catalogue code and its text. */
  code: CloseCode | null;
  reason: string | null;
}

const NONE: readonly Refusal[] = Object.freeze([]);
const req = (event: TransmissionEvent): RequestFrame => (event as { frame: RequestFrame }).frame;

export function transmissionContext(input: TransmissionInput): TransmissionContext {
  const n = input.negotiated;
  const fields = {
    exportName: n.export.name,
    size: n.export.size,
    flags: n.flags,
    minimumBlock: n.export.blockSizes.minimum,
    maximumBlock: n.export.blockSizes.maximum,
    maxPayload: input.maxPayload ?? DEFAULTS.maxPayload,
    structuredReplies: n.structuredReplies || n.extendedHeaders,
    extendedHeaders: n.extendedHeaders,
    metaContextIds: n.metaContexts.map((m) => m.id),
  };
  return { ...fields, check: checkFor(fields), code: null, reason: null };
}

export const transmissionMachine = setup({
  types: {
    context: {} as TransmissionContext,
    events: {} as TransmissionEvent,
    input: {} as TransmissionInput,
    emitted: {} as TransmissionEmitted,
    output: {} as { code: CloseCode; reason: string },
  },
  guards: {
    isDisc: ({ event }) => req(event).type === CMD.NBD_CMD_DISC,
    repliesUnread: ({ event }) => event.type === 'timer.idle' && event.unread === true,
  },
  actions: {
    // The one place a request is accepted or refused, for a single request and a burst alike: the
    // compiled table (`context.check`) per frame. A single request comes out as a `request` or
    // `refuse` effect, a burst as one `requests` effect listing both; refusals carry their code.
    validate: emit(({ context, event }) => {
      const check = context.check;
      if (event.type === 'request') {
        const frame = event.frame;
        const refusal = check(frame);
        if (refusal === null) return { type: 'request' as const, frame };
        return { type: 'refuse' as const, frame, code: refusal.code, errno: refusal.errno, message: refusal.message };
      }
      assertEvent(event, 'requests');
      const accepted: RequestFrame[] = [];
      let refused: Refusal[] | undefined;
      for (const frame of event.frames) {
        const refusal = check(frame);
        if (refusal === null) accepted.push(frame);
        else (refused ??= []).push({ frame, code: refusal.code, errno: refusal.errno, message: refusal.message });
      }
      return { type: 'requests' as const, accepted, refused: refused ?? NONE };
    }),
    // transmission.shutdown-drains: while draining, anything new gets ESHUTDOWN (a single request or a burst).
    refuseShutdown: emit(({ event }) => {
      const refusal = (frame: RequestFrame) => ({ frame, code: SHUTDOWN.code, errno: SHUTDOWN.errno, message: SHUTDOWN.message });
      if (event.type === 'request') return { type: 'refuse' as const, ...refusal(event.frame) };
      assertEvent(event, 'requests');
      return { type: 'requests' as const, accepted: [], refused: event.frames.map(refusal) };
    }),
    announceDrain: emit((_, params: { reason: 'disc' | 'eof' | 'shutdown' | 'idle' }) => ({ type: 'draining' as const, reason: params.reason })),
    // Why the session ends: a catalogue code; the reason is its message.
    recordReason: assign((_, params: { code: Extract<CloseCode, FixedCode> }) => ({ code: params.code, reason: messageOf(params.code) })),
    closeSoft: emit(({ context }) => ({ type: 'close' as const, hard: false, code: context.code ?? 'NBD_CLOSED_SOCKET', reason: context.reason ?? 'done' })),
    // Idle with replies the client stopped taking: nothing more can reach it, so no drain (a soft close
    // would wait behind the unread replies for ever).
    closeUnread: emit(({ context }) => ({ type: 'close' as const, hard: true, code: context.code ?? 'NBD_CLOSED_IDLE_TIMEOUT', reason: `${context.reason ?? 'idle'} (replies unread)` })),
    // The decoder gave up: its own code (NBD_ERR_PROTOCOL when the report has none) and message.
    closeHard: emit(({ event }) => {
      assertEvent(event, 'wire.fatal');
      return { type: 'close' as const, hard: true, code: event.code ?? 'NBD_ERR_PROTOCOL', reason: event.message };
    }),
  },
}).createMachine({
  id: 'transmission',
  context: ({ input }) => transmissionContext(input),
  initial: 'open',
  on: {
    'wire.fatal': { target: '.closed', actions: [{ type: 'recordReason', params: { code: 'NBD_ERR_PROTOCOL' } }, 'closeHard'] },
    'socket.closed': { target: '.closed', actions: { type: 'recordReason', params: { code: 'NBD_CLOSED_SOCKET' } } },
  },
  states: {
    open: {
      on: {
        request: [
          // transmission.disc-drains: DISC ⇒ no reply; finish what is in flight, then close.
          {
            guard: 'isDisc',
            target: 'draining',
            actions: [{ type: 'recordReason', params: { code: 'transmission.disc-drains' } }, { type: 'announceDrain', params: { reason: 'disc' } }],
          },
          // Everything else: accepted or refused by the compiled table, in `validate`.
          { actions: 'validate' },
        ],
        // A burst (never DISC): the same action, the same check per frame.
        requests: { actions: 'validate' },
        'client.eof': {
          target: 'draining',
          actions: [{ type: 'recordReason', params: { code: 'NBD_CLOSED_BY_CLIENT' } }, { type: 'announceDrain', params: { reason: 'eof' } }],
        },
        'server.shutdown': {
          target: 'draining',
          actions: [{ type: 'recordReason', params: { code: 'NBD_CLOSED_SHUTDOWN' } }, { type: 'announceDrain', params: { reason: 'shutdown' } }],
        },
        // The server's idle timeout: nothing in flight for that long ⇒ close as on shutdown; with replies
        // the client stopped taking ⇒ close at once.
        'timer.idle': [
          { guard: 'repliesUnread', target: 'closed', actions: [{ type: 'recordReason', params: { code: 'NBD_CLOSED_IDLE_TIMEOUT' } }, 'closeUnread'] },
          { target: 'draining', actions: [{ type: 'recordReason', params: { code: 'NBD_CLOSED_IDLE_TIMEOUT' } }, { type: 'announceDrain', params: { reason: 'idle' } }] },
        ],
      },
    },
    draining: {
      on: {
        request: [{ guard: 'isDisc' }, { actions: 'refuseShutdown' }],
        requests: { actions: 'refuseShutdown' },
        'inflight.idle': { target: 'closed', actions: 'closeSoft' },
      },
    },
    closed: { type: 'final' },
  },
  output: ({ context }) => ({ code: context.code ?? 'NBD_CLOSED_SOCKET', reason: context.reason ?? 'closed' }),
});
