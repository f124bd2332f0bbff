/**
 * Exports made per connection (src/api/dynamic-exports.ts, the handshake
 * machine's `resolving` state) with real clients: nbdinfo --list shows each
 * connection its own list; libnbd in option mode sees INFO then GO open an
 * export once, another name close the earlier one, a null open answered
 * NBD_REP_ERR_UNKNOWN and a throwing one answered with an error, one log
 * line, and the connection still usable; what was opened is closed when the
 * connection ends, even when the client left while the open was pending.
 */
import { describe, expect, it } from 'vitest';
import { firstValueFrom, filter } from 'rxjs';
import { layer, memoryBackend, type Backend, type ConnectionRef, type ExportConfig, type Filter } from '../../../src/index.js';
import { py } from '../pylibnbd.js';
import { run, serverPerTest } from '../harness.js';
import { RawClient } from '../raw-client.js';
import { OPT, REP, encodeInfoGoData, encodeOption } from '../../helpers/wire.js';

const MiB = 1 << 20;
const { serve } = serverPerTest();

/** Opens and closes, by export name, of backends an openExport hook made; `closes(n)` resolves once n were closed. */
function counting() {
  const opened: string[] = [];
  const closed: string[] = [];
  const waiters: Array<() => void> = [];
  const open = (name: string, size = MiB): Backend => {
    opened.push(name);
    return layer(memoryBackend({ size }), {
      close: () => {
        closed.push(name);
        for (const w of waiters.splice(0)) w();
      },
    });
  };
  const closes = async (n: number): Promise<void> => {
    while (closed.length < n) await new Promise<void>((r) => waiters.push(r));
  };
  return { opened, closed, open, closes };
}

