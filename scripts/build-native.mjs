#!/usr/bin/env node
/**
 * Builds the optional native part of the file backend (native/nbd_file.c →
 * native/build/Release/nbd_file.node), run by `npm install` / `npm ci`.
 *
 * It never fails the install: without the addon the file backend keeps
 * working in its portable fallback (holes read as data, zeroing writes
 * zeroes), so every problem here is one warning line and exit 0.
 *
 * Order: node-gyp (npm's bundled one, or one on PATH) against the headers
 * of the running Node, which Debian's and the official builds ship next to
 * the binary — `--nodedir` keeps node-gyp from downloading headers, which an
 * offline install could not do; then, if node-gyp is missing or fails, a
 * direct `cc` call with the same headers (one C file, no dependencies).
 *
 * NBD_ENGINE_NO_NATIVE=1 skips the build (the backend then uses the fallback).
 * `--if-stale` builds only when the .node file is missing or older than the
 * C source (the tests' global setup uses it).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = path.join(root, 'native');
const out = path.join(nativeDir, 'build', 'Release', 'nbd_file.node');
const say = (m) => process.stderr.write(`nbd-engine native: ${m}\n`);

function headersDir() {
  // <prefix>/bin/node → <prefix>/include/node/node_api.h
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  for (const dir of [prefix, '/usr', '/usr/local']) {
    if (fs.existsSync(path.join(dir, 'include', 'node', 'node_api.h'))) return dir;
  }
  return null;
}

function nodeGyp() {
  const candidates = [];
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  // npm ships node-gyp inside itself.
  const npmDir = path.resolve(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm');
  candidates.push(path.join(npmDir, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  return candidates.find((c) => fs.existsSync(c)) ?? null;
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: nativeDir, encoding: 'utf8', ...opts });
  return { ok: r.status === 0, output: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? r.error.message : ''}` };
}

function main() {
  if (process.platform !== 'linux') return say(`skipped on ${process.platform} (Linux-only calls); the file backend uses its fallback`);
  if (process.env.NBD_ENGINE_NO_NATIVE === '1') return say('skipped (NBD_ENGINE_NO_NATIVE=1); the file backend uses its fallback');
  if (process.argv.includes('--if-stale') && fs.existsSync(out) && fs.statSync(out).mtimeMs >= fs.statSync(path.join(nativeDir, 'nbd_file.c')).mtimeMs) return;
  const nodedir = headersDir();
  if (!nodedir) return say('no Node headers (include/node/node_api.h) found: not built; the file backend uses its fallback');

  const gyp = nodeGyp();
  if (gyp) {
    const r = run(process.execPath, [gyp, 'rebuild', `--nodedir=${nodedir}`, '--loglevel=error']);
    if (r.ok && fs.existsSync(out)) return say(`built ${path.relative(root, out)} (node-gyp)`);
    say(`node-gyp failed, trying cc directly: ${r.output.trim().split('\n').slice(-3).join(' | ')}`);
  }
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const cc = process.env.CC || 'cc';
  const r = run(cc, ['-O2', '-Wall', '-shared', '-fPIC', '-DNODE_GYP_MODULE_NAME=nbd_file', `-I${path.join(nodedir, 'include', 'node')}`, '-o', out, 'nbd_file.c']);
  if (r.ok) return say(`built ${path.relative(root, out)} (${cc})`);
  say(`not built (${cc}: ${r.output.trim().split('\n').slice(-3).join(' | ')}); the file backend uses its fallback`);
}

try {
  main();
} catch (err) {
  say(`not built (${err.message}); the file backend uses its fallback`);
}
