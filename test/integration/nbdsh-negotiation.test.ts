/**
 * python3-libnbd option mode against our server: a failed GO leaves the
 * connection negotiating, LIST, ABORT, INFO followed by GO with identical
 * answers, meta context listing, full info (description, canonical name).
 */
import { describe, expect, test } from 'vitest';
import { mergeMap } from 'rxjs';
import { memoryBackend, type Backend, type ConnectionEvent, type ServerOptions } from '../../src/index.js';
import { serverPerTest } from './harness.js';
import { py } from './pylibnbd.js';

const MiB = 1024 * 1024;

const { serve, track } = serverPerTest();

const readOnly: Backend = { read: (_o, l) => Buffer.alloc(l) };
const readWriteFlush = (): Backend => {
  const mem = memoryBackend({ size: MiB });
  return { read: (o, l) => mem.read(o, l), write: (o, d) => mem.write!(o, d, { fua: false }), flush: () => {} };
};

function exportsForInfo(): ServerOptions['exports'] {
  return [
    { name: 'disk', description: 'scratch disk', backend: memoryBackend({ size: 2 * MiB }) },
    { name: 'ro', description: 'read only', backend: readOnly, size: 12345 * 512, blockSizes: { minimum: 512, preferred: 8192, maximum: MiB } },
    { name: 'rwf', backend: readWriteFlush(), size: MiB },
    { name: 'mem-ro', backend: memoryBackend({ size: MiB }), readOnly: true, cache: false },
    { name: 'stream', size: 3 * MiB, flags: { rotational: true, multiConn: true, flush: true, trim: true } },
  ];
}