describe('exports per connection', () => {
  it('nbdinfo --list: the static exports, then each connection its own list', async () => {
    const seen: ConnectionRef[] = [];
    const srv = await serve({
      exports: [{ name: 'static', description: 'always here', backend: memoryBackend({ size: MiB }) }],
      listExports: (conn) => (seen.push(conn), [{ name: `for-${conn.id}`, description: `made for connection ${conn.id}` }, { name: 'static' }]),
      openExport: (name) => (name.startsWith('for-') ? { name, description: 'opened', backend: memoryBackend({ size: 2 * MiB }) } : null),
    });
    const first = JSON.parse((await run('nbdinfo', ['--list', '--json', srv.uri('static')])).stdout) as { exports: Array<{ 'export-name': string; description?: string }> };
    const second = JSON.parse((await run('nbdinfo', ['--list', '--json', srv.uri('static')])).stdout) as typeof first;
    expect(seen).toHaveLength(2);
    expect(seen[0]!.id).not.toBe(seen[1]!.id);
    // nbdinfo --list then opens each listed name: the connection's own entry is served by openExport.
    const names = (r: typeof first) => r.exports.map((e) => e['export-name']);
    expect(names(first)).toEqual(['static', `for-${seen[0]!.id}`]);
    expect(names(second)).toEqual(['static', `for-${seen[1]!.id}`]);
    expect(first.exports.map((e) => e.description)).toEqual(['always here', `made for connection ${seen[0]!.id}`]);
    const listed = await py<{ a: string[]; b: string[] }>(srv.uri('static'), `
      def names():
          h = nbd.NBD()
          h.set_opt_mode(True)
          h.connect_uri(URI)
          got = []
          h.opt_list(lambda name, desc: got.append([name, desc]) or 0)
          h.opt_abort()
          return got
      out = {'a': names(), 'b': names()}
    `);
    const [a, b] = [listed.a, listed.b];
    // The static export once (the listed duplicate is dropped), then the connection's own entry.
    expect(a.map((e) => e[0])).toEqual(['static', `for-${seen[2]!.id}`]);
    expect(b.map((e) => e[0])).toEqual(['static', `for-${seen[3]!.id}`]);
    expect(a[1]![1]).toBe(`made for connection ${seen[2]!.id}`);
  });

  it('INFO then GO open an export once; another name closes the earlier; all closed when the connection ends', async () => {
    const c = counting();
    const srv = await serve({
      exports: [],
      openExport: (name) => (name.startsWith('dyn') ? { name, backend: c.open(name, name === 'dyn2' ? 2 * MiB : MiB) } : null),
    });
    const out = await py<{ size1: number; size2: number; data: string; opened: number }>(srv.uri('dyn1'), `
      h = nbd.NBD()
      h.set_opt_mode(True)
      h.connect_uri(URI)
      h.set_export_name('dyn1')
      h.opt_info()
      size1 = h.get_size()
      h.set_export_name('dyn2')
      h.opt_info()
      size2 = h.get_size()
      h.opt_info()
      h.opt_go()
      h.pwrite(b'dynamic!', 0)
      out = {'size1': size1, 'size2': size2, 'data': h.pread(8, 0).decode()}
      h.shutdown()
    `);
    expect(out).toMatchObject({ size1: MiB, size2: 2 * MiB, data: 'dynamic!' });
    await c.closes(2);
    // dyn1 once (closed when dyn2 opened), dyn2 once for two INFOs and the GO, closed at the end.
    expect(c.opened).toEqual(['dyn1', 'dyn2']);
    expect(c.closed).toEqual(['dyn1', 'dyn2']);
  });

  it('negotiating a static export closes the export opened before it', async () => {
    const c = counting();
    const openAtClose: number[] = [];
    let srv!: Awaited<ReturnType<typeof serve>>;
    srv = await serve({
      exports: [{ name: 'static', backend: memoryBackend({ size: 2 * MiB }) }],
      openExport: (name) => {
        const inner = c.open(name);
        return { name, backend: layer(inner, { close: () => (openAtClose.push(srv.server.connectionCount), inner.close!()) }) };
      },
    });
    let negotiated!: () => void;
    const negotiatedP = new Promise<void>((r) => (negotiated = r));
    srv.server.connections$.subscribe((e) => e.type === 'negotiated' && negotiated());
    const out = await py<{ probe: number; size: number; read: number }>(srv.uri('static'), `
      h = nbd.NBD()
      h.set_opt_mode(True)
      h.connect_uri(URI)
      h.set_export_name('probe')
      h.opt_info()
      probe = h.get_size()
      h.set_export_name('static')
      h.opt_go()
      out = {'probe': probe, 'size': h.get_size(), 'read': len(h.pread(512, 0))}
      h.shutdown()
    `);
    expect(out).toEqual({ probe: MiB, size: 2 * MiB, read: 512 });
    await negotiatedP;
    await c.closes(1);
    expect(c.opened).toEqual(['probe']);
    expect(c.closed).toEqual(['probe']);
    // Closed while its connection was still open (at GO), not when it ended.
    expect(openAtClose).toEqual([1]);
  });

  it('nbdinfo and qemu-img on a dynamic export; each connection opens its own', async () => {
    const c = counting();
    const srv = await serve({ exports: [], openExport: (name, conn) => ({ name, description: `${name} for ${conn.id}`, backend: c.open(name, 4 * MiB) }) });
    const info = JSON.parse((await run('nbdinfo', ['--json', srv.uri('vm-disk')])).stdout) as { exports: Array<{ 'export-size': number; description: string }> };
    expect(info.exports[0]!['export-size']).toBe(4 * MiB);
    expect(info.exports[0]!.description).toMatch(/^vm-disk for \d+$/);
    const qemu = JSON.parse((await run('qemu-img', ['info', '--output=json', '--image-opts', `driver=nbd,server.type=unix,server.path=${srv.socket},export=vm-disk`])).stdout) as { 'virtual-size': number };
    expect(qemu['virtual-size']).toBe(4 * MiB);
    await c.closes(2);
    expect(c.opened.length).toBe(2);
    expect(c.closed).toEqual(c.opened);
  });

  it('open returning null: NBD_REP_ERR_UNKNOWN; open throwing: an error reply, one log line, the connection goes on', async () => {
    const c = counting();
    const srv = await serve({
      exports: [],
      openExport: (name) => {
        if (name === 'broken') throw new Error('disk array offline');
        return name === 'good' ? { name, backend: c.open(name) } : null;
      },
    });
    const out = await py<{ missing: string; broken: string; size: number; read: number }>(srv.uri('good'), `
      h = nbd.NBD()
      h.set_opt_mode(True)
      h.connect_uri(URI)
      h.set_export_name('missing')
      missing = err(h.opt_info)
      h.set_export_name('broken')
      broken = err(h.opt_info)
      h.set_export_name('good')
      h.opt_go()
      out = {'missing': missing, 'broken': broken, 'size': h.get_size(), 'read': len(h.pread(512, 0))}
    `);
    // libnbd reports NBD_REP_ERR_UNKNOWN as ENOENT.
    expect(out).toEqual({ missing: 'ENOENT', broken: 'ENOENT', size: MiB, read: 512 });
    const lines = srv.logs.filter((l) => l.includes('disk array offline'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^warn: connection \d+: opening export "broken" failed: disk array offline$/);
  });

  it('open returning a backend without read(): refused like a static export would be (NBD_REP_ERR_UNKNOWN, one log line), not served with every READ failing', async () => {
    const closed: string[] = [];
    const srv = await serve({
      exports: [],
      openExport: (name) => ({ name, backend: { size: 4096, close: () => void closed.push(name) } as never }),
    });
    const out = await py<{ noread: string }>(srv.uri('noread'), `
      h = nbd.NBD()
      h.set_opt_mode(True)
      h.connect_uri(URI)
      h.set_export_name('noread')
      out = {'noread': err(h.opt_go)}
    `);
    expect(out).toEqual({ noread: 'ENOENT' });
    expect(srv.logs.filter((l) => /opening export "noread" failed: .*backend must be an object with read\(offset, length\)/.test(l))).toHaveLength(1);
    expect(closed).toEqual(['noread']);
  });

  it('a throwing open is asked again next time (a failure is not remembered); its message reaches only the log', async () => {
    let calls = 0;
    const srv = await serve({
      exports: [],
      openExport: (name) => {
        calls++;
        if (calls === 1) throw new Error('transient');
        return { name, backend: memoryBackend({ size: MiB }) };
      },
    });
    const client = await RawClient.connect({ path: srv.socket });
    await client.greet();
    const first = await client.option(OPT.INFO, encodeInfoGoData('flaky'));
    expect(first.map((r) => r.type)).toEqual([REP.ERR_UNKNOWN]);
    expect(first[0]!.data.toString()).toBe(`export "flaky" could not be opened (see the server's log)`);
    const second = await client.option(OPT.INFO, encodeInfoGoData('flaky'));
    expect(second.at(-1)!.type).toBe(REP.ACK);
    expect(calls).toBe(2);
    client.socket.destroy();
  });

  it('options sent while an open is pending wait, and are answered in order', async () => {
    let release!: (cfg: ExportConfig) => void;
    const srv = await serve({
      exports: [{ name: 'static', backend: memoryBackend({ size: MiB }) }],
      openExport: (name) => new Promise<ExportConfig>((r) => (release = r)).then((cfg) => ({ ...cfg, name })),
    });
    const client = await RawClient.connect({ path: srv.socket });
    await client.greet();
    // INFO for a dynamic name, LIST and INFO for a static one in one write: the LIST must wait for the INFO.
    client.send(Buffer.concat([encodeOption(OPT.INFO, encodeInfoGoData('slow')), encodeOption(OPT.LIST), encodeOption(OPT.INFO, encodeInfoGoData('static'))]));
    while (!release) await new Promise((r) => setImmediate(r));
    expect(client.pending).toBe(0);
    release({ name: 'slow', backend: memoryBackend({ size: 3 * MiB }) });
    const info = await client.optionReplies();
    expect(info[0]!.option).toBe(OPT.INFO);
    expect(info[0]!.data.readBigUInt64BE(2)).toBe(BigInt(3 * MiB));
    expect(info.at(-1)!.type).toBe(REP.ACK);
    const list = await client.optionReplies();
    expect(list.map((r) => r.option)).toEqual(list.map(() => OPT.LIST));
    const staticInfo = await client.optionReplies();
    expect(staticInfo[0]!.data.readBigUInt64BE(2)).toBe(BigInt(MiB));
    client.socket.destroy();
  });

  it('the client leaving while open is pending: the backend is closed when the open completes', async () => {
    let release!: (cfg: ExportConfig) => void;
    const closed: string[] = [];
    const srv = await serve({ exports: [], openExport: () => new Promise<ExportConfig>((r) => (release = r)) });
    const ended = firstValueFrom(srv.server.connections$.pipe(filter((e) => e.type === 'closed')));
    const client = await RawClient.connect({ path: srv.socket });
    await client.greet();
    client.send(encodeOption(OPT.GO, encodeInfoGoData('orphan')));
    while (!release) await new Promise((r) => setImmediate(r));
    client.socket.destroy();
    expect((await ended).type).toBe('closed');
    let closedNow!: () => void;
    const closedP = new Promise<void>((r) => (closedNow = r));
    release({ name: 'orphan', backend: layer(memoryBackend({ size: MiB }), { close: () => (closed.push('orphan'), closedNow()) }) });
    await closedP;
    expect(closed).toEqual(['orphan']);
    expect(srv.server.connectionCount).toBe(0);
  });

  it('filters apply to dynamic exports: the chain is built on open, its clean-up runs at the end', async () => {
    const wraps: string[] = [];
    const cleaned: string[] = [];
    let allCleaned!: () => void;
    const cleanedP = new Promise<void>((r) => (allCleaned = r));
    const noTrim: Filter = {
      name: 'no-trim',
      scope: 'connection',
      wrap: (next, ctx) => {
        wraps.push(`${ctx.export}:${ctx.connection ? 'conn' : 'export'}`);
        ctx.onClose(() => {
          if (cleaned.push(ctx.export) === 2) allCleaned();
        });
        return layer(next, { trim: undefined });
      },
    };
    const srv = await serve({ exports: [], openExport: (name) => ({ name, backend: memoryBackend({ size: MiB }), filters: [noTrim] }) });
    const out = await py<{ trim: boolean; zero: boolean }>(srv.uri('filtered'), `h = connect(); f = flags(h); out = {'trim': f['trim'], 'zero': f['zero']}; h.shutdown()`);
    expect(out).toEqual({ trim: false, zero: true });
    expect(wraps).toEqual(['filtered:export', 'filtered:conn']);
    await cleanedP;
    expect(cleaned).toEqual(['filtered', 'filtered']);
  });

  it('defaultExport as a function: the empty name means a per-connection export (static or opened)', async () => {
    const c = counting();
    let n = 0;
    const srv = await serve({
      exports: [{ name: 'static', backend: memoryBackend({ size: 2 * MiB }) }],
      defaultExport: () => (++n % 2 === 1 ? 'static' : 'home'),
      openExport: (name) => ({ name, backend: c.open(name, 3 * MiB) }),
    });
    const uri = srv.uri('');
    const body = `
      h = nbd.NBD()
      h.set_full_info(True)
      h.connect_uri(URI)
      out = {'size': h.get_size(), 'name': h.get_canonical_export_name()}
    `;
    expect(await py(uri, body)).toEqual({ size: 2 * MiB, name: 'static' });
    expect(await py(uri, body)).toEqual({ size: 3 * MiB, name: 'home' });
    expect(c.opened).toEqual(['home']);
  });
});
