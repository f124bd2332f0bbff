/**
 * The transmission phase as an xstate v5 machine.
 *
 *   open: { serving ⇄ throttled } → draining → closed
 *
 * One machine event per request (`request`): the guards below validate it
 * against the spec's server rules (docs/rules.md, the `transmission.*`
 * rules, checked in nbdkit's order) and the request is either emitted to
 * the application (`request`) or refused with its errno (`refuse`).
 * Several requests decoded from one socket read may arrive as one
 * `requests` event instead: each frame goes through the same table
 * (`validateRequest`), and one `requests` effect lists the accepted frames
 * and the refusals (each with its errno), so a pipelined burst costs one
 * machine event rather than one per request.
 * Completion bookkeeping stays outside the machine: the transport counts
 * requests in flight and only reports the crossings (`inflight.high`,
 * `inflight.low`, `inflight.idle`), which keeps the hot path to one event
 * (docs/design.md, "One machine event per burst").
 */
import { emit, setup, assign } from 'xstate';
import { CMD, CMD_FLAG, ERRNO, FLAG } from '../protocol/constants.js';
import type { RequestFrame } from '../protocol/frames.js';
import type { Negotiated, Refusal, TransmissionEmitted, TransmissionEvent } from './types.js';
import { DEFAULTS } from '../defaults.js';

export interface TransmissionInput {
  readonly negotiated: Negotiated;
  /** Largest READ length / WRITE payload served (our limit, ≥ the advertised maximum). */
  readonly maxPayload?: number;
}

export interface TransmissionContext {
  readonly exportName: string;
  readonly size: number;
  readonly flags: number;
  readonly minimumBlock: number;
  readonly maxPayload: number;
  readonly structuredReplies: boolean;
  readonly extendedHeaders: boolean;
  readonly metaContextIds: readonly number[];
  /** Why we are draining / closed. */
  reason: string | null;
}

/** Command flags this server understands at all (PAYLOAD_LEN only with extended headers). */
const KNOWN_FLAGS =
  CMD_FLAG.NBD_CMD_FLAG_FUA |
  CMD_FLAG.NBD_CMD_FLAG_NO_HOLE |
  CMD_FLAG.NBD_CMD_FLAG_DF |
  CMD_FLAG.NBD_CMD_FLAG_REQ_ONE |
  CMD_FLAG.NBD_CMD_FLAG_FAST_ZERO;

/** Commands that write (refused on a read-only export: transmission.write-read-only). */
const WRITES = new Set<number>([CMD.NBD_CMD_WRITE, CMD.NBD_CMD_TRIM, CMD.NBD_CMD_WRITE_ZEROES]);
/** Commands whose offset/length address the export (transmission.out-of-bounds). */
const RANGED = new Set<number>([
  CMD.NBD_CMD_READ,
  CMD.NBD_CMD_WRITE,
  CMD.NBD_CMD_TRIM,
  CMD.NBD_CMD_CACHE,
  CMD.NBD_CMD_WRITE_ZEROES,
  CMD.NBD_CMD_BLOCK_STATUS,
]);
/** Commands the transmission phase serves (RESIZE is an experimental extension we do not offer). */
const SERVED = new Set<number>([
  CMD.NBD_CMD_READ,
  CMD.NBD_CMD_WRITE,
  CMD.NBD_CMD_DISC,
  CMD.NBD_CMD_FLUSH,
  CMD.NBD_CMD_TRIM,
  CMD.NBD_CMD_CACHE,
  CMD.NBD_CMD_WRITE_ZEROES,
  CMD.NBD_CMD_BLOCK_STATUS,
]);

type Ctx = TransmissionContext;
const NONE: readonly Refusal[] = Object.freeze([]);
const req = (event: TransmissionEvent): RequestFrame => (event as { frame: RequestFrame }).frame;
const has = (ctx: Ctx, flag: number) => (ctx.flags & flag) !== 0;

/**
 * The named guards, as plain predicates. Exported so tests and tools can
 * evaluate them without running the machine.
 */
