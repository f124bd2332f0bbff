#!/usr/bin/env node
// Summarise a V8 .cpuprofile (from `node --cpu-prof`) by self time.
//
//   node bench/profile-summary.mjs PROFILE.cpuprofile [--top N] [--from SECONDS] [--until SECONDS] [--inclusive]
//
// --inclusive adds the top functions by total time (self + callees, each
// sample counted once per function even under recursion).
// --from / --until keep only the samples taken in that window of the run
// (seconds since the profile started), e.g. to leave out a pre-fill.
// Prints the top functions by self time (with file:line), then self time
// grouped by package / source file, so "where does the time go" reads at a
// glance. No dependencies.
import fs from 'node:fs';
import path from 'node:path';

const args = process.argv.slice(2);
const file = args.find((a) => !a.startsWith('--'));
if (!file) {
  process.stderr.write('usage: node bench/profile-summary.mjs PROFILE.cpuprofile [--top N]\n');
  process.exit(2);
}
const topIdx = args.indexOf('--top');
const top = topIdx >= 0 ? Number(args[topIdx + 1]) : 30;
const numArg = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const fromUs = numArg('--from', 0) * 1e6;
const untilUs = numArg('--until', Infinity) * 1e6;
const INCLUSIVE = args.includes('--inclusive');

const prof = JSON.parse(fs.readFileSync(file, 'utf8'));
const nodes = new Map(prof.nodes.map((n) => [n.id, n]));

// Self time per node: the sample intervals attributed to it.
const self = new Map();
const { samples, timeDeltas } = prof;
let at = 0;
for (let i = 0; i < samples.length; i++) {
  const dt = timeDeltas[i + 1] ?? 0; // delta before the next sample ≈ time spent in this one
  at += timeDeltas[i] ?? 0;
  if (at < fromUs || at > untilUs) continue;
  self.set(samples[i], (self.get(samples[i]) ?? 0) + dt);
}
let total = 0;
for (const v of self.values()) total += v;

function where(cf) {
  const url = cf.url || '';
  if (!url) return '(native)';
  return url.replace(/^file:\/\//, '');
}

/** A short bucket: node_modules/<pkg>, our dist/src file, node:internal, … */
function bucket(cf) {
  const url = where(cf);
  if (url === '(native)') {
    if (cf.functionName === '(garbage collector)') return '(garbage collector)';
    if (cf.functionName === '(idle)') return '(idle)';
    if (cf.functionName === '(program)') return '(program)';
    return '(native)';
  }
  const nm = url.lastIndexOf('node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + 'node_modules/'.length).split('/');
    return `npm:${rest[0].startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]}`;
  }
  if (url.startsWith('node:')) return url;
  const m = url.match(/\/(dist|src|bench|bin)\/(.*)$/);
  if (m) return `${m[1]}/${m[2]}`;
  return path.basename(url);
}

const byFn = new Map();
const byBucket = new Map();
for (const [id, t] of self) {
  const n = nodes.get(id);
  const cf = n.callFrame;
  const name = cf.functionName || '(anonymous)';
  const key = `${name}  ${bucket(cf)}:${cf.lineNumber + 1}`;
  byFn.set(key, (byFn.get(key) ?? 0) + t);
  const b = bucket(cf);
  byBucket.set(b, (byBucket.get(b) ?? 0) + t);
}

const idle = byBucket.get('(idle)') ?? 0;
const busy = total - idle;
const ms = (us) => (us / 1000).toFixed(1).padStart(9);
const pct = (us, of) => `${((100 * us) / of).toFixed(1).padStart(5)}%`;

process.stdout.write(`profile: ${file}\n`);
process.stdout.write(`sampled ${ms(total)} ms, busy ${ms(busy)} ms (${pct(busy, total)} of wall), idle ${ms(idle)} ms\n\n`);
process.stdout.write(`top ${top} functions by self time (% of busy):\n`);
for (const [k, v] of [...byFn].filter(([k]) => !k.startsWith('(idle)')).sort((a, b) => b[1] - a[1]).slice(0, top)) {
  process.stdout.write(`${ms(v)} ms ${pct(v, busy)}  ${k}\n`);
}
if (INCLUSIVE) {
  // Parent links, then each sampled node's time added once to every distinct function on its stack.
  const parent = new Map();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const keyOf = (n) => `${n.callFrame.functionName || '(anonymous)'}  ${bucket(n.callFrame)}:${n.callFrame.lineNumber + 1}`;
  const incl = new Map();
  for (const [id, t] of self) {
    const n0 = nodes.get(id);
    if (n0.callFrame.functionName === '(idle)') continue;
    const seen = new Set();
    for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
      const k = keyOf(nodes.get(cur));
      if (seen.has(k)) continue;
      seen.add(k);
      incl.set(k, (incl.get(k) ?? 0) + t);
    }
  }
  process.stdout.write(`\ntop ${top} functions by total time, self + callees (% of busy):\n`);
  for (const [k, v] of [...incl].filter(([k]) => !k.startsWith('(root)')).sort((a, b) => b[1] - a[1]).slice(0, top)) {
    process.stdout.write(`${ms(v)} ms ${pct(v, busy)}  ${k}\n`);
  }
}
process.stdout.write(`\nself time by package / file (% of busy):\n`);
for (const [k, v] of [...byBucket].filter(([k]) => k !== '(idle)').sort((a, b) => b[1] - a[1]).slice(0, top)) {
  process.stdout.write(`${ms(v)} ms ${pct(v, busy)}  ${k}\n`);
}
