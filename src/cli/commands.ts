import { runMachines } from './machines.js';
import { runTrace } from './trace.js';
import { runProbe } from './probe.js';

/**
 * The subcommands besides `serve`: each takes the arguments after its name
 * and returns the exit status (2 for a bad command line, with one line on
 * stderr naming the problem).
 */
export type Subcommand = (args: readonly string[]) => Promise<number>;

export const SUBCOMMANDS: Readonly<Record<string, Subcommand>> = {
  machines: runMachines,
  trace: runTrace,
  probe: runProbe,
};
