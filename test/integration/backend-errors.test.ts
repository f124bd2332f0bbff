/**
 * A backend that fails: the client gets the errno, and the server's log says
 * what happened. An unexpected error (a bug, an exception the backend did not
 * mean to raise) is EIO for the client and exactly one error line for the
 * operator, naming the connection, the export and the request. Deliberate
 * errors — NbdRequestError, or a host error whose code has an NBD errno
 * (ENOSPC, EROFS, …) — are expected outcomes: no error line.
 */
import { filter, firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { memoryBackend, NbdRequestError, serveBackend, type Backend, type ExportConfig } from '../../src/index.js';
import { recordingLogger, serverPerTest, type Running } from './harness.js';
import { CMD, RawClient } from './raw-client.js';

const MiB = 1024 * 1024;
const SIZE = 4 * MiB;
const EIO = 5;
const ENOSPC = 28;
const EPERM = 1;

const servers = serverPerTest();

async function connect(srv: Running, name: string): Promise<{ c: RawClient; id: number }> {
  const opened = firstValueFrom(srv.server.connections$.pipe(filter((e) => e.type === 'opened')));
  const c = await RawClient.connect({ path: srv.socket });
  const id = (await opened).connection.id;
  await c.handshake(name);
  return { c, id };
}

/** A backend over memory whose read and write fail with whatever `failure` says (nothing: they work). */
function failing(): { backend: Backend; fail(e: unknown): void } {
  const m = memoryBackend({ size: SIZE });
  let failure: unknown;
  const maybeThrow = () => {
    if (failure !== undefined) throw failure;
  };
  return {
    backend: {
      size: SIZE,
      read: (o, l) => {
        maybeThrow();
        return m.read(o, l);
      },
      write: (o, d, x) => {
        maybeThrow();
        return m.write!(o, d, x);
      },
    },
    fail: (e) => void (failure = e),
  };
}

const errorLines = (srv: Running) => srv.logs.filter((l) => l.startsWith('error:'));

describe('a failing backend: the errno for the client, the log for the operator', () => {
  it("a read that throws new Error('boom'): EIO, and one error line with the connection, the export and the request", async () => {
    const f = failing();
    const srv = await servers.serve({ exports: [{ name: 'scratch', backend: f.backend }] });
    const { c, id } = await connect(srv, 'scratch');
    f.fail(new Error('boom'));
    await c.write(RawClient.request(CMD.READ, 8192, 4096, 77n));
    expect(await c.readSimpleReply()).toEqual({ error: EIO, cookie: 77n });
    // The connection goes on serving.
    f.fail(undefined);
    await c.write(RawClient.request(CMD.READ, 0, 512, 78n));
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 78n });
    await c.read(512);
    const lines = errorLines(srv);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('boom');
    expect(lines[0]).toContain('"scratch"');
    expect(lines[0]).toContain(`connection ${id}`);
    expect(lines[0]).toMatch(/read\(offset=8192, length=4096, cookie=77\)/);
    expect(lines[0]).not.toContain('\n');
    c.destroy();
  });

  it('an asynchronous failure, an unknown error code and a thrown non-Error are each logged once too', async () => {
    const m = memoryBackend({ size: SIZE });
    let mode: 'reject' | 'code' | 'string' = 'reject';
    const b: Backend = {
      size: SIZE,
      read: async (o, l) => {
        await new Promise((r) => setTimeout(r, 1));
        if (mode === 'reject') throw new TypeError('async boom');
        if (mode === 'code') throw Object.assign(new Error('odd failure'), { code: 'ERR_SOMETHING_ODD' });
        throw 'a string, not an Error';
      },
      write: (o, d, x) => m.write!(o, d, x),
    };
    const srv = await servers.serve({ exports: [{ name: 'disk', backend: b }] });
    const { c, id } = await connect(srv, 'disk');
    let cookie = 1n;
    for (const next of ['reject', 'code', 'string'] as const) {
      mode = next;
      await c.write(RawClient.request(CMD.READ, 0, 4096, cookie));
      expect(await c.readSimpleReply()).toEqual({ error: EIO, cookie });
      cookie++;
    }
    const lines = errorLines(srv);
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/TypeError: async boom/);
    expect(lines[1]).toMatch(/odd failure/);
    expect(lines[2]).toMatch(/a string, not an Error/);
    for (const l of lines) {
      expect(l).toContain(`connection ${id}`);
      expect(l).toContain('"disk"');
      expect(l).toMatch(/read\(offset=0, length=4096, cookie=\d\)/);
    }
    c.destroy();
  });

  it('deliberate errors — NbdRequestError, host errors with an errno of their own — give their errno and no error line', async () => {
    const f = failing();
    const srv = await servers.serve({ exports: [{ name: 'disk', backend: f.backend }] });
    const { c } = await connect(srv, 'disk');
    const cases: Array<[unknown, number]> = [
      [new NbdRequestError('ENOSPC'), ENOSPC],
      [Object.assign(new Error('no space left on device'), { code: 'ENOSPC' }), ENOSPC],
      [Object.assign(new Error('read-only file system'), { code: 'EROFS' }), EPERM],
      [Object.assign(new Error('i/o error'), { code: 'EIO' }), EIO],
    ];
    let cookie = 1n;
    for (const [error, errno] of cases) {
      f.fail(error);
      await c.write(Buffer.concat([RawClient.request(CMD.WRITE, 0, 4096, cookie), Buffer.alloc(4096, 1)]));
      expect(await c.readSimpleReply()).toEqual({ error: errno, cookie });
      cookie++;
    }
    expect(errorLines(srv)).toEqual([]);
    // Each is still there for whoever asks for debug output.
    expect(srv.logs.filter((l) => l.startsWith('debug:') && /write\(offset=0, length=4096, cookie=\d\) failed/.test(l))).toHaveLength(cases.length);
    c.destroy();
  });

  it('an NbdRequestError naming no errno of the spec (a typo from JavaScript, 0, 999, an errno set to 0 afterwards) is EIO: a failed WRITE is never acknowledged, a failed READ sends no data', async () => {
    const f = failing();
    const srv = await servers.serve({ exports: [{ name: 'disk', backend: f.backend }] });
    const { c } = await connect(srv, 'disk');
    const bogus = [
      new NbdRequestError('ENOSPACE' as never),
      new NbdRequestError(0 as never),
      new NbdRequestError(999 as never),
      Object.defineProperty(new NbdRequestError('EPERM'), 'errno', { value: 0 }),
    ];
    expect(bogus.slice(0, 3).map((e) => e.errno)).toEqual([EIO, EIO, EIO]);
    let cookie = 1n;
    for (const error of bogus) {
      f.fail(error);
      await c.write(Buffer.concat([RawClient.request(CMD.WRITE, 0, 4096, cookie), Buffer.alloc(4096, 1)]));
      expect(await c.readSimpleReply()).toEqual({ error: EIO, cookie });
      cookie++;
      await c.write(RawClient.request(CMD.READ, 0, 4096, cookie));
      expect(await c.readSimpleReply()).toEqual({ error: EIO, cookie });
      cookie++;
    }
    // No data followed the failed READs: the stream is still in step.
    f.fail(undefined);
    await c.write(RawClient.request(CMD.READ, 0, 512, cookie));
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie });
    expect(await c.read(512)).toEqual(Buffer.alloc(512));
    c.destroy();
  });

  it('a backend read answering with a negative hole: EIO and one error line, nothing of it on the wire, the connection goes on', async () => {
    const m = memoryBackend({ size: SIZE });
    let bad = true;
    const b: Backend = { size: SIZE, read: (o, l) => (bad ? [{ hole: -5 }, { data: Buffer.alloc(l + 5, 1) }] : m.read(o, l)) };
    const srv = await servers.serve({ exports: [{ name: 'holes', backend: b }] });
    const { c } = await connect(srv, 'holes');
    await c.write(RawClient.request(CMD.READ, 4096, 4096, 1n));
    expect(await c.readSimpleReply()).toEqual({ error: EIO, cookie: 1n });
    bad = false;
    await c.write(RawClient.request(CMD.READ, 0, 512, 2n));
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 2n });
    expect(await c.read(512)).toEqual(Buffer.alloc(512));
    expect(errorLines(srv)).toEqual([expect.stringMatching(/invalid segment \(hole -5\)/)]);
    c.destroy();
  });

  it('a zero-copy WRITE whose commit throws: EIO and one error line naming the write', async () => {
    const store = Buffer.alloc(SIZE);
    const b: Backend = {
      size: SIZE,
      read: (o, l) => Buffer.from(store.subarray(o, o + l)),
      write: (o, d) => void d.copy(store, o),
      writeTargets: (_o, l) => ({
        targets: [Buffer.alloc(l)],
        commit: () => {
          throw new Error('commit blew up');
        },
      }),
    };
    const srv = await servers.serve({ exports: [{ name: 'disk', backend: b }] });
    const { c, id } = await connect(srv, 'disk');
    await c.write(Buffer.concat([RawClient.request(CMD.WRITE, MiB, MiB, 9n), Buffer.alloc(MiB, 3)]));
    expect(await c.readSimpleReply()).toEqual({ error: EIO, cookie: 9n });
    const lines = errorLines(srv);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('commit blew up');
    expect(lines[0]).toContain(`connection ${id}`);
    expect(lines[0]).toMatch(/"disk".*write\(offset=1048576, length=1048576, cookie=9\)/);
    c.destroy();
  });

  it("serveBackend on requests$ logs the same way to the logger it is given", async () => {
    const f = failing();
    const logs: string[] = [];
    const config: ExportConfig = { name: 'stream', size: SIZE, flags: { write: true } };
    const srv = await servers.serve({ exports: [config] });
    servers.track(srv.server.requests$.pipe(serveBackend(f.backend, { logger: recordingLogger(logs) })).subscribe());
    const { c, id } = await connect(srv, 'stream');
    f.fail(new Error('boom'));
    await c.write(RawClient.request(CMD.READ, 0, 512, 5n));
    expect(await c.readSimpleReply()).toEqual({ error: EIO, cookie: 5n });
    f.fail(new NbdRequestError('ENOSPC'));
    await c.write(RawClient.request(CMD.READ, 0, 512, 6n));
    expect(await c.readSimpleReply()).toEqual({ error: ENOSPC, cookie: 6n });
    const lines = logs.filter((l) => l.startsWith('error:'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('boom');
    expect(lines[0]).toContain(`connection ${id}`);
    expect(lines[0]).toContain('"stream"');
    expect(lines[0]).toMatch(/read\(offset=0, length=512, cookie=5\)/);
    c.destroy();
  });
});