export const requestGuards = {
  isDisc: (_c: Ctx, r: RequestFrame) => r.type === CMD.NBD_CMD_DISC,
  // transmission.unknown-command: unknown command ⇒ EINVAL.
  commandUnknown: (_c: Ctx, r: RequestFrame) => !SERVED.has(r.type),
  // transmission.payload-too-large: a payload over our limit was consumed unbuffered; refuse it.
  payloadTooLarge: (_c: Ctx, r: RequestFrame) => r.payloadDiscarded,
  // transmission.payload-unexpected: PAYLOAD_LEN on a command that takes no payload ⇒ consume it, EINVAL.
  payloadUnexpected: (_c: Ctx, r: RequestFrame) => r.type !== CMD.NBD_CMD_WRITE && r.payload !== undefined,
  // transmission.write-read-only: EPERM for WRITE / TRIM / WRITE_ZEROES (checked first, as nbdkit).
  writeOnReadOnly: (c: Ctx, r: RequestFrame) => WRITES.has(r.type) && has(c, FLAG.NBD_FLAG_READ_ONLY),
  // transmission.unknown-flag: unknown flag bits (PAYLOAD_LEN is known only with extended headers).
  flagsUnknown: (c: Ctx, r: RequestFrame) =>
    (r.flags & ~(KNOWN_FLAGS | (c.extendedHeaders ? CMD_FLAG.NBD_CMD_FLAG_PAYLOAD_LEN : 0))) !== 0,
  // transmission.flag-not-for-command: a flag not valid for this command.
  flagNotForCommand: (_c: Ctx, r: RequestFrame) =>
    ((r.flags & (CMD_FLAG.NBD_CMD_FLAG_NO_HOLE | CMD_FLAG.NBD_CMD_FLAG_FAST_ZERO)) !== 0 && r.type !== CMD.NBD_CMD_WRITE_ZEROES) ||
    ((r.flags & CMD_FLAG.NBD_CMD_FLAG_DF) !== 0 && r.type !== CMD.NBD_CMD_READ) ||
    ((r.flags & CMD_FLAG.NBD_CMD_FLAG_REQ_ONE) !== 0 && r.type !== CMD.NBD_CMD_BLOCK_STATUS),
  // transmission.flag-not-advertised: a flag whose transmission flag was not advertised ⇒ EINVAL.
  fuaNotNegotiated: (c: Ctx, r: RequestFrame) => (r.flags & CMD_FLAG.NBD_CMD_FLAG_FUA) !== 0 && !has(c, FLAG.NBD_FLAG_SEND_FUA),
  dfNotNegotiated: (c: Ctx, r: RequestFrame) => (r.flags & CMD_FLAG.NBD_CMD_FLAG_DF) !== 0 && !has(c, FLAG.NBD_FLAG_SEND_DF),
  fastZeroNotNegotiated: (c: Ctx, r: RequestFrame) =>
    (r.flags & CMD_FLAG.NBD_CMD_FLAG_FAST_ZERO) !== 0 && !has(c, FLAG.NBD_FLAG_SEND_FAST_ZERO),
  // transmission.command-not-advertised: a command whose transmission flag was not advertised ⇒ EINVAL.
  commandNotNegotiated: (c: Ctx, r: RequestFrame) => {
    switch (r.type) {
      case CMD.NBD_CMD_FLUSH:
        return !has(c, FLAG.NBD_FLAG_SEND_FLUSH);
      case CMD.NBD_CMD_TRIM:
        return !has(c, FLAG.NBD_FLAG_SEND_TRIM);
      case CMD.NBD_CMD_WRITE_ZEROES:
        return !has(c, FLAG.NBD_FLAG_SEND_WRITE_ZEROES);
      case CMD.NBD_CMD_CACHE:
        return !has(c, FLAG.NBD_FLAG_SEND_CACHE);
      default:
        return false;
    }
  },
  // transmission.block-status-needs-context: BLOCK_STATUS needs structured replies and a selected meta context.
  blockStatusWithoutContext: (c: Ctx, r: RequestFrame) =>
    r.type === CMD.NBD_CMD_BLOCK_STATUS && (!c.structuredReplies || c.metaContextIds.length === 0),
  // transmission.flush-with-range: FLUSH with a non-zero offset or length ⇒ EINVAL (as nbdkit).
  flushWithRange: (_c: Ctx, r: RequestFrame) => r.type === CMD.NBD_CMD_FLUSH && (r.offset !== 0 || r.length !== 0),
  // Past the end of the export: WRITE / WRITE_ZEROES ⇒ ENOSPC (transmission.write-out-of-bounds),
  // the others ⇒ EINVAL (transmission.out-of-bounds).
  writePastEnd: (c: Ctx, r: RequestFrame) =>
    (r.type === CMD.NBD_CMD_WRITE || r.type === CMD.NBD_CMD_WRITE_ZEROES) && (r.huge || r.offset + r.length > c.size),
  rangePastEnd: (c: Ctx, r: RequestFrame) => RANGED.has(r.type) && (r.huge || r.offset + r.length > c.size),
  // transmission.misaligned-request: offset and length must be multiples of the advertised minimum block.
  misaligned: (c: Ctx, r: RequestFrame) =>
    c.minimumBlock > 1 && RANGED.has(r.type) && (r.offset % c.minimumBlock !== 0 || r.length % c.minimumBlock !== 0),
  // transmission.read-too-large: READ longer than we serve ⇒ EINVAL (EOVERFLOW is reserved for DF).
  readTooLarge: (c: Ctx, r: RequestFrame) => r.type === CMD.NBD_CMD_READ && r.length > c.maxPayload,
} as const;

