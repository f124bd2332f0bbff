/**
 * The probe's checks and how they run. Each check is one question about
 * the server, tied to one rule of docs/rules.md, answered on connections of
 * its own: PASS, FAIL (with evidence), NOT ADVERTISED (the server does not
 * offer what the check needs, which the spec allows), or SKIPPED (the probe
 * was told not to: `--read-only` for checks that write). A check that gets
 * no answer within the timeout FAILs and is aborted (its connections
 * destroyed); the probe never hangs and goes on with the next check.
 */

export type Status = 'PASS' | 'FAIL' | 'NOT ADVERTISED' | 'SKIPPED';

export interface Outcome {
  readonly status: Status;
  /** One line: what was seen. */
  readonly detail: string;
  /** For a FAIL: the bytes or values that show it. */
  readonly evidence?: string;
}

export interface Check<C> {
  /** The rule it checks (an ID of docs/rules.md). */
  readonly rule: string;
  /** What it asks, in a few words. */
  readonly title: string;
  /** It writes to the export (only inside the scratch region); skipped with `readOnly`. */
  readonly writes?: boolean;
  /** It reads the export's bytes (a writing check does too); skipped on an empty export (`emptyExport`). */
  readonly needsData?: boolean;
  run(ctx: C, signal: AbortSignal): Promise<Outcome>;
}

export interface Result extends Outcome {
  readonly rule: string;
  readonly title: string;
  readonly ms: number;
}

export interface RunOptions {
  readonly timeoutMs: number;
  readonly readOnly: boolean;
  /** The export has 0 bytes: checks that read or write its bytes are SKIPPED (there is nothing to check them on). */
  readonly emptyExport?: boolean;
  readonly onResult?: (r: Result) => void;
}

export const pass = (detail: string): Outcome => ({ status: 'PASS', detail });
export const fail = (detail: string, evidence?: string): Outcome => ({ status: 'FAIL', detail, evidence });
export const notAdvertised = (detail: string): Outcome => ({ status: 'NOT ADVERTISED', detail });

/** Run the checks one after another; never throws, never waits longer than the timeout per check. */
export async function runChecks<C>(checks: ReadonlyArray<Check<C>>, ctx: C, options: RunOptions): Promise<Result[]> {
  const results: Result[] = [];
  for (const check of checks) {
    const t0 = performance.now();
    let outcome: Outcome;
    if ((check.needsData || check.writes) && options.emptyExport) {
      outcome = { status: 'SKIPPED', detail: 'the export is empty (0 bytes): nothing to read or write' };
    } else if (check.writes && options.readOnly) {
      outcome = { status: 'SKIPPED', detail: 'writes to the export (--read-only)' };
    } else {
      const abort = new AbortController();
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<Outcome>((resolve) => {
        timer = setTimeout(() => {
          abort.abort();
          resolve(fail(`no answer within ${options.timeoutMs} ms`));
        }, options.timeoutMs);
      });
      try {
        outcome = await Promise.race([check.run(ctx, abort.signal), timeout]);
      } catch (err) {
        outcome = fail(`the check could not complete: ${(err as Error).message}`);
      } finally {
        clearTimeout(timer);
        abort.abort();
      }
    }
    const r: Result = { rule: check.rule, title: check.title, ...outcome, ms: Math.round(performance.now() - t0) };
    results.push(r);
    options.onResult?.(r);
  }
  return results;
}

/** One line per result: status, rule, title, what was seen (and for a FAIL, the evidence). */
export function formatResult(r: Result): string {
  const evidence = r.evidence ? ` — evidence: ${r.evidence}` : '';
  return `${r.status.padEnd(14)} ${r.rule.padEnd(40)} ${r.title}: ${r.detail}${evidence}`;
}

export function summary(results: readonly Result[]): Record<Status, number> {
  const counts: Record<Status, number> = { PASS: 0, FAIL: 0, 'NOT ADVERTISED': 0, SKIPPED: 0 };
  for (const r of results) counts[r.status]++;
  return counts;
}
