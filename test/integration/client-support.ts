/**
 * Shared checks for the client library tests: the same negotiation and
 * round trips against every server (ours, nbdkit, qemu-nbd), with the data
 * verified and the deviation list expected empty.
 */
import { randomBytes } from 'node:crypto';
import { expect } from 'vitest';
import { CMD_FLAG, FLAG, INFO, NbdConnection, STATE, type ConnectTarget, type Reply } from '../../src/client/index.js';

export const MiB = 1024 * 1024;

/** The reply's deviations as `rule: message` lines (for readable failures). */
export const rules = (r: { deviations: ReadonlyArray<{ rule: string; message: string }> }): string[] => r.deviations.map((d) => `${d.rule}: ${d.message}`);

/** Connect, structured replies (or extended headers), META_CONTEXT base:allocation, GO. */
export async function open(target: ConnectTarget, o: { extended?: boolean; structured?: boolean; name?: string } = {}): Promise<NbdConnection> {
  const c = await NbdConnection.connect(target, { timeoutMs: 20_000 });
  const g = await c.handshake();
  expect(g.deviations).toEqual([]);
  if (o.extended) expect((await c.extendedHeaders()).ok).toBe(true);
  else if (o.structured !== false) expect((await c.structuredReply()).ok).toBe(true);
  if (o.structured !== false || o.extended) {
    const set = await c.setMetaContext(o.name ?? '', ['base:allocation']);
    expect(set.ok).toBe(true);
    expect(set.contexts.map((x) => x.name)).toEqual(['base:allocation']);
  }
  const d = await c.go(o.name ?? '', [INFO.NBD_INFO_BLOCK_SIZE]);
  expect(d.ok).toBe(true);
  expect(d.size).toBeGreaterThan(0n);
  return c;
}

function ok(r: Reply): Reply {
  expect(rules(r)).toEqual([]);
  expect(r.error).toBe(0);
  return r;
}

/**
 * Write, read back, flush, trim, write zeroes, cache (if offered) and block
 * status on a writable export of at least 4 MiB; every reply checked.
 */
export async function roundTrips(c: NbdConnection): Promise<void> {
  const data = randomBytes(256 * 1024);
  ok(await c.write(MiB, data));
  expect(ok(await c.read(MiB, data.length)).data).toEqual(data);
  // A read across written and never-written bytes.
  const across = ok(await c.read(MiB - 4096, 8192)).data!;
  expect(across.subarray(0, 4096)).toEqual(Buffer.alloc(4096));
  expect(across.subarray(4096)).toEqual(data.subarray(0, 4096));
  if (c.transmissionFlags & FLAG.NBD_FLAG_SEND_FLUSH) ok(await c.flush());
  if (c.transmissionFlags & FLAG.NBD_FLAG_SEND_FUA) ok(await c.write(MiB, data.subarray(0, 4096), { flags: CMD_FLAG.NBD_CMD_FLAG_FUA }));
  if (c.transmissionFlags & FLAG.NBD_FLAG_SEND_WRITE_ZEROES) {
    ok(await c.writeZeroes(MiB + 65536, 65536));
    expect(ok(await c.read(MiB + 65536, 65536)).data).toEqual(Buffer.alloc(65536));
    expect(ok(await c.read(MiB + 131072, 4096)).data).toEqual(data.subarray(131072, 131072 + 4096));
  }
  if (c.transmissionFlags & FLAG.NBD_FLAG_SEND_TRIM) ok(await c.trim(MiB + 196608, 65536));
  if (c.transmissionFlags & FLAG.NBD_FLAG_SEND_CACHE) ok(await c.cache(0, 65536));
  if (c.mode !== 'simple' && c.contexts.size) {
    const bs = ok(await c.blockStatus(0, 4 * MiB));
    expect(bs.blockStatus).toHaveLength(1);
    const extents = bs.blockStatus[0]!.extents;
    expect(extents.length).toBeGreaterThan(0);
    // The first MiB was never written: a hole (reads as zeroes) in every server here.
    expect(extents[0]!.flags & STATE.NBD_STATE_HOLE).toBe(STATE.NBD_STATE_HOLE);
    const one = ok(await c.blockStatus(MiB, MiB, { flags: CMD_FLAG.NBD_CMD_FLAG_REQ_ONE }));
    expect(one.blockStatus[0]!.extents).toHaveLength(1);
    expect(one.blockStatus[0]!.extents[0]!.flags & STATE.NBD_STATE_HOLE).toBe(0);
  }
}

/** 64 WRITEs then 64 READs all in flight at once; each READ returns its WRITE's bytes. */
export async function pipelined(c: NbdConnection): Promise<void> {
  const blocks = Array.from({ length: 64 }, (_, i) => Buffer.alloc(4096, i + 1));
  const writes = await Promise.all(blocks.map((b, i) => c.write(2 * MiB + i * 4096, b)));
  for (const w of writes) ok(w);
  const reads = blocks.map((_, i) => c.read(2 * MiB + i * 4096, 4096));
  expect(c.inFlight).toBeGreaterThan(0);
  const got = await Promise.all(reads);
  got.forEach((r, i) => expect(ok(r).data).toEqual(blocks[i]));
}
