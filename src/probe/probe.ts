/**
 * `nbd-engine probe`: check any NBD server against the spec's rules. A first
 * connection surveys what the server offers for the URI's export; then every
 * check runs on connections of its own, each within a timeout, and answers
 * PASS, FAIL (with evidence), NOT ADVERTISED or SKIPPED, citing its rule
 * (docs/rules.md). Writes go only to the scratch region announced before
 * any check runs (by default the last 64 KiB of the export; none with
 * `readOnly`).
 */
import { HANDSHAKE_CHECKS } from './checks-handshake.js';
import { TLS_CHECKS } from './checks-tls.js';
import { TRANSMISSION_CHECKS } from './checks-transmission.js';
import { LENGTH_CHECKS } from './checks-lengths.js';
import { REQUEST_SEQUENCE_CHECKS, SEQUENCE_CHECKS } from './checks-sequences.js';
import { survey, type ProbeContext } from './context.js';
import { runChecks, type Check, type Result } from './runner.js';
import type { NbdTarget } from './uri.js';
import { FLAG } from '../protocol/constants.js';

export const PROBE_CHECKS: ReadonlyArray<Check<ProbeContext>> = [...HANDSHAKE_CHECKS, ...TLS_CHECKS, ...SEQUENCE_CHECKS, ...TRANSMISSION_CHECKS, ...LENGTH_CHECKS, ...REQUEST_SEQUENCE_CHECKS];

export interface ProbeOptions {
  /** Milliseconds per check (default 10 000). */
  readonly timeoutMs?: number;
  readonly readOnly?: boolean;
  /** Seed of the generated option sequences (default 1). */
  readonly seed?: number;
  /** Where writes may go (default: the last 64 KiB of the export). */
  readonly scratch?: { readonly offset: bigint; readonly length: number };
  /** Told before any check runs: where the probe will write (or that it will not). */
  readonly announce?: (line: string) => void;
  readonly onResult?: (r: Result) => void;
}

export interface ProbeReport {
  readonly target: NbdTarget;
  readonly facts: ProbeContext['facts'];
  readonly scratch: ProbeContext['scratch'];
  readonly results: readonly Result[];
}

export const SCRATCH_DEFAULT = 64 * 1024;

/** The scratch region asked for does not fit the export (known once its size is). */
export class ScratchError extends Error {
  override readonly name = 'ScratchError';
}

export async function probe(target: NbdTarget, options: ProbeOptions = {}): Promise<ProbeReport> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const facts = await survey({ target, timeoutMs });
  let scratch: ProbeContext['scratch'] = null;
  const empty = facts.size === 0n;
  if (!options.readOnly && !empty) {
    const length = options.scratch?.length ?? Number(facts.size < BigInt(SCRATCH_DEFAULT) ? facts.size : BigInt(SCRATCH_DEFAULT));
    const offset = options.scratch?.offset ?? facts.size - BigInt(length);
    if (offset < 0n || offset + BigInt(length) > facts.size) throw new ScratchError(`the region ${offset}+${length} is not inside the export (size ${facts.size})`);
    scratch = { offset, length };
  }
  options.announce?.(
    scratch
      ? facts.flags & FLAG.NBD_FLAG_READ_ONLY
        ? `the export is read-only: writes are sent only to check they are refused (at bytes ${scratch.offset}..${scratch.offset + BigInt(scratch.length) - 1n})`
        : `scratch region: bytes ${scratch.offset}..${scratch.offset + BigInt(scratch.length) - 1n} of ${facts.size} may be overwritten`
      : empty
        ? 'the export is empty (0 bytes): nothing is read or written'
        : 'read-only: nothing is written',
  );
  const ctx: ProbeContext = { target, timeoutMs, scratch, facts, seed: options.seed ?? 1 };
  const results = await runChecks(PROBE_CHECKS, ctx, { timeoutMs, readOnly: scratch === null, emptyExport: empty, onResult: options.onResult });
  return { target, facts, scratch, results };
}