export type RequestGuardName = keyof typeof requestGuards;

/**
 * The refusal table: guard → errno and the rule it enforces (its ID in
 * docs/rules.md, then a few words; sent as the error message), in
 * evaluation order.
 */
export const REFUSALS: ReadonlyArray<{ guard: RequestGuardName; errno: number; rule: string }> = [
  // nbdkit's order of checks: read-only first, then the range check for
  // writes, so EPERM and ENOSPC win over the EINVAL reasons below.
  { guard: 'writeOnReadOnly', errno: ERRNO.NBD_EPERM, rule: 'transmission.write-read-only: write to a read-only export' },
  { guard: 'writePastEnd', errno: ERRNO.NBD_ENOSPC, rule: 'transmission.write-out-of-bounds: write past the end of the export' },
  { guard: 'commandUnknown', errno: ERRNO.NBD_EINVAL, rule: 'transmission.unknown-command: unknown command' },
  { guard: 'payloadTooLarge', errno: ERRNO.NBD_EINVAL, rule: 'transmission.payload-too-large: payload over the size limit (consumed)' },
  { guard: 'payloadUnexpected', errno: ERRNO.NBD_EINVAL, rule: 'transmission.payload-unexpected: payload on a command without one (consumed)' },
  { guard: 'flagsUnknown', errno: ERRNO.NBD_EINVAL, rule: 'transmission.unknown-flag: unknown command flag' },
  { guard: 'flagNotForCommand', errno: ERRNO.NBD_EINVAL, rule: 'transmission.flag-not-for-command: flag not valid for this command' },
  { guard: 'fuaNotNegotiated', errno: ERRNO.NBD_EINVAL, rule: 'transmission.flag-not-advertised: FUA without SEND_FUA' },
  { guard: 'dfNotNegotiated', errno: ERRNO.NBD_EINVAL, rule: 'transmission.flag-not-advertised: DF without SEND_DF' },
  { guard: 'fastZeroNotNegotiated', errno: ERRNO.NBD_EINVAL, rule: 'transmission.flag-not-advertised: FAST_ZERO without SEND_FAST_ZERO' },
  { guard: 'commandNotNegotiated', errno: ERRNO.NBD_EINVAL, rule: 'transmission.command-not-advertised: command not advertised' },
  { guard: 'blockStatusWithoutContext', errno: ERRNO.NBD_EINVAL, rule: 'transmission.block-status-needs-context: BLOCK_STATUS without a meta context' },
  { guard: 'flushWithRange', errno: ERRNO.NBD_EINVAL, rule: 'transmission.flush-with-range: FLUSH with offset or length' },
  { guard: 'rangePastEnd', errno: ERRNO.NBD_EINVAL, rule: 'transmission.out-of-bounds: request past the end of the export' },
  { guard: 'misaligned', errno: ERRNO.NBD_EINVAL, rule: 'transmission.misaligned-request: not aligned to the minimum block size' },
  { guard: 'readTooLarge', errno: ERRNO.NBD_EINVAL, rule: 'transmission.read-too-large: read larger than the maximum payload' },
];

