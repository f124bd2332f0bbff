#!/usr/bin/env node
// The file backend on a sparse image: nbd-engine vs `nbdkit file`, side by side.
//
// Each round makes a fresh 1 GiB sparse image with 4 KiB of data written in
// it, serves it (UNIX socket) and times, as wall clock of the client process:
//   - `nbdcopy URI out.img` (a copy out of the sparse image: fast only when
//     BLOCK_STATUS reports the holes), and
//   - `qemu-io -f raw -c 'write -z 0 512M' URI` (fast only when WRITE_ZEROES
//     is done without writing data).
// Servers alternate (the order flips every round), one warm-up round is
// dropped, medians of the measured rounds are compared. Before those two,
// each freshly started server answers one `nbdinfo --size`, timed as its own
// row ("first connection"): a new Node process compiles its connection code
// the first time it runs (nbdkit, in C, does not); `nbd-engine serve` does
// that before it listens (its start-up warm-up, docs/cli.md), and
// `--no-warm-up` here starts it without, to show what that buys. By default a third
// server, nbd-engine with its native part off (NBD_ENGINE_NO_NATIVE=1), is
// measured too, to show what the native part buys (`--no-fallback` skips it).
//
// Each round then repeats both on the same server after --warm N untimed runs (default 3): the
// rows "(after N runs)" are a long-running server's steady state.
//
//   npm run bench:file                 (builds first)
//   node bench/file-sparse.mjs --rounds 5 --no-fallback
//   node bench/file-sparse.mjs --no-warm-up      (nbd-engine without its start-up warm-up)
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freshImage } from './sparse-image.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const ROUNDS = args.includes('--rounds') ? Number(args[args.indexOf('--rounds') + 1]) : 5;
if (!(Number.isInteger(ROUNDS) && ROUNDS > 0)) throw new Error('--rounds N: a positive integer');
const FALLBACK = !args.includes('--no-fallback');
/** Untimed runs of each client before the "warm" rows (`--warm N`, default 3). */
const WARM = args.includes('--warm') ? Number(args[args.indexOf('--warm') + 1]) : 3;
const SIZE = 1 << 30;
/** `--no-warm-up`: start nbd-engine with --no-warm-up (for before/after figures of the start-up warm-up). */
const NO_WARM_UP = args.includes('--no-warm-up');

for (const tool of ['nbdkit', 'nbdcopy', 'nbdinfo', 'qemu-io']) {
  if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) {
    console.error(`bench: ${tool} is missing (apt-get install ${tool === 'qemu-io' ? 'qemu-utils' : tool === 'nbdkit' ? 'nbdkit' : 'libnbd-bin'})`);
    process.exit(1);
  }
}
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-engine-bench-file-'));
const log = (m) => process.stderr.write(`${m}\n`);


