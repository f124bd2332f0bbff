/**
 * Bad input at the transport layer, from raw sockets, while good clients
 * (qemu-io, nbdinfo) keep working: one bad connection never takes the
 * server down, never corrupts another connection, never leaves an
 * unhandled rejection or exception behind.
 */
import crypto from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { memoryBackend } from '../../src/index.js';
import { requireTool, run, startServer, type Running } from './harness.js';
import { CMD, RawClient } from './raw-client.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

let unhandledRejections = 0;
let uncaughtExceptions = 0;
const onRejection = (r: unknown) => {
  unhandledRejections++;
  console.error('unhandledRejection', r);
};
const onException = (e: unknown) => {
  uncaughtExceptions++;
  console.error('uncaughtException', e);
};

let srv: Running;
/** Bad clients come over TCP, good ones over the UNIX socket: TCP connection ids, in order. */
const opened: number[] = [];
let tcp: { port: number; host: string };

beforeAll(async () => {
  requireTool('qemu-io');
  requireTool('nbdinfo');
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);
  srv = await startServer({ exports: [{ name: 'disk', size: SIZE, backend: memoryBackend({ size: SIZE }) }] });
  const [l] = await srv.server.listen({ port: 0, host: '127.0.0.1' });
  tcp = { port: l!.address.port!, host: '127.0.0.1' };
  srv.server.connections$.subscribe((e) => {
    if (e.type === 'opened' && e.connection.peer.includes('127.0.0.1')) opened.push(e.connection.id);
  });
});
afterEach(() => {
  expect(unhandledRejections).toBe(0);
  expect(uncaughtExceptions).toBe(0);
});
afterAll(async () => {
  await srv?.close();
  process.off('unhandledRejection', onRejection);
  process.off('uncaughtException', onException);
});

/** Connect and wait for the greeting; returns the client and its server-side connection id. */
async function badClient(): Promise<{ c: RawClient; id: number }> {
  const c = await RawClient.connect(tcp);
  await c.readGreeting();
  return { c, id: opened.at(-1)! };
}

/** Log lines about one connection, at warn / error level. */
function problems(id: number): string[] {
  return srv.logs.filter((l) => /^(warn|error): /.test(l) && about(l, id));
}

/** Whether a log line is about connection `id` ("connection 7: …" or "connection 7 (127.0.0.1): …"). */
function about(line: string, id: number): boolean {
  return line.includes(`connection ${id}:`) || line.includes(`connection ${id} (`);
}

function closedLogged(id: number): boolean {
  return srv.logs.some((l) => about(l, id) && /\): closed|: closed/.test(l));
}

const settle = (ms = 100) => new Promise((r) => setTimeout(r, ms));

async function waitFor(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting for condition');
    await settle(10);
  }
}

/** A good client: qemu-io writes patterns at `base` and verifies them. */
async function goodWorkload(base: number, seed: number): Promise<void> {
  const cmds: string[] = [];
  for (let i = 0; i < 16; i++) cmds.push('-c', `write -P ${(seed + i) & 0xff} ${base + i * 65536} 64k`);
  for (let i = 0; i < 16; i++) cmds.push('-c', `read -P ${(seed + i) & 0xff} ${base + i * 65536} 64k`);
  const { stdout, stderr } = await run('qemu-io', ['-f', 'raw', ...cmds, srv.uri()]);
  expect(stdout + stderr).not.toMatch(/Pattern verification failed|error/i);
  expect(stdout.match(/^read 65536\/65536/gm)).toHaveLength(16);
}

/** Greeting-stage garbage: a client that speaks HTTP instead of NBD. */
async function garbageGreetingReply(): Promise<number> {
  const { c, id } = await badClient();
  await c.write(Buffer.from('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n'));
  await c.expectClosedWithin(3000);
  return id;
}

/** Random bytes after a valid GO. */
async function garbageAfterGo(): Promise<number> {
  const c = await RawClient.connect(tcp);
  await c.handshake('disk');
  const id = opened.at(-1)!;
  const junk = crypto.randomBytes(200);
  junk.write('JUNK', 0); // never the request magic
  await c.write(junk);
  await c.expectClosedWithin(3000);
  return id;
}

/** A WRITE announcing 1 MiB, then 100 bytes, then gone. */
async function truncatedWrite(how: 'end' | 'destroy'): Promise<number> {
  const c = await RawClient.connect(tcp);
  await c.handshake('disk');
  const id = opened.at(-1)!;
  await c.write(Buffer.concat([RawClient.request(CMD.WRITE, 4 * MiB, MiB, 7n), Buffer.alloc(100, 0xee)]));
  if (how === 'end') c.socket.end();
  else c.destroy();
  await c.closedP;
  return id;
}

/** A 32 MiB READ; the client reads a little of the reply and vanishes. */
async function vanishDuringRead(): Promise<number> {
  const c = await RawClient.connect(tcp);
  await c.handshake('disk');
  const id = opened.at(-1)!;
  await c.write(RawClient.request(CMD.READ, 0, 32 * MiB, 9n));
  const r = await c.readSimpleReply();
  expect(r).toEqual({ error: 0, cookie: 9n });
  await c.read(64 * 1024);
  c.destroy();
  return id;
}

