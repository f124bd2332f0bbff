/**
 * Every TypeScript block in the README and docs/ type-checks against the
 * sources, as a module of its own. A block that is a fragment (it uses a
 * `server` or an `exports` made in an earlier block) says what it assumes in
 * an HTML comment right before it, invisible on the rendered page:
 *
 *   <!-- snippet-context: import { createServer } from 'nbd-engine'; declare const server: NbdServer; -->
 *
 * That text is put in front of the block; nothing else is added.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../../..');
const OUT = path.join(ROOT, '.test-results', 'doc-snippets');

interface Snippet {
  readonly file: string;
  readonly line: number;
  readonly code: string;
}

export function extractSnippets(markdown: string, file: string): Snippet[] {
  const lines = markdown.split('\n');
  const out: Snippet[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (!/^```(ts|typescript)\s*$/.test(lines[i]!)) continue;
    const context = /^<!--\s*snippet-context:([\s\S]*?)-->\s*$/.exec(lines[i - 1] ?? '')?.[1]?.trim();
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length && !/^```\s*$/.test(lines[j]!); j++) body.push(lines[j]!);
    out.push({ file, line: i + 1, code: `${context ? `${context}\n` : ''}${body.join('\n')}\n` });
    i = j;
  }
  return out;
}

function documents(): string[] {
  const docs = path.join(ROOT, 'docs');
  return [path.join(ROOT, 'README.md'), ...fs.readdirSync(docs).filter((f) => f.endsWith('.md')).map((f) => path.join(docs, f))];
}

describe('documentation snippets', () => {
  it('finds fenced blocks and their context comment', () => {
    const md = ['text', '<!-- snippet-context: declare const x: number; -->', '```ts', 'x + 1;', '```', '```sh', 'ls', '```', '```ts', 'const y = 2;', '```'].join('\n');
    const s = extractSnippets(md, 'x.md');
    expect(s.map((x) => x.line)).toEqual([3, 9]);
    expect(s[0]!.code).toBe('declare const x: number;\nx + 1;\n');
    expect(s[1]!.code).toBe('const y = 2;\n');
  });

  it('every TypeScript block in README.md and docs/ type-checks against the sources', () => {
    const snippets = documents().flatMap((f) => extractSnippets(fs.readFileSync(f, 'utf8'), path.relative(ROOT, f)));
    expect(snippets.length).toBeGreaterThanOrEqual(5);
    fs.rmSync(OUT, { recursive: true, force: true });
    fs.mkdirSync(OUT, { recursive: true });
    const names = snippets.map((s, i) => {
      const name = `${path.basename(s.file, '.md')}-${String(i).padStart(2, '0')}-line${s.line}.ts`;
      fs.writeFileSync(path.join(OUT, name), s.code);
      return name;
    });
    fs.writeFileSync(
      path.join(OUT, 'tsconfig.json'),
      JSON.stringify({
        extends: path.join(ROOT, 'tsconfig.json'),
        compilerOptions: { noEmit: true, rootDir: ROOT, noUnusedLocals: false, paths: { 'nbd-engine': [path.join(ROOT, 'src/index.ts')], 'nbd-engine/client': [path.join(ROOT, 'src/client/index.ts')] } },
        include: names,
      }),
    );
    const r = spawnSync(path.join(ROOT, 'node_modules/.bin/tsc'), ['-p', path.join(OUT, 'tsconfig.json')], { encoding: 'utf8' });
    // On failure the compiler's messages name the generated file: `<doc>-<n>-line<L>.ts` is the block at line L of <doc>.
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
  });
});
