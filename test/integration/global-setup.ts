/**
 * vitest globalSetup: compile src/ to dist/ once, so tests that spawn the
 * CLI (bin/nbd-engine.js → dist/) run the current sources.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export default function setup(): void {
  const root = fileURLToPath(new URL('../..', import.meta.url));
  execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' });
}
