#!/usr/bin/env node
// nbd-engine vs nbdkit, side by side on this machine.
//
//   npm run bench                         (the full run, < 10 minutes)
//   node bench/run.mjs --rounds 3 --runtime 3 --only 4k
//   node bench/run.mjs --profile          (CPU profile of nbd-engine under the 4 KiB mix, summarised)
//   node bench/run.mjs --ceiling          (the 4 KiB workloads against storage-free servers too:
//                                          how far one fio job goes when storage costs nothing)
//   node bench/run.mjs --rounds 3 --only "4 KiB random"
//                                         (includes the request-stream rows: see STREAM below)
//
// Both servers run the memory backend: `node bin/nbd-engine.js serve --memory SIZE`
// (the compiled CLI, so xstate's production build) and `nbdkit -f memory SIZE`;
// the `file` group's rows run both file backends on one cached 1 GiB file
// (`serve file PATH`, `nbdkit file PATH`).
// Every workload runs against both alternately (A B A B …): one warm-up
// round, then --rounds measured rounds; the table gives the medians and
// the ratio nbd-engine / nbdkit. The first handshake row alternates inside
// each round, in blocks of 10 connections (see handshakeBlocks), and a line
// after the table gives its per-block-pair ratios with a bootstrap interval.
// Nothing is installed: a missing tool is named with its Debian package.
//
// The 4 KiB random read and write workloads also run against nbd-engine
// served through `requests$` as README's request-stream snippet does
// (bench/stream-server.mjs: rxjs mergeMap, concurrency 64, a flat Buffer),
// and through the library's serveRequests operator (the same async handler,
// and the handler as a plain function), in the same rounds as
// the memory backend and nbdkit (the order rotates each round). Their rows
// add the ratio to the memory-backend path. So does the memory backend with
// `--trace` (to a tmpfs file): what recording every connection costs, and
// the memory backend under one filter from the command line (`serve
// --filter=delay memory 16G`, no delays: a pure layer; `--filter=stats` with
// a statsfile on tmpfs): what one filter costs (the export without a filter
// is served by the backend itself, see src/api/export-entry.ts).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
if (flag('--help') || flag('-h')) {
  process.stdout.write(`usage: node bench/run.mjs [--rounds N] [--runtime S] [--only TEXT] [--profile]

  --rounds N    measured rounds per workload after one warm-up (default 5)
  --runtime S   seconds per fio run (default 3)
  --only TEXT   run only workloads whose name (or group: unix, nbdcopy, tcp, rss) contains TEXT,
                e.g. --only "1 MiB sequential write", --only nbdcopy, --only TCP, --only rss
  --hs-blocks N blocks per server per round in the alternating-blocks handshake row (default 12)
  --profile     CPU profile of nbd-engine under the 4 KiB random 50/50 mix, summarised
  --ceiling     the 4 KiB QD32 workloads against four servers in turn — nbd-engine and nbdkit
                with the memory backend, and both with no storage at all (bench/null-server.mjs,
                nbdkit null) — with fio's own CPU per request: the client's ceiling on this machine

  Rows "4 KiB random read, QD32 (requests$ + mergeMap)" and "4 KiB random write, QD32 (requests$ +
  mergeMap)": nbd-engine serving an export without a backend as README's request-stream snippet does
  (bench/stream-server.mjs: server.requests$.pipe(mergeMap(async (req) => …, 64)) over one flat 1 GiB
  Buffer), measured in the same rounds as the memory-backend and nbdkit rows of the same workload
  (the servers take turns, the order rotating each round). The rows ending "(requests$ +
  serveRequests)" serve the same async handler through the library's serveRequests operator instead
  of mergeMap, and "(requests$ + serveRequests, sync handler)" the same switch as a plain function
  (no promise per request). Their "ratio / memory backend" column is their median over the median of
  \`serve --memory\` (the backend path, no rxjs) in that run. --only "requests$" runs just these workloads
  (with their memory-backend and nbdkit rows). For these workloads a second table gives each server's
  own CPU time per request (µs, /proc/PID/stat over each fio run): the cost of a request, less
  dependent than IOPS on how much of a busy machine each server got.

  Rows ending "(serve --trace)", "(serve --filter=delay)" and "(serve --filter=stats)": the same
  memory backend recording every connection (--trace to a tmpfs file), and under one filter given on
  the command line (\`serve --filter=delay memory 16G\` with no delays: a pure pass-through layer;
  \`serve --filter=stats memory 16G statsfile=…\` on tmpfs: counts and latency percentiles), in the
  same rounds; their "ratio / memory backend" is the cost of that layer. --only "--filter" runs just
  the filter rows (with their memory-backend and nbdkit rows).
`);
  process.exit(0);
}
const ROUNDS = Number(opt('--rounds', '5'));
const RUNTIME = Number(opt('--runtime', '3')); // seconds per fio run
const ONLY = opt('--only', '');
const PROFILE = flag('--profile');
const CEILING = flag('--ceiling');