/** Start a server on `img`; resolves with { uri, stop }. */
async function start(kind, img) {
  const sock = path.join(work, `${kind}.sock`);
  fs.rmSync(sock, { force: true });
  const pidfile = path.join(work, `${kind}.pid`);
  fs.rmSync(pidfile, { force: true });
  let child;
  let stdout = '';
  if (kind === 'nbdkit') {
    child = spawn('nbdkit', ['-f', '-U', sock, '-P', pidfile, 'file', img], { stdio: ['ignore', 'ignore', 'inherit'] });
  } else {
    const env = { ...process.env, ...(kind === 'fallback' ? { NBD_ENGINE_NO_NATIVE: '1' } : {}) };
    child = spawn(process.execPath, [path.join(ROOT, 'bin/nbd-engine.js'), 'serve', ...(NO_WARM_UP ? ['--no-warm-up'] : []), '--file', img, '--socket', sock], { env, stdio: ['ignore', 'pipe', 'ignore'] });
    child.stdout.on('data', (d) => (stdout += d));
  }
  const ready = () => (kind === 'nbdkit' ? fs.existsSync(pidfile) : stdout.includes('\n'));
  for (let i = 0; !ready(); i++) {
    if (child.exitCode !== null || i > 300) throw new Error(`${kind} did not start`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    uri: `nbd+unix:///?socket=${sock}`,
    stop: () => new Promise((resolve) => (child.once('exit', resolve), child.kill('SIGTERM'))),
  };
}

/** Wall-clock seconds of one client run. */
function timed(cmd, argv) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, argv, { encoding: 'utf8', timeout: 120_000 });
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} failed: ${r.stderr || r.error}`);
  return s;
}

const kinds = ['engine', 'nbdkit', ...(FALLBACK ? ['fallback'] : [])];
const results = { first: {}, nbdcopy: {}, writez: {}, nbdcopyWarm: {}, writezWarm: {} };
for (const k of kinds) for (const r of Object.values(results)) r[k] = [];

const t0 = Date.now();
for (let round = 0; round <= ROUNDS; round++) {
  const order = round % 2 ? [...kinds].reverse() : kinds;
  for (const kind of order) {
    const img = freshImage(work, SIZE);
    const srv = await start(kind, img);
    const out = path.join(work, 'out.img');
    fs.rmSync(out, { force: true });
    const first = timed('nbdinfo', ['--size', srv.uri]);
    const copy = timed('nbdcopy', [srv.uri, out]);
    const wz = timed('qemu-io', ['-f', 'raw', '-c', 'write -z 0 512M', srv.uri]);
    // The same two on a server that has already served them (WARM runs untimed first): a
    // long-running server's steady state, without the first runs' compiling.
    for (let i = 0; i < WARM; i++) timed('nbdcopy', [srv.uri, out]), timed('qemu-io', ['-f', 'raw', '-c', 'write -z 0 512M', srv.uri]);
    const copyWarm = timed('nbdcopy', [srv.uri, out]);
    const wzWarm = timed('qemu-io', ['-f', 'raw', '-c', 'write -z 0 512M', srv.uri]);
    await srv.stop();
    if (round > 0) {
      results.first[kind].push(first), results.nbdcopy[kind].push(copy), results.writez[kind].push(wz);
      results.nbdcopyWarm[kind].push(copyWarm), results.writezWarm[kind].push(wzWarm);
    }
    log(`round ${round}${round ? '' : ' (warm-up)'} ${kind}: first connection ${first.toFixed(3)} s, nbdcopy ${copy.toFixed(3)} s (warm ${copyWarm.toFixed(3)} s), write -z ${wz.toFixed(3)} s (warm ${wzWarm.toFixed(3)} s)`);
  }
}
fs.rmSync(work, { recursive: true, force: true });

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const f3 = (x) => x.toFixed(3);
const cpu = os.cpus();
console.log(`date: ${new Date().toISOString()}`);
console.log(`machine: ${cpu[0]?.model.trim()} × ${cpu.length} CPUs, Linux ${os.release()}`);
console.log(`node ${process.version}; ${(spawnSync('nbdkit', ['--version'], { encoding: 'utf8' }).stdout ?? '').trim()}; image: 1 GiB sparse, 4 KiB written; rounds: 1 warm-up + ${ROUNDS}, alternating${NO_WARM_UP ? '; nbd-engine --no-warm-up' : ''}; ${((Date.now() - t0) / 1000).toFixed(0)} s`);
console.log('');
const head = ['workload (seconds, lower is better)', 'nbd-engine (median)', 'nbdkit file (median)', 'ratio engine/nbdkit'];
if (FALLBACK) head.push('nbd-engine fallback (median)');
head.push('nbd-engine runs', 'nbdkit runs');
console.log(`| ${head.join(' | ')} |`);
console.log(`|${head.map((_, i) => (i === 0 || i >= head.length - 2 ? '---' : '---:')).join('|')}|`);
for (const [key, label] of [
  ['nbdcopy', 'nbdcopy 1 GiB sparse export → file (first run after start)'],
  ['writez', "qemu-io 'write -z 0 512M' (first run after start)"],
  ['nbdcopyWarm', `nbdcopy 1 GiB sparse export → file (after ${WARM} runs)`],
  ['writezWarm', `qemu-io 'write -z 0 512M' (after ${WARM} runs)`],
  ['first', 'first connection after start (nbdinfo --size)'],
]) {
  const r = results[key];
  const row = [label, f3(median(r.engine)), f3(median(r.nbdkit)), `${(median(r.engine) / median(r.nbdkit)).toFixed(2)}×`];
  if (FALLBACK) row.push(f3(median(r.fallback)));
  row.push(r.engine.map(f3).join(', '), r.nbdkit.map(f3).join(', '));
  console.log(`| ${row.join(' | ')} |`);
}
