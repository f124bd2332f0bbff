/**
 * The diagrams in docs/machines.md and README.md are `nbd-engine machines`
 * output between marker comments:
 *
 *   <!-- machines:handshake:mermaid -->
 *   ```mermaid
 *   …
 *   ```
 *   <!-- /machines -->
 *
 * and docs/machines/NAME.svg are its `--format svg` drawings.
 * `npm run docs:machines` (scripts/gen-machine-docs.mjs) rewrites every
 * marked block and SVG file from the machine definitions, and a unit test
 * fails when one differs from what it would write.
 */
import { MACHINE_NAMES, type MachineName } from '../inspect/statechart.js';
import { renderMachines, renderText, type TextFormat } from './machines.js';

/** The files whose marked blocks are generated, relative to the repository root. */
export const MACHINE_DOC_FILES = ['docs/machines.md', 'README.md'] as const;

/** The generated SVG drawings, relative to the repository root, by machine. */
export const MACHINE_SVG_FILES: Readonly<Record<MachineName, string>> = Object.fromEntries(
  MACHINE_NAMES.map((name) => [name, `docs/machines/${name}.svg`]),
) as Record<MachineName, string>;

/** A generated SVG file's contents: `nbd-engine machines --format svg --machine NAME`. */
export function machineSvg(name: MachineName): Promise<string> {
  return renderMachines('svg', [name]);
}

const BLOCK = /<!-- machines:([^:\s]+):([^\s]+) -->\n[\s\S]*?<!-- \/machines -->/g;
const FENCE: Readonly<Record<TextFormat, string>> = { mermaid: 'mermaid', dot: 'dot', json: 'json' };

/** One marked block as the generator writes it. */
export function machineBlock(name: MachineName, format: TextFormat): string {
  return `<!-- machines:${name}:${format} -->\n\`\`\`${FENCE[format]}\n${renderText(format, name)}\`\`\`\n<!-- /machines -->`;
}

/** The text with every marked block rewritten, and the blocks found (machine:format). Throws on a marker naming an unknown machine or format. */
export function regenerateMachineBlocks(text: string): { text: string; blocks: string[] } {
  const blocks: string[] = [];
  const out = text.replace(BLOCK, (_, name: string, format: string) => {
    if (!(MACHINE_NAMES as string[]).includes(name)) throw new Error(`machines marker names an unknown machine ${JSON.stringify(name)}`);
    if (!Object.hasOwn(FENCE, format)) throw new Error(`machines marker names an unknown format ${JSON.stringify(format)} (${Object.keys(FENCE).join(', ')})`);
    blocks.push(`${name}:${format}`);
    return machineBlock(name as MachineName, format as TextFormat);
  });
  return { text: out, blocks };
}
