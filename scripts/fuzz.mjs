#!/usr/bin/env node
/**
 * The long hostile-stream run: test/hostile/fuzz.test.ts with a million
 * streams instead of CI's slice (vitest runs the TypeScript; nothing else
 * is needed). Prints the seed first, progress every 100 000 streams, and the
 * figures at the end: streams, crashes, hangs, desyncs, peak RSS.
 *
 *   npm run fuzz                                  1 000 000 streams, fresh seed
 *   npm run fuzz -- --streams 200000 --seed 0x1234
 *   npm run fuzz -- --seed 0x1234 --only 5821     replay one stream (prints both byte streams)
 *   npm run fuzz -- --socket-share 0.5            half of the streams through the UNIX socket
 *
 * The same variables work directly: FUZZ_STREAMS, FUZZ_SEED, FUZZ_ONLY,
 * FUZZ_SOCKET_SHARE.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const flags = { '--streams': 'FUZZ_STREAMS', '--seed': 'FUZZ_SEED', '--only': 'FUZZ_ONLY', '--socket-share': 'FUZZ_SOCKET_SHARE' };
const env = { ...process.env, FUZZ_STREAMS: process.env.FUZZ_STREAMS ?? '1000000' };
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  const [name, inline] = args[i].split('=', 2);
  const key = flags[name];
  const value = inline ?? args[++i];
  if (!key || value === undefined) {
    console.error(`usage: npm run fuzz -- [--streams N] [--seed S] [--only INDEX] [--socket-share F]  (got ${args[i - (inline ? 0 : 1)]})`);
    process.exit(2);
  }
  env[key] = value;
}

const root = fileURLToPath(new URL('..', import.meta.url));
const r = spawnSync('npx', ['vitest', 'run', 'test/hostile/fuzz.test.ts'], { cwd: root, env, stdio: 'inherit' });
process.exit(r.status ?? 1);
