import type fc from 'fast-check';
import { expect } from 'vitest';
import { O, R } from '../../../unit/machines/support.js';
import { EXPORTS } from '../../../unit/machines/support.js';
import { clearInfo, finalType, prelude, sendOption, tlsBlocked, type HsModel, type HsReal } from './model.js';

/** NBD_OPT_LIST, with or without (forbidden) data. */
export class ListCommand implements fc.Command<HsModel, HsReal> {
  constructor(readonly withData: boolean) {}
  check = (m: Readonly<HsModel>) => !m.done;
  run(m: HsModel, r: HsReal): void {
    const replies = sendOption(m, r, O.LIST, this.withData ? Buffer.from('junk') : Buffer.alloc(0));
    const expected = prelude(m, false) ?? (this.withData ? R.ERR_INVALID : R.ACK);
    expect(finalType(replies)).toBe(expected);
    if (expected === R.ACK) {
      const visible = EXPORTS.filter((e) => !tlsBlocked(m, e.name)).length;
      expect(replies.filter((x) => x.type === R.SERVER)).toHaveLength(visible);
    }
    clearInfo(m);
  }
  toString = () => `LIST${this.withData ? '(data)' : ''}`;
}