/**
 * The common case in one expression: a READ or WRITE without flags, in
 * bounds and aligned. True only when every guard of the table is false
 * for this frame (so it may skip the table); false means "ask the table".
 */
function plainAcceptable(c: Ctx, r: RequestFrame): boolean {
  if (r.flags !== 0 || r.huge || r.payloadDiscarded || r.offset + r.length > c.size) return false;
  if (c.minimumBlock > 1 && (r.offset % c.minimumBlock !== 0 || r.length % c.minimumBlock !== 0)) return false;
  if (r.type === CMD.NBD_CMD_READ) return r.payload === undefined && r.length <= c.maxPayload;
  return r.type === CMD.NBD_CMD_WRITE && !has(c, FLAG.NBD_FLAG_READ_ONLY);
}

/** Pure validation with the same table the machine uses: errno and rule, or null when acceptable. */
export function validateRequest(ctx: Ctx, r: RequestFrame): { errno: number; rule: string } | null {
  if (plainAcceptable(ctx, r)) return null;
  for (const { guard, errno, rule } of REFUSALS) if (requestGuards[guard](ctx, r)) return { errno, rule };
  return null;
}

type GuardFns = { [K in RequestGuardName]: (a: { context: Ctx; event: TransmissionEvent }) => boolean };
const machineGuards = Object.fromEntries(
  Object.entries(requestGuards).map(([name, fn]) => [name, ({ context, event }: { context: Ctx; event: TransmissionEvent }) => fn(context, req(event))]),
) as GuardFns;

export function transmissionContext(input: TransmissionInput): TransmissionContext {
  const n = input.negotiated;
  return {
    exportName: n.export.name,
    size: n.export.size,
    flags: n.flags,
    minimumBlock: n.export.blockSizes.minimum,
    maxPayload: input.maxPayload ?? DEFAULTS.maxPayload,
    structuredReplies: n.structuredReplies || n.extendedHeaders,
    extendedHeaders: n.extendedHeaders,
    metaContextIds: n.metaContexts.map((m) => m.id),
    reason: null,
  };
}

const refusalTransitions = REFUSALS.map(({ guard, errno, rule }) => ({
  guard,
  actions: { type: 'refuse' as const, params: { errno, rule } },
}));

