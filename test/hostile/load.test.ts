/**
 * Many connections at once (issue 11, part 4).
 *
 * 1. 1,000 concurrent connections over TCP: each negotiates, writes a
 *    block of its own and reads it back; all of them are open and negotiated
 *    at the same moment (they wait for each other before disconnecting).
 *    Memory per connection is reported: RSS delta / connections (this process
 *    holds both ends of every connection, so it counts both).
 * 2. 1,000 idle connections (connect, read the greeting, send nothing)
 *    against a server with `limits: { handshakeTimeout: 1000 }`: the server
 *    closes every one of them, and a well-behaved client negotiates and does
 *    verified I/O while they are open.
 * Afterwards sessions and descriptors return to their baseline (polled).
 *
 * The test process holds 2 descriptors per connection: it refuses to run
 * (failing, with the reason) when `ulimit -n` is too low for that.
 */
import fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { createServer, memoryBackend, type NbdServer } from '../../src/index.js';
import { recordingLogger } from '../integration/harness.js';
import { GoodClient, MiB, blockPattern, connectReader, fdCount, mib, readGreeting, waitUntil, watchCrashes, within } from './support.js';

const CONNECTIONS = 1000;
const BLOCK = 4096;
const CAP = 60_000;

/** The soft limit on open descriptors (`ulimit -n`). */
function openFilesLimit(): number {
  const line = fs.readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
  const soft = line?.split(/\s{2,}/)[1];
  return soft === undefined || soft === 'unlimited' ? Infinity : Number(soft);
}

function needDescriptors(connections: number): void {
  const need = fdCount() + 2 * connections + 64;
  const limit = openFilesLimit();
  if (limit < need) throw new Error(`ulimit -n is ${limit}; this test holds both ends of ${connections} connections and needs about ${need}: raise it (ulimit -n ${need})`);
}

let server: NbdServer | undefined;
let tcp: { port: number; host: string };
const logs: string[] = [];

async function start(limits: NonNullable<Parameters<typeof createServer>[0]['limits']>): Promise<NbdServer> {
  logs.length = 0;
  server = createServer({ logger: recordingLogger(logs), exports: [{ name: 'load', backend: memoryBackend({ size: 64 * MiB }) }], limits });
  const [l] = await server.listen({ port: 0, host: '127.0.0.1' });
  tcp = { port: l!.address.port!, host: '127.0.0.1' };
  return server;
}

afterEach(async () => {
  await server?.close({ timeout: 5000 });
  server = undefined;
});

describe('load', () => {
  it(`${CONNECTIONS} concurrent connections negotiate and do verified I/O`, async () => {
    needDescriptors(CONNECTIONS);
    const crashes = watchCrashes();
    const srv = await start({ handshakeTimeout: CAP });
    const fds = fdCount();
    const rssBefore = process.memoryUsage.rss();
    let arrived = 0;
    let release!: () => void;
    const barrier = new Promise<void>((r) => (release = r));
    let peakSessions = 0;
    let rssAtPeak = 0;
    const errors: string[] = [];
    const one = async (i: number) => {
      const c = await GoodClient.connect(tcp);
      try {
        await c.handshake('load');
        await c.verify(i * BLOCK, blockPattern(BLOCK, 0x10ad, i));
      } catch (e) {
        errors.push(`connection ${i}: ${e instanceof Error ? e.message : String(e)}`);
      }
      if (++arrived === CONNECTIONS) {
        peakSessions = srv.connectionCount;
        rssAtPeak = process.memoryUsage.rss();
        release();
      }
      await barrier;
      const closed = new Promise((r) => c.stream.once('close', r));
      c.disconnect();
      await closed;
    };
    await within(
      Promise.all(Array.from({ length: CONNECTIONS }, (_, i) => one(i).catch((e: Error) => void errors.push(`connection ${i}: ${e.message}`)))),
      CAP,
      `${CONNECTIONS} connections (${arrived} done)`,
    );
    await waitUntil(() => srv.connectionCount === 0 && fdCount() <= fds, CAP, () => `sessions ${srv.connectionCount}, descriptors ${fdCount()} (baseline ${fds})`);
    crashes.stop();
    const perConnection = (rssAtPeak - rssBefore) / CONNECTIONS;
    console.log(
      `load: ${CONNECTIONS} connections, ${peakSessions} sessions open at once, ${errors.length} errors; ` +
        `RSS ${mib(rssBefore)} → ${mib(rssAtPeak)} with all open: ${(perConnection / 1024).toFixed(1)} KiB per connection (both ends in this process)`,
    );
    expect(errors.slice(0, 5)).toEqual([]);
    expect(peakSessions).toBe(CONNECTIONS);
    expect(crashes.count).toBe(0);
    expect(logs.filter((l) => l.startsWith('error:'))).toEqual([]);
  });

  it(`${CONNECTIONS} idle connections are dropped by the handshake timeout while a good client works`, async () => {
    needDescriptors(CONNECTIONS + 1);
    const crashes = watchCrashes();
    const srv = await start({ handshakeTimeout: 1000 });
    const fds = fdCount();
    let closedByServer = 0;
    let greeted = 0;
    const idle = async () => {
      const { sock, reader } = await connectReader(tcp);
      await readGreeting(reader);
      greeted++;
      // Send nothing. The server must close; we never do.
      await new Promise((r) => sock.once('close', r));
      closedByServer++;
    };
    const idleErrors: string[] = [];
    const all = Promise.all(Array.from({ length: CONNECTIONS }, () => idle().catch((e: Error) => void idleErrors.push(e.message))));
    // While they are open (the first ones are greeted), a well-behaved client negotiates and does verified I/O.
    await waitUntil(() => greeted >= CONNECTIONS / 2 || idleErrors.length > 0, CAP, () => `idle connections greeted (${greeted})`);
    const good = await GoodClient.connect(tcp);
    await within(good.handshake('load'), 5000, 'the good client negotiating');
    for (let i = 0; i < 16; i++) await within(good.verify(i * BLOCK, blockPattern(BLOCK, 0x1d1e, i)), 5000, 'the good client doing I/O');
    const goodClosed = new Promise((r) => good.stream.once('close', r));
    good.disconnect();
    await within(goodClosed, 5000, 'the good client disconnecting');
    await within(all, CAP, `the server closing idle connections (${closedByServer} of ${CONNECTIONS} so far)`);
    await waitUntil(() => srv.connectionCount === 0 && fdCount() <= fds, CAP, () => `sessions ${srv.connectionCount}, descriptors ${fdCount()} (baseline ${fds})`);
    crashes.stop();
    const timeoutLines = logs.filter((l) => /handshake/i.test(l) && /^warn:/.test(l)).length;
    console.log(
      `load: ${CONNECTIONS} idle connections: ${greeted} greeted, ${closedByServer} closed by the server, ${idleErrors.length} errors, ` +
        `${timeoutLines} handshake-timeout warnings`,
    );
    expect(idleErrors.slice(0, 5)).toEqual([]);
    expect(closedByServer).toBe(CONNECTIONS);
    expect(crashes.count).toBe(0);
    expect(logs.filter((l) => l.startsWith('error:'))).toEqual([]);
  });
});
