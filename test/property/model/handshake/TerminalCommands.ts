import type fc from 'fast-check';
import { expect } from 'vitest';
import type { HandshakeOutcome } from '../../../../src/machines/types.js';
import { O, R, decodeOption } from '../../../unit/machines/support.js';
import { canonical, exportOf, sendOption, tlsBlocked, type HsModel, type HsReal } from './model.js';

/** NBD_OPT_ABORT: always ACK (even while shutting down), then a soft close (option.abort-ack). */
export class AbortCommand implements fc.Command<HsModel, HsReal> {
  check = (m: Readonly<HsModel>) => !m.done;
  run(m: HsModel, r: HsReal): void {
    const before = r.d.emitted.length;
    const replies = sendOption(m, r, O.ABORT, Buffer.alloc(0));
    expect(replies.map((x) => x.type)).toEqual([R.ACK]);
    expect(r.d.emitted.slice(before).filter((e) => e.type === 'close')).toEqual([expect.objectContaining({ hard: false })]);
    expect(r.d.actor.getSnapshot().output).toEqual({ outcome: 'aborted' });
    m.done = true;
  }
  toString = () => 'ABORT';
}

/** NBD_OPT_EXPORT_NAME: a headerless reply, or a hard close (handshake.no-zeroes, option.export-name-terminates, tls.mode-forcedtls). */
export class ExportNameCommand implements fc.Command<HsModel, HsReal> {
  constructor(readonly name: string) {}
  check = (m: Readonly<HsModel>) => !m.done;
  run(m: HsModel, r: HsReal): void {
    const frame = decodeOption(O.EXPORT_NAME, Buffer.from(this.name));
    const out = r.d.send({ type: 'opt.exportName', frame } as never);
    expect(r.d.errors).toEqual([]);
    const ok = !m.shutdown && !this.name.includes('\0') && !(m.policy === 'required' && !m.tls) && !m.eh && !!exportOf(this.name) && !tlsBlocked(m, this.name);
    if (ok) {
      const sends = out.filter((e) => e.type === 'send') as { frame: Buffer[] }[];
      expect(sends).toHaveLength(1);
      expect(Buffer.concat(sends[0]!.frame)).toHaveLength(m.noZeroes ? 10 : 134);
      expect(r.d.actor.getSnapshot().output as HandshakeOutcome).toMatchObject({
        outcome: 'negotiated',
        negotiated: { viaExportName: true, tls: m.tls, export: { name: canonical(this.name) } },
      });
    } else {
      expect(out.filter((e) => e.type === 'send')).toHaveLength(0);
      expect(out.filter((e) => e.type === 'close')).toEqual([expect.objectContaining({ hard: true })]);
      expect(r.d.value()).toBe('rejected');
    }
    m.done = true;
  }
  toString = () => `EXPORT_NAME(${JSON.stringify(this.name)})`;
}

/** The server starts shutting down (option.shutting-down). */
export class ShutdownCommand implements fc.Command<HsModel, HsReal> {
  check = (m: Readonly<HsModel>) => !m.done && !m.shutdown;
  run(m: HsModel, r: HsReal): void {
    expect(r.d.send({ type: 'server.shutdown' })).toEqual([]);
    m.shutdown = true;
  }
  toString = () => 'server.shutdown';
}

