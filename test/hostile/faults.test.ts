/**
 * Clients that vanish at every point of a connection (issue 11, part 2),
 * each way: FIN (`socket.end()`: the server reads EOF; the client keeps
 * its end open, discarding what arrives, until the server closes) and RST
 * (`socket.resetAndDestroy()`: TCP reset). Points: after the greeting,
 * mid client flags, mid option header, mid option payload, after GO before
 * its reply is read, mid request header, mid WRITE payload (buffered and
 * zero-copy sizes), with replies unread, mid TLS handshake (ClientHello cut
 * short, and after the server's first flight).
 *
 * All the while a verifying client on another connection writes a pattern
 * and reads it back, continuously; any mismatch or error fails. After each
 * fault the server is still up (a new client negotiates and does I/O),
 * nothing was logged at error level, no exception escaped, and the open
 * descriptors of this process (/proc/self/fd) and the live sessions
 * (server.connectionCount) return to their baseline: polled, with a
 * generous cap, never a fixed sleep.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createServer, memoryBackend, type Backend, type NbdServer } from '../../src/index.js';
import { recordingLogger, tmpDir } from '../integration/harness.js';
import { makePki } from '../integration/tls-support.js';
import type { ByteReader } from '../helpers/byte-reader.js';
import { CLIENT_FLAG, CMD, OPT, REP, SIZE as FRAME, encodeClientFlags, encodeInfoGoData, encodeOption, encodeRequest } from '../helpers/wire.js';
import { GoodClient, MiB, blockPattern, connectReader, duplexPair, fdCount, readGreeting, waitUntil, watchCrashes, within } from './support.js';

const EXPORT = 'disk';
const SIZE = 64 * MiB;
/** Blocks [0, VERIFY_BLOCKS) belong to the verifying client; faulty clients write above them. */
const VERIFY_BLOCKS = 256;
const BLOCK = 4096;
/** Repetitions of every fault (each with a fresh connection). */
const REPEAT = 3;
/** Cap for the server to return to baseline after a fault (a hang detector, not a timing assertion). */
const SETTLE_CAP = 15_000;

let server: NbdServer;
let dir: string;
let socketPath: string;
let tcp: { port: number; host: string };
let pki: string;
const logs: string[] = [];
let readsServed = 0;
let crashes: ReturnType<typeof watchCrashes>;

/** The continuous verifier: write a pattern, read it back, compare, forever (until stopped). */
const verifier = { rounds: 0, errors: [] as string[], stop: false, done: Promise.resolve() };

async function runVerifier(): Promise<void> {
  const c = await GoodClient.connect({ path: socketPath });
  await c.handshake(EXPORT);
  let block = 0;
  while (!verifier.stop) {
    const data = blockPattern(BLOCK, 0xfeed, verifier.rounds);
    try {
      await within(c.verify(block * BLOCK, data), 10_000, `verifier round ${verifier.rounds}`);
    } catch (e) {
      verifier.errors.push(e instanceof Error ? e.message : String(e));
      return;
    }
    verifier.rounds++;
    block = (block + 1) % VERIFY_BLOCKS;
  }
  const closed = new Promise((r) => c.stream.once('close', r));
  c.disconnect();
  await closed;
}

beforeAll(async () => {
  crashes = watchCrashes();
  dir = tmpDir('nbd-hostile-faults-');
  socketPath = path.join(dir, 'nbd.sock');
  pki = makePki(path.join(dir, 'pki'));
  const mem = memoryBackend({ size: SIZE });
  // The same backend, counting READs served (to know replies are queued before a client vanishes).
  const counted: Backend = {
    ...mem,
    size: SIZE,
    read: (o, l) => {
      readsServed++;
      return mem.read(o, l);
    },
  };
  server = createServer({
    logger: recordingLogger(logs),
    exports: [{ name: EXPORT, backend: counted }],
    // No handshake timeout: a connection must be released because its client left, not because time ran out.
    limits: { handshakeTimeout: 0 },
    tls: { mode: 'on', cert: path.join(pki, 'server-cert.pem'), key: path.join(pki, 'server-key.pem') },
  });
  await server.listen({ path: socketPath });
  const [l] = await server.listen({ port: 0, host: '127.0.0.1' });
  tcp = { port: l!.address.port!, host: '127.0.0.1' };
  verifier.done = runVerifier();
  await waitUntil(() => verifier.rounds > 0 || verifier.errors.length > 0, 10_000, () => 'the verifier to start');
});

afterAll(async () => {
  verifier.stop = true;
  await verifier.done;
  crashes?.stop();
  await server?.close({ timeout: 2000 });
  fs.rmSync(dir, { recursive: true, force: true });
  console.log(`faults: verifier did ${verifier.rounds} write/read-back rounds, ${verifier.errors.length} errors`);
  expect(verifier.errors).toEqual([]);
});

