#!/usr/bin/env node
// The s3 backend against nbdkit's S3 plugin (Python + boto3, Debian's nbdkit-plugin-python and
// python3-boto3) on the same Ceph radosgw (scripts/radosgw.sh; or the one in $S3_ENDPOINT,
// $S3_BUCKET, $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY). For each server, on a fresh prefix:
//   - nbdcopy SIZE of random data in, then out (compared with cmp),
//   - fio 4 KiB random writes, iodepth 16, for --seconds (IOPS),
//   - fio 1 MiB sequential writes of 256 MiB, iodepth 8 (MiB/s);
// and the raw store: the same bytes PUT and GET as objects with aws4fetch, 16 at a time.
// nbdkit's S3 plugin refuses object sizes above 64 KiB (its minimum block size is the object
// size, and nbdkit caps that at 64K), so the side-by-side rows use 64K objects for both; the
// rows "nbd-engine 1M" are our default object size alone. nbdkit runs with its blocksize filter
// (minblock=512) so that clients may write less than an object, as ours accepts.
//
//   npm run build && node bench/s3.mjs [--size 1G] [--seconds 15] [--no-nbdkit]
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const parseSize = (s) => Number(s.replace(/[KMG]$/i, '')) * { K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[s.slice(-1).toUpperCase()] || Number(s);
const SIZE = parseSize(opt('--size', '1G'));
const SECONDS = Number(opt('--seconds', '15'));
const NBDKIT = !args.includes('--no-nbdkit');
const log = (m) => process.stderr.write(`${m}\n`);

for (const tool of ['nbdcopy', 'fio', 'cmp', ...(NBDKIT ? ['nbdkit'] : [])]) {
  if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`bench: ${tool} is missing`);
}
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-engine-bench-s3-'));
let rgwDir;
let env = process.env;
if (!env.S3_ENDPOINT) {
  rgwDir = path.join(work, 'rgw');
  log('starting radosgw…');
  const r = spawnSync('bash', [path.join(ROOT, 'scripts/radosgw.sh'), 'start', rgwDir], {
    env: { ...env, RADOSGW_MEMSTORE_BYTES: String(Math.max(8 * 1024 ** 3, 6 * SIZE)) },
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`radosgw did not start: ${r.stderr}`);
  env = { ...env, ...Object.fromEntries(r.stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)])) };
}

const run = (cmd, argv) =>
  new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => (code === 0 ? resolve({ out, seconds: Number(process.hrtime.bigint() - t0) / 1e9 }) : reject(new Error(`${cmd} ${argv.join(' ')}: exit ${code}\n${err}`))));
  });

async function start(kind, prefix, objectSize) {
  const sock = path.join(work, `${prefix}.sock`);
  const common = { bucket: env.S3_BUCKET, size: String(SIZE), 'object-size': objectSize };
  const argv =
    kind === 'nbdkit'
      ? // Its minimum block size is the object size: the blocksize filter lets 4K writes in (nbdkit's way).
        ['-U', sock, '-f', '--filter=blocksize', 'S3', 'minblock=512', `endpoint-url=${env.S3_ENDPOINT}`, `key=${prefix}`, `access-key=${env.AWS_ACCESS_KEY_ID}`, `secret-key=${env.AWS_SECRET_ACCESS_KEY}`, ...Object.entries(common).map(([k, v]) => `${k}=${v}`)]
      : [path.join(ROOT, 'bin/nbd-engine.js'), 'serve', '-U', sock, 's3', `endpoint=${env.S3_ENDPOINT}`, `prefix=${prefix}/`, ...Object.entries(common).map(([k, v]) => `${k}=${v}`)];
  const child = spawn(kind === 'nbdkit' ? 'nbdkit' : process.execPath, argv, { env, stdio: ['ignore', 'ignore', 'inherit'] });
  for (let i = 0; i < 200 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
  if (!fs.existsSync(sock)) throw new Error(`${kind} did not start`);
  return { uri: `nbd+unix:///?socket=${sock}`, stop: () => new Promise((r) => (child.once('exit', r), child.kill('SIGTERM'))) };
}

const src = path.join(work, 'src.img');
{
  const fd = fs.openSync(src, 'w');
  const chunk = Buffer.alloc(16 * 1024 * 1024);
  for (let at = 0; at < SIZE; at += chunk.length) {
    for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, i);
    fs.writeSync(fd, chunk, 0, Math.min(chunk.length, SIZE - at));
  }
  fs.closeSync(fd);
}

