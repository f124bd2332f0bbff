/**
 * Run one nbdkit command line twice, with `nbd-engine serve` and with
 * `nbdkit`, each as `-U - ARGS --run CMD`, so a test can compare what a real
 * client saw from both. Python bodies run under Debian's python3-libnbd
 * with the shared prelude (pylibnbd.ts).
 */
import fs from 'node:fs';
import path from 'node:path';
import { CLI, cliToEnd, requirePythonNbd, requireTool, runToEnd, type Ran } from './harness.js';

export type { Ran };
import { PRELUDE } from './pylibnbd.js';

/** `nbd-engine ARGS` to completion. */
export function cli(args: string[]): Promise<Ran> {
  return cliToEnd(args);
}

/** `nbd-engine serve -U - ARGS --run CMD`; stdout without the URI line serve prints first. */
export async function engine(args: string[], cmd: string): Promise<Ran> {
  const r = await runToEnd(process.execPath, [CLI, 'serve', '-U', '-', ...args, '--run', cmd]);
  return { ...r, stdout: r.stdout.replace(/^nbd\+unix:\S*\n/, '') };
}

/** `nbdkit -U - ARGS --run CMD` (nbdkit 1.32 from Debian). */
export function nbdkit(args: string[], cmd: string): Promise<Ran> {
  requireTool('nbdkit');
  return runToEnd('nbdkit', ['-U', '-', ...args, '--run', cmd]);
}

/** Both servers, the same command line and client command. */
export async function both(args: string[], cmd: string): Promise<{ ours: Ran; kit: Ran }> {
  const [ours, kit] = await Promise.all([engine(args, cmd), nbdkit(args, cmd)]);
  return { ours, kit };
}

/** A client command running a python3-libnbd body (the prelude's connect(), err(), flags() …); it prints `out` as JSON. */
export function pyCommand(dir: string, body: string): string {
  const py = requirePythonNbd();
  const file = path.join(dir, `client-${Math.random().toString(36).slice(2)}.py`);
  const lines = body.replace(/^\n/, '').split('\n');
  const indent = lines.find((l) => l.trim())?.match(/^ */)![0].length ?? 0;
  const strip = new RegExp(`^ {0,${indent}}`);
  fs.writeFileSync(file, `${PRELUDE}\n${lines.map((l) => l.replace(strip, '')).join('\n')}\nprint(json.dumps(out))\n`);
  return `${py} ${file} "$uri"`;
}

/** The JSON `out` a pyCommand printed (its last line). */
export function outOf<T = Record<string, unknown>>(r: Ran): T {
  const lines = r.stdout.trim().split('\n');
  try {
    return JSON.parse(lines[lines.length - 1]!) as T;
  } catch {
    throw new Error(`no JSON from the client (exit ${r.code}): ${r.stdout}\n${r.stderr}`);
  }
}

/** The request lines of an nbdkit-format log (log filter), without timestamps, elapsed times and the Connect line's details. */
export function requestLines(log: string): string[] {
  return log
    .split('\n')
    .map((l) => l.replace(/^\S+ \S+ /, '').replace(/ elapsed=\S+/, ''))
    .filter((l) => /^connection=\d+ \.*(Read|Write|Zero|Trim|Flush|Cache|Extents)\b/.test(l));
}
