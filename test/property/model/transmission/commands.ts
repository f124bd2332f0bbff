/** The fc.commands arbitrary for request sequences. */
import fc from 'fast-check';
import { DiscCommand, ShutdownCommand } from './ControlCommands.js';
import { C, F } from './model.js';
import type { TxModel, TxReal } from './model.js';
import { RequestCommand, type Where } from './RequestCommand.js';

const type = fc.oneof(
  { weight: 10, arbitrary: fc.constantFrom(C.READ, C.WRITE, C.FLUSH, C.TRIM, C.CACHE, C.WRITE_ZEROES, C.BLOCK_STATUS) },
  { weight: 1, arbitrary: fc.integer({ min: 8, max: 0xffff }) },
);
const flags = fc.oneof(
  { weight: 4, arbitrary: fc.constant(0) },
  { weight: 6, arbitrary: fc.subarray([F.FUA, F.NO_HOLE, F.DF, F.REQ_ONE, F.FAST_ZERO, F.PAYLOAD_LEN]).map((bits) => bits.reduce((a, b) => a | b, 0)) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
);
const where: fc.Arbitrary<Where> = fc.oneof(
  fc.constantFrom(0, 512, 4096).map((offset) => ({ kind: 'abs' as const, offset })),
  fc.nat({ max: 1 << 21 }).map((offset) => ({ kind: 'abs' as const, offset })),
  fc.constantFrom(0, 1, 512, 4096, 8192).map((back) => ({ kind: 'end' as const, back })),
  fc.constant({ kind: 'huge' as const }),
);
const length = fc.oneof(
  fc.constantFrom(0, 1, 511, 512, 4096, 65536),
  fc.nat({ max: 1 << 17 }),
  fc.constantFrom(2 ** 20 + 1, 2 ** 32 - 1),
);

/** Requests that are usually valid: common commands, no or FUA flag, block-aligned offsets inside small exports. */
const plausible = fc
  .tuple(
    fc.constantFrom(C.READ, C.READ, C.WRITE, C.FLUSH, C.TRIM, C.CACHE, C.WRITE_ZEROES, C.BLOCK_STATUS),
    fc.constantFrom(0, 0, 0, F.FUA),
    fc.nat({ max: 16 }),
    fc.nat({ max: 4 }),
  )
  .map(([t, f, block, n]) => (t === C.FLUSH ? new RequestCommand(t, f, { kind: 'abs', offset: 0 }, 0) : new RequestCommand(t, f, { kind: 'abs', offset: block * 4096 }, n * 4096)));

export const requestCommands: fc.Arbitrary<Iterable<fc.Command<TxModel, TxReal>>> = fc.commands(
  [
    fc.oneof(
      { weight: 12, arbitrary: fc.tuple(type, flags, where, length).map(([t, f, w, l]) => new RequestCommand(t, f, w, l)) },
      { weight: 12, arbitrary: plausible },
      // Rare: they end normal service (everything after gets ESHUTDOWN).
      { weight: 1, arbitrary: fc.constant(new DiscCommand()) },
      { weight: 1, arbitrary: fc.constant(new ShutdownCommand()) },
    ),
  ],
  { maxCommands: 40 },
);
