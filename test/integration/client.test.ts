/**
 * The client library (`nbd-engine/client`) against our own server on a real
 * UNIX socket and over TCP: negotiation step by step, round trips with the
 * data verified, pipelining with out-of-order completion, extended headers,
 * and requests that are wrong on purpose (the server's refusal or disconnect
 * is seen, nothing hangs). No deviations are expected from our server.
 */
import { describe, expect, it } from 'vitest';
import { CMD, CMD_FLAG, INFO, NbdClientError, NbdConnection, OPT, REP } from '../../src/client/index.js';
import { createServer, memoryBackend, type Backend } from '../../src/index.js';
import { execFileP, serverPerTest, silentLogger } from './harness.js';
import { MiB, open, pipelined, roundTrips, rules } from './client-support.js';

const servers = serverPerTest();
const exports = () => [{ name: 'disk', description: 'a test disk', backend: memoryBackend({ size: 8 * MiB }) }];

describe('client ↔ our server: negotiation', () => {
  it('greeting, LIST, INFO with infos, LIST/SET_META_CONTEXT base:allocation, GO', async () => {
    const s = await servers.serve({ exports: exports() });
    const c = await NbdConnection.connect({ path: s.socket });
    const g = await c.greeting();
    expect(g.flags).toBe(3);
    expect(g.oldstyle).toBe(false);
    c.sendClientFlags();
    expect(c.clientFlags).toBe(3);
    const l = await c.list();
    expect(l.ok).toBe(true);
    expect(l.exports).toEqual([{ name: 'disk', description: 'a test disk' }]);
    const info = await c.info('disk', [INFO.NBD_INFO_NAME, INFO.NBD_INFO_DESCRIPTION, INFO.NBD_INFO_BLOCK_SIZE]);
    expect(info.ok).toBe(true);
    expect(info.size).toBe(BigInt(8 * MiB));
    expect(info.name).toBe('disk');
    expect(info.description).toBe('a test disk');
    expect(info.blockSize!.minimum).toBeGreaterThan(0);
    expect((await c.structuredReply()).ok).toBe(true);
    const listed = await c.listMetaContext('disk', ['base:']);
    expect(listed.contexts.map((x) => x.name)).toEqual(['base:allocation']);
    const set = await c.setMetaContext('disk', ['base:allocation']);
    expect(set.ok).toBe(true);
    expect([...c.contexts.values()]).toEqual(['base:allocation']);
    const go = await c.go('disk');
    expect(go.ok).toBe(true);
    expect(c.transmitting).toBe(true);
    expect(c.size).toBe(BigInt(8 * MiB));
    expect(c.deviations).toEqual([]);
    expect(await c.disc()).toBe(true);
  });

  it('onBytes logs every byte each way, in order', async () => {
    const s = await servers.serve({ exports: exports() });
    const log: Array<{ dir: 'in' | 'out'; bytes: Buffer }> = [];
    const c = await NbdConnection.connect({ path: s.socket }, { onBytes: (dir, bytes) => log.push({ dir, bytes: Buffer.from(bytes) }) });
    await c.handshake();
    await c.go('disk', []);
    await c.read(0, 512);
    const all = (dir: 'in' | 'out') => Buffer.concat(log.filter((l) => l.dir === dir).map((l) => l.bytes));
    expect(all('in').subarray(0, 8).toString()).toBe('NBDMAGIC');
    expect(all('out').subarray(0, 4).readUInt32BE(0)).toBe(3);
    // Out: client flags, GO (16 + 4 + 4 + 2), one READ header.
    expect(all('out')).toHaveLength(4 + 26 + 28);
    // In: greeting, INFO_EXPORT (20 + 12), ACK (20), the simple reply and its data.
    expect(all('in')).toHaveLength(18 + 32 + 20 + 16 + 512);
    await c.disc();
  });

  it('raw option(): an unknown option gets NBD_REP_ERR_UNSUP and the next option still works', async () => {
    const s = await servers.serve({ exports: exports() });
    const c = await NbdConnection.connect({ path: s.socket });
    await c.handshake();
    const r = await c.option(4242, Buffer.from('junk'));
    expect(r).toHaveLength(1);
    expect(r[0]!.type).toBe(REP.NBD_REP_ERR_UNSUP);
    expect(r[0]!.option).toBe(4242);
    expect((await c.go('disk')).ok).toBe(true);
    expect(c.deviations).toEqual([]);
    c.destroy();
  });

  it('an option whose length field lies is refused, not hung on', async () => {
    const s = await servers.serve({ exports: exports() });
    const c = await NbdConnection.connect({ path: s.socket }, { timeoutMs: 5000 });
    await c.handshake();
    // STRUCTURED_REPLY must have no data: 3 bytes announced and sent.
    const r = await c.option(OPT.NBD_OPT_STRUCTURED_REPLY, Buffer.from('abc'));
    expect(r.at(-1)!.type).toBe(REP.NBD_REP_ERR_INVALID);
    c.destroy();
  });

  it('EXPORT_NAME with and without NO_ZEROES; ABORT gets its ACK', async () => {
    const s = await servers.serve({ exports: exports() });
    const a = await NbdConnection.connect({ path: s.socket });
    await a.greeting();
    a.sendClientFlags(1); // FIXED_NEWSTYLE only: the 124 zero bytes follow
    const e = await a.exportName('disk');
    expect(e.bytes).toHaveLength(134);
    expect(e.size).toBe(BigInt(8 * MiB));
    expect((await a.read(0, 512)).data).toEqual(Buffer.alloc(512));
    a.destroy();
    const b = await NbdConnection.connect({ path: s.socket });
    await b.handshake();
    expect((await b.exportName('disk')).bytes).toHaveLength(10);
    b.destroy();
    const x = await NbdConnection.connect({ path: s.socket });
    await x.handshake();
    expect((await x.abort())?.type).toBe(REP.NBD_REP_ACK);
    for (const conn of [a, b, x]) expect(conn.deviations).toEqual([]);
  });
});