afterEach(() => {
  expect(crashes.count, String(crashes.first)).toBe(0);
  expect(logs.filter((l) => l.startsWith('error:'))).toEqual([]);
  expect(verifier.errors).toEqual([]);
});

// ── a faulty client ──────────────────────────────────────────────────────

type How = 'FIN' | 'RST';

/** ECONNRESET / EPIPE once the server dropped us are expected: the reader records them. */
const connectTcp = () => connectReader(tcp);

/**
 * FIN: half-close, then keep reading (discarding) until the server closes
 * its side; the client's own end is destroyed after that. RST: reset now.
 */
async function vanish(sock: net.Socket, reader: ByteReader, how: How): Promise<void> {
  if (how === 'RST') {
    sock.resetAndDestroy();
    return;
  }
  const closed = new Promise((r) => sock.once('close', r));
  sock.end();
  reader.discard();
  await within(closed, SETTLE_CAP, 'the server closing after the client FIN').finally(() => sock.destroy());
}

async function greeting(reader: ByteReader): Promise<void> {
  await readGreeting(reader, 5000);
}

const clientFlags = encodeClientFlags(CLIENT_FLAG.FIXED_NEWSTYLE | CLIENT_FLAG.NO_ZEROES);
const goOption = encodeOption(OPT.GO, encodeInfoGoData(EXPORT));

/** Greeting, flags and GO; reads up to GO's ACK. */
async function negotiate(sock: net.Socket, reader: ByteReader): Promise<void> {
  await within(new GoodClient(sock, reader).handshake(EXPORT), 5000, 'GO');
}

/** The first bytes a TLS client sends (its ClientHello), captured through an in-process pair. */
async function clientHello(): Promise<Buffer> {
  const { client, server: end } = duplexPair();
  const first = new Promise<Buffer>((r) => end.once('data', r));
  const t = tls.connect({ socket: client, servername: 'localhost', ca: fs.readFileSync(path.join(pki, 'ca-cert.pem')) });
  t.on('error', () => {});
  const hello = await first;
  t.destroy();
  end.destroy();
  return hello;
}

/** Negotiate STARTTLS in plaintext up to the server's ACK. */
async function starttls(sock: net.Socket, reader: ByteReader): Promise<void> {
  await greeting(reader);
  sock.write(Buffer.concat([clientFlags, encodeOption(OPT.STARTTLS)]));
  const h = await within(reader.read(FRAME.OPTION_REPLY_HEADER), 5000, 'STARTTLS reply');
  if (h.readUInt32BE(12) !== REP.ACK) throw new Error(`STARTTLS refused 0x${h.readUInt32BE(12).toString(16)}`);
}

