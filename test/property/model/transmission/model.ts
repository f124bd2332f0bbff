/**
 * A simpler model of request validation, written from docs/rules.md in
 * nbdkit's order of checks: read-only ⇒ EPERM; past the end ⇒ ENOSPC for
 * WRITE/WRITE_ZEROES; every other defect ⇒ EINVAL; after DISC or shutdown ⇒
 * ESHUTDOWN. It does not use the machine's guard table.
 */
import type { RequestFrame } from '../../../../src/protocol/frames.js';
import type { TransmissionDriver } from '../../../unit/machines/support.js';

export interface TxModel {
  readonly size: number;
  readonly flags: number;
  readonly minBlock: number;
  readonly maxPayload: number;
  readonly sr: boolean;
  readonly eh: boolean;
  readonly contexts: boolean;
  draining: boolean;
  nextCookie: bigint;
  /** Requests sent (DISC excluded). */
  sent: number;
}

export interface TxReal {
  readonly t: TransmissionDriver;
}

// Written out here on purpose, from the spec's tables (transmission flags, commands, command flags, errors).
export const C = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;
export const F = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16, PAYLOAD_LEN: 32 } as const;
export const T = { READ_ONLY: 2, SEND_FLUSH: 4, SEND_FUA: 8, SEND_TRIM: 32, SEND_WRITE_ZEROES: 64, SEND_DF: 128, SEND_CACHE: 1024, SEND_FAST_ZERO: 2048 } as const;
export const E = { EPERM: 1, EINVAL: 22, ENOSPC: 28, ESHUTDOWN: 108 } as const;

/** The errno the model expects, or null for "accepted". DISC is handled by its own command. */
export function expectedErrno(m: TxModel, r: RequestFrame): number | null {
  if (m.draining) return E.ESHUTDOWN; // transmission.shutdown-drains
  const has = (bit: number) => (m.flags & bit) !== 0;
  const isWrite = r.type === C.WRITE || r.type === C.TRIM || r.type === C.WRITE_ZEROES;
  const ranged = [C.READ, C.WRITE, C.TRIM, C.CACHE, C.WRITE_ZEROES, C.BLOCK_STATUS].includes(r.type as never);
  const pastEnd = r.huge || r.offset + r.length > m.size;
  if (isWrite && has(T.READ_ONLY)) return E.EPERM; // transmission.write-read-only
  if ((r.type === C.WRITE || r.type === C.WRITE_ZEROES) && pastEnd) return E.ENOSPC; // transmission.write-out-of-bounds
  const einval =
    (ranged && pastEnd) || // transmission.out-of-bounds
    (r.type === C.FLUSH && (r.offset !== 0 || r.length !== 0)) || // transmission.flush-with-range
    r.type > 7 || // transmission.unknown-command
    (r.flags & ~(0x1f | (m.eh ? F.PAYLOAD_LEN : 0))) !== 0 || // transmission.unknown-flag
    // transmission.flag-not-for-command
    ((r.flags & (F.NO_HOLE | F.FAST_ZERO)) !== 0 && r.type !== C.WRITE_ZEROES) ||
    ((r.flags & F.DF) !== 0 && r.type !== C.READ) ||
    ((r.flags & F.REQ_ONE) !== 0 && r.type !== C.BLOCK_STATUS) ||
    // transmission.flag-not-advertised
    ((r.flags & F.FUA) !== 0 && !has(T.SEND_FUA)) ||
    ((r.flags & F.DF) !== 0 && !has(T.SEND_DF)) ||
    ((r.flags & F.FAST_ZERO) !== 0 && !has(T.SEND_FAST_ZERO)) ||
    r.payloadDiscarded || // transmission.payload-too-large
    (r.payload !== undefined && r.type !== C.WRITE) || // transmission.payload-unexpected
    (r.type === C.READ && r.length > m.maxPayload) || // transmission.read-too-large
    // transmission.command-not-advertised
    (r.type === C.FLUSH && !has(T.SEND_FLUSH)) ||
    (r.type === C.TRIM && !has(T.SEND_TRIM)) ||
    (r.type === C.WRITE_ZEROES && !has(T.SEND_WRITE_ZEROES)) ||
    (r.type === C.CACHE && !has(T.SEND_CACHE)) ||
    (r.type === C.BLOCK_STATUS && (!m.sr || !m.contexts)) || // transmission.block-status-needs-context
    (ranged && m.minBlock > 1 && (r.offset % m.minBlock !== 0 || r.length % m.minBlock !== 0)) || // transmission.misaligned-request
    (r.type === C.BLOCK_STATUS && r.length === 0); // transmission.block-status-zero-length
  return einval ? E.EINVAL : null;
}
