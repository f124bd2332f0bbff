// Rewrites the generated statechart blocks (<!-- machines:NAME:FORMAT --> … <!-- /machines -->) in
// docs/machines.md and README.md, and the drawings docs/machines/NAME.svg, from the machine
// definitions, with `nbd-engine machines`'s own rendering (dist/, so run through
// `npm run docs:machines`, which builds first).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { MACHINE_DOC_FILES, MACHINE_SVG_FILES, machineSvg, regenerateMachineBlocks } from '../dist/cli/machine-docs.js';

const root = fileURLToPath(new URL('..', import.meta.url));
for (const file of MACHINE_DOC_FILES) {
  const abs = path.join(root, file);
  const before = fs.readFileSync(abs, 'utf8');
  const { text, blocks } = regenerateMachineBlocks(before);
  if (text !== before) fs.writeFileSync(abs, text);
  console.log(`${file}: ${blocks.length} block(s) (${blocks.join(', ') || 'none'}), ${text === before ? 'unchanged' : 'rewritten'}`);
}
for (const [name, file] of Object.entries(MACHINE_SVG_FILES)) {
  const abs = path.join(root, file);
  const svg = await machineSvg(name);
  const before = fs.existsSync(abs) ? fs.readFileSync(abs, 'utf8') : null;
  if (svg !== before) {
    fs.mkdirSync(path.dirname(abs), { recursive: true });
    fs.writeFileSync(abs, svg);
  }
  console.log(`${file}: ${svg === before ? 'unchanged' : 'rewritten'}`);
}
