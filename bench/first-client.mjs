#!/usr/bin/env node
// How much the first clients after `nbd-engine serve` starts pay for the
// JIT compiling the connection code, and what start-up costs.
//
// Each round, for each server (nbd-engine with its start-up warm-up, nbd-engine
// with --no-warm-up, nbdkit file), on a fresh 1 GiB sparse image with 4 KiB written:
//   - start-up: spawn → the server reports readiness (URI on stdout / pid file);
//   - then times `nbdcopy URI out.img` runs 1..N (default 5) on that server;
//   - and, on a second fresh start, `nbdinfo --size URI` as the first connection.
// Server order alternates each round; round 0 is dropped; medians are shown.
//
//   npm run build && node bench/first-client.mjs [--rounds 5] [--runs 5]
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freshImage } from './sparse-image.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const num = (flag, d) => (args.includes(flag) ? Number(args[args.indexOf(flag) + 1]) : d);
const ROUNDS = num('--rounds', 5);
const RUNS = num('--runs', 5);
const SIZE = 1 << 30;
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-engine-bench-first-'));


const KINDS = {
  engine: (img, sock) => [process.execPath, [path.join(ROOT, 'bin/nbd-engine.js'), 'serve', '--file', img, '--socket', sock]],
  'engine --no-warm-up': (img, sock) => [process.execPath, [path.join(ROOT, 'bin/nbd-engine.js'), 'serve', '--no-warm-up', '--file', img, '--socket', sock]],
  nbdkit: (img, sock, pid) => ['nbdkit', ['-f', '-U', sock, '-P', pid, 'file', img]],
};
const kinds = args.includes('--only') ? args[args.indexOf('--only') + 1].split(',') : Object.keys(KINDS);

async function start(kind, img) {
  const sock = path.join(work, 'srv.sock');
  const pid = path.join(work, 'srv.pid');
  fs.rmSync(sock, { force: true });
  fs.rmSync(pid, { force: true });
  const [cmd, argv] = KINDS[kind](img, sock, pid);
  const t0 = process.hrtime.bigint();
  const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  const ready = () => (kind === 'nbdkit' ? fs.existsSync(pid) : out.includes('\n'));
  // Poll finely: the start-up figure is only as good as this interval.
  for (let i = 0; !ready(); i++) {
    if (child.exitCode !== null || i > 10000) throw new Error(`${kind} did not start`);
    await new Promise((r) => setTimeout(r, 2));
  }
  const startup = Number(process.hrtime.bigint() - t0) / 1e9;
  return { uri: `nbd+unix:///?socket=${sock}`, startup, stop: () => new Promise((r) => (child.once('exit', r), child.kill('SIGTERM'))) };
}

function timed(cmd, argv) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, argv, { encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} failed: ${r.stderr || r.error}`);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

const res = {};
for (const k of kinds) res[k] = { startup: [], info: [], copy: Array.from({ length: RUNS }, () => []) };
for (let round = 0; round <= ROUNDS; round++) {
  const order = round % 2 ? [...kinds].reverse() : kinds;
  for (const kind of order) {
    const out = path.join(work, 'out.img');
    let srv = await start(kind, freshImage(work, SIZE));
    const copies = [];
    for (let i = 0; i < RUNS; i++) {
      fs.rmSync(out, { force: true });
      copies.push(timed('nbdcopy', [srv.uri, out]));
    }
    await srv.stop();
    const startup = srv.startup;
    srv = await start(kind, freshImage(work, SIZE));
    const info = timed('nbdinfo', ['--size', srv.uri]);
    await srv.stop();
    process.stderr.write(`round ${round} ${kind}: start-up ${(startup * 1000).toFixed(0)} ms, nbdinfo first ${(info * 1000).toFixed(1)} ms, nbdcopy ${copies.map((c) => (c * 1000).toFixed(1)).join(' ')} ms\n`);
    if (round === 0) continue;
    res[kind].startup.push(startup, srv.startup);
    res[kind].info.push(info);
    copies.forEach((c, i) => res[kind].copy[i].push(c));
  }
}
fs.rmSync(work, { recursive: true, force: true });
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const ms = (x) => `${(x * 1000).toFixed(1)}`;
const cpu = os.cpus();
console.log(`date: ${new Date().toISOString()}; ${cpu[0]?.model.trim()} × ${cpu.length}; node ${process.version}; rounds 1+${ROUNDS}; load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
const head = ['milliseconds (median)', ...kinds.map((k) => (k === 'nbdkit' ? 'nbdkit file' : `nbd-engine${k.slice(6)}`)), ...kinds.filter((k) => k !== 'nbdkit').map((k) => `${k.replace('engine', 'nbd-engine')} / nbdkit`)];
console.log(`| ${head.join(' | ')} |`);
console.log(`|---|${head.slice(1).map(() => '---:').join('|')}|`);
const row = (label, pick) => {
  const vals = kinds.map((k) => median(pick(res[k])));
  const nk = kinds.includes('nbdkit') ? median(pick(res.nbdkit)) : NaN;
  const ratios = kinds.filter((k) => k !== 'nbdkit').map((k) => `${(median(pick(res[k])) / nk).toFixed(2)}×`);
  console.log(`| ${[label, ...vals.map(ms), ...ratios].join(' | ')} |`);
};
row('start-up (spawn → ready)', (r) => r.startup);
row('nbdinfo --size, first connection', (r) => r.info);
for (let i = 0; i < RUNS; i++) row(`nbdcopy 1 GiB sparse → file, run ${i + 1} after start`, (r) => r.copy[i]);
