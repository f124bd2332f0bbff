import type fc from 'fast-check';
import { expect } from 'vitest';
import { O, R } from '../../../unit/machines/support.js';
import { clearInfo, finalType, prelude, sendOption, type HsModel, type HsReal } from './model.js';

/** NBD_OPT_STRUCTURED_REPLY (option.structured-reply, option.unexpected-data, option.extended-headers). */
export class StructuredReplyCommand implements fc.Command<HsModel, HsReal> {
  constructor(readonly withData: boolean) {}
  check = (m: Readonly<HsModel>) => !m.done;
  run(m: HsModel, r: HsReal): void {
    const replies = sendOption(m, r, O.STRUCTURED_REPLY, this.withData ? Buffer.from([1]) : Buffer.alloc(0));
    const want =
      prelude(m, false) ??
      (this.withData ? R.ERR_INVALID : !m.offerSR ? R.ERR_UNSUP : m.eh ? R.ERR_EXT_HEADER_REQD : m.sr ? R.ERR_INVALID : R.ACK);
    expect(replies.map((x) => x.type)).toEqual([want]);
    expect(finalType(replies)).toBe(want);
    if (want === R.ACK) m.sr = true;
    clearInfo(m);
  }
  toString = () => `STRUCTURED_REPLY${this.withData ? '(data)' : ''}`;
}

/** NBD_OPT_EXTENDED_HEADERS (experimental; implies structured replies). */
export class ExtendedHeadersCommand implements fc.Command<HsModel, HsReal> {
  constructor(readonly withData: boolean) {}
  check = (m: Readonly<HsModel>) => !m.done;
  run(m: HsModel, r: HsReal): void {
    const replies = sendOption(m, r, O.EXTENDED_HEADERS, this.withData ? Buffer.from([1]) : Buffer.alloc(0));
    const want = prelude(m, false) ?? (this.withData ? R.ERR_INVALID : !m.offerEH ? R.ERR_UNSUP : m.eh ? R.ERR_INVALID : R.ACK);
    expect(replies.map((x) => x.type)).toEqual([want]);
    if (want === R.ACK) {
      m.eh = true;
      m.sr = true;
    }
    clearInfo(m);
  }
  toString = () => `EXTENDED_HEADERS${this.withData ? '(data)' : ''}`;
}
