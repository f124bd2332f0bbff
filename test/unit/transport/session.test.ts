/**
 * The session on an in-memory duplex pair (no sockets, no server): what it
 * does with its socket is what the connection machine's states say — the
 * reading region pauses and resumes it when a budget crosses, stops it when
 * the connection closes — and the machines decide draining and STARTTLS.
 */
import type { Duplex } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { Session, type SessionHandlers, type SessionOptions } from '../../../src/transport/session.js';
import type { RequestFrame } from '../../../src/protocol/frames.js';
import { duplexPair } from '../../helpers/duplex-pair.js';
import {
  CMD,
  OPT,
  REP,
  encodeClientFlags,
  encodeInfoGoData,
  encodeOption,
  encodeRequest,
  parseOptionReplies,
  parseTransmissionReplies,
  type SimpleReply,
} from '../../helpers/wire.js';
import { DEFAULT_INPUT } from '../machines/support.js';

const GREETING = 18;
const tick = () => new Promise((r) => setImmediate(r));
async function settle(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await tick();
}

interface Harness {
  session: Session;
  server: Duplex;
  client: Duplex;
  requests: RequestFrame[];
  logs: string[];
  closed: Array<{ outcome: string; code: string; reason: string }>;
  /** Bytes the client received (only while it reads). */
  received(): Buffer;
  /** The client's received bytes after the handshake, parsed as simple replies. */
  replies(readLengths?: ReadonlyMap<bigint, number>): SimpleReply[];
  reading(): string;
  send(bytes: Buffer): Promise<void>;
  /** Where the transmission replies start in `received()`. */
  handshakeEnd: number;
}

const open: Harness[] = [];
afterEach(() => {
  for (const h of open.splice(0)) {
    h.client.destroy();
    h.server.destroy();
  }
});

function start(options: Partial<SessionOptions> = {}, handlers: Partial<SessionHandlers> = {}, clientReads = true): Harness {
  const [server, client] = duplexPair();
  const requests: RequestFrame[] = [];
  const logs: string[] = [];
  const closed: Array<{ outcome: string; code: string; reason: string }> = [];
  const push = (level: string) => (m: string) => logs.push(`${level}: ${m}`);
  const session = new Session(
    server,
    { id: 1, handshake: DEFAULT_INPUT, logger: { debug: push('debug'), info: push('info'), warn: push('warn'), error: push('error') }, ...options },
    { onRequest: (_s, f) => void requests.push(f), onClose: (_s, i) => void closed.push(i), ...handlers },
  );
  const chunks: Buffer[] = [];
  if (clientReads) client.on('data', (c: Buffer) => chunks.push(c));
  const received = () => Buffer.concat(chunks);
  const h: Harness = {
    session,
    server,
    client,
    requests,
    logs,
    closed,
    received,
    replies: (readLengths) => parseTransmissionReplies(received().subarray(h.handshakeEnd), { readLengths }) as SimpleReply[],
    reading: () => (session.connectionActor.getSnapshot().value as { reading: string }).reading,
    send: async (bytes) => {
      client.write(bytes);
      await settle();
    },
    handshakeEnd: 0,
  };
  session.start();
  open.push(h);
  return h;
}

/** Fixed newstyle, GO for the default export; returns once the ACK arrived. */
async function negotiate(h: Harness): Promise<void> {
  await h.send(Buffer.concat([encodeClientFlags(3), encodeOption(OPT.GO, encodeInfoGoData('disk'))]));
  const replies = parseOptionReplies(h.received().subarray(GREETING));
  expect(replies.at(-1)!.type).toBe(REP.ACK);
  // Everything received so far is the handshake: replies start here.
  h.handshakeEnd = h.received().length;
  expect(h.session.negotiated?.export.name).toBe('disk');
}

const read = (cookie: bigint, offset = 0, length = 512) => encodeRequest({ type: CMD.READ, flags: 0, cookie, offset, length });

