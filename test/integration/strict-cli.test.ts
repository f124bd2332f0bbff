/**
 * `serve --strict --run CMD` (issue 14): a clean client run exits with the
 * command's status; a client that breaks the protocol gets a summary on
 * stderr (count per rule ID, first examples) and exit status 3.
 * Needs `npm run build` (the CLI runs dist/).
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, execFileP, requirePythonNbd, requireTool, tmpDir } from './harness.js';

/** Run the CLI to its end: exit status, stdout, stderr (a non-zero status is a result, not an error). */
async function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileP(process.execPath, [CLI, ...args], { timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number | null; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** A python3-libnbd client that sends an out-of-bounds READ twice and a zero-length READ on purpose. */
const MISBEHAVING = `
import sys, nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
size = h.get_size()
for _ in range(2):
    try:
        h.pread(512, size)
    except nbd.Error:
        pass
h.pread(0, 0)
h.shutdown()
`;

describe('serve --strict --run', () => {
  const dir = tmpDir();
  const script = path.join(dir, 'misbehave.py');
  beforeAll(() => {
    requireTool('nbdinfo');
    requirePythonNbd();
    fs.writeFileSync(script, MISBEHAVING);
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('a well-behaved client: the command\'s status, no summary', async () => {
    const r = await cli(['serve', '--strict', '--memory', '16M', '--run', 'nbdinfo "$uri" && nbdinfo --map "$uri"']);
    expect(r.stderr).not.toContain('strict');
    expect(r.stdout).toContain('export-size: 16777216');
    expect(r.code).toBe(0);
    const failing = await cli(['serve', '--strict', '--memory', '16M', '--run', 'nbdinfo --size "$uri" && exit 5']);
    expect(failing.code).toBe(5);
  });

  it('a misbehaving client: one warning per violation, a summary per rule ID at exit, exit status 3', async () => {
    const r = await cli(['serve', '--strict', '--memory', '16M', '--run', `/usr/bin/python3 ${script} "$uri"`]);
    expect(r.code).toBe(3);
    const warnings = r.stderr.split('\n').filter((l) => l.startsWith('nbd-engine: warn: ') && l.includes(': strict: '));
    expect(warnings).toHaveLength(3);
    expect(warnings[0]).toMatch(/^nbd-engine: warn: connection 1: strict: transmission\.out-of-bounds: .*frame \{"name":"NBD_CMD_READ"/);
    const summary = r.stderr.slice(r.stderr.indexOf('nbd-engine: strict: 3 client protocol violations'));
    expect(summary.split('\n').slice(0, 6)).toEqual([
      'nbd-engine: strict: 3 client protocol violations (docs/rules.md):',
      '  transmission.out-of-bounds: 2',
      expect.stringMatching(/^ {4}connection 1: NBD_CMD_READ \{"cookie":"\d+","offset":16777216,"length":512,"flags":\[\]\}: request past the end of the export$/),
      expect.stringMatching(/^ {4}connection 1: NBD_CMD_READ /),
      '  transmission.zero-length: 1',
      expect.stringMatching(/^ {4}connection 1: NBD_CMD_READ .*"length":0/),
    ]);
  });

  it('without --strict the same client leaves the command\'s status alone', async () => {
    const r = await cli(['serve', '--memory', '16M', '--run', `/usr/bin/python3 ${script} "$uri"`]);
    expect(r.code).toBe(0);
    expect(r.stderr).not.toContain('strict');
  });
});
