/**
 * The handshake (option haggling) phase as an xstate v5 machine.
 *
 * greeting → awaitingClientFlags → options ⇄ upgradingTls → negotiated
 *                                    ⇅    ↘ aborted | rejected | disconnected
 *                                resolving (the server works out an export or the list)
 *
 * options: exhausted | shuttingDown | unfixed | awaitingTls | open
 *   (the modes, by precedence: the client flags and STARTTLS's end name the
 *   mode to enter; any mode → exhausted once the option budget is spent,
 *   any mode but exhausted → shuttingDown on server.shutdown)
 *
 * The transitions are literal objects that the compiler checks against the
 * guard names (handshake-guards.ts) and the action names below; a mode
 * answers the options it restricts with one `opt.*` wildcard transition and
 * names the exceptions.
 *
 * Every reply goes out through the emitted `send` effect; the machine never
 * touches a socket. Comments, reject reasons and refusals cite the rules
 * they enforce by their IDs in docs/rules.md; every option error and every
 * reason to close is an entry of the error catalogue (src/protocol/errors.ts),
 * named by its code in the transitions.
 */
import { assertEvent, assign, emit, enqueueActions, setup } from 'xstate';
import { CLIENT_FLAGS } from '../protocol/constants.js';
import { messageOf, quoteName, type OptionErrorCode } from '../protocol/errors.js';
import { encodeAck, encodeExportNameReply, encodeGreeting } from '../protocol/encoder.js';
import type { HandshakeEmitted, HandshakeEvent, HandshakeOutcome } from './types.js';
import {
  ACKED_OPTIONS,
  NAMED_OPTIONS,
  OPTION_EVENTS,
  SERVER_HANDSHAKE_FLAGS,
  errorReply,
  findExport,
  infoReplies,
  metaContextListReplies,
  metaContextSelection,
  negotiatedFrom,
  rejection,
  sendOf,
  type HandshakeContext,
  type RejectCode,
} from './handshake-options.js';
import { handshakeGuards, type BudgetSpent } from './handshake-guards.js';
import { handshakeContext, type HandshakeInput } from './handshake-input.js';
import { listReplies, resolveRequestOf, settlement } from './handshake-resolve.js';

// The context, pure helpers and replies: handshake-options.ts; the input and initial context:
// handshake-input.ts; the guards: handshake-guards.ts; exports resolved per connection: handshake-resolve.ts.
export { BASE_ALLOCATION_ID, advertisedFlags, findExport, matchMetaContexts, type HandshakeContext } from './handshake-options.js';
export type { HandshakeInput } from './handshake-input.js';
/** Client-supplied names in messages are quoted by the catalogue's `quoteName` (exported here too, as before). */
export { quoteName };

// ── the machine ────────────────────────────────────────────────────────

