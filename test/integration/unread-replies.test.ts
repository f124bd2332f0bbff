/**
 * A client that does not read its replies is throttled, never dropped,
 * and costs bounded memory: the server stops reading its requests once
 * the bytes it owes (maxInFlightBytes: payloads and READ lengths in
 * flight plus unwritten replies; maxQueuedReplyBytes: unwritten replies)
 * reach their bound, keeps the connection, serves other clients
 * meanwhile, and answers everything once the client reads.
 *
 * The server runs as the CLI in a child process so its resident memory
 * (/proc/PID/status) is its own.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { spawnCli, tmpDir } from './harness.js';
import { RawClient, requestBytes, type Request } from './raw-client.js';

const READ = 0;
const WRITE = 1;
const MiB = 1024 * 1024;
/** The defaults the bound is made of: maxInFlightBytes 128 MiB; a request may overshoot by its own payload. */
const DEFAULT_BUDGET = 128 * MiB;

function rssOf(pid: number, field: 'VmRSS' | 'VmHWM' = 'VmRSS'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/** Sample a process's RSS every 50 ms until stopped; returns the peak seen. */
function sampler(pid: number): { stop(): number } {
  let peak = rssOf(pid);
  const t = setInterval(() => {
    try {
      peak = Math.max(peak, rssOf(pid));
    } catch {
      /* exited */
    }
  }, 50);
  return {
    stop: () => {
      clearInterval(t);
      return Math.max(peak, rssOf(pid));
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('unread replies: bounded memory, the connection kept, everything answered', () => {
  const dir = tmpDir();
  let child: ChildProcess | undefined;
  afterEach(() => {
    child?.kill('SIGKILL');
    child = undefined;
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  async function serve(args: string[]): Promise<{ sock: string; pid: number }> {
    const sock = path.join(dir, `s${Date.now()}.sock`);
    const r = await spawnCli(['serve', ...args, '--socket', sock]);
    child = r.child;
    // One warm-up connection so the baseline includes a connection's fixed cost.
    const c = await RawClient.open({ path: sock });
    c.send(requestBytes({ type: READ, offset: 0, length: 4096, cookie: 1n }));
    await c.readSimpleReply(() => 4096);
    c.destroy();
    await sleep(200);
    return { sock, pid: r.child.pid! };
  }

  it('file export: 100 READs of 32 MiB never read — RSS stays within the bound, other clients are served, all 100 arrive later', async () => {
    const file = path.join(dir, 'disk.img');
    fs.writeFileSync(file, '');
    fs.truncateSync(file, 64 * MiB);
    // Data, not holes: the reads allocate real buffers.
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, Buffer.alloc(64 * MiB, 0x5a), 0, 64 * MiB, 0);
    fs.closeSync(fd);
    const { sock, pid } = await serve(['--file', file]);
    const base = rssOf(pid);
    const peak = sampler(pid);

    const greedy = await RawClient.open({ path: sock });
    // Pause the client's reading at the socket: replies pile up in the kernel, then in the server.
    greedy.stream.pause();
    const reqs: Request[] = Array.from({ length: 100 }, (_, i) => ({ type: READ, offset: (i % 2) * 32 * MiB, length: 32 * MiB, cookie: BigInt(i + 1) }));
    greedy.send(Buffer.concat(reqs.map(requestBytes)));
    await sleep(3000);

    // Meanwhile another client is served.
    const other = await RawClient.open({ path: sock });
    other.send(Buffer.concat(Array.from({ length: 10 }, (_, i) => requestBytes({ type: READ, offset: i * 4096, length: 4096, cookie: BigInt(i) }))));
    for (let i = 0; i < 10; i++) {
      const r = await other.readSimpleReply(() => 4096);
      expect(r.error).toBe(0);
      expect(r.data!.every((b) => b === 0x5a)).toBe(true);
    }
    other.destroy();
    const held = peak.stop() - base;

    // Now the client reads: every reply arrives, on the same connection.
    greedy.stream.resume();
    const seen = new Set<bigint>();
    for (let i = 0; i < reqs.length; i++) {
      const r = await greedy.readSimpleReply(() => 32 * MiB);
      expect(r.error).toBe(0);
      expect(r.data![0]).toBe(0x5a);
      expect(r.data![32 * MiB - 1]).toBe(0x5a);
      seen.add(r.cookie);
    }
    expect(seen.size).toBe(100);
    greedy.destroy();
    console.log(`100 × 32 MiB READs unread: server RSS +${(held / MiB).toFixed(0)} MiB at peak (bound ${(DEFAULT_BUDGET + 32 * MiB + 96 * MiB) / MiB} MiB)`);
    // The budget, one request's overshoot, and room for the runtime's own slack (GC, slabs).
    expect(held).toBeLessThan(DEFAULT_BUDGET + 32 * MiB + 96 * MiB);
  });

  for (const [size, total] of [
    [512, 200 * MiB],
    [4096, 400 * MiB],
    [MiB, 1024 * MiB],
  ] as const) {
    it(`memory export: ${size}-byte WRITEs (${total / MiB} MiB) sent without reading replies — throttled, not dropped; all answered`, async () => {
      const { sock, pid } = await serve(['--memory', '1G']);
      const base = rssOf(pid);
      const peak = sampler(pid);
      const c = await RawClient.open({ path: sock });
      c.stream.pause();
      const n = total / size;
      // Writes cycle over the first 16 MiB: the export's own memory stays small, so RSS shows the server's.
      const span = (16 * MiB) / size;
      let closedByServer = false;
      c.socket.on('close', () => (closedByServer = true));

      // Send with the socket's own backpressure; "stuck" = the server stopped reading us.
      let sent = 0;
      let stuck = false;
      const sender = (async () => {
        const per = Math.max(1, Math.floor(MiB / (size + 28)));
        while (sent < n) {
          const k = Math.min(per, n - sent);
          const batch: Buffer[] = [];
          for (let i = 0; i < k; i++) {
            const idx = sent + i;
            const payload = Buffer.alloc(size, idx & 0xff);
            batch.push(requestBytes({ type: WRITE, offset: (idx % span) * size, length: size, cookie: BigInt(idx + 1), payload }));
          }
          sent += k;
          if (!c.stream.write(Buffer.concat(batch))) {
            const drained = await Promise.race([new Promise<boolean>((r) => c.stream.once('drain', () => r(true))), sleep(1500).then(() => false)]);
            if (!drained) {
              stuck = true;
              await new Promise<void>((r) => c.stream.once('drain', () => r()));
            }
          }
        }
      })();
      // Read nothing until the sender is done or stuck.
      while (sent < n && !stuck) await sleep(100);
      await sleep(500);
      const held = peak.stop() - base;
      expect(closedByServer).toBe(false);

      c.stream.resume();
      let answered = 0;
      for (let i = 0; i < n; i++) {
        const r = await c.readSimpleReply(() => 0);
        expect(r.error).toBe(0);
        answered++;
      }
      await sender;
      expect(answered).toBe(n);
      // The last writes landed.
      const last = n - 1;
      c.send(requestBytes({ type: READ, offset: (last % span) * size, length: size, cookie: 0n }));
      const r = await c.readSimpleReply(() => size);
      expect(r.data!.every((b) => b === (last & 0xff))).toBe(true);
      c.destroy();
      console.log(`${size}-byte WRITEs unread: ${stuck ? 'throttled (server stopped reading)' : 'never throttled'}, server RSS +${(held / MiB).toFixed(0)} MiB at peak`);
      // 512-byte WRITEs owe 16-byte replies: 200 MiB of them queue more than 4 MiB of replies, so the server must have paused.
      if (size === 512) expect(stuck).toBe(true);
      expect(held).toBeLessThan(DEFAULT_BUDGET + 96 * MiB);
    });
  }
});
