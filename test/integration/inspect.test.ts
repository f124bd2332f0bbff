/**
 * xstate inspection: createServer({ inspect }) sees every connection's
 * handshake and transmission actors while a real client (nbdinfo) connects.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AnyActorRef, InspectionEvent } from 'xstate';
import { memoryBackend } from '../../src/index.js';
import { requireTool, run, startServer, type Running } from './harness.js';
import { RawClient, requestBytes } from './raw-client.js';

interface Seen {
  index: number;
  type: string;
  actorId: string;
  sessionId: string;
  value?: string;
  eventType?: string;
  /** Microsteps: each transition taken, as `event(guard) → actions`. */
  transitions?: string[];
  /** Emitted effects (xstate.emit actions): the event emitted. */
  emitted?: { type: string; code?: string; refused?: Array<{ code: string }>; accepted?: unknown[] };
}

const events: Seen[] = [];
/** The handshake's snapshot value while it haggles options in its open mode (a compound state: JSON). */
const OPTIONS_OPEN = JSON.stringify({ options: 'open' });
let srv: Running;

function record(ev: InspectionEvent): void {
  const ref = ev.actorRef as AnyActorRef;
  // The connection actor is each actor system's root (its id is its sessionId): name it.
  const actorId = ev.rootId === ref.sessionId ? 'connection' : ref.id;
  const seen: Seen = { index: events.length, type: ev.type, actorId, sessionId: ref.sessionId };
  if (ev.type === '@xstate.snapshot') {
    const v = (ev.snapshot as { value?: unknown }).value;
    seen.value = typeof v === 'string' ? v : JSON.stringify(v);
  }
  if (ev.type === '@xstate.event') seen.eventType = ev.event.type;
  if (ev.type === '@xstate.microstep') {
    seen.transitions = ev._transitions.map((t) => {
      const guard = t.guard === undefined ? '' : `(${typeof t.guard === 'string' ? t.guard : (t.guard as { type: string }).type})`;
      const actions = t.actions.map((a) => (typeof a === 'string' ? a : (a as { type: string }).type));
      return `${t.eventType}${guard} → ${actions.join(', ')}`;
    });
  }
  if (ev.type === '@xstate.action' && ev.action.type === 'xstate.emit') seen.emitted = (ev.action.params as { event: Seen['emitted'] }).event;
  events.push(seen);
}

/** Consecutive-distinct values of the snapshots of one actor. */
function distinctStates(actorId: string, sessionId: string): Array<{ value: string; index: number }> {
  const out: Array<{ value: string; index: number }> = [];
  for (const e of events) {
    if (e.type !== '@xstate.snapshot' || e.actorId !== actorId || e.sessionId !== sessionId) continue;
    if (out.at(-1)?.value !== e.value) out.push({ value: e.value!, index: e.index });
  }
  return out;
}

function sessionsOf(actorId: string): string[] {
  return [...new Set(events.filter((e) => e.actorId === actorId).map((e) => e.sessionId))];
}

beforeAll(async () => {
  requireTool('nbdinfo');
  // An Observer object, as xstate's inspect option accepts.
  srv = await startServer({
    exports: [{ name: 'disk', size: 1 << 20, backend: memoryBackend({ size: 1 << 20 }) }],
    inspect: { next: record },
  });
});
afterAll(async () => {
  await srv?.close();
});