describe('client ↔ our server: illegal sequences on purpose', () => {
  it('INFO for an unknown export: NBD_REP_ERR_UNKNOWN, an answer and no deviation', async () => {
    const s = await servers.serve({ exports: exports() });
    const c = await NbdConnection.connect({ path: s.socket });
    await c.handshake();
    const r = await c.info('nope');
    expect(r.ok).toBe(false);
    expect(r.replies.at(-1)!.type).toBe(REP.NBD_REP_ERR_UNKNOWN);
    expect(c.deviations).toEqual([]);
    c.destroy();
  });

  it('client flags with an undefined bit: the server closes (handshake.client-flags-unknown); the next option fails with `closed`', async () => {
    const s = await servers.serve({ exports: exports() });
    const c = await NbdConnection.connect({ path: s.socket }, { timeoutMs: 5000 });
    await c.greeting();
    c.sendClientFlags(0x80 | 1);
    await expect(c.go('disk')).rejects.toMatchObject({ code: 'closed' });
    expect(await c.closedWithin(5000)).toBe(true);
  });

  it('EXPORT_NAME for an unknown export: the server closes (option.export-name-terminates), no hang', async () => {
    const s = await servers.serve({ exports: exports() });
    const c = await NbdConnection.connect({ path: s.socket }, { timeoutMs: 5000 });
    await c.handshake();
    await expect(c.exportName('nope')).rejects.toMatchObject({ code: 'closed' });
    expect(c.deviations).toEqual([]);
  });

  it('a request before GO is refused by the client itself (`state`), an option after GO too', async () => {
    const s = await servers.serve({ exports: exports() });
    const c = await NbdConnection.connect({ path: s.socket });
    await c.handshake();
    await expect(c.read(0, 512)).rejects.toMatchObject({ code: 'state' });
    await c.go('disk');
    await expect(c.list()).rejects.toMatchObject({ code: 'state' });
    expect((await c.read(0, 512)).error).toBe(0);
    await c.disc();
  });
});

