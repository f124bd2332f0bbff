/**
 * TCP listeners on a host name: one per address the name resolves to (as nbdkit), so `localhost`
 * listed as both ::1 and 127.0.0.1 in /etc/hosts is served on both. The resolver is replaced (no
 * test can edit /etc/hosts); the sockets and the server are real.
 */
import dns from 'node:dns';
import net from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createServer, memoryBackend } from '../../../src/index.js';
import { listenHost } from '../../../src/transport/listen.js';

/** The first 8 bytes a server sends on `host`:`port` ("NBDMAGIC"), or the connection's error code. */
function greeting(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    s.once('data', (d) => {
      s.destroy();
      resolve(d.subarray(0, 8).toString('latin1'));
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

afterEach(() => vi.restoreAllMocks());

describe('listening on a host name', () => {
  it('a name that resolves to ::1 and 127.0.0.1: the server answers on both', async () => {
    const real = dns.lookup;
    // Node's own lookup for every other name; "dual.test" is ::1 then 127.0.0.1, as an /etc/hosts listing both.
    vi.spyOn(dns, 'lookup').mockImplementation(((host: string, options: unknown, callback?: unknown) => {
      const cb = (typeof options === 'function' ? options : callback) as (...a: unknown[]) => void;
      if (host !== 'dual.test') return (real as (...a: unknown[]) => void)(host, options, callback);
      const all = [{ address: '::1', family: 6 }, { address: '127.0.0.1', family: 4 }];
      if (typeof options === 'object' && options && (options as { all?: boolean }).all) process.nextTick(cb, null, all);
      else process.nextTick(cb, null, all[0]!.address, all[0]!.family);
    }) as unknown as typeof dns.lookup);
    const server = createServer({ exports: [{ name: '', backend: memoryBackend({ size: 1 << 20 }) }], logger: { warn: () => {}, error: () => {} } });
    try {
      const results = await server.listen({ port: 47602, host: 'dual.test' });
      expect(await greeting('127.0.0.1', 47602)).toBe('NBDMAGIC');
      expect(await greeting('::1', 47602)).toBe('NBDMAGIC');
      expect(results.flatMap((r) => r.uris)).toEqual(['nbd://[::1]:47602/', 'nbd://127.0.0.1:47602/']);
    } finally {
      await server.close({ timeout: 0 });
    }
  });

  it('port 0: the port the first address got, for the others too', async () => {
    const ls = await listenHost({ port: 0, host: 'dual.test' }, (s) => s.destroy(), { lookup: async () => ['127.0.0.1', '::1', '127.0.0.1'] });
    try {
      expect(ls.map((l) => l.address.host)).toEqual(['127.0.0.1', '::1']);
      expect(ls[1]!.address.port).toBe(ls[0]!.address.port);
    } finally {
      for (const l of ls) l.server.close();
    }
  });

  it('an address that cannot be bound while another can: one warning, served on the other', async () => {
    const warnings: string[] = [];
    // 203.0.113.7 (TEST-NET-3) is no address of this host: EADDRNOTAVAIL, as ::1 with IPv6 disabled.
    const ls = await listenHost({ port: 47603, host: 'partial.test' }, (s) => s.destroy(), { lookup: async () => ['203.0.113.7', '127.0.0.1'], warn: (m) => warnings.push(m) });
    try {
      expect(ls.map((l) => l.address.host)).toEqual(['127.0.0.1']);
      expect(warnings).toEqual([expect.stringMatching(/^cannot listen on 203\.0\.113\.7:47603 \(.*EADDRNOTAVAIL.*\); listening on the other addresses of partial\.test$/)]);
    } finally {
      for (const l of ls) l.server.close();
    }
  });

  it('no address can be bound: the first error', async () => {
    await expect(listenHost({ port: 47604, host: 'none.test' }, (s) => s.destroy(), { lookup: async () => ['203.0.113.7', '198.51.100.7'] })).rejects.toMatchObject({ code: 'EADDRNOTAVAIL' });
  });
});
