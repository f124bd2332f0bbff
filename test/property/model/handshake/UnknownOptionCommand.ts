import type fc from 'fast-check';
import { expect } from 'vitest';
import { R } from '../../../unit/machines/support.js';
import { clearInfo, prelude, sendOption, type HsModel, type HsReal } from './model.js';

/** An option code we do not implement (incl. withdrawn PEEK_EXPORT = 4), with data (option.unknown-code). */
export class UnknownOptionCommand implements fc.Command<HsModel, HsReal> {
  constructor(
    readonly code: number,
    readonly dataLength: number,
  ) {}
  check = (m: Readonly<HsModel>) => !m.done;
  run(m: HsModel, r: HsReal): void {
    const replies = sendOption(m, r, this.code, Buffer.alloc(this.dataLength, 0xee));
    expect(replies.map((x) => x.type)).toEqual([prelude(m, false) ?? R.ERR_UNSUP]);
    clearInfo(m);
  }
  toString = () => `UNKNOWN(${this.code}, ${this.dataLength} bytes)`;
}
