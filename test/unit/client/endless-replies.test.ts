/**
 * A server that answers without ever finishing must not hang the client
 * library or grow its memory for as long as it keeps sending:
 *  - the replies to one option are bounded in time (`timeoutMs` covers the
 *    whole call) and in what is kept (`maxReplyBytes`);
 *  - the chunks of one request's reply are bounded by `maxReplyBytes`;
 *  - deviations a connection keeps are capped (MAX_DEVIATIONS), the rest counted.
 * Each server here streams as fast as the socket takes it until the client
 * gives up (the client closing the connection stops it).
 */
import { describe, expect, it } from 'vitest';
import { MAX_DEVIATIONS, OPT, REP, REPLY_TYPE } from '../../../src/client/index.js';
import { encodeOptionReply } from '../../../src/protocol/encoder.js';
import { chunk, goWith, scripted, serveUntilGo, simpleReply, type ServerSide } from './fake-server.js';

/** Write `make()` batches until the socket is gone (the client gave up) or `ms` passed. */
async function flood(s: ServerSide, make: () => Buffer, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until && !s.reader.ended) {
    s.write(make());
    await new Promise((r) => setImmediate(r));
  }
}

const serverReply = (name: string) => {
  const n = Buffer.from(name);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(n.length);
  return Buffer.concat(encodeOptionReply(OPT.NBD_OPT_LIST, REP.NBD_REP_SERVER, Buffer.concat([len, n])));
};

describe('a server that never sends the final reply', () => {
  it('LIST answered by endless NBD_REP_SERVER replies: the call fails with `limit` once maxReplyBytes is used, the connection is given up', async () => {
    const { client } = await scripted(
      async (s) => {
        await s.greet();
        await s.option();
        await flood(s, () => Buffer.concat(Array.from({ length: 100 }, (_, i) => serverReply(`export-${i}`))));
      },
      { maxReplyBytes: 256 * 1024, timeoutMs: 20_000 },
    );
    await client.handshake();
    const t0 = Date.now();
    const err = await client.list().catch((e: unknown) => e);
    expect(err).toMatchObject({ name: 'NbdClientError', code: 'limit' });
    expect(String((err as Error).message)).toMatch(/replies to option 3 .* and no final one: more than maxReplyBytes \(262144\)/);
    // 256 KiB at (data + REPLY_OVERHEAD) bytes per reply: about 170 replies, not what the server could send in 20 s.
    expect(Date.now() - t0).toBeLessThan(10_000);
    await client.closed;
  });

  it('LIST answered by a reply every 50 ms and never an ACK: timeoutMs bounds the whole call, not each reply', async () => {
    const { client } = await scripted(
      async (s) => {
        await s.greet();
        await s.option();
        const until = Date.now() + 10_000;
        while (Date.now() < until && !s.reader.ended) {
          s.write(serverReply('slow'));
          await new Promise((r) => setTimeout(r, 50));
        }
      },
      { timeoutMs: 400 },
    );
    await client.handshake();
    const t0 = Date.now();
    const err = await client.list().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'timeout' });
    expect(String((err as Error).message)).toMatch(/no final reply to option 3 within 400 ms \(\d+ replies without one\)/);
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it('a READ answered by endless error chunks without DONE: the request fails with `limit`, later requests with it too', async () => {
    const { client } = await scripted(
      async (s) => {
        await serveUntilGo(s);
        const r = await s.request();
        const err = Buffer.alloc(6 + 5);
        err.writeUInt32BE(5, 0);
        err.writeUInt16BE(5, 4);
        err.write('again', 6);
        const one = chunk(r.cookie, REPLY_TYPE.NBD_REPLY_TYPE_ERROR, err);
        await flood(s, () => Buffer.concat(Array.from({ length: 200 }, () => one)));
      },
      { maxReplyBytes: 512 * 1024, timeoutMs: 20_000 },
    );
    await goWith(client, 'structured');
    const t0 = Date.now();
    const err = await client.read(0, 512).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'limit' });
    expect(String((err as Error).message)).toMatch(/chunks \(\d+ bytes counted\) and no DONE: more than maxReplyBytes \(524288\)/);
    expect(Date.now() - t0).toBeLessThan(10_000);
    await expect(client.read(0, 512)).rejects.toMatchObject({ code: 'limit' });
  });

  it('endless replies for a cookie never sent: the connection keeps MAX_DEVIATIONS of them and counts the rest', async () => {
    const { client } = await scripted(async (s) => {
      await serveUntilGo(s);
      const r = await s.request();
      const stray = simpleReply(r.cookie + 1n);
      s.write(Buffer.concat(Array.from({ length: MAX_DEVIATIONS + 500 }, () => stray)), simpleReply(r.cookie));
    });
    await goWith(client, 'simple');
    await client.write(0, Buffer.alloc(512));
    expect(client.deviations).toHaveLength(MAX_DEVIATIONS);
    expect(client.deviations.every((d) => d.rule === 'peer.unknown-cookie')).toBe(true);
    expect(client.deviationsNotKept).toBe(500);
  });
});
