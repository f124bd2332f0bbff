import type fc from 'fast-check';
import { expect } from 'vitest';
import { C, type TxModel, type TxReal } from './model.js';

/** NBD_CMD_DISC: no reply; the machine drains (transmission.disc-drains). A DISC while draining is ignored. */
export class DiscCommand implements fc.Command<TxModel, TxReal> {
  check = () => true;
  run(m: TxModel, r: TxReal): void {
    const out = r.t.request({ type: C.DISC, cookie: 0xd15cn });
    expect(out).toEqual(m.draining ? [] : [{ type: 'draining', reason: 'disc' }]);
    m.draining = true;
    expect(r.t.actor.getSnapshot().value).toBe('draining');
  }
  toString = () => 'DISC';
}

/** The server shuts down (transmission.shutdown-drains). */
export class ShutdownCommand implements fc.Command<TxModel, TxReal> {
  check = () => true;
  run(m: TxModel, r: TxReal): void {
    const out = r.t.send({ type: 'server.shutdown' });
    expect(out).toEqual(m.draining ? [] : [{ type: 'draining', reason: 'shutdown' }]);
    m.draining = true;
  }
  toString = () => 'server.shutdown';
}
