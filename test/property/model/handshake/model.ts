/**
 * A deliberately simpler model of option haggling (docs/rules.md, option.* and tls.*),
 * written from the spec tables, not from the machine's routing table.
 */
import { expect } from 'vitest';
import type { TlsPolicy } from '../../../../src/machines/types.js';
import { EXPORTS, R, decodeOption, isFinal, type HandshakeDriver, type OptionReply } from '../../../unit/machines/support.js';

export interface HsModel {
  readonly policy: TlsPolicy;
  readonly offerSR: boolean;
  readonly offerEH: boolean;
  readonly fixed: boolean;
  readonly noZeroes: boolean;
  tls: boolean;
  sr: boolean;
  eh: boolean;
  /** SET_META_CONTEXT selection: canonical export name and the selected names. */
  meta: { exportName: string; names: string[] } | null;
  shutdown: boolean;
  /** The option phase ended (GO/EXPORT_NAME success, ABORT, rejection). */
  done: boolean;
  /** The last option was a successful INFO: its data and the NBD_INFO_EXPORT bytes. */
  lastInfo: { data: Buffer; exportBytes: string } | null;
}

export interface HsReal {
  readonly d: HandshakeDriver;
}

/** Option data over this many bytes comes out of the decoder as a TOO_BIG problem. */
export const MAX_OPTION = 256;

export const NAMES = ['disk', 'ro', 'secret', 'nope', ''] as const;
export type Name = (typeof NAMES)[number];

export function canonical(name: string): string {
  return name === '' ? 'disk' : name;
}

export function exportOf(name: string) {
  return EXPORTS.find((e) => e.name === canonical(name));
}

/** SELECTIVETLS/FORCEDTLS and no TLS yet: TLS-only exports are off limits. */
export function tlsBlocked(m: HsModel, name: string): boolean {
  return !!exportOf(name)?.tlsOnly && !m.tls && m.policy !== 'off';
}

/** Errors every option but ABORT / STARTTLS / EXPORT_NAME gets first (option.shutting-down, handshake.fixed-newstyle-required, tls.mode-forcedtls, option.too-big). */
export function prelude(m: HsModel, tooBig: boolean): number | null {
  if (m.shutdown) return R.ERR_SHUTDOWN;
  if (!m.fixed) return R.ERR_INVALID;
  if (m.policy === 'required' && !m.tls) return R.ERR_TLS_REQD;
  if (tooBig) return R.ERR_TOO_BIG;
  return null;
}

/** How an option's data gets damaged by a command. */
export type Damage = 'none' | 'short' | 'long' | 'tooBig';

export function damage(data: Buffer, how: Damage): Buffer {
  switch (how) {
    case 'none':
      return data;
    case 'short':
      return data.subarray(0, data.length - 1);
    case 'long':
      return Buffer.concat([data, Buffer.from([0x5a])]);
    case 'tooBig':
      return Buffer.concat([data, Buffer.alloc(MAX_OPTION + 1 - data.length + 7)]);
  }
}

/** Send one option through decoder + machine and return its replies, checking the shared invariants. */
export function sendOption(m: HsModel, r: HsReal, code: number, data: Buffer): OptionReply[] {
  const frame = decodeOption(code, data, { maxOptionLength: MAX_OPTION });
  const event = { type: `opt.${frame.opt}`, frame } as Parameters<HandshakeDriver['send']>[0];
  const replies = r.d.option(event);
  expect(r.d.errors).toEqual([]);
  checkReplies(m, code, replies);
  return replies;
}

/** Rules 4, 16: one final reply, last, echoing the code; INFO/SERVER/META_CONTEXT before it. */
export function checkReplies(m: HsModel, code: number, replies: readonly OptionReply[]): void {
  expect(replies.length).toBeGreaterThan(0);
  for (const rep of replies) expect(rep.option).toBe(code >>> 0);
  const finals = replies.filter((x) => isFinal(x.type));
  expect(finals).toHaveLength(1);
  expect(isFinal(replies[replies.length - 1]!.type)).toBe(true);
  for (const rep of replies.slice(0, -1)) expect([R.INFO, R.SERVER, R.META_CONTEXT]).toContain(rep.type);
  if (m.policy === 'off' || m.tls) expect(replies.map((x) => x.type)).not.toContain(R.ERR_TLS_REQD);
}

export function finalType(replies: readonly OptionReply[]): number {
  return replies[replies.length - 1]!.type;
}

/** Any option other than a successful INFO breaks the INFO→GO identity chain (option.info-go-consistent). */
export function clearInfo(m: HsModel): void {
  m.lastInfo = null;
}