describe('robustness', () => {
  it('the raw client itself works: GO, WRITE, READ back, DISC', async () => {
    const c = await RawClient.connect(tcp);
    await c.handshake('disk');
    expect(c.exportSize).toBe(BigInt(SIZE));
    const data = crypto.randomBytes(4096);
    await c.write(Buffer.concat([RawClient.request(CMD.WRITE, 60 * MiB, 4096, 1n), data]));
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 1n });
    await c.write(RawClient.request(CMD.READ, 60 * MiB, 4096, 2n));
    expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 2n });
    expect((await c.read(4096)).equals(data)).toBe(true);
    await c.write(RawClient.request(CMD.DISC, 0, 0, 3n));
    await c.expectClosedWithin(3000);
  });

  it('a WRITE announcing 1 MiB cut off after 100 bytes: one clear log line, server keeps serving, nothing of it is stored', async () => {
    // A good client runs at the same time.
    const good = goodWorkload(0, 1);
    const id = await truncatedWrite('end');
    await good;
    await settle();
    const lines = problems(id);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/closed the connection in the middle of a frame/);
    expect(lines[0]).toMatch(/NBD_CMD_WRITE at offset 4194304 with 100 of 1048576 payload bytes/);
    // The WRITE was never completed nor acknowledged: the range is untouched
    // (zero), not even the 100 payload bytes that arrived are stored.
    const { stdout } = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0 4M 1M', srv.uri()]);
    expect(stdout).toMatch(/read 1048576\/1048576/);
    expect(stdout).not.toMatch(/Pattern verification failed/);
    const info = await run('nbdinfo', ['--size', srv.uri()]);
    expect(info.stdout.trim()).toBe(String(SIZE));
  });

  it('the same cut-off WRITE with an abrupt close (destroy)', async () => {
    const id = await truncatedWrite('destroy');
    await settle();
    const lines = problems(id);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/in the middle of a frame \(NBD_CMD_WRITE .* 100 of 1048576 payload bytes\)/);
    await goodWorkload(8 * MiB, 2);
  });

  it('garbage after GO: that connection is dropped, another one continues', async () => {
    // A second raw client negotiated before the bad one, used after it.
    const other = await RawClient.connect(tcp);
    await other.handshake('disk');
    const id = await garbageAfterGo();
    await settle(50);
    expect(other.ended).toBe(false);
    await other.write(RawClient.request(CMD.READ, 0, 512, 42n));
    expect(await other.readSimpleReply()).toEqual({ error: 0, cookie: 42n });
    expect((await other.read(512)).length).toBe(512);
    await other.write(RawClient.request(CMD.DISC, 0, 0, 43n));
    await other.expectClosedWithin(3000);
    const lines = problems(id);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/bad request magic/);
    await goodWorkload(12 * MiB, 3);
  });

  it('garbage instead of the client flags: dropped, with one log line', async () => {
    const id = await garbageGreetingReply();
    await settle(50);
    const lines = problems(id);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/client flags/);
    const info = await run('nbdinfo', ['--size', srv.uri()]);
    expect(info.stdout.trim()).toBe(String(SIZE));
  });

  it('a client that disconnects while a 32 MiB READ reply is being written', async () => {
    const id = await vanishDuringRead();
    await waitFor(() => closedLogged(id));
    // Vanishing mid-reply is routine: not an error.
    expect(srv.logs.filter((l) => l.startsWith('error') && about(l, id))).toEqual([]);
    await goodWorkload(16 * MiB, 4);
  });

  it('20 bad clients in a loop while a good qemu-io workload runs and verifies its data', async () => {
    let goodRuns = 0;
    let stop = false;
    const good = (async () => {
      while (!stop || goodRuns === 0) {
        await goodWorkload(32 * MiB + (goodRuns % 4) * MiB, 16 + goodRuns);
        goodRuns++;
      }
    })();
    const kinds = [
      () => truncatedWrite('end'),
      () => garbageAfterGo(),
      () => garbageGreetingReply(),
      () => vanishDuringRead(),
      () => truncatedWrite('destroy'),
    ];
    const ids: number[] = [];
    for (let i = 0; i < 20; i++) ids.push(await kinds[i % kinds.length]!());
    stop = true;
    await good;
    expect(goodRuns).toBeGreaterThan(0);
    // Every bad connection closed, the server holds no leftover sessions.
    await waitFor(() => ids.every(closedLogged));
    await waitFor(() => srv.server.connectionCount === 0);
    for (const [i, id] of ids.entries()) {
      const n = problems(id).length;
      // vanishDuringRead is routine (info level); all others get exactly one line.
      expect(n, `connection ${id}: ${problems(id).join(' | ')}`).toBe(i % kinds.length === 3 ? 0 : 1);
    }
    expect(srv.logs.filter((l) => l.startsWith('error'))).toEqual([]);
    // A final check with a fresh client.
    await goodWorkload(40 * MiB, 99);
  });
});
