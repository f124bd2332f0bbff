/**
 * vitest globalSetup: compile src/ to dist/ once, so tests that spawn the
 * CLI (bin/nbd-engine.js → dist/) run the current sources; and build the
 * file backend's native addon if `npm install` did not (a worktree sharing
 * another checkout's node_modules never ran its install script) or if its
 * source changed since. The build script never fails; the sparse tests fail
 * loudly if the addon is missing.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export default function setup(): void {
  const root = fileURLToPath(new URL('../..', import.meta.url));
  execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' });
  execFileSync(process.execPath, ['scripts/build-native.mjs', '--if-stale'], { cwd: root, stdio: 'inherit' });
}
