#!/usr/bin/env node
// Issue 12 item 4, measured: the machines' CPU per connection with the connection machine as shipped
// (A: the handshake and transmission machines invoked as child actors, three actors per connection)
// against one actor (B: their states nested in the connection machine, built here from the shipped
// machines' configs and implementations). No sockets: the events of an `nbdinfo --size` connection
// (client flags, STRUCTURED_REPLY, GO, DISC, and the transport's inflight.idle) are captured once from
// a real connection through the server's inspect hook and replayed on fresh actors; blocks of A and B
// alternate, medians of 8 blocks. `cold` touches 16 MiB between connections (caches cold, as between
// real clients), its own CPU not counted.
//
//   npm run build && node bench/one-actor.mjs tight
//   node bench/one-actor.mjs cold
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setup, assign, emit, createActor } from 'xstate';

const dist = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'dist');
const { connectionMachine } = await import(dist + '/machines/connection.js');
const { handshakeMachine } = await import(dist + '/machines/handshake.js');
const { transmissionMachine, transmissionContext } = await import(dist + '/machines/transmission.js');
const { handshakeContext } = await import(dist + '/machines/handshake-input.js');
const { createServer, memoryBackend } = await import(dist + '/index.js');
const enc = await import(dist + '/client/encode.js');
const C = await import(dist + '/protocol/constants.js');

// Capture: the events the transport sends the handshake and transmission machines for one real connection.
const events = [];
const srv = createServer({
  exports: [{ name: '', backend: memoryBackend({ size: 1 << 20 }) }],
  logger: { warn() {}, error() {} },
  inspect: (ev) => {
    if (ev.type === '@xstate.event' && ev.sourceRef === undefined && !ev.event.type.startsWith('xstate.')) events.push({ to: ev.actorRef.logic?.config?.id, event: ev.event });
  },
});
const sock = path.join((await import('node:os')).tmpdir(), `nbd-engine-one-actor-${process.pid}.sock`);
await srv.listen({ path: sock });
const bytes = Buffer.concat([
  enc.clientFlagsBytes(C.CLIENT_FLAGS.NBD_FLAG_C_FIXED_NEWSTYLE | C.CLIENT_FLAGS.NBD_FLAG_C_NO_ZEROES),
  enc.optionBytes(C.OPT.NBD_OPT_STRUCTURED_REPLY),
  enc.optionBytes(C.OPT.NBD_OPT_GO, enc.infoGoData('', [C.INFO.NBD_INFO_BLOCK_SIZE])),
  enc.requestHeaderBytes({ type: C.CMD.NBD_CMD_DISC, flags: 0, cookie: 1n, offset: 0n, length: 0n, extended: false }),
]);
await new Promise((res) => {
  const s = net.connect(sock);
  s.on('connect', () => s.write(bytes));
  s.on('data', () => {});
  s.on('close', res);
});
const hsInput = srv.handshakeInput;
const maxPayload = srv.decoderLimits().maxPayload;
await srv.close();
const hsEvents = events.filter((e) => e.to === 'handshake').map((e) => e.event);
const txEvents = events.filter((e) => e.to === 'transmission').map((e) => e.event);

function runA() {
  const a = createActor(connectionMachine, { input: { handshake: hsInput, maxPayload } });
  a.start();
  const hs = a.getSnapshot().children.handshake;
  for (const e of hsEvents) hs.send(e);
  const tx = a.getSnapshot().children.transmission;
  for (const e of txEvents) tx.send(e);
  if (a.getSnapshot().status !== 'done') throw new Error('A not done: ' + JSON.stringify(a.getSnapshot().value));
}

const rename = (x) => (x === 'closeSoft' ? 'txCloseSoft' : Array.isArray(x) ? x.map(rename) : x && typeof x === 'object' ? Object.fromEntries(Object.entries(x).map(([k, v]) => [k, k === 'type' && v === 'closeSoft' ? 'txCloseSoft' : rename(v)])) : x);
const hsI = handshakeMachine.implementations, txI = transmissionMachine.implementations;
const CLOSE = ['#connection.phase.closed', '#connection.reading.stopped'];
const compound = setup({
  guards: { ...hsI.guards, ...txI.guards, negotiated: ({ context }) => context.outcome?.outcome === 'negotiated' },
  actions: {
    ...hsI.actions,
    ...txI.actions,
    txCloseSoft: txI.actions.closeSoft,
    enterTx: assign(({ context }) => transmissionContext({ negotiated: context.outcome.negotiated, maxPayload })),
    pauseReading: emit({ type: 'pauseReading' }),
    resumeReading: emit({ type: 'resumeReading' }),
    stopReading: emit({ type: 'stopReading' }),
  },
}).createMachine({
  id: 'connection',
  type: 'parallel',
  context: ({ input }) => handshakeContext(input.handshake),
  states: {
    phase: {
      initial: 'handshake',
      states: {
        handshake: { id: 'handshake', initial: 'greeting', on: handshakeMachine.config.on, states: handshakeMachine.config.states, onDone: [{ guard: 'negotiated', target: 'transmission', actions: 'enterTx' }, { target: CLOSE }] },
        transmission: { id: 'transmission', initial: 'open', on: transmissionMachine.config.on, states: rename(transmissionMachine.config.states), onDone: { target: CLOSE } },
        closed: { type: 'final' },
      },
    },
    reading: {
      initial: 'flowing',
      states: {
        flowing: { on: { 'budget.full': 'paused' } },
        paused: { entry: 'pauseReading', exit: 'resumeReading', on: { 'budget.room': 'flowing' } },
        stopped: { type: 'final', entry: 'stopReading' },
      },
    },
  },
});
function runB() {
  const a = createActor(compound, { input: { handshake: hsInput, maxPayload } });
  a.start();
  for (const e of hsEvents) a.send(e);
  for (const e of txEvents) a.send(e);
  if (a.getSnapshot().status !== 'done') throw new Error('B not done: ' + JSON.stringify(a.getSnapshot().value));
}
runA(); runB();
const pollute = Buffer.alloc(16 << 20);
const MODE = process.argv[2] ?? 'tight';
const per = (fn, n) => {
  const c0 = process.cpuUsage();
  let polluteCpu = 0;
  for (let i = 0; i < n; i++) {
    if (MODE === 'cold') { const p0 = process.cpuUsage(); for (let j = 0; j < pollute.length; j += 64) pollute[j]++; const p = process.cpuUsage(p0); polluteCpu += p.user + p.system; }
    fn();
  }
  const c = process.cpuUsage(c0);
  return (c.user + c.system - polluteCpu) / n;
};
for (let i = 0; i < 3000; i++) { runA(); runB(); }
const res = { A: [], B: [] };
const n = MODE === 'cold' ? 200 : 1000;
for (let b = 0; b < 8; b++) for (const k of b % 2 ? ['B', 'A'] : ['A', 'B']) res[k].push(per(k === 'A' ? runA : runB, n));
const med = (a) => [...a].sort((x, y) => x - y)[a.length >> 1];
console.log(MODE, 'A (3 actors) µs/conn', med(res.A).toFixed(1), 'B (1 actor)', med(res.B).toFixed(1), 'B/A', (med(res.B) / med(res.A)).toFixed(2));