export const transmissionMachine = setup({
  types: {
    context: {} as TransmissionContext,
    events: {} as TransmissionEvent,
    input: {} as TransmissionInput,
    emitted: {} as TransmissionEmitted,
    output: {} as { reason: string },
  },
  guards: {
    ...machineGuards,
    requestAcceptable: ({ context, event }: { context: Ctx; event: TransmissionEvent }) => {
      const r = req(event);
      return r.type !== CMD.NBD_CMD_DISC && validateRequest(context, r) === null;
    },
  },
  actions: {
    deliver: emit(({ event }) => ({ type: 'request', frame: req(event) }) as const),
    refuse: emit(({ event }, params: { errno: number; rule: string }) => ({
      type: 'refuse' as const,
      frame: req(event),
      errno: params.errno,
      message: params.rule,
    })),
    // A burst of requests (never DISC): per frame, the same checks as `request`; one effect for the burst.
    deliverEach: emit(({ context, event }) => {
      const accepted: RequestFrame[] = [];
      let refused: Refusal[] | undefined;
      for (const frame of (event as Extract<TransmissionEvent, { type: 'requests' }>).frames) {
        const refusal = validateRequest(context, frame);
        if (refusal === null) accepted.push(frame);
        else (refused ??= []).push({ frame, errno: refusal.errno, message: refusal.rule });
      }
      return { type: 'requests' as const, accepted, refused: refused ?? NONE };
    }),
    // transmission.shutdown-drains: while draining, anything new gets ESHUTDOWN.
    refuseShutdownEach: emit(({ event }) => ({
      type: 'requests' as const,
      accepted: [],
      refused: (event as Extract<TransmissionEvent, { type: 'requests' }>).frames.map((frame) => ({
        frame,
        errno: ERRNO.NBD_ESHUTDOWN,
        message: 'transmission.shutdown-drains: server is shutting down',
      })),
    })),
    // transmission.shutdown-drains: while draining, anything new gets ESHUTDOWN.
    refuseShutdown: emit(({ event }) => ({
      type: 'refuse' as const,
      frame: req(event),
      errno: ERRNO.NBD_ESHUTDOWN,
      message: 'transmission.shutdown-drains: server is shutting down',
    })),
    announceDrain: emit((_, params: { reason: 'disc' | 'eof' | 'shutdown' | 'idle' }) => ({ type: 'draining' as const, reason: params.reason })),
    recordReason: assign({ reason: (_, params: { reason: string }) => params.reason }),
    closeSoft: emit(({ context }) => ({ type: 'close' as const, hard: false, reason: context.reason ?? 'done' })),
    closeHard: emit(({ event }) => ({
      type: 'close' as const,
      hard: true,
      reason: event.type === 'wire.fatal' ? event.message : event.type,
    })),
  },
}).createMachine({
  id: 'transmission',
  context: ({ input }) => transmissionContext(input),
  initial: 'open',
  on: {
    'wire.fatal': { target: '.closed', actions: [{ type: 'recordReason', params: { reason: 'protocol violation' } }, 'closeHard'] },
    'socket.closed': { target: '.closed', actions: { type: 'recordReason', params: { reason: 'socket closed' } } },
  },
  states: {
    open: {
      initial: 'serving',
      on: {
        request: [
          // Hot path: one combined check (the same table as the named guards
          // below), so an acceptable request costs a single guard evaluation.
          { guard: 'requestAcceptable', actions: 'deliver' },
          // transmission.disc-drains: DISC ⇒ no reply; finish what is in flight, then close.
          {
            guard: 'isDisc',
            target: 'draining',
            actions: [{ type: 'recordReason', params: { reason: 'NBD_CMD_DISC' } }, { type: 'announceDrain', params: { reason: 'disc' } }],
          },
          ...refusalTransitions,
        ],
        requests: { actions: 'deliverEach' },
        'client.eof': {
          target: 'draining',
          actions: [{ type: 'recordReason', params: { reason: 'client closed' } }, { type: 'announceDrain', params: { reason: 'eof' } }],
        },
        'server.shutdown': {
          target: 'draining',
          actions: [{ type: 'recordReason', params: { reason: 'server shutdown' } }, { type: 'announceDrain', params: { reason: 'shutdown' } }],
        },
        // The server's idle timeout: nothing in flight for that long ⇒ close as on shutdown.
        'timer.idle': {
          target: 'draining',
          actions: [{ type: 'recordReason', params: { reason: 'idle timeout' } }, { type: 'announceDrain', params: { reason: 'idle' } }],
        },
      },
      states: {
        serving: { on: { 'inflight.high': 'throttled' } },
        // In-flight cap reached: the transport has paused reading.
        throttled: { on: { 'inflight.low': 'serving' } },
      },
    },
    draining: {
      on: {
        request: [{ guard: 'isDisc' }, { actions: 'refuseShutdown' }],
        requests: { actions: 'refuseShutdownEach' },
        'inflight.idle': { target: 'closed', actions: 'closeSoft' },
      },
    },
    closed: { type: 'final' },
  },
  output: ({ context }) => ({ reason: context.reason ?? 'closed' }),
});
