#!/usr/bin/env node
// The server's CPU time for each of the first clients after start, with and
// without warmUp(): a figure that a busy host disturbs far less than wall
// clock (bench/first-client.mjs measures the wall clock).
//
// Each round is a fresh Node process (a child of this script) serving a fresh
// 1 GiB sparse image with the file backend through the library API (as
// `nbd-engine serve file IMG` does), with or without `await warmUp()` before
// listen(); it then runs `nbdinfo --size` once and `nbdcopy URI out.img` N times,
// one after the other, and reports process.cpuUsage() deltas around each
// (the server is idle otherwise; spawning the client costs the same in every run,
// shown as the `true` row). Round 0 is dropped; medians.
//
//   npm run build && node bench/first-client-cpu.mjs [--rounds 7] [--runs 4]
//   NBD_BENCH_ROUNDS=2 node bench/first-client-cpu.mjs      (warmUp({ rounds: 2 }))
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const num = (flag, d) => (args.includes(flag) ? Number(args[args.indexOf(flag) + 1]) : d);

if (process.env.NBD_BENCH_CHILD) {
  // The server process.
  const { createServer, fileBackend, warmUp } = await import(path.join(ROOT, 'dist/index.js'));
  const work = process.env.NBD_BENCH_CHILD;
  const img = path.join(work, 'sparse.img');
  const fd = fs.openSync(img, 'w');
  fs.ftruncateSync(fd, 1 << 30);
  fs.writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, 256 << 20);
  fs.closeSync(fd);
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  const server = createServer({ exports: [{ name: '', backend: await fileBackend(img) }] });
  const w = process.env.NBD_BENCH_WARM !== '0' ? await warmUp(process.env.NBD_BENCH_ROUNDS ? { rounds: Number(process.env.NBD_BENCH_ROUNDS) } : {}) : undefined;
  const sock = path.join(work, 's.sock');
  await server.listen({ path: sock });
  const cpu = (c) => {
    const d = process.cpuUsage(c);
    return (d.user + d.system) / 1000;
  };
  const out = { setupWall: performance.now() - t0, setupCpu: cpu(c0), warm: w?.ms, runs: {} };
  const uri = `nbd+unix:///?socket=${sock}`;
  const run = (cmd, argv) =>
    new Promise((resolve, reject) => {
      const c = process.cpuUsage();
      const ch = spawn(cmd, argv, { stdio: 'ignore' });
      ch.on('exit', (code) => (code === 0 ? resolve(cpu(c)) : reject(new Error(`${cmd} exited ${code}`))));
    });
  await new Promise((r) => setTimeout(r, 50)); // the spare actor is built when idle
  out.runs.true = await run('true', []);
  out.runs.nbdinfo = await run('nbdinfo', ['--size', uri]);
  for (let i = 1; i <= Number(process.env.NBD_BENCH_RUNS); i++) {
    fs.rmSync(path.join(work, 'out.img'), { force: true });
    out.runs[`nbdcopy ${i}`] = await run('nbdcopy', [uri, path.join(work, 'out.img')]);
  }
  await server.close();
  process.stdout.write(JSON.stringify(out));
  process.exit(0);
}

const ROUNDS = num('--rounds', 7);
const RUNS = num('--runs', 4);
const res = { warm: [], cold: [] };
for (let round = 0; round <= ROUNDS; round++) {
  for (const kind of round % 2 ? ['cold', 'warm'] : ['warm', 'cold']) {
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-engine-bench-cpu-'));
    const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url)], {
      env: { ...process.env, NBD_BENCH_CHILD: work, NBD_BENCH_WARM: kind === 'warm' ? '1' : '0', NBD_BENCH_RUNS: String(RUNS) },
      encoding: 'utf8',
    });
    fs.rmSync(work, { recursive: true, force: true });
    if (r.status !== 0) throw new Error(`server process failed: ${r.stderr}`);
    const o = JSON.parse(r.stdout);
    process.stderr.write(`round ${round} ${kind}: ${JSON.stringify(o)}\n`);
    if (round > 0) res[kind].push(o);
  }
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const f = (x) => x.toFixed(1);
console.log(`date: ${new Date().toISOString()}; ${os.cpus()[0]?.model.trim()} × ${os.cpus().length}; node ${process.version}; rounds 1+${ROUNDS}; load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
console.log('| server CPU ms (median) | with warmUp() | without | ');
console.log('|---|---:|---:|');
console.log(`| set-up: createServer (+ warmUp) + listen, CPU | ${f(median(res.warm.map((o) => o.setupCpu)))} | ${f(median(res.cold.map((o) => o.setupCpu)))} |`);
console.log(`| set-up, wall clock | ${f(median(res.warm.map((o) => o.setupWall)))} | ${f(median(res.cold.map((o) => o.setupWall)))} |`);
for (const k of Object.keys(res.warm[0].runs)) {
  const label = k === 'true' ? 'spawning `true` (baseline)' : k === 'nbdinfo' ? 'nbdinfo --size (first connection)' : `${k} (1 GiB sparse → file)`;
  console.log(`| ${label} | ${f(median(res.warm.map((o) => o.runs[k])))} | ${f(median(res.cold.map((o) => o.runs[k])))} |`);
}
