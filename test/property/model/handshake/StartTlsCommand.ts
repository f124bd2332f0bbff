import type fc from 'fast-check';
import { expect } from 'vitest';
import { O, R } from '../../../unit/machines/support.js';
import { clearInfo, sendOption, type HsModel, type HsReal } from './model.js';

/** NBD_OPT_STARTTLS; on ACK the transport reports `tls.established` (tls.starttls-resets, tls.mode-notls, tls.starttls-repeat). */
export class StartTlsCommand implements fc.Command<HsModel, HsReal> {
  constructor(readonly withData: boolean) {}
  check = (m: Readonly<HsModel>) => !m.done;
  run(m: HsModel, r: HsReal): void {
    const before = r.d.emitted.length;
    const replies = sendOption(m, r, O.STARTTLS, this.withData ? Buffer.from('x') : Buffer.alloc(0));
    const want = m.shutdown
      ? R.ERR_SHUTDOWN
      : !m.fixed
        ? R.ERR_INVALID
        : this.withData
          ? R.ERR_INVALID
          : m.tls
            ? R.ERR_INVALID
            : m.policy === 'off'
              ? R.ERR_POLICY
              : R.ACK;
    expect(replies.map((x) => x.type)).toEqual([want]);
    const startTls = r.d.emitted.slice(before).filter((e) => e.type === 'startTls');
    expect(startTls).toHaveLength(want === R.ACK ? 1 : 0);
    if (want === R.ACK) {
      expect(r.d.value()).toBe('upgradingTls');
      r.d.send({ type: 'tls.established' });
      expect(r.d.value()).toBe('options');
      // tls.starttls-resets: forget everything negotiated before TLS.
      m.tls = true;
      m.sr = false;
      m.eh = false;
      m.meta = null;
    }
    clearInfo(m);
  }
  toString = () => `STARTTLS${this.withData ? '(data)' : ''}`;
}
