#!/usr/bin/env node
// Handshake rate of nbd-engine against nbdkit and against the floor for a Node server
// (bench/minimal-handshake-server.mjs), alternating, a fresh server per round (as `nbd-engine
// serve` starts: with its warm-up), a 3 s `nbdinfo --size` loop each, medians; and each server's
// CPU per connection (all its threads, from /proc/PID/stat).
//
//   npm run build && node bench/handshake-floor.mjs [ROUNDS]
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const rounds = Number(process.argv[2] ?? 5);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hs-floor-'));
const servers = {
  minimal: (p) => [process.execPath, [path.join(ROOT, 'bench/minimal-handshake-server.mjs'), p]],
  'nbd-engine': (p) => [process.execPath, [path.join(ROOT, 'bin/nbd-engine.js'), 'serve', '--memory', '16G', '--socket', p]],
  nbdkit: (p) => ['nbdkit', ['-f', '-U', p, 'memory', '16G']],
};
const cpuMs = (pid) => {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) * (1000 / 100);
};
const results = Object.fromEntries(Object.keys(servers).map((k) => [k, []]));
for (let r = 0; r <= rounds; r++) {
  for (const [name, argv] of Object.entries(servers)) {
    const sock = path.join(dir, `${name}.sock`);
    fs.rmSync(sock, { force: true });
    const [cmd, args] = argv(sock);
    const child = spawn(cmd, args, { stdio: 'ignore' });
    for (let i = 0; i < 400 && !fs.existsSync(sock); i++) await new Promise((res) => setTimeout(res, 25));
    await new Promise((res) => setTimeout(res, 200));
    const uri = `nbd+unix:///?socket=${sock}`;
    for (let i = 0; i < 5; i++) execFileSync('nbdinfo', ['--size', uri]);
    const c0 = cpuMs(child.pid);
    let n = 0;
    const t0 = Date.now();
    while (Date.now() - t0 < 3000) {
      execFileSync('nbdinfo', ['--size', uri]);
      n++;
    }
    const rate = n / ((Date.now() - t0) / 1000);
    const cpu = (cpuMs(child.pid) - c0) / n;
    child.kill('SIGTERM');
    await new Promise((res) => child.on('exit', res));
    // Round 0 is a warm-up (page cache, nbdinfo's own libraries).
    if (r > 0) results[name].push({ rate, cpu });
    console.log(`round ${r}${r === 0 ? ' (warm-up)' : ''}: ${name} ${rate.toFixed(1)} conn/s, ${cpu.toFixed(2)} ms CPU per connection`);
  }
}
fs.rmSync(dir, { recursive: true, force: true });
const median = (a) => [...a].sort((x, y) => x - y)[a.length >> 1];
const nk = median(results.nbdkit.map((x) => x.rate));
for (const [name, rs] of Object.entries(results)) {
  const rate = median(rs.map((x) => x.rate));
  console.log(`${name.padEnd(10)} median ${rate.toFixed(1)} conn/s (${(rate / nk).toFixed(2)}× nbdkit), ${median(rs.map((x) => x.cpu)).toFixed(2)} ms CPU per connection`);
}
