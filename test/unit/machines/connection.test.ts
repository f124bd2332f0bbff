/**
 * The connection machine: its `phase` region (handshake → transmission →
 * closed) and its `reading` region (flowing ⇄ paused → stopped), whose
 * states are what the transport does with the socket's input.
 */
import { createActor, type AnyActorRef } from 'xstate';
import { describe, expect, it } from 'vitest';
import { connectionMachine, type ConnectionEmitted } from '../../../src/machines/connection.js';
import type { TransmissionEmitted } from '../../../src/machines/types.js';
import { CMD } from '../../../src/protocol/constants.js';
import { DEFAULT_INPUT, O, infoGoData, opt, request } from './support.js';

function start() {
  const actor = createActor(connectionMachine, { input: { handshake: DEFAULT_INPUT, maxPayload: 1 << 20 } });
  const effects: ConnectionEmitted['type'][] = [];
  actor.on('*', (e: ConnectionEmitted) => effects.push(e.type));
  actor.start();
  const child = (id: 'handshake' | 'transmission') => (actor.getSnapshot().children as Record<string, AnyActorRef | undefined>)[id];
  const value = () => actor.getSnapshot().value as { phase: string; reading: string };
  return { actor, effects, child, value };
}

/** Negotiate the default export with fixed-newstyle flags and GO. */
function negotiate(c: ReturnType<typeof start>): void {
  const hs = c.child('handshake')!;
  hs.send({ type: 'wire.clientFlags', flags: 3 });
  hs.send(opt(O.GO, infoGoData('disk')));
  expect(c.value().phase).toBe('transmission');
}

describe('connection machine', () => {
  it('reading: budget.full pauses once, budget.room resumes once; repeated crossings change nothing', () => {
    const c = start();
    expect(c.value()).toEqual({ phase: 'handshake', reading: 'flowing' });
    c.actor.send({ type: 'budget.room' });
    expect(c.effects).toEqual([]);
    c.actor.send({ type: 'budget.full' });
    c.actor.send({ type: 'budget.full' });
    expect(c.value().reading).toBe('paused');
    expect(c.effects).toEqual(['pauseReading']);
    c.actor.send({ type: 'budget.room' });
    c.actor.send({ type: 'budget.room' });
    expect(c.value().reading).toBe('flowing');
    expect(c.effects).toEqual(['pauseReading', 'resumeReading']);
  });

  it('reading is paused and resumed in the transmission phase too, and requests are still validated while paused', () => {
    const c = start();
    negotiate(c);
    const tx = c.child('transmission')!;
    const out: TransmissionEmitted[] = [];
    tx.on('*', (e: TransmissionEmitted) => out.push(e));
    c.actor.send({ type: 'budget.full' });
    expect(c.value()).toEqual({ phase: 'transmission', reading: 'paused' });
    // Frames decoded before the pause still go through the same check.
    tx.send({ type: 'request', frame: request({ type: CMD.NBD_CMD_READ, offset: 0, length: 512 }) });
    tx.send({ type: 'request', frame: request({ type: 99, offset: 0, length: 512 }) });
    expect(out.map((e) => e.type)).toEqual(['request', 'refuse']);
    c.actor.send({ type: 'budget.room' });
    expect(c.effects).toEqual(['pauseReading', 'resumeReading']);
  });

  it('when the phase closes, reading stops (from flowing: stopReading only) and the machine is done', () => {
    const c = start();
    c.child('handshake')!.send({ type: 'socket.closed' });
    expect(c.value()).toEqual({ phase: 'closed', reading: 'stopped' });
    expect(c.effects).toEqual(['stopReading']);
    expect(c.actor.getSnapshot().status).toBe('done');
    expect(c.actor.getSnapshot().output).toEqual({ outcome: 'disconnected', negotiated: null });
  });

  it('a paused connection that closes resumes, then stops reading for good', () => {
    const c = start();
    negotiate(c);
    c.actor.send({ type: 'budget.full' });
    const tx = c.child('transmission')!;
    tx.send({ type: 'request', frame: request({ type: CMD.NBD_CMD_DISC }) });
    tx.send({ type: 'inflight.idle' });
    expect(c.value()).toEqual({ phase: 'closed', reading: 'stopped' });
    expect(c.effects).toEqual(['pauseReading', 'resumeReading', 'stopReading']);
    expect(c.actor.getSnapshot().status).toBe('done');
    expect(c.actor.getSnapshot().output?.outcome).toBe('negotiated');
  });
});
