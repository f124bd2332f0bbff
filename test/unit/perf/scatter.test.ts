/**
 * Large WRITE payloads that span socket chunks travel as the chunks' views
 * (no joining copy) to backends with `writev`; everything else still sees
 * one contiguous `payload`. Same bytes either way.
 */
import { describe, expect, it } from 'vitest';
import { FrameDecoder, payloadParts } from '../../../src/protocol/decoder.js';
import { CMD } from '../../../src/protocol/constants.js';
import type { RequestFrame } from '../../../src/protocol/frames.js';
import { memoryBackend } from '../../../src/backends/memory.js';

function writeRequest(offset: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609513, 0);
  h.writeUInt16BE(CMD.NBD_CMD_WRITE, 6);
  h.writeBigUInt64BE(7n, 8);
  h.writeUInt32BE(offset, 20);
  h.writeUInt32BE(payload.length, 24);
  return Buffer.concat([h, payload]);
}

function decodeInChunks(wire: Buffer, cuts: number[]): RequestFrame {
  const d = new FrameDecoder();
  d.startTransmission(false);
  let at = 0;
  for (const c of [...cuts, wire.length]) {
    d.push(wire.subarray(at, c));
    at = c;
  }
  const f = d.next();
  expect(f?.kind).toBe('request');
  return f as RequestFrame;
}

describe('scattered WRITE payloads', () => {
  const payload = Buffer.alloc(200 * 1024);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 31 + 7) & 0xff;
  const wire = writeRequest(4096, payload);

  it('a ≥ 64 KiB payload spanning chunks comes as views, joined on demand to the same bytes', () => {
    const f = decodeInChunks(wire, [28 + 1000, 28 + 70_000, 28 + 150_000]);
    const parts = payloadParts(f)!;
    expect(parts.map((p) => p.length)).toEqual([1000, 69_000, 80_000, payload.length - 150_000]);
    expect(Buffer.concat(parts as Buffer[]).equals(payload)).toBe(true);
    expect(f.payload!.equals(payload)).toBe(true);
    expect({ offset: f.offset, length: f.length, type: f.type, cookie: f.cookie, payloadDiscarded: f.payloadDiscarded }).toEqual({
      offset: 4096,
      length: payload.length,
      type: CMD.NBD_CMD_WRITE,
      cookie: 7n,
      payloadDiscarded: false,
    });
  });

  it('a payload inside one chunk, or a small one, is one contiguous buffer', () => {
    expect(payloadParts(decodeInChunks(wire, []))).toBeUndefined();
    const small = writeRequest(0, Buffer.alloc(4096, 1));
    const f = decodeInChunks(small, [100, 2000]);
    expect(payloadParts(f)).toBeUndefined();
    expect(f.payload!.equals(Buffer.alloc(4096, 1))).toBe(true);
  });

  it('memoryBackend.writev stores the same bytes as write', () => {
    const a = memoryBackend({ size: 1 << 20, pageSize: 4096 });
    const b = memoryBackend({ size: 1 << 20, pageSize: 4096 });
    a.write!(1234, payload, { fua: false });
    b.writev!(1234, [payload.subarray(0, 5000), payload.subarray(5000, 5001), payload.subarray(5001)], { fua: false });
    const read = (m: typeof a) => {
      const r = m.read(0, 1 << 20);
      return Buffer.concat((Array.isArray(r) ? r : [{ data: r as Buffer }]).map((s) => ('data' in s ? s.data : Buffer.alloc(s.hole))));
    };
    expect(read(a).equals(read(b))).toBe(true);
  });
});