describe('Session on an in-memory duplex pair', () => {
  it('hands validated requests to onRequest and answers refused ones itself, through the same encoder', async () => {
    const h = start();
    await negotiate(h);
    await h.send(Buffer.concat([read(1n), read(2n, 1 << 30), read(3n, 512, 8)]));
    expect(h.requests.map((r) => r.cookie)).toEqual([1n, 3n]);
    // The READ past the end was refused by the machine: EINVAL (22), answered at once.
    expect(h.replies()).toEqual([{ kind: 'simple', cookie: 2n, error: 22 }]);
    h.session.read(1n, 0, Buffer.alloc(512, 7), false, 512);
    h.session.error(3n, CMD.READ, 5, 'backend failed', 512, 8);
    await settle();
    const replies = h.replies(new Map([[1n, 512]]));
    expect(replies.map((r) => [r.cookie, r.error, r.data?.length])).toEqual([
      [2n, 22, undefined],
      [1n, 0, 512],
      [3n, 5, undefined],
    ]);
    expect(h.session.requestsInFlight).toBe(0);
  });

  it('at maxInFlight the reading region pauses the socket; a completion resumes it and the rest is delivered', async () => {
    const h = start({ maxInFlight: 2 });
    await negotiate(h);
    await h.send(Buffer.concat([read(1n), read(2n), read(3n), read(4n)]));
    expect(h.requests.map((r) => r.cookie)).toEqual([1n, 2n]);
    expect(h.reading()).toBe('paused');
    expect(h.server.isPaused()).toBe(true);
    h.session.read(1n, 0, Buffer.alloc(512), false, 512);
    await settle();
    expect(h.requests.map((r) => r.cookie)).toEqual([1n, 2n, 3n]);
    expect(h.reading()).toBe('paused');
    for (const c of [2n, 3n]) h.session.ok(c, 0, 512);
    await settle();
    expect(h.requests.map((r) => r.cookie)).toEqual([1n, 2n, 3n, 4n]);
    h.session.ok(4n, 0, 512);
    await settle();
    expect(h.reading()).toBe('flowing');
    expect(h.server.isPaused()).toBe(false);
  });

  it('a client that does not read its replies is paused at maxQueuedReplyBytes, and resumed once it reads', async () => {
    const h = start({ maxQueuedReplyBytes: 64 * 1024, maxInFlight: 4 }, {}, false);
    // Negotiate while reading, then stop reading.
    const chunks: Buffer[] = [];
    const onData = (c: Buffer) => chunks.push(c);
    h.client.on('data', onData);
    await h.send(Buffer.concat([encodeClientFlags(3), encodeOption(OPT.GO, encodeInfoGoData('disk'))]));
    h.client.off('data', onData);
    h.client.pause();
    expect(h.session.negotiated).not.toBeNull();
    const n = 40;
    await h.send(Buffer.concat(Array.from({ length: n }, (_, i) => read(BigInt(i + 1), 0, 32 * 1024))));
    // Answer everything delivered so far, again and again: replies pile up unread.
    let answered = 0;
    for (let round = 0; round < 10; round++) {
      while (answered < h.requests.length) h.session.read(h.requests[answered++]!.cookie, 0, Buffer.alloc(32 * 1024, 1), false, 32 * 1024);
      await settle();
    }
    expect(answered).toBeLessThan(n);
    expect(h.reading()).toBe('paused');
    expect(h.server.isPaused()).toBe(true);
    // The client reads: replies drain, reading resumes, every request is delivered and answered.
    let bytes = 0;
    h.client.on('data', (c: Buffer) => (bytes += c.length));
    h.client.resume();
    for (let round = 0; round < 50 && answered < n; round++) {
      while (answered < h.requests.length) h.session.read(h.requests[answered++]!.cookie, 0, Buffer.alloc(32 * 1024, 1), false, 32 * 1024);
      await settle();
    }
    await settle();
    expect(answered).toBe(n);
    expect(h.reading()).toBe('flowing');
    expect(bytes).toBeGreaterThanOrEqual(n * 32 * 1024);
  });

  it('DISC: in-flight requests finish, then the connection closes and reading stops; bytes after DISC are ignored with one log line', async () => {
    const h = start();
    // As real clients do: once the server has closed its side, close ours.
    h.client.on('end', () => h.client.end());
    await negotiate(h);
    await h.send(Buffer.concat([read(1n), encodeRequest({ type: CMD.DISC, flags: 0, cookie: 9n, offset: 0, length: 0 }), read(2n)]));
    expect(h.requests.map((r) => r.cookie)).toEqual([1n]);
    expect(h.session.connectionActor.getSnapshot().value).toEqual({ phase: 'transmission', reading: 'flowing' });
    h.session.read(1n, 0, Buffer.alloc(512, 3), false, 512);
    await settle(10);
    expect(h.session.connectionActor.getSnapshot().value).toEqual({ phase: 'closed', reading: 'stopped' });
    expect(h.replies(new Map([[1n, 512]])).map((r) => r.cookie)).toEqual([1n]);
    expect(h.requests.map((r) => r.cookie)).toEqual([1n]);
    expect(h.logs.filter((l) => l.includes('ignoring bytes sent after the end'))).toHaveLength(1);
    expect(h.closed).toEqual([{ outcome: 'negotiated', code: 'transmission.disc-drains', reason: 'NBD_CMD_DISC' }]);
  });

  it('the server ending the connection with requests still undecoded (shutdown timeout) says so, not "bytes after DISC"', async () => {
    const h = start({ maxInFlight: 1 });
    await negotiate(h);
    h.client.write(Buffer.concat([read(1n), read(2n), read(3n)]));
    await settle();
    expect(h.requests.map((r) => r.cookie)).toEqual([1n]);
    h.session.destroy('server closing (timeout)', 'NBD_CLOSED_SHUTDOWN');
    await settle(10);
    expect(h.logs.filter((l) => l.includes('ignoring bytes sent after the end'))).toEqual([]);
    expect(h.logs.filter((l) => /ended with \d+ bytes of requests not yet decoded/.test(l))).toHaveLength(1);
  });

  it('EOF with requests still buffered at the cap: they are served first, then the connection closes', async () => {
    const h = start({ maxInFlight: 1 });
    await negotiate(h);
    h.client.write(Buffer.concat([read(1n), read(2n), read(3n)]));
    h.client.end();
    await settle();
    expect(h.requests.map((r) => r.cookie)).toEqual([1n]);
    for (const c of [1n, 2n, 3n]) {
      await settle();
      h.session.ok(c, 0, 512);
    }
    await settle(10);
    expect(h.requests.map((r) => r.cookie)).toEqual([1n, 2n, 3n]);
    expect(h.replies().map((r) => [r.cookie, r.error])).toEqual([
      [1n, 0],
      [2n, 0],
      [3n, 0],
    ]);
    expect(h.session.connectionActor.getSnapshot().value).toEqual({ phase: 'closed', reading: 'stopped' });
  });

  it('STARTTLS accepted without credentials: one warning, the handshake rejected, the connection dropped', async () => {
    const h = start({ handshake: { ...DEFAULT_INPUT, tls: 'optional' } });
    await h.send(Buffer.concat([encodeClientFlags(3), encodeOption(OPT.STARTTLS)]));
    await settle(10);
    expect(h.logs.filter((l) => l.startsWith('warn:'))).toEqual([
      'warn: connection 1: NBD_ERR_TLS_NOT_CONFIGURED: STARTTLS accepted but no TLS credentials are configured; disconnecting',
    ]);
    expect(h.closed).toEqual([
      { outcome: expect.not.stringMatching(/negotiated/), code: 'NBD_ERR_TLS_NOT_CONFIGURED', reason: 'STARTTLS accepted but no TLS credentials are configured' },
    ]);
    expect(h.session.negotiated).toBeNull();
    expect(h.server.destroyed).toBe(true);
  });

  it('plaintext pipelined behind STARTTLS: never interpreted, the connection dropped with the rule as its code', async () => {
    const h = start({
      handshake: { ...DEFAULT_INPUT, tls: 'optional' },
      // An upgrade that never finishes: the plaintext behind STARTTLS decides.
      upgradeTls: () => new Promise(() => {}),
    });
    await h.send(Buffer.concat([encodeClientFlags(3), encodeOption(OPT.STARTTLS), encodeOption(OPT.GO, encodeInfoGoData('disk'))]));
    await settle(10);
    expect(h.closed).toEqual([{ outcome: expect.not.stringMatching(/negotiated/), code: 'tls.plaintext-after-starttls', reason: 'plaintext pipelined behind STARTTLS' }]);
    expect(h.logs.filter((l) => l.startsWith('warn:'))).toEqual([expect.stringMatching(/^warn: connection 1: tls\.plaintext-after-starttls: \d+ plaintext bytes pipelined behind STARTTLS; disconnecting$/)]);
    expect(h.session.negotiated).toBeNull();
  });

  it('a machine failure drops the connection alone as NBD_ERR_INTERNAL, with one error line', async () => {
    const h = start();
    await negotiate(h);
    // A request handler that breaks the session's own bookkeeping: completing a request twice is harmless,
    // but a transmission actor that throws on an event is a machine error.
    const tx = (h.session.connectionActor.getSnapshot().children as Record<string, { send: (e: unknown) => void }>).transmission!;
    const send = tx.send.bind(tx);
    tx.send = () => {
      throw new Error('boom');
    };
    await h.send(read(1n));
    tx.send = send;
    expect(h.closed).toEqual([{ outcome: 'negotiated', code: 'NBD_ERR_INTERNAL', reason: 'machine error on request: Error: boom' }]);
    expect(h.logs.filter((l) => l.startsWith('error:'))).toEqual(['error: connection 1: NBD_ERR_INTERNAL: machine error on request: Error: boom']);
  });

  it('a recorder detached while a burst is recorded (a live page that fell behind) stops there; the burst is still served', async () => {
    const h = start();
    await negotiate(h);
    const seen: bigint[] = [];
    const stand = {
      frameIn: (f: RequestFrame) => {
        seen.push(f.cookie);
        h.session.record(null); // what the live view does to a page that falls behind
      },
      refusal: () => {},
      replyOut: () => {},
      handshakeEffect: () => {},
      tls: () => {},
    };
    h.session.record(stand as unknown as Parameters<Session['record']>[0]);
    await h.send(Buffer.concat([read(1n), read(2n), read(3n)]));
    expect(seen).toEqual([1n]);
    expect(h.requests.map((r) => r.cookie)).toEqual([1n, 2n, 3n]);
  });
});