// ── tools ────────────────────────────────────────────────────────────────
const TOOLS = [
  ['fio', 'fio'],
  ['nbdkit', 'nbdkit'],
  ['nbdcopy', 'libnbd-bin'],
  ['nbdinfo', 'libnbd-bin'],
];
const missing = TOOLS.filter(([cmd]) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status !== 0);
if (missing.length > 0) {
  for (const [cmd, pkg] of missing) process.stderr.write(`bench: ${cmd} not found — install the Debian package "${pkg}" (apt-get install ${pkg})\n`);
  process.exit(2);
}
const version = (cmd, a = ['--version']) => (spawnSync(cmd, a, { encoding: 'utf8' }).stdout ?? '').split('\n')[0].trim();

log(`building nbd-engine (npm run build)…`);
const build = spawnSync('npm', ['run', 'build'], { cwd: ROOT, encoding: 'utf8' });
if (build.status !== 0) {
  process.stderr.write(build.stdout + build.stderr);
  process.exit(1);
}

const WORK = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-bench-'));
const children = new Set();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
  fs.rmSync(WORK, { recursive: true, force: true });
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

function log(s) {
  process.stderr.write(`${s}\n`);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

// ── servers ──────────────────────────────────────────────────────────────
let portBase = 20000 + Math.floor(Math.random() * 20000);

/** Ready when `ready()` says so (nbdkit writes its -P pidfile once listening; nbd-engine prints its URIs). */
async function waitReady(ready, child, what, ms = 10000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${child.spawnargs.join(' ')} exited with ${child.exitCode}`);
    if (ready()) return;
    await sleep(20);
  }
  throw new Error(`${what} did not start listening`);
}

/**
 * Start one server. kind: 'engine' | 'nbdkit'; transport: 'unix' | 'tcp'.
 * Returns { kind, pid, uri, stop(), vmhwm() }.
 */
async function startServer(kind, transport, size, extra = {}) {
  const id = `${kind}-${transport}-${portBase}`;
  const sock = path.join(WORK, `${id}.sock`);
  const port = portBase++;
  let cmd;
  let argv;
  const engine = kind.startsWith('engine');
  if (kind === 'engine') {
    cmd = process.execPath;
    argv = [...(extra.nodeArgs ?? []), path.join(ROOT, 'bin/nbd-engine.js'), 'serve', ...(extra.file ? ['file', extra.file] : ['--memory', size])];
    argv.push(...(transport === 'unix' ? ['--socket', sock] : ['--port', String(port), '--host', '127.0.0.1']));
  } else if (kind === 'engine-null') {
    // Storage-free nbd-engine (UNIX socket only): see bench/null-server.mjs.
    cmd = process.execPath;
    argv = [path.join(ROOT, 'bench/null-server.mjs'), sock, String(parseSizeArg(size))];
  } else if (kind === 'engine-traced') {
    cmd = process.execPath;
    const traceTo = path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : WORK, `nbd-bench-trace-${process.pid}-${port}.jsonl`);
    argv = [path.join(ROOT, 'bin/nbd-engine.js'), 'serve', '--memory', size, '--socket', sock, '--trace', traceTo, '--trace-max', '64M', '--trace-rotate', '1'];
    extra.cleanup = () => {
      for (const f of [traceTo, `${traceTo}.1`]) fs.rmSync(f, { force: true });
    };
  } else if (STREAM_KINDS[kind]?.cli) {
    // The memory backend under a filter, from nbdkit's command line (`serve --filter=NAME memory SIZE key=value`).
    cmd = process.execPath;
    const own = STREAM_KINDS[kind].cli(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : WORK, `nbd-bench-${kind}-${process.pid}-${port}`));
    argv = [path.join(ROOT, 'bin/nbd-engine.js'), 'serve', ...own.filters, 'memory', size, ...own.params, '--socket', sock];
    extra.cleanup = () => {
      for (const f of own.files ?? []) fs.rmSync(f, { force: true });
    };
  } else if (STREAM_KINDS[kind]) {
    // requests$ served as README's snippet does (UNIX socket only): see bench/stream-server.mjs.
    // Its store is one flat Buffer, allocated whole, so it is as large as the workloads touch (1 GiB).
    cmd = process.execPath;
    argv = [path.join(ROOT, 'bench/stream-server.mjs'), sock, String(STREAM_SIZE), '--serve', STREAM_KINDS[kind].serve];
  } else {
    cmd = 'nbdkit';
    const plugin = extra.file ? ['file', extra.file] : [kind === 'nbdkit-null' ? 'null' : 'memory', size];
    argv = ['-f', '-P', `${sock}.pid`, ...(transport === 'unix' ? ['-U', sock] : ['-p', String(port), '-i', '127.0.0.1']), ...plugin];
  }
  const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'inherit'], cwd: extra.cwd ?? WORK });
  children.add(child);
  let printed = '';
  child.stdout.on('data', (d) => (printed += d));
  await waitReady(engine ? () => printed.includes('nbd') : () => fs.existsSync(`${sock}.pid`) && fs.statSync(`${sock}.pid`).size > 0, child, id);
  const uri = transport === 'unix' ? `nbd+unix:///?socket=${sock}` : `nbd://127.0.0.1:${port}/`;
  return {
    kind,
    transport,
    pid: child.pid,
    uri,
    vmhwm() {
      const m = fs.readFileSync(`/proc/${child.pid}/status`, 'utf8').match(/VmHWM:\s+(\d+) kB/);
      return m ? Number(m[1]) * 1024 : NaN;
    },
    async stop() {
      if (child.exitCode !== null) return;
      const done = new Promise((r) => child.once('exit', r));
      child.kill(engine ? 'SIGINT' : 'SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 8000);
      await done;
      clearTimeout(t);
      children.delete(child);
      extra.cleanup?.();
    },
  };
}

/** The request-stream servers (bench/stream-server.mjs), keyed by kind; each gives its rows a suffix. */
const STREAM_KINDS = {
  'engine-stream': { serve: 'mergeMap', suffix: ' (requests$ + mergeMap)' },
  'engine-stream-op': { serve: 'serveRequests', suffix: ' (requests$ + serveRequests)' },
  'engine-stream-sync': { serve: 'serveRequests-sync', suffix: ' (requests$ + serveRequests, sync handler)' },
  // Not a request stream: the memory backend (`serve --memory`) recording every connection with
  // `--trace` to a tmpfs file (rotating at 64 MiB, one old file kept), so its rows give what recording costs.
  'engine-traced': { serve: 'trace', suffix: ' (serve --trace)', label: 'memory backend, --trace' },
  // Not request streams either: the memory backend under one filter from the command line, so their
  // rows give what one filter layer costs. delay with no delays forwards every call (a pure layer);
  // stats counts each request and its latency (written to a tmpfs file when the server stops).
  'engine-filter-delay': { serve: 'filter', filter: 'delay', suffix: ' (serve --filter=delay)', label: 'memory backend, --filter=delay', cli: () => ({ filters: ['--filter=delay'], params: [] }) },
  'engine-filter-stats': {
    serve: 'filter',
    filter: 'stats',
    suffix: ' (serve --filter=stats)',
    label: 'memory backend, --filter=stats',
    cli: (base) => ({ filters: ['--filter=stats'], params: [`statsfile=${base}.stats`], files: [`${base}.stats`] }),
  },
};
const STREAM_SIZE = 1024 ** 3;

// ── clients ──────────────────────────────────────────────────────────────
function run(cmd, argv, { timeout = 120_000 } = {}) {
  const r = spawnSync(cmd, argv, { encoding: 'utf8', timeout, maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr?.slice(0, 2000)}`);
  return r.stdout;
}

/** fio with the nbd engine; returns { iops, bw } summed over reads and writes (bw in bytes/s). */
function fio(uri, { rw, bs, iodepth, jobs = 1, size = '1G', runtime = RUNTIME, timeBased = true, rwmixread }) {
  const argv = [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${rw}`,
    `--bs=${bs}`,
    `--iodepth=${iodepth}`,
    `--numjobs=${jobs}`,
    `--size=${size}`,
    '--group_reporting',
    '--output-format=json',
  ];
  if (rwmixread !== undefined) argv.push(`--rwmixread=${rwmixread}`);
  if (timeBased) argv.push('--time_based', `--runtime=${runtime}`, '--ramp_time=0.5');
  const out = run('fio', argv);
  const j = JSON.parse(out.slice(out.indexOf('{')));
  const job = j.jobs[0];
  return {
    iops: job.read.iops + job.write.iops,
    /** fio's own CPU (user + system), percent of one core. */
    cpu: job.usr_cpu + job.sys_cpu,
    bw: (job.read.bw_bytes ?? job.read.bw * 1024) + (job.write.bw_bytes ?? job.write.bw * 1024),
  };
}

/** CPU time (user + system, every thread) the process `pid` has used so far, in seconds. */
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout) || 100;
function cpuSeconds(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK; // utime, stime (fields 14 and 15)
}

/**
 * Handshake rate, both servers measured together: HS_BLOCKS blocks of HS_BLOCK back-to-back
 * `nbdinfo --size` runs per server, alternating (engine, nbdkit, nbdkit, engine, …), so that a
 * drift of the shared host (the 3 s loops of the row below land in different seconds and vary by
 * ±10 %) falls on both alike. The first HS_WASHOUT runs of each block are not counted: what the
 * other server left running (its GC, its JIT compiles, its threads exiting) lands on them, which
 * per-connection alternation would bill to the wrong server. conn/s = counted runs / their wall
 * time. Each adjacent pair of blocks also gives one ratio (engine / nbdkit conn/s), summarised
 * after the table (pairRatios).
 */
const HS_BLOCK = 10;
const HS_WASHOUT = 2;
const HS_BLOCKS = Number(opt('--hs-blocks', '12'));
const pairRatios = {};
function handshakeBlocks(engine, nbdkit, name, round) {
  const rate = { engine: [0, 0], nbdkit: [0, 0] };
  const blockRate = (s) => {
    let n = 0;
    let ns = 0n;
    for (let i = 0; i < HS_BLOCK; i++) {
      const t0 = process.hrtime.bigint();
      run('nbdinfo', ['--size', s.uri]);
      if (i >= HS_WASHOUT) {
        ns += process.hrtime.bigint() - t0;
        n++;
      }
    }
    return [n, Number(ns) / 1e9];
  };
  for (let b = 0; b < HS_BLOCKS; b++) {
    const order = (b + round) % 2 === 0 ? ['engine', 'nbdkit'] : ['nbdkit', 'engine'];
    const got = {};
    for (const k of order) {
      got[k] = blockRate(k === 'engine' ? engine : nbdkit);
      rate[k][0] += got[k][0];
      rate[k][1] += got[k][1];
    }
    if (round > 0) (pairRatios[name] ??= []).push(got.engine[0] / got.engine[1] / (got.nbdkit[0] / got.nbdkit[1]));
  }
  return { engine: rate.engine[0] / rate.engine[1], nbdkit: rate.nbdkit[0] / rate.nbdkit[1] };
}

/** Median, mean and a bootstrap 95 % interval (seeded, 2000 resamples) of the mean of `xs`. */
function bootstrapMean(xs, seed = 1) {
  let x = seed >>> 0;
  const rnd = () => ((x = (Math.imul(x, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const mean = (a) => a.reduce((p, q) => p + q, 0) / a.length;
  const means = [];
  for (let r = 0; r < 2000; r++) means.push(mean(Array.from(xs, () => xs[Math.floor(rnd() * xs.length)])));
  means.sort((a, b) => a - b);
  return { median: median(xs), mean: mean(xs), lo: means[50], hi: means[1949] };
}

function seconds(fn) {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

// ── workloads ────────────────────────────────────────────────────────────
// Each: { name, group, unit, better: 'higher'|'lower', measure(server) → number }.
const GiB = 1024 ** 3;
const fio4k = (rw, extra = {}) => (s) => fio(s.uri, { rw, bs: '4k', iodepth: 32, ...extra }).iops;
const fio1m = (rw) => (s) => fio(s.uri, { rw, bs: '1M', iodepth: 8 }).bw / 1024 ** 2;

const SRC = path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : WORK, `nbd-bench-src-${process.pid}.img`);
/** The file backends' image: in the work directory (a disk filesystem), not /dev/shm. */
const FILE_IMG = path.join(WORK, 'file-backend.img');

/** Write `bytes` random bytes to `file` (8 MiB at a time from /dev/urandom). */
function fillRandom(file, bytes) {
  const fd = fs.openSync(file, 'w');
  const rnd = fs.openSync('/dev/urandom', 'r');
  const block = Buffer.alloc(8 << 20);
  for (let i = 0; i < bytes / block.length; i++) {
    for (let j = 0; j < block.length; ) j += fs.readSync(rnd, block, j, Math.min(1 << 20, block.length - j), null);
    fs.writeSync(fd, block);
  }
  fs.closeSync(rnd);
  fs.closeSync(fd);
}

const groups = [
  {
    group: 'unix',
    transport: 'unix',
    size: '16G',
    // Allocate the 1 GiB the random and sequential workloads touch, so reads return data on both.
    prepare: (s) => fio(s.uri, { rw: 'write', bs: '1M', iodepth: 8, timeBased: false }),
    workloads: [
      // stream: also measured against the request-stream servers (STREAM_KINDS), named `stream` + suffix.
      { name: '4 KiB random read, QD32, 1 conn', stream: '4 KiB random read, QD32', unit: 'IOPS', measure: fio4k('randread') },
      { name: '4 KiB random write, QD32, 1 conn', stream: '4 KiB random write, QD32', unit: 'IOPS', measure: fio4k('randwrite') },
      { name: '4 KiB random 50/50, QD32, 1 conn', unit: 'IOPS', measure: fio4k('randrw', { rwmixread: 50 }) },
      { name: '4 KiB random 50/50, QD32, 4 jobs/4 conns', unit: 'IOPS', measure: fio4k('randrw', { rwmixread: 50, jobs: 4 }) },
      { name: '1 MiB sequential read, QD8', unit: 'MiB/s', measure: fio1m('read') },
      { name: '1 MiB sequential write, QD8', unit: 'MiB/s', measure: fio1m('write') },
      {
        // Both servers in one measurement, in short alternating blocks: see handshakeBlocks.
        name: `handshakes (nbdinfo --size, alternating blocks of ${HS_BLOCK}, ${HS_WASHOUT} washout)`,
        unit: 'conn/s',
        pair: handshakeBlocks,
      },
      {
        name: 'handshakes (nbdinfo --size, 3 s loop)',
        unit: 'conn/s',
        measure: (s) => {
          let n = 0;
          const t0 = Date.now();
          while (Date.now() - t0 < 3000) {
            run('nbdinfo', ['--size', s.uri]);
            n++;
          }
          return n / ((Date.now() - t0) / 1000);
        },
      },
    ],
  },
  {
    group: 'nbdcopy',
    transport: 'unix',
    size: '1G',
    before() {
      if (!fs.existsSync(SRC)) {
        log(`creating a 1 GiB source file of random bytes (${SRC})…`);
        fillRandom(SRC, GiB);
      }
    },
    workloads: [
      { name: 'nbdcopy 1 GiB file → export', unit: 'MiB/s', measure: (s) => 1024 / seconds(() => run('nbdcopy', [SRC, s.uri])) },
      { name: 'nbdcopy 1 GiB export → null:', unit: 'MiB/s', measure: (s) => 1024 / seconds(() => run('nbdcopy', [s.uri, 'null:'])) },
    ],
  },
  {
    // Both servers' file backends on one 1 GiB file of random bytes on the work directory's filesystem
    // (ext4 here; not tmpfs, which lacks RWF_NOWAIT), in the page cache: `serve file PATH` / `nbdkit file PATH`.
    group: 'file',
    transport: 'unix',
    file: FILE_IMG,
    before() {
      if (!fs.existsSync(FILE_IMG)) {
        log(`creating a 1 GiB file of random bytes for the file backend (${FILE_IMG})…`);
        fillRandom(FILE_IMG, GiB);
      }
      fs.readFileSync(FILE_IMG, { encoding: null }).length; // into the page cache
    },
    workloads: [
      { name: 'file backend: nbdcopy 1 GiB export → null:', unit: 'MiB/s', measure: (s) => 1024 / seconds(() => run('nbdcopy', [s.uri, 'null:'])) },
      { name: 'file backend: 4 KiB random read, QD32, 1 conn', unit: 'IOPS', measure: (s) => fio(s.uri, { rw: 'randread', bs: '4k', iodepth: 32, size: '1G' }).iops },
      { name: 'file backend: 4 KiB random read, QD1, 1 conn', unit: 'IOPS', measure: (s) => fio(s.uri, { rw: 'randread', bs: '4k', iodepth: 1, size: '1G' }).iops },
    ],
  },
  {
    group: 'tcp',
    transport: 'tcp',
    size: '16G',
    prepare: (s) => fio(s.uri, { rw: 'write', bs: '1M', iodepth: 8, timeBased: false }),
    workloads: [
      { name: 'TCP: 4 KiB random 50/50, QD32, 1 conn', unit: 'IOPS', measure: fio4k('randrw', { rwmixread: 50 }) },
      { name: 'TCP: 1 MiB sequential read, QD8', unit: 'MiB/s', measure: fio1m('read') },
    ],
  },
];

// { name, unit, better, engine: number[], nbdkit: number[], base?: number[] (the memory backend's runs, for stream rows) }
const results = [];
/** Stream workloads' server CPU per request: { name, kinds, cpu: { kind: µs[] } }. */
const cpuRows = [];

/** The request-stream kinds this build can serve (serveRequests only once dist/ exports it, filters once the registry has them). */
async function streamKinds() {
  const lib = await import(path.join(ROOT, 'dist/index.js'));
  const registry = path.join(ROOT, 'dist/plugins/registry.js');
  const filters = fs.existsSync(registry) ? ((await import(registry)).FILTERS ?? {}) : {};
  return Object.keys(STREAM_KINDS).filter((k) => {
    const { serve, filter } = STREAM_KINDS[k];
    if (serve === 'trace') return typeof lib.traceFile === 'function';
    if (serve === 'filter') return typeof filters[filter] === 'function';
    return !serve.startsWith('serveRequests') || typeof lib.serveRequests === 'function';
  });
}

async function runGroup(g) {
  const selected = (w) => !ONLY || w.name.includes(ONLY) || g.group.includes(ONLY) || (w.stream && Object.values(STREAM_KINDS).some((k) => (w.stream + k.suffix).includes(ONLY)));
  const wl = g.workloads.filter(selected);
  if (wl.length === 0) return;
  g.before?.();
  // The extra servers: all of them, unless --only names some of their rows only (e.g. --only "--filter").
  const available = wl.some((w) => w.stream) ? await streamKinds() : [];
  const named = available.filter((k) => wl.some((w) => w.stream && (w.stream + STREAM_KINDS[k].suffix).includes(ONLY)));
  const streams = !ONLY || wl.some((w) => w.name.includes(ONLY)) || g.group.includes(ONLY) ? available : named;
  log(`\n[${g.group}] starting nbd-engine and nbdkit (${g.file ? `file ${g.file}` : `memory ${g.size}`}, ${g.transport})${streams.length ? ` and nbd-engine via requests$ / with a layer (${streams.map((k) => (STREAM_KINDS[k].filter ? `--filter=${STREAM_KINDS[k].filter}` : STREAM_KINDS[k].serve)).join(', ')})` : ''}…`);
  const own = g.file ? { file: g.file } : {};
  const servers = { engine: await startServer('engine', g.transport, g.size, { ...own }), nbdkit: await startServer('nbdkit', g.transport, g.size, { ...own }) };
  try {
    for (const k of streams) servers[k] = await startServer(k, g.transport, g.size);
    if (g.prepare) for (const s of Object.values(servers)) g.prepare(s);
    for (const w of wl) {
      const kinds = w.stream ? ['engine', 'nbdkit', ...streams] : ['engine', 'nbdkit'];
      const runs = Object.fromEntries(kinds.map((k) => [k, []]));
      // Stream workloads: also the server's own CPU per request (µs), which depends less than IOPS
      // on how much of the shared machine each server happened to get.
      const cpu = Object.fromEntries(kinds.map((k) => [k, []]));
      for (let round = 0; round <= ROUNDS; round++) {
        // Alternate which one goes first, so neither always runs on a warmer machine
        // (with more than two servers, the order rotates by one each round).
        const order = kinds.length === 2 ? (round % 2 === 0 ? kinds : [...kinds].reverse()) : kinds.map((_, i) => kinds[(i + round) % kinds.length]);
        if (w.pair) {
          // Both servers in one measurement (they take turns inside it).
          const v = w.pair(servers.engine, servers.nbdkit, w.name, round);
          for (const k of kinds) {
            if (round > 0) runs[k].push(v[k]);
            log(`  ${w.name} · ${k} · ${round === 0 ? 'warm-up' : `round ${round}`}: ${fmt(v[k])} ${w.unit}`);
          }
          continue;
        }
        for (const k of order) {
          const c0 = w.stream ? cpuSeconds(servers[k].pid) : 0;
          const v = w.measure(servers[k]);
          // Requests served over the whole fio run, ramp included (fio's IOPS cover the runtime only).
          const us = w.stream ? ((cpuSeconds(servers[k].pid) - c0) / (v * (RUNTIME + 0.5))) * 1e6 : NaN;
          if (round > 0) runs[k].push(v);
          if (round > 0 && w.stream) cpu[k].push(us);
          log(`  ${w.name} · ${k} · ${round === 0 ? 'warm-up' : `round ${round}`}: ${fmt(v)} ${w.unit}${w.stream ? `, server CPU ${us.toFixed(1)} µs/request` : ''}`);
        }
      }
      if (w.stream) cpuRows.push({ name: w.stream, kinds, cpu });
      const better = w.better ?? 'higher';
      results.push({ name: w.name, unit: w.unit, better, engine: runs.engine, nbdkit: runs.nbdkit });
      for (const k of streams) {
        if (w.stream) results.push({ name: w.stream + STREAM_KINDS[k].suffix, unit: w.unit, better, engine: runs[k], nbdkit: runs.nbdkit, base: runs.engine });
      }
    }
  } finally {
    for (const s of Object.values(servers)) await s.stop();
  }
}

/** Peak RSS after 1 GiB written into a fresh 16 GiB export (fio, 1 MiB writes, QD8). */
async function runRss() {
  if (ONLY && !'peak RSS'.includes(ONLY) && !ONLY.includes('rss')) return;
  log(`\n[rss] fresh servers, 1 GiB written into a 16 GiB export, VmHWM…`);
  const row = { name: 'peak RSS, 1 GiB written into 16 GiB', unit: 'MiB', better: 'lower', engine: [], nbdkit: [] };
  for (let round = 1; round <= ROUNDS; round++) {
    for (const k of round % 2 ? ['engine', 'nbdkit'] : ['nbdkit', 'engine']) {
      const s = await startServer(k, 'unix', '16G');
      try {
        fio(s.uri, { rw: 'write', bs: '1M', iodepth: 8, size: '1G', timeBased: false });
        const v = s.vmhwm() / 1024 ** 2;
        row[k].push(v);
        log(`  peak RSS · ${k} · round ${round}: ${fmt(v)} MiB`);
      } finally {
        await s.stop();
      }
    }
  }
  results.push(row);
}

/** CPU profile of nbd-engine under the 4 KiB random 50/50 mix, summarised by self time. */
async function runProfile() {
  const dir = path.join(WORK, 'prof');
  fs.mkdirSync(dir);
  const s = await startServer('engine', 'unix', '16G', { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${dir}`] });
  fio(s.uri, { rw: 'write', bs: '1M', iodepth: 8, timeBased: false });
  const r = fio(s.uri, { rw: 'randrw', bs: '4k', iodepth: 32, rwmixread: 50, runtime: 8 });
  await s.stop();
  log(`4 KiB random 50/50 under the profiler: ${fmt(r.iops)} IOPS`);
  const file = path.join(dir, fs.readdirSync(dir)[0]);
  const keep = path.join(os.tmpdir(), 'nbd-engine-4k-mix.cpuprofile');
  fs.copyFileSync(file, keep);
  process.stdout.write(run(process.execPath, [path.join(ROOT, 'bench/profile-summary.mjs'), keep, '--top', '30']));
  process.stdout.write(`(profile kept in ${keep})\n`);
}

function parseSizeArg(size) {
  const m = /^(\d+)([KMGT]?)$/i.exec(size);
  if (!m) throw new Error(`bad size ${size}`);
  return Number(m[1]) * 1024 ** ' KMGT'.indexOf((m[2] || ' ').toUpperCase());
}

/**
 * The client's ceiling: the 4 KiB QD32 workloads against nbd-engine and
 * nbdkit with the memory backend and with no storage at all, alternating.
 * Reports IOPS and fio's CPU per request (µs): when fio is near 100 % of a
 * core, no server can go faster with one fio job.
 */
async function runCeiling() {
  const kinds = ['engine', 'engine-null', 'nbdkit', 'nbdkit-null'];
  const servers = {};
  for (const k of kinds) servers[k] = await startServer(k, 'unix', '16G');
  try {
    for (const k of ['engine', 'nbdkit']) fio(servers[k].uri, { rw: 'write', bs: '1M', iodepth: 8, timeBased: false });
    const rows = [];
    for (const [name, rw] of [
      ['4 KiB random read, QD32, 1 conn', 'randread'],
      ['4 KiB random write, QD32, 1 conn', 'randwrite'],
      ['4 KiB random 50/50, QD32, 1 conn', 'randrw'],
    ]) {
      const per = Object.fromEntries(kinds.map((k) => [k, { iops: [], cpu: [] }]));
      for (let round = 0; round <= ROUNDS; round++) {
        const order = round % 2 === 0 ? kinds : [...kinds].reverse();
        for (const k of order) {
          const r = fio(servers[k].uri, { rw, bs: '4k', iodepth: 32, ...(rw === 'randrw' ? { rwmixread: 50 } : {}) });
          if (round > 0) {
            per[k].iops.push(r.iops);
            per[k].cpu.push(r.cpu);
          }
          log(`  ${name} · ${k} · ${round === 0 ? 'warm-up' : `round ${round}`}: ${fmt(r.iops)} IOPS, fio CPU ${r.cpu.toFixed(0)} %`);
        }
      }
      rows.push({ name, per });
    }
    const label = { engine: 'nbd-engine memory', 'engine-null': 'nbd-engine null', nbdkit: 'nbdkit memory', 'nbdkit-null': 'nbdkit null' };
    const out = ['| workload | server | IOPS (median) | fio CPU % (median) | fio CPU µs / request | IOPS runs |', '|---|---|---:|---:|---:|---|'];
    for (const { name, per } of rows) {
      for (const k of kinds) {
        const iops = median(per[k].iops);
        const cpu = median(per[k].cpu);
        out.push(`| ${name} | ${label[k]} | ${fmt(iops)} | ${cpu.toFixed(0)} | ${((cpu / 100 / iops) * 1e6).toFixed(1)} | ${per[k].iops.map(fmt).join(', ')} |`);
      }
    }
    process.stdout.write(`\n${new Date().toISOString()}; ${ROUNDS} measured rounds, fio ${RUNTIME} s each\n\n${out.join('\n')}\n`);
  } finally {
    for (const s of Object.values(servers)) await s.stop();
  }
}

function fmt(v) {
  if (!Number.isFinite(v)) return String(v);
  return v >= 100 ? Math.round(v).toLocaleString('en-US') : v.toFixed(1);
}

// ── main ─────────────────────────────────────────────────────────────────
const started = Date.now();
if (PROFILE) {
  await runProfile();
  process.exit(0);
}
if (CEILING) {
  await runCeiling();
  process.exit(0);
}
for (const g of groups) await runGroup(g);
await runRss();
fs.rmSync(SRC, { force: true });

const cpu = os.cpus();
const header = [
  `date: ${new Date().toISOString()}`,
  `machine: ${cpu[0]?.model ?? '?'} × ${cpu.length} CPUs, ${Math.round(os.totalmem() / 1024 ** 3)} GiB RAM, ${os.type()} ${os.release()}`,
  `node ${process.version}; ${version('nbdkit')}; ${version('fio')}; ${version('nbdcopy')}`,
  `rounds: 1 warm-up + ${ROUNDS} measured, alternating; fio runs ${RUNTIME} s each; total ${((Date.now() - started) / 1000).toFixed(0)} s`,
];
const lines = [
  '| workload | unit | nbd-engine (median) | nbdkit (median) | ratio engine/nbdkit | ratio / memory backend | nbd-engine runs | nbdkit runs |',
  '|---|---|---:|---:|---:|---:|---|---|',
];
for (const r of results) {
  const e = median(r.engine);
  const k = median(r.nbdkit);
  const ratio = e / k;
  // Request-stream rows: their median over the memory backend's (serve --memory) in the same rounds.
  const vsBackend = r.base ? `${(e / median(r.base)).toFixed(2)}×` : '';
  lines.push(
    `| ${r.name} | ${r.unit}${r.better === 'lower' ? ' (lower is better)' : ''} | ${fmt(e)} | ${fmt(k)} | ${ratio.toFixed(2)}× | ${vsBackend} | ${r.engine.map(fmt).join(', ')} | ${r.nbdkit.map(fmt).join(', ')} |`,
  );
}
process.stdout.write(`\n${header.join('\n')}\n\n${lines.join('\n')}\n`);
for (const [name, xs] of Object.entries(pairRatios)) {
  const b = bootstrapMean(xs);
  process.stdout.write(
    `\n${name}: ${xs.length} block pairs, engine/nbdkit conn/s per pair: median ${b.median.toFixed(3)}, mean ${b.mean.toFixed(3)} (95 % bootstrap interval of the mean ${b.lo.toFixed(3)}–${b.hi.toFixed(3)}), engine faster in ${xs.filter((r) => r > 1).length} of ${xs.length}\n`,
  );
}
if (cpuRows.length > 0) {
  // The server process's CPU time (user + system, all threads) over each fio run, per request.
  const label = { engine: 'memory backend', nbdkit: 'nbdkit memory', ...Object.fromEntries(Object.entries(STREAM_KINDS).map(([k, v]) => [k, v.label ?? `requests$ + ${v.serve}`])) };
  const out = ['| workload | server | server CPU µs / request (median) | ratio / memory backend | runs |', '|---|---|---:|---:|---|'];
  for (const { name, kinds, cpu } of cpuRows) {
    const base = median(cpu.engine);
    for (const k of kinds) out.push(`| ${name} | ${label[k]} | ${median(cpu[k]).toFixed(1)} | ${(median(cpu[k]) / base).toFixed(2)}× | ${cpu[k].map((x) => x.toFixed(1)).join(', ')} |`);
  }
  process.stdout.write(`\nserver CPU per request (lower is better; CPU time of the server process during each fio run / requests):\n\n${out.join('\n')}\n`);
}
