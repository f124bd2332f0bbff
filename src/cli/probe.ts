/**
 * `nbd-engine probe URI [--json] [--read-only] [--scratch OFFSET:LENGTH] [--timeout SECONDS]`:
 * check an NBD server against the spec's rules (src/probe/). One line per
 * check on stdout (PASS, FAIL with evidence, NOT ADVERTISED, SKIPPED, each
 * with its rule ID), or one JSON document with `--json`. Exit status: 0 when
 * nothing failed, 1 when a check failed or the server could not be
 * negotiated with, 2 for a bad command line.
 */
import { parseArgs } from 'node:util';
import { probe, SCRATCH_DEFAULT, ScratchError } from '../probe/probe.js';
import { formatResult, summary } from '../probe/runner.js';
import { parseNbdUri, type NbdTarget } from '../probe/uri.js';

const USAGE = `usage: nbd-engine probe URI [options]

Checks an NBD server against the NBD specification's rules (IDs: docs/rules.md).
URI: nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, nbds://… (STARTTLS;
     ?tls-certificates=DIR or ?tls-psk-file=FILE)

  --read-only              write nothing (checks that write are SKIPPED)
  --scratch OFFSET:LENGTH  where checks may write (default: the last ${SCRATCH_DEFAULT / 1024} KiB of the export);
                           announced before any check runs
  --timeout SECONDS        per check (default 10); a check that gets no answer FAILs
  --seed N                 seed of the generated option sequences (default 1; a FAIL names it)
  --json                   one JSON document instead of lines
  -h, --help
Exit status: 0 nothing failed, 1 a check failed (or the server could not be negotiated with), 2 usage.
`;

function usage(message: string): number {
  process.stderr.write(`nbd-engine probe: ${message}\n`);
  return 2;
}

export async function runProbe(args: readonly string[]): Promise<number> {
  let values: { json?: boolean; 'read-only'?: boolean; scratch?: string; timeout?: string; seed?: string; help?: boolean };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: [...args],
      allowPositionals: true,
      options: { json: { type: 'boolean' }, 'read-only': { type: 'boolean' }, scratch: { type: 'string' }, timeout: { type: 'string' }, seed: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    }));
  } catch (err) {
    return usage((err as Error).message.split('\n')[0]!);
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (positionals.length !== 1) return usage(`expected one NBD URI, got ${positionals.length} arguments (nbd-engine probe --help)`);
  let target: NbdTarget;
  try {
    target = parseNbdUri(positionals[0]!);
  } catch (err) {
    return usage((err as Error).message);
  }
  const seconds = values.timeout === undefined ? 10 : Number(values.timeout);
  if (!(seconds > 0 && seconds <= 3600)) return usage(`--timeout: expected seconds from 0 to 3600, got ${JSON.stringify(values.timeout)}`);
  const seed = values.seed === undefined ? 1 : Number(values.seed);
  if (!Number.isSafeInteger(seed)) return usage(`--seed: expected an integer, got ${JSON.stringify(values.seed)}`);
  let scratch: { offset: bigint; length: number } | undefined;
  if (values.scratch !== undefined) {
    const m = /^(\d+):(\d+)$/.exec(values.scratch);
    if (!m || Number(m[2]) < 512 || Number(m[2]) > 2 ** 30) return usage(`--scratch: expected OFFSET:LENGTH in bytes (LENGTH from 512 to 1 GiB), got ${JSON.stringify(values.scratch)}`);
    if (values['read-only']) return usage('--scratch and --read-only are exclusive');
    scratch = { offset: BigInt(m[1]!), length: Number(m[2]) };
  }
  const json = !!values.json;
  const out = (line: string) => process.stdout.write(`${line}\n`);
  try {
    const report = await probe(target, {
      timeoutMs: seconds * 1000,
      seed,
      readOnly: !!values['read-only'],
      scratch,
      announce: json ? undefined : out,
      onResult: json ? undefined : (r) => out(formatResult(r)),
    });
    const counts = summary(report.results);
    if (json) {
      out(JSON.stringify({ ...report, summary: counts }, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2));
    } else {
      out(`${counts.PASS} passed, ${counts.FAIL} failed, ${counts['NOT ADVERTISED']} not advertised, ${counts.SKIPPED} skipped`);
    }
    return counts.FAIL > 0 ? 1 : 0;
  } catch (err) {
    // A --scratch region outside the export is the caller's mistake, known only once the size is: a usage error.
    if (err instanceof ScratchError) return usage(`--scratch: ${err.message}`);
    process.stderr.write(`nbd-engine probe: cannot negotiate with ${positionals[0]}: ${(err as Error).message}\n`);
    return 1;
  }
}
