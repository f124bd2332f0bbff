/** The fc.commands arbitrary for option sequences, and the terminal step. */
import fc from 'fast-check';
import { InfoCommand, GoCommand } from './InfoGoCommand.js';
import { ListCommand } from './ListCommand.js';
import { MetaContextCommand } from './MetaContextCommand.js';
import { NAMES, type Damage, type HsModel, type HsReal } from './model.js';
import { StartTlsCommand } from './StartTlsCommand.js';
import { ExtendedHeadersCommand, StructuredReplyCommand } from './StructuredReplyCommand.js';
import { AbortCommand, ExportNameCommand, ShutdownCommand } from './TerminalCommands.js';
import { UnknownOptionCommand } from './UnknownOptionCommand.js';

const name = fc.constantFrom(...NAMES);
const requests = fc.array(fc.oneof(fc.constantFrom(0, 1, 2, 3), fc.integer({ min: 4, max: 0xffff })), { maxLength: 5 });
const damage: fc.Arbitrary<Damage> = fc.constantFrom<Damage>('none', 'none', 'none', 'short', 'long', 'tooBig');
const query = fc.oneof(
  fc.constantFrom('base:allocation', 'base:', 'base:nonesuch', 'qemu:dirty-bitmap:x', 'x-test:thing', 'nocolon'),
  fc.string({ maxLength: 12 }).filter((s) => !s.includes('\0')),
);
const unknownCode = fc.oneof(fc.constant(4), fc.integer({ min: 12, max: 0xffffffff }));

/** Options that keep the option phase going (plus the ones that may end it). */
export const optionCommands: fc.Arbitrary<Iterable<fc.Command<HsModel, HsReal>>> = fc.commands(
  [
    fc.boolean().map((d) => new ListCommand(d)),
    fc.tuple(name, requests, damage).map(([n, q, d]) => new InfoCommand(n, q, d)),
    fc.boolean().map((d) => new StructuredReplyCommand(d)),
    fc.boolean().map((d) => new ExtendedHeadersCommand(d)),
    fc.tuple(fc.boolean(), name, fc.array(query, { maxLength: 4 }), damage).map(([s, n, q, d]) => new MetaContextCommand(s, n, q, d)),
    fc.boolean().map((d) => new StartTlsCommand(d)),
    fc.tuple(unknownCode, fc.nat({ max: 64 })).map(([c, l]) => new UnknownOptionCommand(c, l)),
    // GO may fail (unknown export, damaged data) and keep the phase going.
    fc.tuple(name, requests, damage, fc.boolean()).map(([n, q, d, rep]) => new GoCommand(n, q, d, rep)),
    fc.constant(new ShutdownCommand()),
  ],
  { maxCommands: 25 },
);

/** The step that ends the option phase (if still open): GO, EXPORT_NAME or ABORT. */
export const terminalCommand: fc.Arbitrary<fc.Command<HsModel, HsReal>> = fc.oneof(
  fc.tuple(name, requests, fc.boolean()).map(([n, q, rep]) => new GoCommand(n, q, 'none', rep)),
  fc.constantFrom('disk', 'ro', 'secret', 'nope', '', 'a\0b').map((n) => new ExportNameCommand(n)),
  fc.constant(new AbortCommand()),
);
