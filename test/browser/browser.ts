/**
 * What the browser tests share: Debian's Chromium (/usr/bin/chromium) driven
 * by playwright-core — never a downloaded browser — started headless with a
 * fresh profile, every request the test does not allow aborted and counted;
 * and the CLI run as a child process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';
import type { TraceRecord } from '../../src/inspect/trace-format.js';
import { CLI } from '../integration/harness.js';

export const CHROMIUM = '/usr/bin/chromium';

/** Chromium is a declared peer (scripts/test.sh installs it): missing, the test fails, in CI or not. */
export function requireChromium(): string {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium`);
  return CHROMIUM;
}

export interface Browser {
  readonly context: BrowserContext;
  /** URLs requested that `allow` refused (aborted). */
  readonly blocked: string[];
  close(): Promise<void>;
}

/** Chromium with a fresh profile; only requests whose URL `allow` accepts go out. */
export async function launchChromium(allow: (url: string) => boolean): Promise<Browser> {
  const executablePath = requireChromium();
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-engine-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
    viewport: { width: 1400, height: 1000 },
  });
  const blocked: string[] = [];
  await context.route('**/*', (r) => {
    const url = r.request().url();
    if (allow(url)) return r.continue();
    blocked.push(url);
    return r.abort();
  });
  return {
    context,
    blocked,
    async close() {
      await context.close();
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** Run the CLI to completion. */
export function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** SIGINT a served CLI and wait for it to exit. */
export function stop(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGINT');
  });
}

/** The state ids a state value names below `prefix` (`{ options: 'open' }` → options, options.open). */
const idsOf = (prefix: string, v: unknown): string[] =>
  typeof v === 'string' ? [`${prefix}.${v}`] : v && typeof v === 'object' ? Object.entries(v).flatMap(([k, sub]) => [`${prefix}.${k}`, ...idsOf(`${prefix}.${k}`, sub)]) : [];

/**
 * What the page must show active after record `i`: per machine, what its
 * last step record (its `active` list) or snapshot record (its state value)
 * so far says.
 */
export function activeAt(records: readonly TraceRecord[], i: number): string[] {
  const byActor = new Map<string, readonly string[]>();
  for (const r of records.slice(0, i + 1)) {
    if (r.type === 'step') byActor.set(r.actor, r.active);
    if (r.type === 'snapshot') byActor.set(r.actor, [r.actor, ...idsOf(r.actor, r.value)]);
  }
  return [...byActor.values()].flat().map((id) => `state:${id}`).sort();
}

