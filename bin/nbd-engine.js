#!/usr/bin/env node
// The nbd-engine command: runs the compiled CLI (built by `npm install` / `npm run build`).
// The parent is read before the CLI loads: --exit-with-parent must see a parent that exits during start-up.
const parent = process.ppid;
const { main, recordStartParent } = await import('../dist/cli/main.js');
recordStartParent(parent);

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`nbd-engine: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
