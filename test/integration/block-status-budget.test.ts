/**
 * BLOCK_STATUS and the connection's budgets.
 *
 * - A BLOCK_STATUS reply can be large (maxExtents descriptors per context, 16 bytes each with
 *   extended headers): while in flight it holds the largest reply it may send against
 *   maxInFlightBytes, as a READ holds its length. Before, it held nothing, so a client that sent
 *   BLOCK_STATUS and read no reply had maxInFlight (64) of them computed and queued whatever the
 *   byte limits said (64 × 1 MiB with 1 MiB limits).
 * - One connection's burst of BLOCK_STATUS on a synchronous backend does not hold the event loop:
 *   each goes to the machine alone and the flow pump yields after PUMP_SLICE_MS. Before, 64 of
 *   them ran in one go and another client's READ waited for all (3.2 s on a fragmented export).
 */
import { describe, expect, it } from 'vitest';
import { memoryBackend, type Backend, type Extent } from '../../src/index.js';
import { serverPerTest } from './harness.js';
import { RawClient } from './raw-client.js';
import { CMD, CMD_FLAG, CLIENT_FLAG, OPT, REP, encodeClientFlags, encodeExtendedRequest, encodeInfoGoData, encodeMetaContextData, encodeOption, encodeRequest } from '../helpers/wire.js';

const { serve } = serverPerTest();
const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Negotiate structured replies (or extended headers) and base:allocation, then GO. */
async function negotiate(target: { path: string }, extended: boolean): Promise<RawClient> {
  const c = await RawClient.connect(target);
  await c.readGreeting();
  c.send(encodeClientFlags(CLIENT_FLAG.FIXED_NEWSTYLE | CLIENT_FLAG.NO_ZEROES));
  const mode = await c.option(extended ? OPT.EXTENDED_HEADERS : OPT.STRUCTURED_REPLY);
  expect(mode.at(-1)!.type).toBe(REP.ACK);
  const meta = await c.option(OPT.SET_META_CONTEXT, encodeMetaContextData('', ['base:allocation']));
  expect(meta.at(-1)!.type).toBe(REP.ACK);
  await c.go('');
  return c;
}

function blockStatus(extended: boolean, cookie: number, length: number, flags = 0): Buffer {
  const r = { flags, type: CMD.BLOCK_STATUS, cookie: BigInt(cookie), offset: 0, length };
  return extended ? encodeExtendedRequest(r) : encodeRequest(r);
}

describe('BLOCK_STATUS against the byte budget', () => {
  for (const extended of [false, true]) {
    it(`a client that reads no reply: BLOCK_STATUS computed stay within maxInFlightBytes (${extended ? 'extended headers' : 'structured replies'})`, async () => {
      const mem = memoryBackend({ size: 64 * MiB });
      let calls = 0;
      // A fragmented export: data and holes alternating every 512 bytes (the reply is capped at maxExtents).
      const backend: Backend = {
        ...mem,
        size: 64 * MiB,
        extents: (offset, length, opts): Extent[] => {
          calls++;
          const n = Math.min(opts.maxExtents ?? 65536, Math.ceil(length / 512));
          return Array.from({ length: n }, (_, i) => ({ length: 512, flags: i % 2 === 0 ? 0 : 3 }));
        },
      };
      const srv = await serve({ exports: [{ name: '', backend }], limits: { maxInFlightBytes: MiB, maxQueuedReplyBytes: MiB, maxExtents: 65536 } });
      const c = await negotiate({ path: srv.socket }, extended);
      c.stream.pause();
      c.send(Buffer.concat(Array.from({ length: 64 }, (_, i) => blockStatus(extended, i + 1, 64 * MiB))));
      await sleep(1500);
      // Each holds its largest reply (about 512 KiB or 1 MiB): at most a couple fit 1 MiB, plus one overshoot.
      expect(calls).toBeGreaterThan(0);
      expect(calls).toBeLessThanOrEqual(3);
      c.destroy();
    });
  }

  it('REQ_ONE BLOCK_STATUS hold one descriptor each: many fit the same budget', async () => {
    const mem = memoryBackend({ size: 64 * MiB });
    let calls = 0;
    const backend: Backend = { ...mem, size: 64 * MiB, extents: (o, l, opts) => (calls++, mem.extents!(o, l, opts)) };
    const srv = await serve({ exports: [{ name: '', backend }], limits: { maxInFlightBytes: MiB, maxQueuedReplyBytes: MiB } });
    const c = await negotiate({ path: srv.socket }, true);
    c.stream.pause();
    c.send(Buffer.concat(Array.from({ length: 64 }, (_, i) => blockStatus(true, i + 1, 64 * MiB, CMD_FLAG.REQ_ONE))));
    await sleep(1000);
    expect(calls).toBe(64);
    c.destroy();
  });
});

describe('a burst of slow BLOCK_STATUS does not stall other connections', () => {
  it('another client\'s READ is answered after a few of them, not after the whole burst', async () => {
    const SIZE = 16 * MiB;
    const mem = memoryBackend({ size: SIZE });
    let done = 0;
    // A synchronous backend whose extents take 30 ms of CPU each (a walk over a fragmented export).
    const backend: Backend = {
      ...mem,
      size: SIZE,
      extents: (): Extent[] => {
        const until = performance.now() + 30;
        while (performance.now() < until);
        done++;
        return [{ length: SIZE, flags: 0 }];
      },
    };
    const srv = await serve({ exports: [{ name: '', backend }] });
    const greedy = await negotiate({ path: srv.socket }, false);
    const other = await RawClient.open({ path: srv.socket });
    const N = 40;
    // Both arrive together: the burst first, the READ right behind it on another connection.
    greedy.send(Buffer.concat(Array.from({ length: N }, (_, i) => blockStatus(false, i + 1, SIZE))));
    other.send(encodeRequest({ flags: 0, type: CMD.READ, cookie: 7n, offset: 0, length: 4096 }));
    const r = await other.readSimpleReply(() => 4096);
    const whenRead = done;
    expect(r.error).toBe(0);
    // Every BLOCK_STATUS is answered all the same.
    for (let i = 0; i < 400 && done < N; i++) await sleep(25);
    expect(done).toBe(N);
    expect(whenRead).toBeLessThan(N / 4);
    greedy.destroy();
    other.destroy();
  });
});
