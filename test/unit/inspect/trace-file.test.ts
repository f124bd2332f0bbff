/**
 * traceFile(): header first, JSON Lines, the size cap (an end record by
 * default, rotation with `rotate`), and a write error as one log line.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { traceFile } from '../../../src/inspect/trace-file.js';
import type { TraceRecord } from '../../../src/inspect/trace-format.js';

let dir: string;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trace-file-'))));
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const read = (f: string): TraceRecord[] => fs.readFileSync(f, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as TraceRecord);
const open = (conn: number): TraceRecord => ({ type: 'open', t: 1, conn, peer: 'x'.repeat(50) });

describe('traceFile', () => {
  it('writes the header, then each record on its own line, then the end record on close', async () => {
    const f = path.join(dir, 't.jsonl');
    const t = traceFile(f);
    t.write(open(1));
    t.write(open(2));
    await t.close();
    const rs = read(f);
    expect(rs.map((r) => r.type)).toEqual(['trace', 'open', 'open', 'end']);
    expect(rs[0]).toMatchObject({ v: 1, server: 'nbd-engine', pid: process.pid });
    expect(rs[3]).toMatchObject({ reason: 'closed' });
  });

  it('stops at the cap with an end record (the default)', async () => {
    const f = path.join(dir, 't.jsonl');
    const logs: string[] = [];
    const t = traceFile(f, { maxBytes: 1000, logger: { error: (m) => logs.push(`error: ${m}`), warn: (m) => logs.push(`warn: ${m}`) } });
    for (let i = 1; i <= 100; i++) t.write(open(i));
    await t.close();
    const rs = read(f);
    expect(rs.at(-1)).toMatchObject({ type: 'end', reason: 'cap' });
    // The end record fits too: the file never grows past the cap; one line says recording stopped.
    expect(fs.statSync(f).size).toBeLessThanOrEqual(1000);
    expect(logs).toEqual([`warn: trace file ${f}: reached its 1000-byte cap; recording stopped (--trace-rotate keeps recording)`]);
    expect(rs.filter((r) => r.type === 'end')).toHaveLength(1);
    const opens = rs.filter((r) => r.type === 'open');
    expect(opens.length).toBeGreaterThan(3);
    expect(opens.length).toBeLessThan(100);
    // Everything before the end record fits the cap.
    const text = fs.readFileSync(f, 'utf8');
    expect(Buffer.byteLength(text.slice(0, text.lastIndexOf('{"type":"end"')))).toBeLessThanOrEqual(1000);
  });

  it('stops with one log line and an end record (behind) when more than maxPendingBytes wait for the disk', async () => {
    const f = path.join(dir, 't.jsonl');
    const logs: string[] = [];
    const t = traceFile(f, { maxPendingBytes: 4096, logger: { error: (m) => logs.push(m) } });
    // All in one turn of the event loop: nothing reaches the file stream before the bound.
    for (let i = 1; i <= 1000; i++) t.write(open(i));
    await t.close();
    const rs = read(f);
    expect(rs.at(-1)).toMatchObject({ type: 'end', reason: 'behind' });
    expect(rs.filter((r) => r.type === 'end')).toHaveLength(1);
    const opens = rs.filter((r) => r.type === 'open').length;
    expect(opens).toBeGreaterThan(10);
    expect(opens * 80).toBeLessThan(4096 + 200);
    expect(logs).toEqual([`trace file ${f}: the disk fell 4096 bytes behind; recording stopped`]);
  });

  it('rotates at the cap with rotate: N, keeping N old files, each starting with a header', async () => {
    const f = path.join(dir, 't.jsonl');
    const t = traceFile(f, { maxBytes: 1000, rotate: 2 });
    for (let i = 1; i <= 100; i++) t.write(open(i));
    await t.close();
    expect(fs.readdirSync(dir).sort()).toEqual(['t.jsonl', 't.jsonl.1', 't.jsonl.2']);
    const current = read(f);
    const older = read(`${f}.1`);
    expect(current[0]!.type).toBe('trace');
    expect(older[0]!.type).toBe('trace');
    expect(older.at(-1)).toMatchObject({ type: 'end', reason: 'rotate', next: f });
    for (const name of ['t.jsonl', 't.jsonl.1', 't.jsonl.2']) expect(fs.statSync(path.join(dir, name)).size).toBeLessThanOrEqual(1000);
    // The newest records are in FILE, the last of them conn 100; FILE.1 holds the ones just before.
    const lastOlder = (older.filter((r) => r.type === 'open').at(-1) as { conn: number }).conn;
    const firstCurrent = (current.find((r) => r.type === 'open') as { conn: number }).conn;
    expect(firstCurrent).toBe(lastOlder + 1);
    expect(current.filter((r) => r.type === 'open').at(-1)).toMatchObject({ conn: 100 });
  });

  it('a write error is one log line; recording stops, nothing throws', async () => {
    const lines: string[] = [];
    const t = traceFile(path.join(dir, 'no-such-dir', 't.jsonl'), { logger: { error: (m) => lines.push(m) } });
    t.write(open(1));
    await new Promise((r) => setTimeout(r, 50));
    t.write(open(2));
    await t.close();
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/no-such-dir.*recording stopped/);
  });

  it('rejects a cap that is not positive and a rotate count that is not a whole number', () => {
    expect(() => traceFile(path.join(dir, 'a'), { maxBytes: 0 })).toThrow(/maxBytes/);
    expect(() => traceFile(path.join(dir, 'b'), { rotate: 1.5 })).toThrow(/rotate/);
    // As the command line's --trace-prefix: at most 4096; a pending bound of 0 would stop at the first record.
    expect(() => traceFile(path.join(dir, 'c'), { prefixBytes: 5000 })).toThrow(/prefixBytes/);
    expect(() => traceFile(path.join(dir, 'd'), { maxPendingBytes: 0 })).toThrow(/maxPendingBytes/);
  });

  it('a FIFO with no reader: one log line, recording stopped, the server not blocked in open()', async () => {
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const lines: string[] = [];
    const t = traceFile(fifo, { logger: { error: (m) => lines.push(m) } });
    t.write(open(1));
    await t.close();
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/fifo.*recording stopped/);
  });
});
