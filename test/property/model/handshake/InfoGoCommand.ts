import type fc from 'fast-check';
import { expect } from 'vitest';
import type { HandshakeOutcome } from '../../../../src/machines/types.js';
import { O, R, infoGoData, infoOf, type OptionReply } from '../../../unit/machines/support.js';
import { canonical, clearInfo, damage, exportOf, finalType, prelude, sendOption, tlsBlocked, type Damage, type HsModel, type HsReal, type Name } from './model.js';

function expectedInfoReplies(m: HsModel, name: string, requests: readonly number[]): number {
  const exp = exportOf(name)!;
  const wanted = new Set(requests.filter((q) => q === 1 || q === 3 || (q === 2 && exp.description !== undefined)));
  return 1 + wanted.size;
}

/** Check a successful INFO/GO reply list against the model; return NBD_INFO_EXPORT's bytes. */
function checkSuccess(m: HsModel, name: string, requests: readonly number[], replies: readonly OptionReply[]): string {
  const infos = replies.filter((x) => x.type === R.INFO);
  expect(infos).toHaveLength(expectedInfoReplies(m, name, requests));
  const exportInfos = infos.filter((x) => infoOf(x).info === 0);
  expect(exportInfos).toHaveLength(1); // option.info-export
  const ei = exportInfos[0]!;
  expect(ei.data).toHaveLength(12);
  const exp = exportOf(name)!;
  expect(Number(ei.data.readBigUInt64BE(2))).toBe(exp.size);
  const flags = ei.data.readUInt16BE(10);
  expect(flags & 1).toBe(1);
  expect((flags & 0x80) !== 0).toBe(m.sr || m.eh); // SEND_DF iff structured replies (transmission.flags-advertised)
  return ei.data.toString('hex');
}

/** What INFO/GO should answer, or 'ok'. */
function predict(m: HsModel, name: string, dmg: Damage): number | 'ok' {
  const p = prelude(m, dmg === 'tooBig');
  if (p !== null) return p;
  if (dmg !== 'none') return R.ERR_INVALID;
  if (!exportOf(name)) return R.ERR_UNKNOWN;
  if (tlsBlocked(m, name)) return R.ERR_TLS_REQD;
  return 'ok';
}

/** NBD_OPT_INFO: stays in the option phase. */
export class InfoCommand implements fc.Command<HsModel, HsReal> {
  constructor(
    readonly name: Name,
    readonly requests: readonly number[],
    readonly dmg: Damage,
  ) {}
  check = (m: Readonly<HsModel>) => !m.done;
  run(m: HsModel, r: HsReal): void {
    const data = damage(infoGoData(this.name, this.requests), this.dmg);
    const replies = sendOption(m, r, O.INFO, data);
    const want = predict(m, this.name, this.dmg);
    clearInfo(m);
    if (want === 'ok') {
      expect(finalType(replies)).toBe(R.ACK);
      m.lastInfo = { data, exportBytes: checkSuccess(m, this.name, this.requests, replies) };
    } else {
      expect(replies.map((x) => x.type)).toEqual([want]);
    }
    expect(r.d.value()).toBe('options');
  }
  toString = () => `INFO(${JSON.stringify(this.name)}, [${this.requests.join(',')}]${this.dmg === 'none' ? '' : `, ${this.dmg}`})`;
}

/**
 * NBD_OPT_GO. With `repeatInfo` and a preceding successful INFO, it resends
 * that INFO's exact data and must report the same NBD_INFO_EXPORT (option.info-go-consistent).
 */
export class GoCommand implements fc.Command<HsModel, HsReal> {
  constructor(
    readonly name: Name,
    readonly requests: readonly number[],
    readonly dmg: Damage,
    readonly repeatInfo: boolean,
  ) {}
  check = (m: Readonly<HsModel>) => !m.done;
  run(m: HsModel, r: HsReal): void {
    const repeat = this.repeatInfo && m.lastInfo !== null ? m.lastInfo : null;
    const data = repeat ? repeat.data : damage(infoGoData(this.name, this.requests), this.dmg);
    const name = repeat ? lastInfoName(repeat.data) : this.name;
    const requests = repeat ? lastInfoRequests(repeat.data) : this.requests;
    const dmg = repeat ? 'none' : this.dmg;
    const replies = sendOption(m, r, O.GO, data);
    const want = predict(m, name, dmg);
    clearInfo(m);
    if (want !== 'ok') {
      expect(replies.map((x) => x.type)).toEqual([want]);
      expect(r.d.value()).toBe('options');
      return;
    }
    expect(finalType(replies)).toBe(R.ACK);
    const bytes = checkSuccess(m, name, requests, replies);
    if (repeat) expect(bytes).toBe(repeat.exportBytes);
    expect(r.d.value()).toBe('negotiated');
    const out = r.d.actor.getSnapshot().output as HandshakeOutcome;
    const sr = m.sr || m.eh;
    const metaContexts = m.meta && m.meta.exportName === canonical(name) && sr ? m.meta.names.map((n) => ({ id: 1, name: n })) : [];
    // tls.starttls-resets: whatever was negotiated before STARTTLS is gone (the model reset it).
    expect(out).toMatchObject({
      outcome: 'negotiated',
      negotiated: { structuredReplies: sr, extendedHeaders: m.eh, tls: m.tls, metaContexts, viaExportName: false, export: { name: canonical(name) } },
    });
    m.done = true;
  }
  toString = () => `GO(${JSON.stringify(this.name)}, [${this.requests.join(',')}]${this.dmg === 'none' ? '' : `, ${this.dmg}`}${this.repeatInfo ? ', same as last INFO' : ''})`;
}

function lastInfoName(data: Buffer): Name {
  const n = data.readUInt32BE(0);
  return data.subarray(4, 4 + n).toString() as Name;
}
function lastInfoRequests(data: Buffer): number[] {
  const n = data.readUInt32BE(0);
  const k = data.readUInt16BE(4 + n);
  return Array.from({ length: k }, (_, i) => data.readUInt16BE(6 + n + 2 * i));
}
