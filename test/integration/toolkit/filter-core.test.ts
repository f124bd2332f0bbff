/**
 * The filter core (src/api/filter.ts) with libnbd as the client: what a
 * filter's backend has is what the export advertises; filters run in
 * order, the first closest to the client; shared filters are made once,
 * per-connection filters once per connection, with their clean-up when it
 * closes; errors a filter rewrites reach the client as its errno.
 */
import { describe, expect, it } from 'vitest';
import { layer, memoryBackend, NbdRequestError, type Filter } from '../../../src/index.js';
import { py } from '../pylibnbd.js';
import { serverPerTest } from '../harness.js';

const MiB = 1 << 20;
const { serve } = serverPerTest();

/** A filter that records the order it sees READs in. */
function tagging(name: string, seen: string[], scope: Filter['scope'] = 'shared'): Filter {
  return {
    name,
    scope,
    wrap: (next) => layer(next, { read: (o, l) => (seen.push(name), next.read(o, l)) }),
  };
}

describe('filters', () => {
  it('decide what is advertised: removing trim hides SEND_TRIM, block sizes come from the filter', async () => {
    const noTrim: Filter = { name: 'no-trim', scope: 'shared', wrap: (next) => layer(next, { trim: undefined, blockSizes: { minimum: 512, preferred: 65536, maximum: 1 << 22 } }) };
    const bare = await serve({ exports: [{ name: 'a', backend: memoryBackend({ size: MiB }) }, { name: 'b', backend: memoryBackend({ size: MiB }), filters: [noTrim] }] });
    const a = await py(bare.uri('a'), `h = connect(); out = flags(h)`);
    const b = await py(bare.uri('b'), `h = connect(); out = flags(h)`);
    expect(a.trim).toBe(true);
    expect(b.trim).toBe(false);
    expect(b.block_size).toEqual([512, 65536, 1 << 22]);
    expect(b.zero).toBe(a.zero);
  });

  it('run in order, the first closest to the client', async () => {
    const seen: string[] = [];
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [tagging('outer', seen), tagging('inner', seen)] }] });
    await py(srv.uri(), `h = connect(); h.pread(512, 0); out = {}`);
    expect(seen).toEqual(['outer', 'inner']);
  });

  it('change arguments and size: a filter serving the second half of its backend', async () => {
    const mem = memoryBackend({ size: 2 * MiB });
    mem.write!(MiB, Buffer.alloc(4096, 0x5a), { fua: false });
    const half: Filter = {
      name: 'half',
      scope: 'shared',
      wrap: (next) => layer(next, { size: next.size! / 2, read: (o, l) => next.read(o + MiB, l), write: (o, d, opts) => next.write!(o + MiB, d, opts) }),
    };
    const srv = await serve({ exports: [{ name: '', backend: mem, filters: [half] }] });
    const out = await py<{ size: number; head: string }>(srv.uri(), `h = connect(); out = {'size': h.get_size(), 'head': h.pread(4, 0).hex()}`);
    expect(out).toEqual({ size: MiB, head: '5a5a5a5a' });
  });

  it('rewrite errors: the client sees the errno the filter chose', async () => {
    const failing: Filter = {
      name: 'enospc',
      scope: 'shared',
      wrap: (next) => layer(next, { write: async () => { throw new NbdRequestError('ENOSPC'); } }),
    };
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [failing] }] });
    const out = await py<{ err: string }>(srv.uri(), `
      h = connect()
      try:
          h.pwrite(b'x' * 512, 0)
          out = {'err': 'none'}
      except nbd.Error as e:
          out = {'err': errno.errorcode.get(e.errno, str(e.errno))}
    `);
    expect(out.err).toBe('ENOSPC');
  });

  it("a per-connection filter whose wrap throws: that connection is dropped at once with one error line saying so; the next connection is served", async () => {
    let fail = true;
    const perConn: Filter = {
      name: 'flaky',
      scope: 'connection',
      wrap: (next, ctx) => {
        if (ctx.connection && fail) throw new Error('wrap exploded');
        return layer(next);
      },
    };
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [perConn] }] });
    const closed = new Promise<{ code?: string; reason?: string }>((resolve) => {
      const sub = srv.server.connections$.subscribe((e) => {
        if (e.type === 'closed') (sub.unsubscribe(), resolve(e));
      });
    });
    const out = await py<{ err: string }>(srv.uri(), `
      h = connect()
      try:
          h.pread(512, 0)
          out = {'err': 'none'}
      except nbd.Error as e:
          out = {'err': 'failed'}
    `);
    expect(out.err).toBe('failed');
    expect(await closed).toMatchObject({ code: 'NBD_ERR_INTERNAL', reason: expect.stringMatching(/setting up export "" for this connection failed: Error: wrap exploded/) });
    const errors = srv.logs.filter((l) => l.startsWith('error:'));
    expect(errors).toEqual([expect.stringMatching(/NBD_ERR_INTERNAL: setting up export "" for this connection failed: Error: wrap exploded$/)]);
    fail = false;
    expect(await py<{ n: number }>(srv.uri(), `h = connect(); out = {'n': len(h.pread(512, 0))}`)).toEqual({ n: 512 });
  });

  it('per-connection filters are made for each connection and cleaned up when it closes; shared ones once', async () => {
    const made: Array<number | undefined> = [];
    const closed: number[] = [];
    let sharedWraps = 0;
    const perConn: Filter = {
      name: 'per-conn',
      scope: 'connection',
      wrap: (next, ctx) => {
        made.push(ctx.connection?.id);
        ctx.onClose(() => void (ctx.connection && closed.push(ctx.connection.id)));
        return layer(next);
      },
    };
    const shared: Filter = { name: 'shared', scope: 'shared', wrap: (next) => (sharedWraps++, layer(next)) };
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [perConn, shared] }] });
    expect(made).toEqual([undefined]); // the export-wide instance, made at creation
    await py(srv.uri(), `h = connect(); h.pread(512, 0); out = {}`);
    await py(srv.uri(), `h = connect(); h.pread(512, 0); out = {}`);
    await new Promise((r) => setTimeout(r, 100));
    expect(made.filter((id) => id !== undefined)).toHaveLength(2);
    expect(closed.sort()).toEqual((made.filter((id) => id !== undefined) as number[]).sort());
    expect(sharedWraps).toBe(1);
  });
});
