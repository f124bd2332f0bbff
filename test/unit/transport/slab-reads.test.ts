/**
 * fromSocket with `slabReads`: a plain socket reads into regions of shared
 * slabs instead of a fresh buffer per read. Same bytes, in order; chunks
 * already delivered are never overwritten by later reads; pause/resume
 * still stop and restart reading; EOF still completes. The switch to our
 * own read buffers (Node internals) lives in src/transport/user-buffer.ts;
 * the slab accounting it feeds in src/transport/slab-account.ts.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Duplex, PassThrough, Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { fromSocket } from '../../../src/transport/socket.js';
import { slabCounters } from '../../../src/transport/slab-account.js';
import { bytesTakenByPeer, canReadIntoUserBuffers } from '../../../src/transport/user-buffer.js';

async function pair(): Promise<{ server: net.Socket; client: net.Socket; close: () => void }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-slab-'));
  const sock = path.join(dir, 's.sock');
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(sock, r));
  const accepted = new Promise<net.Socket>((r) => srv.once('connection', r));
  const client = net.connect(sock);
  const server = await accepted;
  return {
    server,
    client,
    close: () => {
      client.destroy();
      server.destroy();
      srv.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

describe('fromSocket slabReads', () => {
  it('delivers every byte in order, as views of slabs that later reads do not overwrite; pause/resume and EOF work', async () => {
    const { server, client, close } = await pair();
    try {
      const data = randomBytes(5 * 1024 * 1024 + 123);
      const chunks: Buffer[] = [];
      let paused = false;
      // This Node has the fields the switch needs: the slab path is not silently skipped.
      expect(canReadIntoUserBuffers(server)).toBe(true);
      const allocated = slabCounters.allocated;
      const reused = slabCounters.reused;
      const done = new Promise<void>((resolve, reject) => {
        fromSocket(server, { slabReads: true }).subscribe({
          next: (c) => {
            chunks.push(c);
            if (chunks.length === 3) {
              // Flow control: no reads while paused.
              server.pause();
              paused = true;
              setTimeout(() => {
                paused = false;
                server.resume();
              }, 50);
            } else if (paused) {
              reject(new Error('read while paused'));
            }
          },
          error: reject,
          complete: () => resolve(),
        });
      });
      client.end(data);
      await done;
      const got = Buffer.concat(chunks);
      expect(got.length).toBe(data.length);
      expect(got.equals(data)).toBe(true);
      // The slab path was taken: slabs grow from 64 KiB to 1 MiB; Node's own reads would be 64 KiB buffers.
      expect(chunks.some((c) => c.buffer.byteLength === 1024 * 1024)).toBe(true);
      // Nothing released the chunks here, so no slab was reused: each one was allocated.
      expect(slabCounters.reused).toBe(reused);
      expect(slabCounters.allocated - allocated).toBeGreaterThanOrEqual(new Set(chunks.map((c) => c.buffer)).size);
    } finally {
      close();
    }
  });

  it('without slabReads (or on a non-net stream) it is plain "data" events', async () => {
    const { server, client, close } = await pair();
    try {
      const data = randomBytes(300 * 1024);
      const chunks: Buffer[] = [];
      const allocated = slabCounters.allocated;
      const done = new Promise<void>((resolve, reject) => {
        fromSocket(server).subscribe({ next: (c) => chunks.push(c), error: reject, complete: () => resolve() });
      });
      client.end(data);
      await done;
      expect(Buffer.concat(chunks).equals(data)).toBe(true);
      expect(slabCounters.allocated).toBe(allocated);
    } finally {
      close();
    }
  });
});

describe('bytesTakenByPeer (user-buffer.ts: the written bytes the kernel took)', () => {
  it('is the bytes the peer could have read: it stops while the peer does not read, moves when it reads, reaches all of them; undefined for a stream that is not a socket', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-engine-taken-'));
    const sock = path.join(dir, 's');
    let peer: net.Socket | undefined;
    const server = net.createServer((c) => {
      peer = c;
      c.pause();
    });
    await new Promise<void>((r) => server.listen(sock, r));
    const client = net.connect(sock);
    await new Promise((r) => client.once('connect', r));
    try {
      const total = 32 << 20;
      client.write(Buffer.alloc(16 << 20, 1));
      client.write(Buffer.alloc(16 << 20, 2));
      await new Promise((r) => setTimeout(r, 100));
      const stalled = bytesTakenByPeer(client)!;
      // The kernel's buffers hold some of it, not all 32 MiB.
      expect(stalled).toBeGreaterThanOrEqual(0);
      expect(stalled).toBeLessThan(total);
      await new Promise((r) => setTimeout(r, 100));
      expect(bytesTakenByPeer(client)).toBe(stalled);
      // The peer reads everything: the count moves, to all of it.
      let got = 0;
      peer!.on('data', (d: Buffer) => (got += d.length));
      peer!.resume();
      while (got < total) await new Promise((r) => setTimeout(r, 10));
      expect(bytesTakenByPeer(client)).toBe(total);
      expect(bytesTakenByPeer(Duplex.from({ readable: Readable.from([]), writable: new PassThrough() }))).toBeUndefined();
    } finally {
      client.destroy();
      peer?.destroy();
      await new Promise((r) => server.close(r));
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
