/**
 * server.close(): stop accepting, let in-flight requests finish (their
 * replies arrive), answer new ones with ESHUTDOWN, close the connection,
 * then flush and close the backends (transmission.shutdown-drains).
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import type { Backend } from '../../src/index.js';
import { requirePythonNbd, startServer } from './harness.js';

const SCRIPT = String.raw`
import sys, errno, json, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
n = 8
cookies = [h.aio_pwrite(bytes([i + 1]) * 65536, i * 65536) for i in range(n)]
print('sent', flush=True)
done = 0
while h.aio_in_flight() > 0:
    h.poll(-1)
ok = []
for c in cookies:
    try:
        ok.append('ok' if h.aio_command_completed(c) else 'pending')
    except nbd.Error as e:
        ok.append(errno.errorcode.get(e.errno, str(e.errno)) if e.errno else str(e))
late = None
try:
    h.pread(512, 0)
    late = 'ok'
except nbd.Error as e:
    late = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else 'disconnected'
print(json.dumps({'completed': ok, 'late': late}), flush=True)
`;

describe('graceful shutdown', () => {
  it('in-flight writes finish, later ones get ESHUTDOWN, backends are flushed and closed, new clients refused', async () => {
    const py = requirePythonNbd();
    const events: string[] = [];
    let running = 0;
    const bytes = Buffer.alloc(4 << 20);
    const backend: Backend = {
      size: bytes.length,
      read: (o, l) => bytes.subarray(o, o + l),
      write: async (o, data) => {
        running++;
        await new Promise((r) => setTimeout(r, 150));
        data.copy(bytes, o);
        running--;
        events.push('write');
      },
      flush: () => void events.push('flush'),
      close: () => void events.push('close'),
    };
    const srv = await startServer({ exports: [{ name: 'd', backend }] });
    const child = spawn(py, ['-c', SCRIPT, srv.uri()], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<number>((r) => child.on('close', (c) => r(c ?? -1)));
    // Wait until writes are in the backend, then close the server under them.
    for (let i = 0; i < 200 && running === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(running).toBeGreaterThan(0);
    const closing = srv.server.close({ timeout: 5000 });
    // No new connections once closing.
    await new Promise<void>((resolve) => {
      const c = net.connect(srv.socket);
      c.on('error', () => resolve());
      c.on('close', () => resolve());
    });
    await closing;
    expect(await exited).toBe(0);
    const result = JSON.parse(out.trim().split('\n').pop()!) as { completed: string[]; late: string };
    // Writes already with the backend finished and were answered; those that
    // arrived after close() began got ESHUTDOWN (transmission.shutdown-drains). Nothing else.
    const succeeded = result.completed.flatMap((r, i) => (r === 'ok' ? [i] : []));
    expect(succeeded.length).toBeGreaterThan(0);
    for (const r of result.completed) expect(['ok', 'ESHUTDOWN']).toContain(r);
    expect(['ESHUTDOWN', 'disconnected', 'ENOTCONN', 'EINVAL']).toContain(result.late);
    // Every write landed before the backend was flushed and closed.
    expect(events.filter((e) => e === 'write')).toHaveLength(succeeded.length);
    expect(events.slice(-2)).toEqual(['flush', 'close']);
    for (const i of succeeded) expect(bytes[i * 65536]).toBe(i + 1);
    expect(err).toBe('');
  });
});

describe('shutdown with a failing flush', () => {
  it('the backend is still closed, and the failure is one error line naming the flush', async () => {
    const events: string[] = [];
    const backend: Backend = {
      size: 4096,
      read: (_o, l) => Buffer.alloc(l),
      write: () => undefined,
      flush: () => {
        events.push('flush');
        throw new Error('disk gone');
      },
      close: () => void events.push('close'),
    };
    const srv = await startServer({ exports: [{ name: 'd', backend }] });
    await srv.close();
    expect(events).toEqual(['flush', 'close']);
    expect(srv.logs.filter((l) => l.startsWith('error:'))).toEqual(['error: closing export "d": flush: Error: disk gone']);
  });
});

describe('shutdown with a backend that never settles', () => {
  it('a flush that never settles, or a close that never does: close({ timeout }) still resolves, one error line for each export given up', async () => {
    const never = () => new Promise<void>(() => {});
    const stuckFlush: Backend = { size: 4096, read: (_o, l) => Buffer.alloc(l), write: () => undefined, flush: never };
    const stuckClose: Backend = { size: 4096, read: (_o, l) => Buffer.alloc(l), close: never };
    const srv = await startServer({ exports: [{ name: 'f', backend: stuckFlush }, { name: 'c', backend: stuckClose }] });
    const t0 = Date.now();
    await srv.server.close({ timeout: 300 });
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(srv.logs.filter((l) => l.startsWith('error:'))).toEqual([
      'error: closing export "f" (flush, close) did not finish within 300 ms of closing; given up',
      'error: closing export "c" (flush, close) did not finish within 300 ms of closing; given up',
    ]);
  });
});

describe('shutdown timeout with a request that never finishes', () => {
  it('the connections still busy at the timeout are dropped with one warning line (their own close lines are info)', async () => {
    const stuckRead: Backend = { size: 4096, read: () => new Promise<Buffer>(() => {}) };
    const srv = await startServer({ exports: [{ name: '', backend: stuckRead }] });
    const c = net.connect(srv.socket);
    c.on('error', () => {});
    c.on('data', () => {});
    await new Promise((r) => c.once('connect', r));
    // Client flags, EXPORT_NAME "" and one READ whose answer never comes.
    const read = Buffer.alloc(28);
    read.writeUInt32BE(0x25609513, 0);
    read.writeUInt16BE(0, 6);
    read.writeUInt32BE(512, 24);
    c.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), Buffer.from('IHAVEOPT'), Buffer.from([0, 0, 0, 1, 0, 0, 0, 0]), read]));
    await expect.poll(() => srv.server.connectionCount, { timeout: 2000 }).toBe(1);
    await new Promise((r) => setTimeout(r, 200));
    await srv.server.close({ timeout: 300 });
    expect(srv.logs.filter((l) => l.startsWith('warn:'))).toEqual(['warn: closing: 1 connection(s) still busy after 300 ms; dropping them']);
    c.destroy();
  });
});