export const handshakeMachine = setup({
  types: {
    context: {} as HandshakeContext,
    events: {} as HandshakeEvent | BudgetSpent,
    input: {} as HandshakeInput,
    emitted: {} as HandshakeEmitted,
    output: {} as HandshakeOutcome,
  },
  guards: handshakeGuards,
  actions: {
    sendGreeting: emit(() => sendOf([encodeGreeting(SERVER_HANDSHAKE_FLAGS)], 'greeting')),
    recordClientFlags: assign(({ event }) => {
      assertEvent(event, 'wire.clientFlags');
      return {
        clientFlags: event.flags,
        fixedNewstyle: (event.flags & CLIENT_FLAGS.NBD_FLAG_C_FIXED_NEWSTYLE) !== 0,
        // handshake.no-zeroes: NO_ZEROES only when both sides set it (the server always offers it).
        noZeroes: (event.flags & CLIENT_FLAGS.NBD_FLAG_C_NO_ZEROES) !== 0,
      };
    }),
    // option.too-many-options: the option that spends the budget raises options.spent (options ⇒ exhausted).
    countOption: enqueueActions(({ context, enqueue }) => {
      const optionCount = context.optionCount + 1;
      enqueue.assign({ optionCount });
      if (optionCount >= context.server.maxOptions) enqueue.raise({ type: 'options.spent' });
    }),
    // A hard close: the catalogue code, and one reason: its text (rule ID first), then what triggered it.
    // A decoder failure closes with the decoder's own code.
    reject: enqueueActions(({ enqueue, event }, params: { code: RejectCode }) => {
      const { code, reason } = rejection(event, params.code);
      enqueue.assign({ outcome: { outcome: 'rejected', code, reason } });
      enqueue.emit({ type: 'close', hard: true, code, reason });
    }),
    // An option error reply: the catalogue entry's reply type and message (OPTION_ERROR_DETAILS fills it in).
    replyError: emit(({ context, event }, params: { code: OptionErrorCode }) => {
      assertEvent(event, OPTION_EVENTS);
      return errorReply(params.code, context, event.frame);
    }),
    replyAck: emit(({ event }) => {
      assertEvent(event, ACKED_OPTIONS);
      return sendOf(encodeAck(event.frame.code), 'NBD_REP_ACK');
    }),
    recordAbort: assign({ outcome: () => ({ outcome: 'aborted' }) as const }),
    closeSoft: emit(() => ({ type: 'close', hard: false, code: 'option.abort-ack', reason: messageOf('option.abort-ack') }) as const),
    enableStructuredReplies: assign({ structuredReplies: true }),
    enableExtendedHeaders: assign({ extendedHeaders: true, structuredReplies: true }),
    replyList: enqueueActions(({ enqueue, context, event }) => {
      assertEvent(event, 'opt.list');
      for (const e of listReplies(context, event.frame.code)) enqueue.emit(e);
      enqueue.assign({ listing: null }); // each LIST asks again
    }),
    // The option waits in `resolving` while the server works out what it names (handshake-resolve.ts).
    ask: enqueueActions(({ enqueue, event }) => {
      assertEvent(event, ['opt.list', ...NAMED_OPTIONS]);
      enqueue.assign({ pending: event });
      enqueue.emit(resolveRequestOf(event));
    }),
    // The answer is recorded and the waiting option raised again, to be answered by its mode's own transitions.
    settle: enqueueActions(({ enqueue, context, event }) => {
      assertEvent(event, ['resolve.export', 'resolve.list', 'resolve.failed']);
      enqueue.assign(settlement(context, event));
      enqueue.raise(context.pending!);
    }),
    // A failure is answered once; the next option naming it (or the next LIST) asks again.
    forgetLookup: assign({ lookup: null }),
    forgetListing: assign({ listing: null }),
    replyInfo: enqueueActions(({ enqueue, context, event }) => {
      assertEvent(event, ['opt.info', 'opt.go']);
      const exp = findExport(context, event.frame.name)!;
      for (const e of infoReplies(context, event.frame, exp)) enqueue.emit(e);
    }),
    recordGo: assign(({ context, event }) => {
      assertEvent(event, 'opt.go');
      const exp = findExport(context, event.frame.name)!;
      return { outcome: { outcome: 'negotiated', negotiated: negotiatedFrom(context, exp, false) } as const };
    }),
    replyExportName: enqueueActions(({ enqueue, context, event }) => {
      assertEvent(event, 'opt.exportName');
      const exp = findExport(context, event.frame.name)!;
      const negotiated = negotiatedFrom(context, exp, true);
      enqueue.assign({ outcome: { outcome: 'negotiated', negotiated } });
      const label = context.noZeroes ? 'export reply (10 bytes)' : 'export reply (134 bytes)';
      enqueue.emit(sendOf([encodeExportNameReply(exp.size, negotiated.flags, context.noZeroes)], label));
    }),
    replyListMetaContext: enqueueActions(({ enqueue, event }) => {
      assertEvent(event, 'opt.listMetaContext');
      for (const e of metaContextListReplies(event.frame)) enqueue.emit(e);
    }),
    // option.meta-context-replace: SET replaces the previous selection, even when it fails.
    clearMetaContexts: assign({ metaContexts: null }),
    replySetMetaContext: enqueueActions(({ enqueue, context, event }) => {
      assertEvent(event, 'opt.setMetaContext');
      const { metaContexts, replies } = metaContextSelection(event.frame, findExport(context, event.frame.name)!);
      enqueue.assign({ metaContexts });
      for (const e of replies) enqueue.emit(e);
    }),
    requestTlsUpgrade: emit({ type: 'startTls' } as const),
    // tls.starttls-resets: STARTTLS success ⇒ forget everything negotiated so far, what the server's hooks answered
    // before TLS included (an export opened or refused for the plaintext client must be asked for again, with the TLS identity).
    forgetNegotiation: assign({
      tls: true,
      structuredReplies: false,
      extendedHeaders: false,
      metaContexts: null,
      lookup: null,
      listing: null,
    }),
    markShuttingDown: assign({ shuttingDown: true }),
    recordDisconnect: assign({ outcome: () => ({ outcome: 'disconnected' }) as const }),
  },
}).createMachine({
  id: 'handshake',
  context: ({ input }) => handshakeContext(input),
  initial: 'greeting',
  on: {
    'socket.closed': { target: '.disconnected', actions: 'recordDisconnect' },
    'wire.fatal': { target: '.rejected', actions: { type: 'reject', params: { code: 'NBD_ERR_PROTOCOL' } } },
    // Outside `options` (before the client flags, during STARTTLS) only remembered: `options` starts in shuttingDown.
    'server.shutdown': { actions: 'markShuttingDown' },
    // The server's handshake timeout (as qemu-nbd since CVE-2024-7409): drop a client that never finishes.
    'timer.handshake': { target: '.rejected', actions: { type: 'reject', params: { code: 'NBD_ERR_HANDSHAKE_TIMEOUT' } } },
  },
  states: {
    greeting: {
      // The newstyle greeting: 18 bytes, handshake flags with only bits 0–1 (handshake.greeting-flags).
      entry: 'sendGreeting',
      always: 'awaitingClientFlags',
    },
    awaitingClientFlags: {
      on: {
        'wire.clientFlags': [
          { guard: 'clientFlagsInvalid', target: 'rejected', actions: { type: 'reject', params: { code: 'handshake.client-flags-unknown' } } },
          // The option mode the rules call for, by precedence (option.too-many-options, option.shutting-down,
          // handshake.fixed-newstyle-required, tls.mode-forcedtls).
          { guard: 'tooManyOptions', target: 'options.exhausted', actions: 'recordClientFlags' },
          { guard: 'shuttingDown', target: 'options.shuttingDown', actions: 'recordClientFlags' },
          { guard: 'clientNotFixedNewstyle', target: 'options.unfixed', actions: 'recordClientFlags' },
          { guard: 'tlsRequiredNotActive', target: 'options.awaitingTls', actions: 'recordClientFlags' },
          { target: 'options.open', actions: 'recordClientFlags' },
        ],
      },
    },
    /**
     * Option haggling, in one of five modes. Each mode answers the options
     * it restricts with one wildcard (`opt.*`) transition and lists the
     * options it treats otherwise; every option the server answers counts
     * towards maxOptions (`countOption`), refusals that close do not.
     * Precedence, as the rules apply: exhausted, shuttingDown, unfixed,
     * awaitingTls, open. The transitions into `options` name the mode
     * (the client flags, STARTTLS's end); `initial` is never used.
     */
    options: {
      initial: 'open',
      on: {
        // option.too-many-options: raised by countOption when the budget is spent.
        'options.spent': { target: '.exhausted' },
        // option.shutting-down: from now on every option but ABORT gets ERR_SHUTDOWN.
        'server.shutdown': { target: '.shuttingDown', actions: 'markShuttingDown' },
      },
      states: {
        // option.too-many-options: the budget is spent; the next option (but ABORT) closes the connection.
        exhausted: {
          on: {
            // option.abort-ack: ABORT ⇒ ACK, then the client closes; tolerate it closing first.
            'opt.abort': { target: '#handshake.aborted', actions: ['countOption', 'replyAck', 'recordAbort', 'closeSoft'] },
            'opt.*': { target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.too-many-options' } } },
            // Exhausted comes first: a shutdown changes nothing here.
            'server.shutdown': { actions: 'markShuttingDown' },
          },
        },
        // option.shutting-down: every option but ABORT gets ERR_SHUTDOWN; EXPORT_NAME cannot, so it closes.
        shuttingDown: {
          on: {
            'opt.abort': { target: '#handshake.aborted', actions: ['countOption', 'replyAck', 'recordAbort', 'closeSoft'] },
            // option.export-name-terminates: EXPORT_NAME cannot be answered with an error: terminate.
            'opt.exportName': { target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/shutting-down' } } },
            // option.meta-context-replace: a refused SET still drops the selection made before.
            'opt.setMetaContext': { actions: ['countOption', 'clearMetaContexts', { type: 'replyError', params: { code: 'option.shutting-down' } }] },
            'opt.*': { actions: ['countOption', { type: 'replyError', params: { code: 'option.shutting-down' } }] },
          },
        },
        // handshake.fixed-newstyle-required: the client did not set NBD_FLAG_C_FIXED_NEWSTYLE; only EXPORT_NAME
        // (and ABORT) are legal. Nothing can be negotiated here, so SET_META_CONTEXT has no selection to drop,
        // and EXTENDED_HEADERS is never on.
        unfixed: {
          on: {
            'opt.abort': { target: '#handshake.aborted', actions: ['countOption', 'replyAck', 'recordAbort', 'closeSoft'] },
            'opt.exportName': [
              { guard: 'optionMalformed', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/malformed' } } },
              { guard: 'optionTooBig', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/too-long' } } },
              // tls.mode-forcedtls: STARTTLS is refused here, so TLS can only come from the listener.
              { guard: 'tlsRequiredNotActive', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'tls.mode-forcedtls/export-name' } } },
              { guard: 'exportNeedsResolving', target: '#handshake.resolving', actions: 'ask' },
              { guard: 'exportOpenFailed', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/open-failed' } } },
              { guard: 'exportUnknown', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/unknown-export' } } },
              { guard: 'exportTlsOnly', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/tls-only' } } },
              { target: '#handshake.negotiated', actions: ['countOption', 'replyExportName'] },
            ],
            'opt.*': { actions: ['countOption', { type: 'replyError', params: { code: 'handshake.fixed-newstyle-required' } }] },
          },
        },
        // tls.mode-forcedtls: TLS is required and not up yet. Everything but STARTTLS / ABORT gets ERR_TLS_REQD,
        // oversized options included (the MUST names no exception); EXPORT_NAME cannot, so it closes.
        // Nothing was negotiated before TLS, so SET_META_CONTEXT has no selection to drop.
        awaitingTls: {
          on: {
            'opt.abort': { target: '#handshake.aborted', actions: ['countOption', 'replyAck', 'recordAbort', 'closeSoft'] },
            'opt.starttls': [
              { guard: 'optionHasData', actions: ['countOption', { type: 'replyError', params: { code: 'option.unexpected-data' } }] }, // option.unexpected-data
              { target: '#handshake.upgradingTls', actions: ['countOption', 'replyAck', 'requestTlsUpgrade'] },
            ],
            'opt.exportName': [
              { guard: 'optionMalformed', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/malformed' } } },
              { guard: 'optionTooBig', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/too-long' } } },
              { target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'tls.mode-forcedtls/export-name' } } },
            ],
            'opt.*': { actions: ['countOption', { type: 'replyError', params: { code: 'tls.mode-forcedtls/option' } }] },
          },
        },
        // Fixed newstyle, not shutting down, TLS up or not required: each option's own rules, in the order they apply.
        open: {
          on: {
            'opt.abort': { target: '#handshake.aborted', actions: ['countOption', 'replyAck', 'recordAbort', 'closeSoft'] },
            'opt.exportName': [
              { guard: 'optionMalformed', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/malformed' } } },
              { guard: 'optionTooBig', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/too-long' } } },
              { guard: 'extendedHeadersOn', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.extended-headers/export-name' } } },
              { guard: 'exportNeedsResolving', target: '#handshake.resolving', actions: 'ask' },
              { guard: 'exportOpenFailed', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/open-failed' } } },
              { guard: 'exportUnknown', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/unknown-export' } } },
              { guard: 'exportTlsOnly', target: '#handshake.rejected', actions: { type: 'reject', params: { code: 'option.export-name-terminates/tls-only' } } },
              { target: '#handshake.negotiated', actions: ['countOption', 'replyExportName'] },
            ],
            'opt.starttls': [
              { guard: 'optionHasData', actions: ['countOption', { type: 'replyError', params: { code: 'option.unexpected-data' } }] }, // option.unexpected-data
              // tls.starttls-repeat: a second STARTTLS after TLS is up ⇒ ERR_INVALID.
              { guard: 'tlsActive', actions: ['countOption', { type: 'replyError', params: { code: 'tls.starttls-repeat' } }] },
              // tls.mode-notls: ERR_POLICY, never ERR_TLS_REQD.
              { guard: 'tlsPolicyOff', actions: ['countOption', { type: 'replyError', params: { code: 'tls.mode-notls' } }] },
              { target: '#handshake.upgradingTls', actions: ['countOption', 'replyAck', 'requestTlsUpgrade'] },
            ],
            // option.too-big: an option over the data limit (its data was skipped) ⇒ ERR_TOO_BIG, before any other check.
            'opt.list': [
              { guard: 'optionTooBig', actions: ['countOption', { type: 'replyError', params: { code: 'option.too-big' } }] },
              { guard: 'optionHasData', actions: ['countOption', { type: 'replyError', params: { code: 'option.unexpected-data' } }] }, // option.unexpected-data
              { guard: 'listNeedsResolving', target: '#handshake.resolving', actions: 'ask' },
              { guard: 'listFailed', actions: ['countOption', 'forgetListing', { type: 'replyError', params: { code: 'NBD_ERR_EXPORT_LIST' } }] },
              { actions: ['countOption', 'replyList'] },
            ],
            'opt.info': [
              { guard: 'optionTooBig', actions: ['countOption', { type: 'replyError', params: { code: 'option.too-big' } }] },
              { guard: 'optionMalformed', actions: ['countOption', { type: 'replyError', params: { code: 'NBD_ERR_BAD_OPTION_DATA' } }] }, // option.length-mismatch
              { guard: 'exportNeedsResolving', target: '#handshake.resolving', actions: 'ask' },
              { guard: 'exportOpenFailed', actions: ['countOption', 'forgetLookup', { type: 'replyError', params: { code: 'NBD_ERR_EXPORT_OPEN' } }] },
              { guard: 'exportUnknown', actions: ['countOption', { type: 'replyError', params: { code: 'option.export-unknown' } }] },
              { guard: 'exportTlsOnly', actions: ['countOption', { type: 'replyError', params: { code: 'tls.mode-selectivetls' } }] },
              { actions: ['countOption', 'replyInfo'] },
            ],
            'opt.go': [
              { guard: 'optionTooBig', actions: ['countOption', { type: 'replyError', params: { code: 'option.too-big' } }] },
              { guard: 'optionMalformed', actions: ['countOption', { type: 'replyError', params: { code: 'NBD_ERR_BAD_OPTION_DATA' } }] }, // option.length-mismatch
              { guard: 'exportNeedsResolving', target: '#handshake.resolving', actions: 'ask' },
              { guard: 'exportOpenFailed', actions: ['countOption', 'forgetLookup', { type: 'replyError', params: { code: 'NBD_ERR_EXPORT_OPEN' } }] },
              { guard: 'exportUnknown', actions: ['countOption', { type: 'replyError', params: { code: 'option.export-unknown' } }] },
              { guard: 'exportTlsOnly', actions: ['countOption', { type: 'replyError', params: { code: 'tls.mode-selectivetls' } }] },
              // option.go-starts-transmission: after the ACK the next bytes are requests.
              { target: '#handshake.negotiated', actions: ['countOption', 'replyInfo', 'recordGo'] },
            ],
            'opt.structuredReply': [
              { guard: 'optionTooBig', actions: ['countOption', { type: 'replyError', params: { code: 'option.too-big' } }] },
              { guard: 'optionHasData', actions: ['countOption', { type: 'replyError', params: { code: 'option.unexpected-data' } }] }, // option.unexpected-data
              { guard: 'structuredRepliesNotOffered', actions: ['countOption', { type: 'replyError', params: { code: 'option.structured-reply/disabled' } }] },
              { guard: 'extendedHeadersOn', actions: ['countOption', { type: 'replyError', params: { code: 'option.structured-reply/extended-headers' } }] },
              // option.structured-reply: MAY refuse a repeat.
              { guard: 'structuredRepliesOn', actions: ['countOption', { type: 'replyError', params: { code: 'option.structured-reply/repeat' } }] },
              { actions: ['countOption', 'replyAck', 'enableStructuredReplies'] },
            ],
            'opt.extendedHeaders': [
              { guard: 'optionTooBig', actions: ['countOption', { type: 'replyError', params: { code: 'option.too-big' } }] },
              { guard: 'optionHasData', actions: ['countOption', { type: 'replyError', params: { code: 'option.unexpected-data' } }] }, // option.unexpected-data
              { guard: 'extendedHeadersNotOffered', actions: ['countOption', { type: 'replyError', params: { code: 'option.extended-headers/disabled' } }] },
              // option.extended-headers: refuse a repeat.
              { guard: 'extendedHeadersOn', actions: ['countOption', { type: 'replyError', params: { code: 'option.extended-headers/repeat' } }] },
              { actions: ['countOption', 'replyAck', 'enableExtendedHeaders'] },
            ],
            'opt.listMetaContext': [
              { guard: 'optionTooBig', actions: ['countOption', { type: 'replyError', params: { code: 'option.too-big' } }] },
              { guard: 'optionMalformed', actions: ['countOption', { type: 'replyError', params: { code: 'NBD_ERR_BAD_OPTION_DATA' } }] }, // option.length-mismatch
              { guard: 'exportNeedsResolving', target: '#handshake.resolving', actions: 'ask' },
              { guard: 'exportOpenFailed', actions: ['countOption', 'forgetLookup', { type: 'replyError', params: { code: 'NBD_ERR_EXPORT_OPEN' } }] },
              { guard: 'exportUnknown', actions: ['countOption', { type: 'replyError', params: { code: 'option.export-unknown' } }] },
              { guard: 'exportTlsOnly', actions: ['countOption', { type: 'replyError', params: { code: 'tls.mode-selectivetls' } }] },
              { actions: ['countOption', 'replyListMetaContext'] },
            ],
            // option.meta-context-replace: every refusal drops the previous selection too.
            'opt.setMetaContext': [
              { guard: 'optionTooBig', actions: ['countOption', 'clearMetaContexts', { type: 'replyError', params: { code: 'option.too-big' } }] },
              { guard: 'optionMalformed', actions: ['countOption', 'clearMetaContexts', { type: 'replyError', params: { code: 'NBD_ERR_BAD_OPTION_DATA' } }] }, // option.length-mismatch
              // option.meta-context-needs-structured
              { guard: 'structuredRepliesOff', actions: ['countOption', 'clearMetaContexts', { type: 'replyError', params: { code: 'option.meta-context-needs-structured' } }] },
              { guard: 'exportNeedsResolving', target: '#handshake.resolving', actions: 'ask' },
              { guard: 'exportOpenFailed', actions: ['countOption', 'clearMetaContexts', 'forgetLookup', { type: 'replyError', params: { code: 'NBD_ERR_EXPORT_OPEN' } }] },
              { guard: 'exportUnknown', actions: ['countOption', 'clearMetaContexts', { type: 'replyError', params: { code: 'option.export-unknown' } }] },
              { guard: 'exportTlsOnly', actions: ['countOption', 'clearMetaContexts', { type: 'replyError', params: { code: 'tls.mode-selectivetls' } }] },
              { actions: ['countOption', 'replySetMetaContext'] },
            ],
            'opt.unknown': [
              { guard: 'optionTooBig', actions: ['countOption', { type: 'replyError', params: { code: 'option.too-big' } }] },
              // option.unknown-code: unknown option ⇒ ERR_UNSUP; its data was consumed by the decoder.
              { actions: ['countOption', { type: 'replyError', params: { code: 'option.unknown-code' } }] },
            ],
          },
        },
      },
    },
    // The server works out the export an option names, or the list (`resolve`); no option is read meanwhile. The answer
    // takes the option back to its mode (open or unfixed; shuttingDown if the server began to), whose transitions answer it.
    resolving: {
      on: {
        'resolve.*': [
          { guard: 'shuttingDown', target: 'options.shuttingDown', actions: 'settle' },
          { guard: 'notFixedNewstyle', target: 'options.unfixed', actions: 'settle' },
          { target: 'options.open', actions: 'settle' },
        ],
      },
    },
    // The session runs the TLS handshake while the machine is here (it asks `snapshot.matches('upgradingTls')`).
    upgradingTls: {
      on: {
        // STARTTLS needed fixed newstyle and TLS is now up: open, unless the budget is spent (STARTTLS was the
        // last option allowed) or the server began shutting down meanwhile.
        'tls.established': [
          { guard: 'tooManyOptions', target: 'options.exhausted', actions: 'forgetNegotiation' },
          { guard: 'shuttingDown', target: 'options.shuttingDown', actions: 'forgetNegotiation' },
          { target: 'options.open', actions: 'forgetNegotiation' },
        ],
        'tls.failed': { target: 'rejected', actions: { type: 'reject', params: { code: 'tls.handshake-failed' } } },
      },
    },
    negotiated: { type: 'final' },
    aborted: { type: 'final' },
    rejected: { type: 'final' },
    disconnected: { type: 'final' },
  },
  output: ({ context }) => context.outcome ?? { outcome: 'disconnected' },
});
