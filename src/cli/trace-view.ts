/**
 * `nbd-engine trace view FILE -o OUT.html`: a recorded trace (`serve
 * --trace FILE`) as one self-contained HTML page (src/inspect/view.ts) that
 * opens from file:// with the network off.
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { DEFAULT_MAX_RECORDS, PAGE_MAX_RECORDS, PAGE_MIN_RECORDS, parseTrace, renderView } from '../inspect/view.js';

export const TRACE_VIEW_USAGE = `usage: nbd-engine trace view FILE -o OUT.html [--connection N] [--max-records N]

Writes one self-contained HTML page for a trace file (serve --trace FILE): the connection,
handshake and transmission statecharts drawn from the machine definitions with the path each
connection took, a coverage overlay (transitions taken of all), a client | server sequence
diagram, and a step slider showing the active states, event, frames and context at each
record. The page loads nothing from anywhere: it works offline, from file://.
  -o, --output FILE   the page to write (required; - for standard output)
  --connection N      only connection N
  --max-records N     records of each connection the page embeds (default ${DEFAULT_MAX_RECORDS}, fewer
                      when many connections share the page's ${PAGE_MAX_RECORDS}, at least ${PAGE_MIN_RECORDS} each;
                      coverage counts all of them)
  -h, --help
`;

const OPTIONS = {
  output: { type: 'string', short: 'o' },
  connection: { type: 'string' },
  'max-records': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

function fail(message: string): number {
  process.stderr.write(`nbd-engine trace view: ${message}\n`);
  return 2;
}

/** A whole number ≥ min from an option's text, or an error line. */
function count(name: string, text: string | undefined, min: number): number | string | undefined {
  if (text === undefined) return undefined;
  return /^[0-9]+$/.test(text) && Number(text) >= min && Number.isSafeInteger(Number(text)) ? Number(text) : `--${name}: expected a whole number ≥ ${min}, got ${JSON.stringify(text)}`;
}

const write = (text: string): Promise<void> => new Promise((resolve, reject) => process.stdout.write(text, (err) => (err ? reject(err) : resolve())));

export async function runTraceView(args: readonly string[]): Promise<number> {
  let values: { output?: string; connection?: string; 'max-records'?: string; help?: boolean };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({ args: [...args], options: OPTIONS, allowPositionals: true, strict: true }));
  } catch (err) {
    return fail(`${(err as Error).message.split('\n')[0]} (nbd-engine trace view --help lists the options)`);
  }
  if (values.help) {
    await write(TRACE_VIEW_USAGE);
    return 0;
  }
  if (positionals.length !== 1) return fail(`expected one trace FILE, got ${positionals.length} arguments`);
  if (values.output === undefined || values.output === '') return fail('-o OUT.html is required');
  const connection = count('connection', values.connection, 0);
  const maxRecords = count('max-records', values['max-records'], 1);
  if (typeof connection === 'string') return fail(connection);
  if (typeof maxRecords === 'string') return fail(maxRecords);
  const file = positionals[0]!;
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    process.stderr.write(`nbd-engine trace view: cannot read ${file}: ${(err as Error).message}\n`);
    return 1;
  }
  const { records, errors } = parseTrace(text);
  for (const e of errors) process.stderr.write(`nbd-engine trace view: ${file}:${e.line}: ${e.message} (line skipped)\n`);
  if (connection !== undefined && !records.some((r) => 'conn' in r && r.conn === connection)) {
    process.stderr.write(`nbd-engine trace view: ${file} holds no connection ${connection}\n`);
    return 1;
  }
  const html = await renderView(records, {
    ...(connection !== undefined ? { connection } : {}),
    ...(maxRecords !== undefined ? { maxRecords } : {}),
    title: `nbd-engine trace: ${file}`,
  });
  if (values.output === '-') await write(html);
  else {
    try {
      fs.writeFileSync(values.output, html);
    } catch (err) {
      process.stderr.write(`nbd-engine trace view: cannot write ${values.output}: ${(err as Error).message}\n`);
      return 1;
    }
  }
  // As `trace show`: lines that were not records make the status 1, though the page is written.
  return errors.length > 0 ? 1 : 0;
}
