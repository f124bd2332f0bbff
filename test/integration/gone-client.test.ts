/**
 * A client that pipelines READs, reads none of the replies and then goes
 * away: the requests still buffered when its socket is dropped (a reset, a
 * write error) are never started. Before, the dropped replies freed the byte
 * budget and the buffered READs ran against the backend for nobody, taking
 * the connection's memory to twice its bound (found with a raw client and
 * the log filter: 4 READs served, 8 run).
 */
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import type { Backend } from '../../src/index.js';
import { clientFlagsBytes, optionBytes } from '../../src/client/encode.js';
import { OPT } from '../../src/protocol/constants.js';
import { serverPerTest } from './harness.js';
import { requestBytes } from './raw-client.js';

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const { serve } = serverPerTest();

describe('a client gone with unread replies', () => {
  it.each([
    ['a UNIX socket, 1 MiB READs', 'unix', 1, 4],
    ['TCP, 8 MiB READs (more than the kernel buffers: the replies wait in the server)', 'tcp', 8, 48],
  ] as const)('%s: no request buffered at the drop reaches the backend; the connection closes', async (_what, transport, size, budget) => {
    let reads = 0;
    // The first two READs answer at once; the rest wait for the gate, so two are still running when the
    // client goes (their completions must not start buffered requests either).
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const backend: Backend = {
      size: 256 * MiB,
      read: async (_offset, length) => {
        if (++reads > 2) await gate;
        return Buffer.alloc(length, 0x5a);
      },
    };
    const srv = await serve({
      exports: [{ name: '', backend }],
      limits: { maxInFlightBytes: budget * MiB, maxQueuedReplyBytes: budget * MiB },
    });
    const closed = new Promise<void>((resolve) => srv.server.connections$.subscribe((e) => e.type === 'closed' && resolve()));
    const tcp = transport === 'tcp' ? (await srv.server.listen({ port: 0, host: '127.0.0.1' }))[0]!.address : undefined;
    // A client that negotiates (EXPORT_NAME, NO_ZEROES: a 10-byte answer after the 18-byte greeting) and
    // then never reads again.
    const c = tcp?.port !== undefined ? net.connect(tcp.port, '127.0.0.1') : net.connect(srv.socket);
    await new Promise<void>((resolve) => {
      let got = 0;
      c.on('data', (d: Buffer) => {
        got += d.length;
        if (got >= 18 + 10) {
          c.pause();
          resolve();
        }
      });
      c.write(Buffer.concat([clientFlagsBytes(3), optionBytes(OPT.NBD_OPT_EXPORT_NAME, Buffer.alloc(0))]));
    });
    c.on('error', () => {});
    // 30 READs in one go; the client never reads a reply.
    c.write(Buffer.concat(Array.from({ length: 30 }, (_, i) => requestBytes({ type: 0, offset: i * size * MiB, length: size * MiB, cookie: BigInt(i + 1) }))));
    // The budget fills: a few READs run, their replies wait in the socket, the rest wait in the decoder.
    let before = -1;
    for (let i = 0; i < 100 && reads !== before; i++) {
      before = reads;
      await sleep(100);
    }
    expect(reads).toBeGreaterThan(0);
    expect(reads).toBeLessThan(20);
    const served = reads;
    c.destroy(); // unread data in its receive queue: the server's next write fails (TCP: a reset)
    await sleep(200);
    open(); // the READs still running finish, for nobody
    await closed;
    await sleep(300);
    expect(reads).toBe(served);
  });
});
