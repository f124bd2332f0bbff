/**
 * warmUp() and the `warmUp` server option: the throwaway connections run
 * their whole scripts, and the real server (its logger, trace, inspect hook,
 * observables, connection ids) sees nothing of them. The CLI warms up by
 * default and not with --no-warm-up.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createServer, memoryBackend, warmUp, WARM_UP_ROUNDS } from '../../src/index.js';
import { WARM_UP_CONNECTIONS_PER_ROUND as PER_ROUND } from '../../src/api/warm-up.js';
import type { TraceRecord } from '../../src/inspect/trace-format.js';
import { recordingLogger, run, spawnCli, tmpDir } from './harness.js';

describe('warmUp()', () => {
  it('runs every connection script to its planned end (DISC, ABORT), once per round', async () => {
    const one = await warmUp({ rounds: 1 });
    expect(one.error).toBeUndefined();
    expect(one.connections).toBe(PER_ROUND);
    expect(one.requests).toBeGreaterThan(100);
    const two = await warmUp({ rounds: 2 });
    expect(two.error).toBeUndefined();
    expect(two.connections).toBe(2 * PER_ROUND);
    expect(two.requests).toBe(2 * one.requests);
    const byDefault = await warmUp();
    expect(byDefault.connections).toBe(PER_ROUND * WARM_UP_ROUNDS);
    expect(byDefault.requests).toBe(WARM_UP_ROUNDS * one.requests);
  });

  it('reports a failure in its result instead of throwing (no directory for its socket)', async () => {
    const r = await warmUp({ tmpDir: path.join(tmpDir(), 'missing') });
    expect(r.connections).toBe(0);
    expect(r.error).toMatch(/ENOENT/);
  });
});

describe('the warmUp server option', () => {
  it('warms up before listening, unseen by the logger, trace, inspect hook and observables of the server', async () => {
    const dir = tmpDir();
    const logs: string[] = [];
    const records: TraceRecord[] = [];
    const inspected: string[] = [];
    const events: string[] = [];
    const server = createServer({
      exports: [{ name: 'disk', backend: memoryBackend({ size: 1 << 20 }) }],
      logger: recordingLogger(logs),
      trace: { write: (r) => records.push(r) },
      inspect: (e) => inspected.push(e.type),
      warmUp: true,
    });
    server.connections$.subscribe((e) => events.push(`${e.type} ${e.connection.id}`));
    const violations: unknown[] = [];
    server.violations$.subscribe((v) => violations.push(v));
    try {
      const socket = path.join(dir, 's');
      await server.listen({ path: socket });
      // Only the one debug line about it.
      expect(logs).toHaveLength(1);
      expect(logs[0]).toMatch(new RegExp(`^debug: warm-up: ${PER_ROUND * WARM_UP_ROUNDS} connections, \\d+ requests in \\d+ ms$`));
      expect(records).toEqual([]);
      expect(inspected).toEqual([]);
      expect(events).toEqual([]);
      expect(server.connectionCount).toBe(0);
      // A second listener does not warm up again.
      await server.listen({ path: path.join(dir, 't') });
      expect(logs).toHaveLength(1);

      const r = await run('nbdinfo', ['--size', `nbd+unix:///disk?socket=${socket}`]);
      expect(r.stdout.trim()).toBe(String(1 << 20));
      // The real client is connection 1: the warm-up used no ids of this server.
      await new Promise((res) => setTimeout(res, 100));
      expect(events).toEqual(['opened 1', 'negotiated 1', 'closed 1']);
      expect(new Set(records.map((x) => (x as { conn?: number }).conn))).toEqual(new Set([1]));
      expect(inspected.length).toBeGreaterThan(0);
      expect(violations).toEqual([]);
      expect(logs.filter((l) => !l.startsWith('debug') && !l.startsWith('info'))).toEqual([]);
    } finally {
      await server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('nbd-engine serve', () => {
  const startAndStop = async (extra: string[]) => {
    const dir = tmpDir();
    const trace = path.join(dir, 'trace.jsonl');
    const { child, uris, stderr } = await spawnCli(['serve', '--memory', '1M', '--socket', path.join(dir, 's'), '--trace', trace, '--verbose', ...extra]);
    try {
      const r = await run('nbdinfo', ['--size', uris[0]!]);
      expect(r.stdout.trim()).toBe(String(1 << 20));
    } finally {
      await new Promise((res) => (child.once('exit', res), child.kill('SIGTERM')));
    }
    const conns = new Set(
      fs
        .readFileSync(trace, 'utf8')
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as { conn?: number }).conn)
        .filter((c) => c !== undefined),
    );
    fs.rmSync(dir, { recursive: true, force: true });
    return { stderr: stderr(), conns };
  };

  it('warms up by default, before printing its URIs; the trace and the log hold only the real client', async () => {
    const { stderr, conns } = await startAndStop([]);
    expect(stderr).toMatch(new RegExp(`debug: warm-up: ${PER_ROUND * WARM_UP_ROUNDS} connections, \\d+ requests in \\d+ ms\n`));
    // The warm-up line comes before the first client's.
    expect(stderr.indexOf('warm-up:')).toBeLessThan(stderr.indexOf('connection 1: opened'));
    expect(stderr).not.toMatch(/connection 2/);
    expect(conns).toEqual(new Set([1]));
  });

  it('--no-warm-up skips it', async () => {
    const { stderr, conns } = await startAndStop(['--no-warm-up']);
    expect(stderr).not.toMatch(/warm-up/);
    expect(stderr).toMatch(/connection 1: opened/);
    expect(conns).toEqual(new Set([1]));
  });
});
