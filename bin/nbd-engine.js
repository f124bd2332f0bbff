#!/usr/bin/env node
// The nbd-engine command: runs the compiled CLI (built by `npm install` / `npm run build`).
import { main } from '../dist/cli/main.js';

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`nbd-engine: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
