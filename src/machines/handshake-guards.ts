/**
 * The handshake machine's guards (handshake.ts): the questions its
 * transitions ask of the context and of the option in hand. Comments cite
 * the rules they decide by their IDs in docs/rules.md; the transitions refer
 * to the guards by name, and the compiler checks those names against this
 * object.
 */
import { assertEvent, type GuardArgs } from 'xstate';
import { CLIENT_FLAGS } from '../protocol/constants.js';
import type { HandshakeEvent } from './types.js';
import {
  DATALESS_OPTIONS,
  KNOWN_CLIENT_FLAGS,
  NAMED_OPTIONS,
  OPTION_EVENTS,
  exportTlsBlocked,
  findExport,
  isTlsBlocked,
  staticExport,
  type HandshakeContext,
} from './handshake-options.js';

/** The machine's own event: the option that spends the budget raises it (never sent by the transport). */
export type BudgetSpent = { type: 'options.spent' };

/** What a guard is given: the machine's context and the event being handled. */
type Args = GuardArgs<HandshakeContext, HandshakeEvent | BudgetSpent>;

export const handshakeGuards = {
  // handshake.client-flags-unknown: unknown or un-advertised client flag bits ⇒ drop the connection.
  clientFlagsInvalid: ({ event }) => {
    assertEvent(event, 'wire.clientFlags');
    return (event.flags & ~KNOWN_CLIENT_FLAGS & 0xffffffff) !== 0;
  },
  // option.too-many-options: too many options on one connection (DoS guard).
  tooManyOptions: ({ context }) => context.optionCount >= context.server.maxOptions,
  // option.shutting-down: while shutting down answer options (except ABORT) with ERR_SHUTDOWN.
  shuttingDown: ({ context }) => context.shuttingDown,
  // handshake.fixed-newstyle-required: without fixed newstyle only EXPORT_NAME is legal.
  clientNotFixedNewstyle: ({ event }) => {
    assertEvent(event, 'wire.clientFlags');
    return (event.flags & CLIENT_FLAGS.NBD_FLAG_C_FIXED_NEWSTYLE) === 0;
  },
  // tls.mode-forcedtls: FORCEDTLS and no TLS yet.
  tlsRequiredNotActive: ({ context }) => isTlsBlocked(context),
  // The option data could not be parsed (option.length-mismatch, general.string-limits) or was too big (option.too-big).
  optionMalformed: ({ event }) => {
    assertEvent(event, OPTION_EVENTS);
    return event.frame.problem?.reply === 'NBD_REP_ERR_INVALID';
  },
  optionTooBig: ({ event }) => {
    assertEvent(event, OPTION_EVENTS);
    return event.frame.problem?.reply === 'NBD_REP_ERR_TOO_BIG';
  },
  // option.unexpected-data: LIST/STARTTLS/STRUCTURED_REPLY/EXTENDED_HEADERS with data ⇒ ERR_INVALID.
  optionHasData: ({ event }) => {
    assertEvent(event, DATALESS_OPTIONS);
    return event.frame.hasData;
  },
  tlsActive: ({ context }) => context.tls,
  tlsPolicyOff: ({ context }) => context.server.tlsPolicy === 'off',
  // The name is neither a static export nor the one this connection's last lookup was for: ask the server.
  exportNeedsResolving: ({ context, event }) => {
    assertEvent(event, NAMED_OPTIONS);
    return context.server.resolveExports && staticExport(context.server, event.frame.name) === undefined && context.lookup?.name !== event.frame.name;
  },
  // The server's hook failed for this name (its log line says why).
  exportOpenFailed: ({ context, event }) => {
    assertEvent(event, NAMED_OPTIONS);
    return context.lookup?.name === event.frame.name && context.lookup.error !== undefined;
  },
  // NBD_OPT_LIST with a per-connection list not made yet for this option.
  listNeedsResolving: ({ context }) => context.server.resolveList && context.listing === null,
  listFailed: ({ context }) => context.listing !== null && 'error' in context.listing,
  // Where a resolution returns to: the mode the option came from (only open and unfixed resolve).
  notFixedNewstyle: ({ context }) => !context.fixedNewstyle,
  exportUnknown: ({ context, event }) => {
    assertEvent(event, NAMED_OPTIONS);
    return findExport(context, event.frame.name) === undefined;
  },
  exportTlsOnly: ({ context, event }) => {
    assertEvent(event, NAMED_OPTIONS);
    return exportTlsBlocked(context, findExport(context, event.frame.name));
  },
  extendedHeadersOn: ({ context }) => context.extendedHeaders,
  structuredRepliesOn: ({ context }) => context.structuredReplies,
  structuredRepliesNotOffered: ({ context }) => !context.server.offerStructuredReplies,
  extendedHeadersNotOffered: ({ context }) => !context.server.offerExtendedHeaders,
  structuredRepliesOff: ({ context }) => !context.structuredReplies && !context.extendedHeaders,
} satisfies Record<string, (args: Args) => boolean>;
