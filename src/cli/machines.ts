/**
 * `nbd-engine machines`: the connection, handshake and transmission
 * statecharts, drawn from the machine definitions (src/inspect/statechart.ts)
 * as Mermaid (the default), Graphviz DOT, JSON or SVG. docs/machines.md and
 * the README's diagram are this command's output (`npm run docs:machines`).
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { MACHINES, MACHINE_NAMES, machineGraph, toDot, toMermaid, toSvg, type MachineName } from '../inspect/statechart.js';

export const MACHINES_USAGE = `usage: nbd-engine machines [--format mermaid|dot|json|svg] [--machine NAME|all] [-o FILE]

Draws the server's statecharts from the machine definitions.
  --format F     mermaid (default): a stateDiagram-v2 per machine (for all: Markdown, one
                 \`\`\`mermaid block under a heading per machine); dot: Graphviz digraphs;
                 json: the graph as data (for all: an array of graphs); svg: one machine drawn
                 by Graphviz (needs --machine NAME). In DOT and SVG each state has the element
                 id state:<state id> and each transition tr:<source|event|index>.
  --machine M    ${MACHINE_NAMES.join(', ')} or all (default all)
  -o, --output FILE  write to FILE instead of standard output
  -h, --help
`;

export const FORMATS = ['mermaid', 'dot', 'json', 'svg'] as const;
export type Format = (typeof FORMATS)[number];
/** The formats that are plain text, drawn without waiting (the generated docs use these). */
export type TextFormat = Exclude<Format, 'svg'>;

/** One machine in a text format, exactly as `nbd-engine machines --format F --machine NAME` prints it. */
export function renderText(format: TextFormat, name: MachineName): string {
  const graph = machineGraph(MACHINES[name]);
  if (format === 'json') return `${JSON.stringify(graph, null, 2)}\n`;
  return format === 'dot' ? toDot(graph) : toMermaid(graph);
}

/** What the command prints for these machines in this format. */
export async function renderMachines(format: Format, names: readonly MachineName[]): Promise<string> {
  if (format === 'svg') {
    if (names.length !== 1) throw new Error('--format svg draws one machine: add --machine NAME');
    return toSvg(machineGraph(MACHINES[names[0]!]));
  }
  if (names.length === 1) return renderText(format, names[0]!);
  if (format === 'json') return `${JSON.stringify(names.map((n) => machineGraph(MACHINES[n])), null, 2)}\n`;
  if (format === 'dot') return names.map((n) => renderText('dot', n)).join('\n');
  return names.map((n) => `## ${n}\n\n\`\`\`mermaid\n${renderText('mermaid', n)}\`\`\`\n`).join('\n');
}

const OPTIONS = {
  format: { type: 'string' },
  machine: { type: 'string' },
  output: { type: 'string', short: 'o' },
  help: { type: 'boolean', short: 'h' },
} as const;

function fail(message: string): number {
  process.stderr.write(`nbd-engine machines: ${message}\n`);
  return 2;
}

/** parseArgs's message, reduced to one line naming the option. */
function parseError(err: Error & { code?: string }): string {
  const first = err.message.split('\n')[0]!;
  const quoted = /'([^']+)'/.exec(first)?.[1];
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') return `unknown option ${quoted ?? first} (nbd-engine machines --help lists them)`;
  if (err.code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') return `unexpected argument ${JSON.stringify(quoted ?? first)}: machines takes options only`;
  return first;
}

/** Write to stdout; a reader that went away early (`… | head`) ends the output quietly, as for other tools. */
function write(text: string): Promise<void> {
  if (process.stdout.listenerCount('error') === 0) {
    process.stdout.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE') throw err;
    });
  }
  return new Promise((resolve, reject) => process.stdout.write(text, (err) => (err && (err as NodeJS.ErrnoException).code !== 'EPIPE' ? reject(err) : resolve())));
}

export async function runMachines(args: readonly string[]): Promise<number> {
  let values: { format?: string; machine?: string; output?: string; help?: boolean };
  try {
    ({ values } = parseArgs({ args: [...args], options: OPTIONS, allowPositionals: false, strict: true }));
  } catch (err) {
    return fail(parseError(err as Error & { code?: string }));
  }
  if (values.help) {
    await write(MACHINES_USAGE);
    return 0;
  }
  const format = (values.format ?? 'mermaid') as Format;
  if (!FORMATS.includes(format)) return fail(`--format: expected ${FORMATS.join(', ')}, got ${JSON.stringify(values.format)}`);
  const machine = values.machine ?? 'all';
  if (machine !== 'all' && !(MACHINE_NAMES as string[]).includes(machine)) return fail(`--machine: expected ${MACHINE_NAMES.join(', ')} or all, got ${JSON.stringify(machine)}`);
  if (values.output === '') return fail('--output: expected a path, got ""');
  const names = machine === 'all' ? MACHINE_NAMES : [machine as MachineName];
  if (format === 'svg' && names.length !== 1) return fail(`--format svg draws one machine: add --machine ${MACHINE_NAMES.join('|')}`);
  const text = await renderMachines(format, names);
  if (values.output === undefined || values.output === '-') {
    await write(text);
    return 0;
  }
  try {
    fs.writeFileSync(values.output, text);
  } catch (err) {
    process.stderr.write(`nbd-engine machines: cannot write ${values.output}: ${(err as Error).message}\n`);
    return 1;
  }
  return 0;
}