describe('opt mode', () => {
  test('GO to an unknown export fails, the same connection then GOes to a valid one and does I/O', async () => {
    const r = await serve({ exports: exportsForInfo() });
    const out = await py<Record<string, unknown>>(
      r.uri('disk'),
      `
      h = nbd.NBD()
      h.set_opt_mode(True)
      h.connect_uri(URI)
      out['negotiating'] = h.aio_is_negotiating()
      h.set_export_name('nope')
      out['go_nope'] = err(h.opt_go)
      out['still_negotiating'] = h.aio_is_negotiating()
      out['info_nope'] = err(h.opt_info)
      h.set_export_name('disk')
      out['go_disk'] = err(h.opt_go)
      out['negotiating_after'] = h.aio_is_negotiating()
      out['size'] = h.get_size()
      h.pwrite(b'hello', 1000)
      out['read'] = h.pread(5, 1000).decode()
      h.shutdown()
      `,
    );
    expect(out).toEqual({
      negotiating: true,
      // NBD_REP_ERR_UNKNOWN: libnbd reports ENOENT.
      go_nope: 'ENOENT',
      still_negotiating: true,
      info_nope: 'ENOENT',
      go_disk: null,
      negotiating_after: false,
      size: 2 * MiB,
      read: 'hello',
    });
  });

  test('opt_list lists every export with its description; the empty name is the default export', async () => {
    const r = await serve({ exports: exportsForInfo(), defaultExport: 'rwf' });
    const out = await py<{ count: number; listed: [string, string][]; default_size: number; canonical: string }>(
      r.uri('disk'),
      `
      h = nbd.NBD()
      h.set_opt_mode(True)
      h.set_full_info(True)
      h.connect_uri(URI)
      listed = []
      def cb(name, description):
          listed.append([name, description])
          return 0
      out['count'] = h.opt_list(cb)
      out['listed'] = listed
      h.set_export_name('')
      h.opt_info()
      out['default_size'] = h.get_size()
      out['canonical'] = h.get_canonical_export_name()
      h.opt_abort()
      `,
    );
    expect(out.count).toBe(5);
    expect(out.listed).toEqual([
      ['disk', 'scratch disk'],
      ['ro', 'read only'],
      ['rwf', ''],
      ['mem-ro', ''],
      ['stream', ''],
    ]);
    expect(out.default_size).toBe(MiB);
    expect(out.canonical).toBe('rwf');
  });

  test('opt_abort ends the connection cleanly; the server records it and stays up', async () => {
    const r = await serve({ exports: exportsForInfo() });
    const events: ConnectionEvent[] = [];
    track(r.server.connections$.subscribe((e) => events.push(e)));
    const out = await py<Record<string, unknown>>(
      r.uri('disk'),
      `
      h = nbd.NBD()
      h.set_opt_mode(True)
      h.connect_uri(URI)
      h.opt_abort()
      out['closed'] = h.aio_is_closed()
      out['after'] = err(h.opt_go)
      h2 = connect()
      out['second'] = h2.get_size()
      h2.shutdown()
      `,
    );
    expect(out.closed).toBe(true);
    // The handle is closed: libnbd refuses further options client-side.
    expect(out.after).not.toBeNull();
    expect(out.second).toBe(2 * MiB);
    for (let i = 0; i < 50 && events.filter((e) => e.type === 'closed').length < 2; i++) await new Promise((res) => setTimeout(res, 20));
    const closed = events.filter((e): e is Extract<ConnectionEvent, { type: 'closed' }> => e.type === 'closed');
    expect(closed).toHaveLength(2);
    expect(closed[0]!.outcome).toMatch(/abort/i);
    // Each closed event says why with its catalogue code: ABORT, then the second connection's DISC.
    expect(closed.map((e) => e.code)).toEqual(['option.abort-ack', 'transmission.disc-drains']);
    expect(events.filter((e) => e.type === 'negotiated')).toHaveLength(1);
    expect(r.logs.filter((l) => l.startsWith('error:'))).toEqual([]);
  });

  test('opt_info then opt_go report the same size, flags and block sizes for every export', async () => {
    const r = await serve({ exports: exportsForInfo() });
    track(r.server.requests$.pipe(mergeMap(async (req) => req.reply(req.type === 'read' ? Buffer.alloc(req.length) : undefined))).subscribe());
    const names = ['disk', 'ro', 'rwf', 'mem-ro', 'stream'];
    const out = await py<Record<string, { info: Record<string, unknown>; go: Record<string, unknown>; description: string; canonical: string }>>(
      r.uri('disk'),
      `
      for name in ${JSON.stringify(names)}:
          h = nbd.NBD()
          h.set_opt_mode(True)
          h.set_full_info(True)
          h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
          h.connect_uri(URI)
          h.set_export_name(name)
          h.opt_info()
          info = flags(h)
          description = h.get_export_description() if name in ('disk', 'ro') else ''
          canonical = h.get_canonical_export_name()
          h.opt_go()
          out[name] = {'info': info, 'go': flags(h), 'description': description, 'canonical': canonical}
          h.shutdown()
      `,
    );
    for (const name of names) {
      expect(out[name]!.go, name).toEqual(out[name]!.info);
      expect(out[name]!.canonical).toBe(name);
    }
    expect(out.disk!.description).toBe('scratch disk');
    expect(out.ro!.description).toBe('read only');
    const f = (over: Record<string, unknown>) => ({
      read_only: false,
      flush: false,
      fua: false,
      trim: false,
      zero: false,
      fast_zero: false,
      cache: true,
      multi_conn: false,
      rotational: false,
      df: true,
      block_size: [1, 4096, 32 * MiB],
      ...over,
    });
    expect(out.disk!.go).toEqual(f({ size: 2 * MiB, flush: true, fua: true, trim: true, zero: true, fast_zero: true, multi_conn: true }));
    expect(out.ro!.go).toEqual(f({ size: 12345 * 512, read_only: true, block_size: [512, 8192, MiB] }));
    expect(out.rwf!.go).toEqual(f({ size: MiB, flush: true, fua: true, zero: true, fast_zero: true }));
    expect(out['mem-ro']!.go).toEqual(f({ size: MiB, read_only: true, flush: true, cache: false, multi_conn: true }));
    expect(out.stream!.go).toEqual(f({ size: 3 * MiB, flush: true, trim: true, multi_conn: true, rotational: true }));
  });

  test('opt_list_meta_context offers base:allocation; structured replies can be refused in opt mode too', async () => {
    const r = await serve({ exports: exportsForInfo() });
    const out = await py<Record<string, unknown>>(
      r.uri('disk'),
      `
      h = nbd.NBD()
      h.set_opt_mode(True)
      h.connect_uri(URI)
      contexts = []
      def cb(name):
          contexts.append(name)
          return 0
      out['count'] = h.opt_list_meta_context(cb)
      out['contexts'] = contexts
      h.opt_go()
      out['sr'] = h.get_structured_replies_negotiated()
      h.shutdown()

      h = nbd.NBD()
      h.set_opt_mode(True)
      h.set_request_structured_replies(False)
      h.connect_uri(URI)
      out['sr_refused'] = h.get_structured_replies_negotiated()
      h.opt_go()
      h.pwrite(b'simple', 0)
      out['simple_read'] = h.pread(6, 0).decode()
      h.shutdown()
      `,
    );
    expect(out).toEqual({ count: 1, contexts: ['base:allocation'], sr: true, sr_refused: false, simple_read: 'simple' });
  });
});
