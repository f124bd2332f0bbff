/**
 * Exports worked out per connection (the server's openExport, a computed
 * default export, listExports): what the handshake machine (handshake.ts)
 * asks for while an option waits in `resolving`, and what it records from
 * the answer before the option is raised again and answered by its mode's
 * own transitions. Pure functions of the context and the event.
 */
import { encodeAck, encodeRepServer } from '../protocol/encoder.js';
import type { HandshakeEmitted, OptionEvent, ResolveEvent } from './types.js';
import { exportTlsBlocked, requestedName, sendOf, type HandshakeContext } from './handshake-options.js';

/** The `resolve` effect for an option: the export it names, or (NBD_OPT_LIST) the export list. */
export function resolveRequestOf(event: OptionEvent): HandshakeEmitted {
  return { type: 'resolve', request: event.type === 'opt.list' ? { kind: 'list' } : { kind: 'export', name: requestedName(event.frame) } };
}

/**
 * What the answer changes: the lookup (keyed by the name as the client
 * asked for it) or the list for the option waiting; the option is no longer
 * pending. An answer of the wrong kind counts as a failure.
 */
export function settlement(ctx: HandshakeContext, event: ResolveEvent): Pick<HandshakeContext, 'lookup' | 'listing' | 'pending'> {
  const pending = ctx.pending!;
  const failure = event.type === 'resolve.failed' ? event.message : `the server answered ${event.type}`;
  if (pending.type === 'opt.list') {
    return { lookup: ctx.lookup, listing: event.type === 'resolve.list' ? { exports: event.exports } : { error: failure }, pending: null };
  }
  const name = requestedName(pending.frame);
  const lookup = event.type === 'resolve.export' ? { name, export: event.export } : { name, export: null, error: failure };
  return { lookup, listing: ctx.listing, pending: null };
}

/**
 * NBD_OPT_LIST's replies: the static exports (SELECTIVETLS: LIST MAY hide
 * TLS-only exports before TLS), then this connection's list when the server
 * makes one, each name once, then the ACK.
 */
export function listReplies(ctx: HandshakeContext, code: number): HandshakeEmitted[] {
  const listed = ctx.listing && 'exports' in ctx.listing ? ctx.listing.exports : [];
  const statics = ctx.server.exports.filter((exp) => !exportTlsBlocked(ctx, exp));
  const names = new Set(statics.map((e) => e.name));
  const out = [...statics, ...listed.filter((e) => !names.has(e.name))].map((exp) => sendOf(encodeRepServer(code, exp.name, exp.description), `NBD_REP_SERVER(${exp.name})`));
  out.push(sendOf(encodeAck(code), 'NBD_REP_ACK'));
  return out;
}
