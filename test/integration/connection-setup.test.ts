/**
 * How a connection is set up, on real UNIX sockets: the server builds the
 * next connection's actor while idle (never with an inspect hook), every
 * connection still starts from a fresh handshake, and the replies that end
 * the handshake reach the client before the transmission phase is set up.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { AnyActorRef, InspectionEvent } from 'xstate';
import { memoryBackend } from '../../src/index.js';
import { W, encodeClientFlags, encodeInfoGoData, encodeOption } from '../helpers/wire.js';
import { nbdPython, startServer, type Running } from './harness.js';
import { RawClient } from './raw-client.js';

const OPT = { GO: 7, STRUCTURED_REPLY: 8 };
const REP = { ACK: 1, INFO: 3 };
const CMD_DISC = 2;

let srv: Running | undefined;
afterEach(async () => {
  await srv?.close();
  srv = undefined;
});

async function optionReply(c: RawClient): Promise<{ option: number; type: number }> {
  const h = await c.read(20);
  expect(h.readBigUInt64BE(0)).toBe(W.REP_MAGIC);
  await c.read(h.readUInt32BE(16));
  return { option: h.readUInt32BE(8), type: h.readUInt32BE(12) };
}

/** Greeting, flags, STRUCTURED_REPLY, GO, DISC; returns the reply type STRUCTURED_REPLY got. */
async function shortSession(socket: string): Promise<number> {
  const c = await RawClient.connect({ path: socket });
  await c.readGreeting();
  await c.write(Buffer.concat([encodeClientFlags(3), encodeOption(OPT.STRUCTURED_REPLY)]));
  const sr = await optionReply(c);
  expect(sr.option).toBe(OPT.STRUCTURED_REPLY);
  await c.write(encodeOption(OPT.GO, encodeInfoGoData('', [])));
  for (;;) {
    const r = await optionReply(c);
    expect(r.option).toBe(OPT.GO);
    if (r.type === REP.ACK) break;
    expect(r.type).toBe(REP.INFO);
  }
  await c.write(RawClient.request(CMD_DISC, 0, 0));
  await c.closedP;
  return sr.type;
}

async function idle(server: Running['server']): Promise<void> {
  while (server.connectionCount > 0) await new Promise((r) => setTimeout(r, 5));
  // Two loop turns: the close is handled and the next actor is built.
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
}

describe('connection setup', () => {
  it('every connection in a row negotiates from a fresh handshake, including those given an actor built ahead of time', async () => {
    srv = await startServer({ exports: [{ name: '', size: 1 << 20, backend: memoryBackend({ size: 1 << 20 }) }] });
    // STRUCTURED_REPLY twice on one connection is refused (ERR_INVALID); on a fresh one it is ACKed.
    for (let i = 0; i < 5; i++) {
      expect(await shortSession(srv.socket)).toBe(REP.ACK);
      await idle(srv.server);
    }
    // Two at once: one takes the prepared actor, the other builds its own.
    expect(await Promise.all([shortSession(srv.socket), shortSession(srv.socket)])).toEqual([REP.ACK, REP.ACK]);
    expect(srv.logs.filter((l) => l.startsWith('error') || l.startsWith('warn'))).toEqual([]);
  });

  it('with an inspect hook no actor is built ahead of time: one connection actor per connection', async () => {
    const roots = new Set<string>();
    const inspect = (ev: InspectionEvent) => {
      const ref = ev.actorRef as AnyActorRef;
      if (ev.type === '@xstate.actor' && ev.rootId === ref.sessionId) roots.add(ref.sessionId);
    };
    srv = await startServer({ exports: [{ name: '', size: 1 << 20, backend: memoryBackend({ size: 1 << 20 }) }], inspect });
    await idle(srv.server);
    expect(roots.size).toBe(0);
    for (let i = 0; i < 3; i++) {
      expect(await shortSession(srv.socket)).toBe(REP.ACK);
      await idle(srv.server);
    }
    expect(roots.size).toBe(3);
  });

  it("GO's replies reach the client before the server sets up the transmission phase", async () => {
    srv = await startServer({ exports: [{ name: '', size: 1 << 20, backend: memoryBackend({ size: 1 << 20 }) }] });
    const blockMs = 1500;
    let negotiatedAt = 0;
    const sub = srv.server.connections$.subscribe((ev) => {
      if (ev.type !== 'negotiated') return;
      negotiatedAt = Date.now();
      // Hold the event loop, as a slow onNegotiated step would: nothing more is written meanwhile.
      while (Date.now() - negotiatedAt < blockMs);
    });
    try {
      // libnbd's connect returns once GO's ACK has arrived; the client prints when that was.
      const out = await nbdPython(
        'import nbd, sys, time\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nprint(time.time() * 1000)\nh.shutdown()',
        [srv.uri()],
      );
      const connectedAt = Number(out.trim());
      expect(negotiatedAt).toBeGreaterThan(0);
      // Had the ACK waited for the blocked step, the client would have it blockMs later.
      expect(connectedAt - negotiatedAt).toBeLessThan(blockMs / 2);
    } finally {
      sub.unsubscribe();
    }
  });
});
