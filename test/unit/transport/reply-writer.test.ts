/**
 * ReplyWriter.pendingBytes: every reply byte queued and not yet handed to
 * the OS is counted — staged small replies, big payloads queued by
 * reference, staging slices cut off by a big payload, and what sits in the
 * stream's own buffer — so the session's byte budget sees all of it.
 */
import { Duplex } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ReplyWriter } from '../../../src/transport/socket.js';

/** A stream whose writes complete only when `release()` is called (a client not reading). */
function stalledStream() {
  const held: Array<() => void> = [];
  const s = new Duplex({
    read() {},
    highWaterMark: 16 * 1024,
    write(_chunk, _enc, cb) {
      held.push(cb);
    },
    writev(_chunks, cb) {
      held.push(cb);
    },
  });
  return { s, release: () => held.splice(0).forEach((cb) => cb()) };
}

const tick = () => new Promise((r) => process.nextTick(r));

describe('ReplyWriter.pendingBytes', () => {
  it('counts staged, by-reference and cut staging bytes before and after the flush, and drops to 0 once written', async () => {
    const { s, release } = stalledStream();
    let written = 0;
    const w = new ReplyWriter(s, () => {}, () => written++);
    w.write([Buffer.alloc(100)]); // staged
    expect(w.pendingBytes).toBe(100);
    w.write([Buffer.alloc(64 * 1024)]); // by reference: cuts the 100 staged bytes into the parts list
    expect(w.pendingBytes).toBe(100 + 64 * 1024);
    w.writeSimple(1n, 0); // staged again
    expect(w.pendingBytes).toBe(100 + 64 * 1024 + 16);
    await tick(); // flushed into the stream's buffer, not yet written
    expect(w.pendingBytes).toBe(100 + 64 * 1024 + 16);
    expect(written).toBe(0);
    release();
    await tick();
    await tick();
    release();
    await tick();
    expect(w.pendingBytes).toBe(0);
    expect(written).toBeGreaterThan(0);
  });

  it('is 0 once destroyed', () => {
    const { s } = stalledStream();
    const w = new ReplyWriter(s, () => {});
    w.write([Buffer.alloc(10)]);
    w.destroy();
    expect(w.pendingBytes).toBe(0);
  });
});
