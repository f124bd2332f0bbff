/**
 * The subcommands besides `serve`: each takes the arguments after its name
 * and returns the exit status (2 for a bad command line, with one line on
 * stderr naming the problem). Each is loaded when it runs, so `serve` does
 * not load what only they use (fast-check, Graphviz, the viewer).
 */
export type Subcommand = (args: readonly string[]) => Promise<number>;

export const SUBCOMMANDS: Readonly<Record<string, Subcommand>> = {
  machines: async (args) => (await import('./machines.js')).runMachines(args),
  trace: async (args) => (await import('./trace.js')).runTrace(args),
  probe: async (args) => (await import('./probe.js')).runProbe(args),
};