describe('inspection', () => {
  it('one nbdinfo: handshake states in order up to negotiated, then transmission states', async () => {
    const { stdout } = await run('nbdinfo', [srv.uri()]);
    expect(stdout).toMatch(/export-size: 1048576/);
    // The close of the connection is reported asynchronously.
    await new Promise((r) => setTimeout(r, 100));

    const hsSessions = sessionsOf('handshake');
    expect(hsSessions).toHaveLength(1);
    const hs = distinctStates('handshake', hsSessions[0]!);
    const values = hs.map((s) => s.value);
    // greeting is transient (`always`): the first state seen is greeting or awaitingClientFlags.
    expect(['greeting', 'awaitingClientFlags']).toContain(values[0]);
    const afterGreeting = values[0] === 'greeting' ? values.slice(1) : values;
    expect(afterGreeting[0]).toBe('awaitingClientFlags');
    // Option haggling is `options` in one of its modes: nbdinfo asks for fixed newstyle and TLS is off, so `open`.
    expect(afterGreeting[1]).toBe(OPTIONS_OPEN);
    const negotiatedAt = values.indexOf('negotiated');
    expect(negotiatedAt).toBeGreaterThan(values.indexOf(OPTIONS_OPEN));
    expect(values.at(-1)).toBe('negotiated');
    expect(values).not.toContain('rejected');
    expect(values).not.toContain('aborted');

    const txSessions = sessionsOf('transmission');
    expect(txSessions).toHaveLength(1);
    const tx = distinctStates('transmission', txSessions[0]!);
    expect(tx.length).toBeGreaterThan(0);
    expect(tx[0]!.value).toBe('open');
    // The transmission actor starts only once the handshake is done with `negotiated`:
    // after its last `options` snapshot and after the connection received its done event.
    // (xstate reports a finished child's final snapshot after its parent reacted to it,
    // so the `negotiated` snapshot itself may be listed after the first transmission one.)
    const lastOptions = hs[negotiatedAt - 1]!;
    expect(lastOptions.value).toBe(OPTIONS_OPEN);
    const done = events.find((e) => e.type === '@xstate.event' && e.actorId === 'connection' && e.eventType === 'xstate.done.actor.handshake');
    expect(done).toBeDefined();
    expect(done!.index).toBeGreaterThan(lastOptions.index);
    const txCreated = events.find((e) => e.type === '@xstate.actor' && e.actorId === 'transmission')!;
    expect(txCreated.index).toBeGreaterThan(done!.index);
    expect(tx[0]!.index).toBeGreaterThan(done!.index);
    const connStates = distinctStates('connection', sessionsOf('connection')[0]!).map((s) => s.value);
    // Two regions: the phase, and reading (never paused for one nbdinfo; stopped once the phase is closed).
    expect(connStates.map((v) => JSON.parse(v))).toEqual([
      { phase: 'handshake', reading: 'flowing' },
      { phase: 'transmission', reading: 'flowing' },
      { phase: 'closed', reading: 'stopped' },
    ]);
    // nbdinfo disconnects with NBD_CMD_DISC: the machine ends in `closed`.
    expect(tx.at(-1)!.value).toBe('closed');

    // The option events the handshake saw, as nbdinfo sends them.
    const hsEvents = events.filter((e) => e.type === '@xstate.event' && e.actorId === 'handshake').map((e) => e.eventType!);
    expect(hsEvents).toContain('wire.clientFlags');
    expect(hsEvents.some((t) => t === 'opt.go' || t === 'opt.info')).toBe(true);
    expect(hsEvents).toContain('opt.go');
    expect(hsEvents.indexOf('opt.go')).toBeGreaterThan(hsEvents.indexOf('wire.clientFlags'));
    // The connection actor is there as the parent of both.
    expect(sessionsOf('connection')).toHaveLength(1);
  });

  it('a second connection gets its own actors (distinct sessionIds)', async () => {
    const before = new Set(sessionsOf('handshake'));
    const beforeTx = new Set(sessionsOf('transmission'));
    await run('nbdinfo', ['--size', srv.uri()]);
    await new Promise((r) => setTimeout(r, 100));
    const fresh = sessionsOf('handshake').filter((s) => !before.has(s));
    expect(fresh).toHaveLength(1);
    expect(before.size).toBe(1);
    const freshTx = sessionsOf('transmission').filter((s) => !beforeTx.has(s));
    expect(freshTx).toHaveLength(1);
    expect(sessionsOf('connection')).toHaveLength(2);
    const hs = distinctStates('handshake', fresh[0]!).map((s) => s.value);
    expect(hs.at(-1)).toBe('negotiated');
    expect(hs).toContain(OPTIONS_OPEN);
    // All actor sessionIds are distinct across the two connections.
    const all = [...sessionsOf('handshake'), ...sessionsOf('transmission'), ...sessionsOf('connection')];
    expect(new Set(all).size).toBe(all.length);
  });

  it('what decided each request is on the inspector: the one `validate` action for a single request and a burst, and the refusal code in its effect', async () => {
    const before = new Set(sessionsOf('transmission'));
    const c = await RawClient.open({ path: srv.socket }, 'disk');
    // A burst of three (one past the end), in one write, then a single request.
    c.send(
      Buffer.concat([
        requestBytes({ type: 0, offset: 0, length: 512, cookie: 1n }),
        requestBytes({ type: 0, offset: 1 << 20, length: 512, cookie: 2n }),
        requestBytes({ type: 0, offset: 512, length: 512, cookie: 3n }),
      ]),
    );
    const replies = [];
    for (let i = 0; i < 3; i++) replies.push(await c.readSimpleReply((k) => (k === 2n ? 0 : 512)));
    c.send(requestBytes({ type: 0, offset: 4096, length: 512, cookie: 4n }));
    replies.push(await c.readSimpleReply(() => 512));
    expect(replies.map((r) => [r.cookie, r.error]).sort()).toEqual([
      [1n, 0],
      [2n, 22],
      [3n, 0],
      [4n, 0],
    ]);
    c.destroy();
    await new Promise((r) => setTimeout(r, 100));
    const tx = sessionsOf('transmission').filter((x) => !before.has(x));
    expect(tx).toHaveLength(1);
    const mine = events.filter((e) => e.actorId === 'transmission' && e.sessionId === tx[0]);
    // Every request event was decided by `validate` (the burst may arrive in one or more reads).
    const steps = mine.flatMap((e) => e.transitions ?? []).filter((t) => t.startsWith('request'));
    expect(steps.length).toBeGreaterThanOrEqual(2);
    for (const t of steps) expect(t).toMatch(/^requests? → validate$/);
    // And its effects say what it decided: three accepted and the refusal with its code.
    const effects = mine.flatMap((e) => (e.emitted ? [e.emitted] : []));
    const refusals = effects.flatMap((e) => (e.type === 'refuse' ? [e.code] : e.type === 'requests' ? e.refused!.map((r) => r.code) : []));
    expect(refusals).toEqual(['transmission.out-of-bounds']);
    const accepted = effects.reduce((n, e) => n + (e.type === 'request' ? 1 : e.type === 'requests' ? e.accepted!.length : 0), 0);
    expect(accepted).toBe(3);
  });
});