/** Each fault: bring a connection to the point, then vanish. */
const FAULTS: Record<string, (how: How) => Promise<void>> = {
  'after the greeting': async (how) => {
    const { sock, reader } = await connectTcp();
    await greeting(reader);
    await vanish(sock, reader, how);
  },
  'mid client flags': async (how) => {
    const { sock, reader } = await connectTcp();
    await greeting(reader);
    sock.write(clientFlags.subarray(0, 2));
    await vanish(sock, reader, how);
  },
  'mid option header': async (how) => {
    const { sock, reader } = await connectTcp();
    await greeting(reader);
    sock.write(Buffer.concat([clientFlags, goOption.subarray(0, 10)]));
    await vanish(sock, reader, how);
  },
  'mid option payload': async (how) => {
    const { sock, reader } = await connectTcp();
    await greeting(reader);
    sock.write(Buffer.concat([clientFlags, goOption.subarray(0, FRAME.OPTION_HEADER + 5)]));
    await vanish(sock, reader, how);
  },
  'after GO, before its reply is read': async (how) => {
    const { sock, reader } = await connectTcp();
    await greeting(reader);
    sock.pause(); // the replies stay unread
    await new Promise<void>((r) => sock.write(Buffer.concat([clientFlags, goOption]), () => r()));
    await vanish(sock, reader, how);
  },
  'mid request header': async (how) => {
    const { sock, reader } = await connectTcp();
    await negotiate(sock, reader);
    sock.write(encodeRequest({ flags: 0, type: CMD.READ, cookie: 1n, offset: 0, length: BLOCK }).subarray(0, 13));
    await vanish(sock, reader, how);
  },
  'mid WRITE payload (4 KiB, buffered)': async (how) => {
    const { sock, reader } = await connectTcp();
    await negotiate(sock, reader);
    const w = encodeRequest({ flags: 0, type: CMD.WRITE, cookie: 1n, offset: VERIFY_BLOCKS * BLOCK, length: BLOCK }, Buffer.alloc(BLOCK, 0xaa));
    await new Promise<void>((r) => sock.write(w.subarray(0, FRAME.REQUEST + 1000), () => r()));
    await vanish(sock, reader, how);
  },
  'mid WRITE payload (1 MiB, received in place)': async (how) => {
    const { sock, reader } = await connectTcp();
    await negotiate(sock, reader);
    const w = encodeRequest({ flags: 0, type: CMD.WRITE, cookie: 1n, offset: 8 * MiB, length: MiB }, Buffer.alloc(MiB, 0xbb));
    await new Promise<void>((r) => sock.write(w.subarray(0, FRAME.REQUEST + 300 * 1024), () => r()));
    await vanish(sock, reader, how);
  },
  'with replies unread': async (how) => {
    const { sock, reader } = await connectTcp();
    await negotiate(sock, reader);
    sock.pause();
    // 512 READs of 256 KiB: far more reply bytes than any socket buffer holds.
    const before = readsServed;
    const reqs = Array.from({ length: 512 }, (_, i) => encodeRequest({ flags: 0, type: CMD.READ, cookie: BigInt(i + 1), offset: (i % 200) * 256 * 1024, length: 256 * 1024 }));
    sock.write(Buffer.concat(reqs));
    await waitUntil(() => readsServed - before >= 16, SETTLE_CAP, () => `the server to serve READs (${readsServed - before} so far)`);
    await vanish(sock, reader, how);
  },
  'mid TLS handshake (ClientHello cut short)': async (how) => {
    const hello = await clientHello();
    const { sock, reader } = await connectTcp();
    await starttls(sock, reader);
    await new Promise<void>((r) => sock.write(hello.subarray(0, Math.floor(hello.length / 2)), () => r()));
    await vanish(sock, reader, how);
  },
  "mid TLS handshake (after the server's first flight)": async (how) => {
    const { sock, reader } = await connectTcp();
    await starttls(sock, reader);
    // A real TLS client through an in-process pair: its ClientHello goes to the server, the server's
    // answer comes back to us and is never passed on, so the handshake never finishes.
    const { client, server: end } = duplexPair();
    const t = tls.connect({ socket: client, servername: 'localhost', ca: fs.readFileSync(path.join(pki, 'ca-cert.pem')) });
    t.on('error', () => {});
    end.on('data', (d: Buffer) => sock.write(d));
    await within(reader.read(5), 5000, "the server's first TLS record");
    t.destroy();
    end.destroy();
    await vanish(sock, reader, how);
  },
};

// ── the tests ────────────────────────────────────────────────────────────

/** Live sessions with no fault going on: the verifier's. */
const SESSIONS_BASELINE = 1;
const baseline = { fds: 0, sessions: SESSIONS_BASELINE };
const figures: string[] = [];

describe('clients that vanish mid-connection, while another connection verifies its I/O', () => {
  for (const [point, fault] of Object.entries(FAULTS)) {
    for (const how of ['FIN', 'RST'] as const) {
      it(`${how} ${point}`, async () => {
        baseline.fds = fdCount();
        const roundsBefore = verifier.rounds;
        for (let i = 0; i < REPEAT; i++) await fault(how);
        await waitUntil(
          () => server.connectionCount === baseline.sessions && fdCount() <= baseline.fds,
          SETTLE_CAP,
          () => `sessions ${server.connectionCount} (baseline ${baseline.sessions}) and descriptors ${fdCount()} (baseline ${baseline.fds})`,
        );
        // The server is still up: a new client negotiates and does verified I/O.
        const c = await GoodClient.connect({ path: socketPath });
        await within(c.handshake(EXPORT), 5000, 'a new client negotiating');
        await within(c.verify((VERIFY_BLOCKS + 1) * BLOCK, blockPattern(BLOCK, 0xbeef, roundsBefore)), 5000, 'a new client writing and reading back');
        const closed = new Promise((r) => c.stream.once('close', r));
        c.disconnect();
        await within(closed, 5000, 'the new client disconnecting');
        // …and the verifier kept going through the faults.
        await waitUntil(() => verifier.rounds > roundsBefore || verifier.errors.length > 0, SETTLE_CAP, () => 'the verifier to make progress');
        await waitUntil(() => server.connectionCount === baseline.sessions && fdCount() <= baseline.fds, SETTLE_CAP, () => 'baseline after the check client');
        figures.push(`${how} ${point}: baseline ${baseline.sessions} sessions / ${baseline.fds} fds, back to ${server.connectionCount} / ${fdCount()}`);
      });
    }
  }

  it('figures', () => {
    console.log(`faults (${REPEAT} connections each):\n  ${figures.join('\n  ')}\nverifier rounds so far: ${verifier.rounds}`);
    expect(figures.length).toBe(Object.keys(FAULTS).length * 2);
  });
});