describe('client ↔ our server: transmission', () => {
  for (const mode of ['simple', 'structured', 'extended'] as const) {
    it(`round trips with ${mode} replies, data verified`, async () => {
      const s = await servers.serve({ exports: exports() });
      const c = await open({ path: s.socket }, { name: 'disk', structured: mode !== 'simple', extended: mode === 'extended' });
      expect(c.mode).toBe(mode);
      await roundTrips(c);
      await pipelined(c);
      const r = await c.read(0, 4096);
      expect(r.form).toBe(mode);
      expect(c.deviations).toEqual([]);
      expect(await c.disc()).toBe(true);
    });
  }

  it('over TCP as well', async () => {
    const server = createServer({ exports: exports(), logger: silentLogger });
    const [bound] = await server.listen({ port: 0, host: '127.0.0.1' });
    try {
      const port = bound!.address.port!;
      const c = await open({ host: '127.0.0.1', port }, { name: 'disk' });
      await roundTrips(c);
      expect(c.deviations).toEqual([]);
      await c.disc();
    } finally {
      await server.close({ timeout: 2000 });
    }
  });

  it('replies that complete out of order reach the right request (cookie map)', async () => {
    const m = memoryBackend({ size: 8 * MiB });
    let open0!: () => void;
    const gate = new Promise<void>((r) => (open0 = r));
    const gated: Backend = { ...m, size: m.size, read: async (off, len) => (off === 0 ? gate.then(() => m.read(off, len)) : m.read(off, len)), write: m.write!.bind(m) };
    const s = await servers.serve({ exports: [{ name: 'disk', backend: gated }] });
    const c = await open({ path: s.socket }, { name: 'disk' });
    await c.write(4096, Buffer.alloc(4096, 7));
    const order: string[] = [];
    const first = c.read(0, 4096).then((r) => (order.push('first'), r));
    const second = c.read(4096, 4096).then((r) => (order.push('second'), r));
    expect((await second).data).toEqual(Buffer.alloc(4096, 7));
    open0();
    expect((await first).data).toEqual(Buffer.alloc(4096));
    expect(order).toEqual(['second', 'first']);
    expect(c.deviations).toEqual([]);
    await c.disc();
  });

  it('an error reply carries the errno and message (read past the end)', async () => {
    const s = await servers.serve({ exports: exports() });
    const c = await open({ path: s.socket }, { name: 'disk' });
    const r = await c.read(8 * MiB - 512, 1024);
    expect(r.error).toBe(22);
    expect(r.errorMessage).toMatch(/transmission\.out-of-bounds/);
    expect(rules(r)).toEqual([]);
    await c.disc();
  });
});

describe('client ↔ our server: malformed requests on purpose', () => {
  it('a wrong request magic: the server disconnects, the pending request fails with `closed`', async () => {
    const s = await servers.serve({ exports: exports() });
    const c = await open({ path: s.socket }, { name: 'disk' });
    const p = c.request({ type: CMD.NBD_CMD_READ, length: 512, magic: 0x12345678 });
    await expect(p).rejects.toMatchObject({ code: 'closed' });
    expect(await c.closedWithin(5000)).toBe(true);
  });

  it('a WRITE whose payload is shorter than its length: the request times out (the server waits for the rest), no hang', async () => {
    const s = await servers.serve({ exports: exports() });
    const c = await open({ path: s.socket }, { name: 'disk' });
    const p = c.request({ type: CMD.NBD_CMD_WRITE, length: 4096, payload: Buffer.alloc(100), timeoutMs: 500 });
    const err = await p.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdClientError);
    expect((err as NbdClientError).code).toBe('timeout');
    c.destroy();
  });

  it('an unknown command and an unknown flag get EINVAL', async () => {
    const s = await servers.serve({ exports: exports() });
    const c = await open({ path: s.socket }, { name: 'disk' });
    const [a, b] = await Promise.all([c.request({ type: 99, length: 0 }), c.request({ type: CMD.NBD_CMD_READ, length: 512, flags: 0x4000 })]);
    expect(a.error).toBe(22);
    expect(b.error).toBe(22);
    expect(c.deviations).toEqual([]);
    await c.disc();
  });

  it('REQ_ONE block status gets exactly one extent', async () => {
    const s = await servers.serve({ exports: exports() });
    const c = await open({ path: s.socket }, { name: 'disk' });
    const r = await c.blockStatus(0, 4 * MiB, { flags: CMD_FLAG.NBD_CMD_FLAG_REQ_ONE });
    expect(r.blockStatus[0]!.extents).toHaveLength(1);
    await c.disc();
  });
});

describe('the package subpath', () => {
  it('`nbd-engine/client` resolves through package.json "exports" to the built dist (global setup builds it)', async () => {
    const root = new URL('../..', import.meta.url).pathname;
    const code = "const m = await import('nbd-engine/client'); console.log(typeof m.NbdConnection.connect, m.CMD.NBD_CMD_READ, typeof m.NbdClientError);";
    const { stdout } = await execFileP(process.execPath, ['--input-type=module', '-e', code], { cwd: root });
    expect(stdout.trim()).toBe('function 0 function');
  });
});
