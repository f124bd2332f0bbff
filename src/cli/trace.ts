/**
 * `nbd-engine trace WORD …`: reading trace files (`serve --trace FILE`).
 * Each word is one entry of TRACE_WORDS.
 *
 *   nbd-engine trace show FILE [--connection N] [--follow] [--no-machines]
 *
 * prints a transcript, one line per record (src/inspect/transcript.ts). A
 * line of the file that is not a record is one line on stderr naming its
 * line number; the rest is still shown (exit status 1 then). `--follow`
 * keeps reading as the file grows, like `tail -f`, until SIGINT.
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { Transcript, parseTraceLine } from '../inspect/transcript.js';
import type { Subcommand } from './commands.js';
import { TRACE_VIEW_USAGE, runTraceView } from './trace-view.js';

export const TRACE_SHOW_USAGE = `usage: nbd-engine trace show FILE [--connection N] [--follow] [--no-machines]

Prints a trace file (serve --trace FILE) as a transcript, one line per record:
  [conn 1 +0.412ms] C→S NBD_OPT_GO name="disk" info=[NBD_INFO_BLOCK_SIZE]
  [conn 1 +0.530ms] S→C NBD_REP_INFO NBD_INFO_EXPORT size=1073741824 flags=HAS_FLAGS|SEND_FLUSH
  [conn 1 +0.61ms] handshake: options.open → negotiated (opt.go)
  --connection N   only connection N
  --follow         keep reading as the file grows (until interrupted)
  --no-machines    hide the machines' records (events, steps, actions, snapshots)
  -h, --help
`;

function usageError(word: string, message: string): number {
  process.stderr.write(`nbd-engine trace${word ? ` ${word}` : ''}: ${message}\n`);
  return 2;
}

/** Writes to stdout; a closed pipe (`| head`) ends quietly. */
function out(text: string): void {
  if (!process.stdout.writableEnded) process.stdout.write(text);
}

/**
 * Reads a file from `offset` as whole lines (a last partial line waits for
 * its newline), handing each to `line` with its number.
 */
class LineReader {
  private offset = 0;
  private partial = '';
  private number = 0;

  constructor(
    private readonly file: string,
    private readonly line: (text: string, n: number) => void,
  ) {}

  /** Read what is there now; false when the file is gone. */
  async read(): Promise<boolean> {
    let fh: fs.promises.FileHandle;
    try {
      fh = await fs.promises.open(this.file, 'r');
    } catch {
      return false;
    }
    try {
      const { size } = await fh.stat();
      // Smaller than what was read: the file was rotated or truncated; start again.
      if (size < this.offset) {
        this.offset = 0;
        this.partial = '';
      }
      const buf = Buffer.alloc(64 * 1024);
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, buf.length, this.offset);
        if (bytesRead === 0) break;
        this.offset += bytesRead;
        const lines = (this.partial + buf.subarray(0, bytesRead).toString('utf8')).split('\n');
        this.partial = lines.pop()!;
        for (const l of lines) this.line(l, ++this.number);
      }
    } finally {
      await fh.close();
    }
    return true;
  }

  /** The last line, when the file does not end with a newline. */
  finish(): void {
    if (this.partial !== '') this.line(this.partial, ++this.number);
    this.partial = '';
  }
}

const SHOW_OPTIONS = {
  connection: { type: 'string' },
  follow: { type: 'boolean' },
  'no-machines': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

export async function runTraceShow(args: readonly string[]): Promise<number> {
  let values: { connection?: string; follow?: boolean; 'no-machines'?: boolean; help?: boolean };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({ args: [...args], options: SHOW_OPTIONS, allowPositionals: true }));
  } catch (err) {
    return usageError('show', (err as Error).message.split('\n')[0]!);
  }
  if (values.help) {
    out(TRACE_SHOW_USAGE);
    return 0;
  }
  if (positionals.length !== 1) return usageError('show', positionals.length === 0 ? 'expected a trace FILE' : `expected one FILE, got ${positionals.length}`);
  const file = positionals[0]!;
  let connection: number | undefined;
  if (values.connection !== undefined) {
    if (!/^[0-9]+$/.test(values.connection) || !Number.isSafeInteger(Number(values.connection))) {
      return usageError('show', `--connection: expected a connection number, got ${JSON.stringify(values.connection)}`);
    }
    connection = Number(values.connection);
  }
  const transcript = new Transcript({ connection, machines: !values['no-machines'] });
  let bad = 0;
  const reader = new LineReader(file, (text, n) => {
    if (text.trim() === '') return;
    const r = parseTraceLine(text);
    if (typeof r === 'string') {
      bad++;
      process.stderr.write(`nbd-engine trace show: ${file}:${n}: ${r}\n`);
      return;
    }
    const line = transcript.line(r);
    if (line !== null) out(`${line}\n`);
  });
  process.stdout.on('error', () => {}); // EPIPE: the reader went away
  if (!(await reader.read())) {
    process.stderr.write(`nbd-engine trace show: cannot read ${file}\n`);
    return 1;
  }
  if (values.follow) {
    await new Promise<void>((resolve) => {
      let busy = false;
      const timer = setInterval(() => {
        if (busy) return;
        busy = true;
        void reader.read().finally(() => (busy = false));
      }, 200);
      process.once('SIGINT', () => {
        clearInterval(timer);
        resolve();
      });
    });
  }
  reader.finish();
  return bad > 0 ? 1 : 0;
}

/** The words of `nbd-engine trace`: each takes the arguments after it. */
export const TRACE_WORDS: Record<string, Subcommand> = {
  show: runTraceShow,
  view: runTraceView,
};

export async function runTrace(args: readonly string[]): Promise<number> {
  const [word, ...rest] = args;
  if (word === undefined || word === '-h' || word === '--help') {
    if (word === undefined) return usageError('', `expected one of: ${Object.keys(TRACE_WORDS).join(', ')} (nbd-engine trace show --help)`);
    out(`usage: nbd-engine trace ${Object.keys(TRACE_WORDS).join('|')} …\n\n${TRACE_SHOW_USAGE}\n${TRACE_VIEW_USAGE}`);
    return 0;
  }
  const run = Object.hasOwn(TRACE_WORDS, word) ? TRACE_WORDS[word] : undefined;
  if (!run) return usageError('', `unknown word ${JSON.stringify(word)}: expected one of ${Object.keys(TRACE_WORDS).join(', ')}`);
  return run(rest);
}
