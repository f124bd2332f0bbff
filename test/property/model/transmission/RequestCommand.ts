import type fc from 'fast-check';
import { expect } from 'vitest';
import type { RequestFrame } from '../../../../src/protocol/frames.js';
import { C, F, expectedErrno, type TxModel, type TxReal } from './model.js';

/** How the offset is chosen relative to the export (so out-of-range cases are common). */
export type Where = { kind: 'abs'; offset: number } | { kind: 'end'; back: number } | { kind: 'huge' };

/** Any request but DISC: READ, WRITE, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS or an unknown type. */
export class RequestCommand implements fc.Command<TxModel, TxReal> {
  constructor(
    readonly type: number,
    readonly flags: number,
    readonly where: Where,
    readonly length: number,
  ) {}
  check = () => true;
  frame(m: TxModel): RequestFrame {
    const huge = this.where.kind === 'huge';
    const offset = this.where.kind === 'abs' ? this.where.offset : this.where.kind === 'end' ? Math.max(0, m.size - this.where.back) : Number.MAX_SAFE_INTEGER;
    // As the decoder would deliver it: WRITE (or any request with PAYLOAD_LEN under
    // extended headers) carries a payload, which is discarded when over the limit.
    const hasPayload = this.type === C.WRITE || (m.eh && (this.flags & F.PAYLOAD_LEN) !== 0);
    const discarded = hasPayload && this.length > m.maxPayload;
    const cookie = m.nextCookie;
    m.nextCookie = (m.nextCookie * 6364136223846793005n + 1442695040888963407n) & 0xffffffffffffffffn;
    return {
      kind: 'request',
      extended: m.eh,
      flags: this.flags,
      type: this.type,
      cookie,
      offset,
      length: this.length,
      huge,
      payload: hasPayload && !discarded ? Buffer.alloc(this.length) : undefined,
      payloadDiscarded: discarded,
    };
  }
  run(m: TxModel, r: TxReal): void {
    const frame = this.frame(m);
    const want = expectedErrno(m, frame);
    const out = r.t.send({ type: 'request', frame });
    m.sent++;
    expect(r.t.errors).toEqual([]);
    // Exactly one outcome, carrying the cookie (reply.cookie-echo).
    expect(out).toHaveLength(1);
    const o = out[0]!;
    expect((o as { frame: RequestFrame }).frame.cookie).toBe(frame.cookie);
    if (want === null) {
      expect(o.type).toBe('request');
    } else {
      expect(o).toMatchObject({ type: 'refuse', errno: want });
    }
  }
  toString = () => `REQ(type=${this.type}, flags=0x${this.flags.toString(16)}, ${JSON.stringify(this.where)}, len=${this.length})`;
}
