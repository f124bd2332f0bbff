/**
 * `nbd-engine machines` (dist/, built by the global setup): each format, -o,
 * and bad command lines (exit 2, one stderr line naming the option).
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI, execFileP, tmpDir } from './harness.js';

/** Run `nbd-engine machines ARGS` to completion: exit status, stdout, stderr. */
async function machines(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileP(process.execPath, [CLI, 'machines', ...args], { timeout: 60_000, maxBuffer: 64 * 1024 * 1024 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw err;
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

const NAMES = ['connection', 'handshake', 'transmission'];

describe('nbd-engine machines', () => {
  it('--format dot prints a digraph per machine', async () => {
    const r = await machines(['--format', 'dot']);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout.startsWith('digraph')).toBe(true);
    expect([...r.stdout.matchAll(/^digraph "(\w+)" \{$/gm)].map((m) => m[1])).toEqual(NAMES);
  });

  it('--format json prints the three graphs as data', async () => {
    const r = await machines(['--format', 'json']);
    expect(r.code).toBe(0);
    const graphs = JSON.parse(r.stdout) as Array<{ machine: string; states: Array<{ id: string }>; transitions: Array<{ id: string }> }>;
    expect(graphs.map((g) => g.machine)).toEqual(NAMES);
    expect(graphs[1]!.states.map((s) => s.id)).toContain('handshake.upgradingTls');
    expect(graphs[2]!.transitions.map((t) => t.id)).toContain('transmission.open|request|1');
  });

  it('--format svg --machine handshake draws one SVG with state and transition ids', async () => {
    const r = await machines(['--format', 'svg', '--machine', 'handshake']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^<\?xml[^]*<svg /);
    expect(r.stdout).toContain('id="state:handshake.options.open"');
    expect(r.stdout).toContain('id="tr:handshake.options.open|opt.go|4"');
    expect(r.stdout.trimEnd().endsWith('</svg>')).toBe(true);
  });

  it('prints Mermaid by default (Markdown for all machines) and writes -o FILE', async () => {
    const all = await machines([]);
    expect(all.code).toBe(0);
    expect([...all.stdout.matchAll(/^## (\w+)\n\n```mermaid\nstateDiagram-v2$/gm)].map((m) => m[1])).toEqual(NAMES);
    const file = path.join(tmpDir(), 'transmission.mmd');
    const one = await machines(['--machine', 'transmission', '-o', file]);
    expect(one).toEqual({ code: 0, stdout: '', stderr: '' });
    const text = fs.readFileSync(file, 'utf8');
    expect(text.startsWith('stateDiagram-v2\n')).toBe(true);
    expect(text).toContain('state "draining" as transmission_draining');
  });

  it('--help exits 0; the serve help names the command', async () => {
    const r = await machines(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^usage: nbd-engine machines /);
    const top = await execFileP(process.execPath, [CLI, '--help']);
    expect(top.stdout).toMatch(/^ {2}nbd-engine machines /m);
  });

  it.each([
    [['--format', 'bogus'], /^nbd-engine machines: --format: expected mermaid, dot, json, svg, got "bogus"$/],
    [['--machine', 'kernel'], /^nbd-engine machines: --machine: expected connection, handshake, transmission or all, got "kernel"$/],
    [['--format', 'svg'], /^nbd-engine machines: --format svg draws one machine: add --machine /],
    [['--colour'], /^nbd-engine machines: unknown option --colour /],
    [['--format'], /--format/],
    [['handshake'], /^nbd-engine machines: unexpected argument "handshake"/],
  ])('%j: exit 2 with one line on stderr naming the problem', async (args, message) => {
    const r = await machines(args);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.endsWith('\n')).toBe(true);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr.trimEnd()).toMatch(message);
  });
});
