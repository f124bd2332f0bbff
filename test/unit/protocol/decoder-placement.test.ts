/**
 * Zero-copy WRITE placement in the decoder: a large WRITE's payload goes
 * into the provider's targets (bytes already buffered are copied in, the
 * rest is read into `placementWindow()` or pushed), and the request comes
 * out complete with `placed: true` and no payload. Property: for any
 * chunking and any mix of window reads and pushes, the targets end up
 * holding exactly the payload, and the frames around it decode as without
 * placement.
 */
import crypto from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PLACE_MIN, type PlacementProvider } from '../../../src/protocol/decoder.js';
import type { RequestFrame } from '../../../src/protocol/frames.js';
import { decoderAt } from '../../helpers/decode.js';
import { encodeRequest } from '../../helpers/wire.js';

const WRITE = 1;
const READ = 0;

/** Targets of the given sizes (summing to the payload length), and the provider that hands them out. */
function provider(sizes: number[], accept = true) {
  const asked: RequestFrame[] = [];
  const targets = sizes.map((n) => Buffer.alloc(n));
  const fn: PlacementProvider = (f) => {
    asked.push(f);
    return accept ? targets : null;
  };
  return { fn, asked, targets };
}

describe('WRITE placement', () => {
  it('copies what is buffered, then fills windows; the frame is placed and payload-less', () => {
    const payload = crypto.randomBytes(PLACE_MIN + 1000);
    const { fn, asked, targets } = provider([1000, PLACE_MIN]);
    const d = decoderAt('requests');
    d.setPlacement(fn);
    const wire = encodeRequest({ flags: 0, type: WRITE, cookie: 5n, offset: 4096, length: payload.length }, payload);
    d.push(wire.subarray(0, 28 + 300));
    expect(d.next()).toBeNull();
    expect(asked).toHaveLength(1);
    expect(asked[0]).toMatchObject({ type: WRITE, offset: 4096, length: payload.length, payload: undefined });
    expect(d.incomplete).toMatch(/300 of 66536 payload bytes/);
    // The window is the rest of the first target, then the second target.
    let w = d.placementWindow()!;
    expect(w.length).toBe(700);
    payload.copy(w, 0, 300, 1000);
    d.placed(700);
    w = d.placementWindow()!;
    expect(w.length).toBe(PLACE_MIN);
    payload.copy(w, 0, 1000, 1000 + 4000);
    d.placed(4000);
    expect(d.next()).toBeNull();
    // The rest arrives by push (e.g. the 'data' fallback) together with the next request.
    d.push(Buffer.concat([wire.subarray(28 + 5000), encodeRequest({ flags: 0, type: READ, cookie: 6n, offset: 0, length: 512 })]));
    expect(d.placementWindow()).toBeNull(); // bytes are buffered: order first
    const f = d.next() as RequestFrame;
    expect(f).toMatchObject({ kind: 'request', type: WRITE, cookie: 5n, placed: true, payload: undefined, payloadDiscarded: false });
    expect(Buffer.concat(targets).equals(payload)).toBe(true);
    expect(d.next()).toMatchObject({ kind: 'request', type: READ, cookie: 6n });
    expect(d.placementWindow()).toBeNull();
  });

  it('small payloads, fully buffered payloads and a declining provider are buffered as usual', () => {
    const { fn, asked } = provider([PLACE_MIN], false);
    const d = decoderAt('requests');
    d.setPlacement(fn);
    const small = Buffer.alloc(PLACE_MIN - 1, 1);
    d.push(encodeRequest({ flags: 0, type: WRITE, cookie: 1n, offset: 0, length: small.length }, small));
    expect((d.next() as RequestFrame).payload).toEqual(small);
    const big = Buffer.alloc(PLACE_MIN, 2);
    d.push(encodeRequest({ flags: 0, type: WRITE, cookie: 2n, offset: 0, length: big.length }, big));
    expect((d.next() as RequestFrame).payload).toEqual(big); // all there already: no need to place
    expect(asked).toHaveLength(0);
    // Targets that do not add up to the payload are ignored.
    const short = decoderAt('requests');
    short.setPlacement(() => [Buffer.alloc(PLACE_MIN - 1)]);
    const shortWire = encodeRequest({ flags: 0, type: WRITE, cookie: 9n, offset: 0, length: big.length }, big);
    short.push(shortWire.subarray(0, 100));
    expect(short.next()).toBeNull();
    expect(short.placementWindow()).toBeNull();
    short.push(shortWire.subarray(100));
    expect((short.next() as RequestFrame).payload).toEqual(big);
    const wire = encodeRequest({ flags: 0, type: WRITE, cookie: 3n, offset: 0, length: big.length }, big);
    d.push(wire.subarray(0, 100));
    expect(d.next()).toBeNull();
    expect(asked).toHaveLength(1); // asked, declined
    expect(d.placementWindow()).toBeNull();
    d.push(wire.subarray(100));
    const f = d.next() as RequestFrame;
    expect(f.placed).toBeUndefined();
    expect(f.payload).toEqual(big);
  });

  it("the targets' commit comes out with the complete frame only: a payload cut off yields no frame to commit", () => {
    let commits = 0;
    const commit = () => void commits++;
    const d = decoderAt('requests');
    d.setPlacement(() => Object.assign([Buffer.alloc(PLACE_MIN)], { commit }));
    const payload = crypto.randomBytes(PLACE_MIN);
    const wire = encodeRequest({ flags: 0, type: WRITE, cookie: 7n, offset: 0, length: PLACE_MIN }, payload);
    d.push(wire.subarray(0, 28 + 20_000));
    expect(d.next()).toBeNull();
    d.placed(0);
    const w = d.placementWindow()!;
    payload.copy(w, 0, 20_000, PLACE_MIN - 1);
    d.placed(w.length - 1);
    // One byte short: still no frame, so nothing that could be committed.
    expect(d.next()).toBeNull();
    expect(d.incomplete).toMatch(new RegExp(`${PLACE_MIN - 1} of ${PLACE_MIN} payload bytes`));
    d.push(wire.subarray(wire.length - 1));
    const f = d.next() as RequestFrame;
    expect(f).toMatchObject({ cookie: 7n, placed: true, payload: undefined });
    expect(f.commitPlacement).toBe(commit);
    expect(commits).toBe(0); // the decoder never commits: whoever answers the request does
    // A provider without commit (plain views): the frame is placed, with nothing to commit.
    const plain = decoderAt('requests');
    plain.setPlacement(() => [Buffer.alloc(PLACE_MIN)]);
    plain.push(wire.subarray(0, 28));
    expect(plain.next()).toBeNull();
    plain.push(wire.subarray(28));
    const g = plain.next() as RequestFrame;
    expect(g).toMatchObject({ cookie: 7n, placed: true });
    expect('commitPlacement' in g).toBe(false);
  });

  it('placed() beyond the payload is refused; stop() ends placement', () => {
    const { fn } = provider([PLACE_MIN]);
    const d = decoderAt('requests');
    d.setPlacement(fn);
    d.push(encodeRequest({ flags: 0, type: WRITE, cookie: 1n, offset: 0, length: PLACE_MIN }).subarray(0, 28));
    expect(d.next()).toBeNull();
    expect(() => d.placed(PLACE_MIN + 1)).toThrow(RangeError);
    d.stop();
    expect(d.placementWindow()).toBeNull();
    expect(() => d.placed(1)).toThrow(RangeError);
  });

  it('property: any chunking and any mix of window reads and pushes gives the same frames and the payload in the targets', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: PLACE_MIN, max: 3 * PLACE_MIN }),
        fc.array(fc.integer({ min: 1, max: 40_000 }), { minLength: 1, maxLength: 30 }),
        fc.array(fc.boolean(), { minLength: 1, maxLength: 30 }),
        fc.integer({ min: 1, max: 4 }),
        (length, cuts, useWindow, pieces) => {
          const payload = crypto.randomBytes(length);
          const sizes: number[] = [];
          for (let left = length, i = 0; left > 0; i++) {
            const n = i === pieces - 1 ? left : Math.min(left, Math.ceil(length / pieces));
            sizes.push(n);
            left -= n;
          }
          const { fn, targets } = provider(sizes);
          const before = encodeRequest({ flags: 0, type: READ, cookie: 1n, offset: 0, length: 512 });
          const after = encodeRequest({ flags: 0, type: READ, cookie: 3n, offset: 0, length: 512 });
          const wire = Buffer.concat([before, encodeRequest({ flags: 0, type: WRITE, cookie: 2n, offset: 0, length }, payload), after]);
          const d = decoderAt('requests');
          d.setPlacement(fn);
          const frames: RequestFrame[] = [];
          const pull = () => {
            for (let f = d.next(); f !== null; f = d.next()) frames.push(f as RequestFrame);
          };
          let at = 0;
          for (let i = 0; at < wire.length; i++) {
            const want = cuts[i % cuts.length]!;
            const w = useWindow[i % useWindow.length] ? d.placementWindow() : null;
            if (w !== null) {
              // A socket read into the window: never more than the window.
              const n = Math.min(want, w.length, wire.length - at);
              wire.copy(w, 0, at, at + n);
              at += n;
              d.placed(n);
            } else {
              const n = Math.min(want, wire.length - at);
              d.push(wire.subarray(at, at + n));
              at += n;
            }
            pull();
          }
          expect(frames.map((f) => f.cookie)).toEqual([1n, 2n, 3n]);
          expect(frames[1]).toMatchObject({ placed: true, payload: undefined, length });
          expect(Buffer.concat(targets).equals(payload)).toBe(true);
          expect(d.bufferedBytes).toBe(0);
        },
      ),
      { numRuns: 300, interruptAfterTimeLimit: 4000 },
    );
  });
});