async function measure(kind, objectSize, n) {
  const prefix = `bench-${kind}-${objectSize}-${n}`;
  const s = await start(kind, prefix, objectSize);
  const row = { server: `${kind} ${objectSize}` };
  try {
    row.copyIn = (await run('nbdcopy', [src, s.uri])).seconds;
    const back = path.join(work, 'back.img');
    row.copyOut = (await run('nbdcopy', [s.uri, back])).seconds;
    await run('cmp', [src, back]);
    fs.rmSync(back);
    const fio = async (extra) => { const o = (await run('fio', ['--ioengine=nbd', `--uri=${s.uri}`, '--name=b', '--output-format=json', ...extra])).out; return JSON.parse(o.slice(o.indexOf('{'))).jobs[0].write; };
    row.randIops = (await fio(['--rw=randwrite', '--bs=4k', '--iodepth=16', '--time_based', `--runtime=${SECONDS}`, `--size=${SIZE}`])).iops;
    row.seqMiBs = (await fio(['--rw=write', '--bs=1M', '--iodepth=8', `--size=${Math.min(SIZE, 256 * 1024 ** 2)}`])).bw_bytes / 1024 ** 2;
  } finally {
    await s.stop();
  }
  log(JSON.stringify(row));
  return row;
}

/** The store alone: SIZE bytes PUT then GET as objects of `objectSize`, 16 at a time, with the same client library (aws4fetch). */
async function raw(objectSize) {
  const { AwsClient } = await import('aws4fetch');
  const aws = new AwsClient({ accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY, region: env.AWS_REGION ?? 'us-east-1', service: 's3', retries: 0 });
  const os_ = parseSize(objectSize);
  const fd = fs.openSync(src, 'r');
  const pool = async (fn) => {
    let next = 0;
    const t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: 16 }, async () => {
      for (let n = next++; n * os_ < SIZE; n = next++) await fn(n);
    }));
    return Number(process.hrtime.bigint() - t0) / 1e9;
  };
  const url = (n) => `${env.S3_ENDPOINT}/${env.S3_BUCKET}/bench-raw-${objectSize}/${String(n).padStart(16, '0')}`;
  const copyIn = await pool(async (n) => {
    const buf = Buffer.alloc(os_);
    fs.readSync(fd, buf, 0, os_, n * os_);
    const r = await aws.fetch(url(n), { method: 'PUT', body: buf });
    if (r.status !== 200) throw new Error(`raw PUT: ${r.status}`);
    await r.arrayBuffer();
  });
  const copyOut = await pool(async (n) => {
    const r = await aws.fetch(url(n));
    if (r.status !== 200) throw new Error(`raw GET: ${r.status}`);
    await r.arrayBuffer();
  });
  fs.closeSync(fd);
  const row = { server: `raw store (aws4fetch) ${objectSize}`, copyIn, copyOut, randIops: NaN, seqMiBs: NaN };
  log(JSON.stringify(row));
  return row;
}

try {
  const rows = [];
  rows.push(await raw('64K'));
  rows.push(await raw('1M'));
  rows.push(await measure('nbd-engine', '64K', 1));
  if (NBDKIT) rows.push(await measure('nbdkit', '64K', 1));
  rows.push(await measure('nbd-engine', '1M', 1));
  const gib = SIZE / 1024 ** 3;
  console.log(`| server, object size | nbdcopy ${gib} GiB in (s) | nbdcopy ${gib} GiB out (s) | fio 4K randwrite (IOPS) | fio 1M seq write (MiB/s) |`);
  console.log('|---|---:|---:|---:|---:|');
  const f = (v, d) => (Number.isNaN(v) ? '—' : v.toFixed(d));
  for (const r of rows) console.log(`| ${r.server} | ${f(r.copyIn, 1)} | ${f(r.copyOut, 1)} | ${f(r.randIops, 0)} | ${f(r.seqMiBs, 1)} |`);
  const [raw64, raw1m, a] = rows;
  const last = rows[rows.length - 1];
  console.log(`\nnbd-engine vs the raw store: 64K objects copy in ${(a.copyIn / raw64.copyIn).toFixed(2)}× the raw time, out ${(a.copyOut / raw64.copyOut).toFixed(2)}×; 1M objects in ${(last.copyIn / raw1m.copyIn).toFixed(2)}×, out ${(last.copyOut / raw1m.copyOut).toFixed(2)}×`);
  if (NBDKIT) {
    const b = rows[3];
    console.log(`\nnbd-engine vs nbdkit S3 (64K objects): copy in ${(b.copyIn / a.copyIn).toFixed(2)}× faster, copy out ${(b.copyOut / a.copyOut).toFixed(2)}×, 4K random writes ${(a.randIops / b.randIops).toFixed(2)}×, 1M sequential ${(a.seqMiBs / b.seqMiBs).toFixed(2)}×`);
  }
} finally {
  if (rgwDir) spawnSync('bash', [path.join(ROOT, 'scripts/radosgw.sh'), 'stop', rgwDir]);
  fs.rmSync(work, { recursive: true, force: true });
}
