/**
 * Read-slab reuse accounting (src/transport/slab-account.ts): a slab is
 * free only once every byte read into it was reported dead exactly once —
 * parsed headers and copied-out bytes (reported by the decoder through the
 * callback it is given), and WRITE payloads released once nobody reads
 * them (releaseRequestPayload). A payload view that is never released
 * keeps its slab out of reuse.
 */
import { describe, expect, it } from 'vitest';
import { FrameDecoder } from '../../../src/protocol/decoder.js';
import type { RequestFrame } from '../../../src/protocol/frames.js';
import { releaseBytes, releaseRequestPayload, retireSlab, slabCounters, trackSlab } from '../../../src/transport/slab-account.js';
import { encodeRequest } from '../../helpers/wire.js';

const WRITE = 1;
const releasePayload = releaseRequestPayload;

/** A decoder in the transmission phase that reports dead bytes to the slab accounting, as a session's does. */
function requestDecoder(): FrameDecoder {
  const d = new FrameDecoder({}, releaseBytes);
  d.startTransmission(false);
  return d;
}

/** Copy `bytes` into tracked slabs of `size` bytes each; returns the chunks and a free counter. */
function inSlabs(bytes: Buffer, size: number) {
  const freed: number[] = [];
  const slabs: { buf: Buffer; account: ReturnType<typeof trackSlab> }[] = [];
  const chunks: Buffer[] = [];
  for (let at = 0, i = 0; at < bytes.length; at += size, i++) {
    const buf = Buffer.allocUnsafeSlow(size);
    const account = trackSlab(buf.buffer, () => freed.push(i));
    const n = bytes.copy(buf, 0, at, Math.min(bytes.length, at + size));
    account.handed = n;
    slabs.push({ buf, account });
    chunks.push(buf.subarray(0, n));
  }
  const retireAll = () => slabs.forEach((s) => retireSlab(s.buf.buffer, s.account));
  return { chunks, freed, retireAll };
}

describe('read slab accounting', () => {
  it('a scattered 1 MiB WRITE frees its slabs only when its payload is released', () => {
    const payload = Buffer.alloc(1024 * 1024, 7);
    const wire = Buffer.concat([encodeRequest({ flags: 0, type: WRITE, cookie: 1n, offset: 0, length: payload.length }, payload), encodeRequest({ flags: 0, type: WRITE, cookie: 2n, offset: 0, length: payload.length }, payload)]);
    const { chunks, freed, retireAll } = inSlabs(wire, 200 * 1024);
    const d = requestDecoder();
    for (const c of chunks) d.push(c);
    const a = d.next() as RequestFrame;
    const b = d.next() as RequestFrame;
    expect(d.next()).toBeNull();
    retireAll();
    expect(freed).toEqual([]); // payloads still held
    releasePayload(a);
    releasePayload(a); // once only
    // Slabs holding only the first request are free; the one it shares with the second is not.
    const afterA = [...freed];
    expect(afterA.length).toBeGreaterThan(0);
    expect(afterA.every((i) => (i + 1) * 200 * 1024 <= 28 + payload.length)).toBe(true);
    releasePayload(b);
    expect(freed.sort((x, y) => x - y)).toEqual(chunks.map((_, i) => i));
    // A released scattered payload cannot be joined from reused memory.
    expect(() => (b as { payload?: Buffer }).payload).toThrow(/released/);
  });

  it('a small payload kept as a view keeps its slab out of reuse', () => {
    const payload = Buffer.alloc(4096, 1);
    const wire = encodeRequest({ flags: 0, type: WRITE, cookie: 1n, offset: 0, length: payload.length }, payload);
    const { chunks, freed, retireAll } = inSlabs(wire, 64 * 1024);
    const d = requestDecoder();
    d.push(chunks[0]!);
    const f = d.next() as RequestFrame;
    expect(f.payload).toEqual(payload);
    retireAll();
    // Until it is released (see the next test), the view keeps the slab from being reused.
    expect(freed).toEqual([]);
  });

  it('a single-view payload frees its slab once released (releasePayload), and only then', () => {
    const payload = Buffer.alloc(4096, 3);
    const one = (cookie: bigint) => encodeRequest({ flags: 0, type: WRITE, cookie, offset: 0, length: payload.length }, payload);
    const wire = Buffer.concat([one(1n), one(2n)]);
    const { chunks, freed, retireAll } = inSlabs(wire, 64 * 1024);
    const d = requestDecoder();
    d.push(chunks[0]!);
    const a = d.next() as RequestFrame;
    const b = d.next() as RequestFrame;
    expect(a.payload).toEqual(payload);
    retireAll();
    releasePayload(a);
    expect(freed).toEqual([]); // b's payload still lives in the slab
    releasePayload(b);
    expect(freed).toEqual([0]);
  });

  it('releasePayload of a payload copied out of two chunks reports nothing twice', () => {
    const payload = Buffer.alloc(4096, 5);
    const wire = encodeRequest({ flags: 0, type: WRITE, cookie: 1n, offset: 0, length: payload.length }, payload);
    const { chunks, freed, retireAll } = inSlabs(wire, 2048);
    const d = requestDecoder();
    for (const c of chunks) d.push(c);
    const f = d.next() as RequestFrame;
    expect(f.payload).toEqual(payload);
    retireAll();
    // The copy's sources were reported when copied: every slab is already free.
    expect(freed.sort((x, y) => x - y)).toEqual(chunks.map((_, i) => i));
    releasePayload(f); // the copy is untracked memory: a no-op
    expect(freed.length).toBe(chunks.length);
  });

  it('untracked memory is ignored; a header split across slabs is reported when copied', () => {
    releaseBytes(new ArrayBuffer(8), 8);
    const wire = encodeRequest({ flags: 0, type: 0, cookie: 1n, offset: 0, length: 512 });
    const { chunks, freed, retireAll } = inSlabs(wire, 10);
    const d = requestDecoder();
    for (const c of chunks) d.push(c);
    expect(d.next()).toMatchObject({ kind: 'request', type: 0, length: 512 });
    retireAll();
    expect(freed.sort()).toEqual([0, 1, 2]);
  });

  it('the decoder reports only through the callback it is given: without one, nothing is freed', () => {
    const wire = encodeRequest({ flags: 0, type: 0, cookie: 1n, offset: 0, length: 512 });
    const { chunks, freed, retireAll } = inSlabs(wire, 10);
    const d = new FrameDecoder();
    d.startTransmission(false);
    for (const c of chunks) d.push(c);
    expect(d.next()).toMatchObject({ kind: 'request', type: 0, length: 512 });
    retireAll();
    expect(freed).toEqual([]);
  });

  it('counts freed slabs', () => {
    const before = slabCounters.freed;
    const { chunks, retireAll } = inSlabs(Buffer.alloc(30), 10);
    for (const c of chunks) releaseBytes(c.buffer, c.length);
    retireAll();
    expect(slabCounters.freed - before).toBe(3);
  });
});
