/**
 * docs/rules.md is the one catalogue of the server rules, each under a stable
 * ID that code, refusals, log lines and tests cite. This keeps it honest:
 *   - the catalogue's IDs are well formed and unique;
 *   - every ID cited in src/, test/, README.md or docs/design.md is defined there;
 *   - every ID defined there is cited by at least one test;
 *   - every refusal of the transmission machine starts with a defined ID;
 *   - src/, README.md, package.json and docs/ point at nothing outside the
 *     repository (the team's former private notes: ../shared, protocol.md,
 *     style.md, design.md other than docs/design.md, "rule <number>", §).
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { REFUSALS } from '../../../src/machines/transmission.js';

const SELF = fileURLToPath(import.meta.url);
const ROOT = path.resolve(path.dirname(SELF), '../../..');

const rel = (file: string) => path.relative(ROOT, file).split(path.sep).join('/');
const read = (file: string) => readFileSync(path.resolve(ROOT, file), 'utf8');

/** Every file under `dir` (relative to the repository root) whose name ends with one of `exts`. */
function walk(dir: string, exts: readonly string[]): string[] {
  const out: string[] = [];
  const visit = (abs: string) => {
    for (const e of readdirSync(abs, { withFileTypes: true })) {
      if (e.name === 'node_modules' || e.name.startsWith('.')) continue;
      const p = path.join(abs, e.name);
      if (e.isDirectory()) visit(p);
      else if (exts.some((x) => e.name.endsWith(x))) out.push(p);
    }
  };
  visit(path.resolve(ROOT, dir));
  return out.sort();
}

const CODE = ['.ts', '.mts', '.js', '.mjs', '.py', '.sh', '.md', '.json'];

// ── the catalogue ────────────────────────────────────────────────────────

const CATALOGUE = read('docs/rules.md');
/** IDs are defined by level-3 headings holding only the ID in backticks. */
const DEFINED = [...CATALOGUE.matchAll(/^### `([^`\n]+)`[ \t]*$/gm)].map((m) => m[1]!);
const DEFINED_SET = new Set(DEFINED);
/** `<group>.<two or more words joined by hyphens>`. */
const ID_SHAPE = /^[a-z]+\.[a-z0-9]+(?:-[a-z0-9]+)+$/;
const GROUPS = [...new Set(DEFINED.map((id) => id.slice(0, id.indexOf('.'))))];

/**
 * A citation: a catalogue group, a dot and a hyphenated name, not part of a
 * longer dotted name or path (`a.tls.x-y`, `tls.verify-peer.test.ts`).
 */
const CITATION = new RegExp(`(?<![\\w.$/-])(?:${GROUPS.join('|')})\\.[a-z0-9]+(?:-[a-z0-9]+)+(?![\\w-]|\\.[A-Za-z0-9])`, 'g');

interface Citation {
  id: string;
  where: string;
}

function citationsIn(file: string): Citation[] {
  const out: Citation[] = [];
  read(file)
    .split('\n')
    .forEach((line, i) => {
      for (const m of line.matchAll(CITATION)) out.push({ id: m[0], where: `${rel(file)}:${i + 1}` });
    });
  return out;
}

describe('docs/rules.md', () => {
  it('defines rule IDs of the form <group>.<hyphenated-name>, each once', () => {
    expect(DEFINED.length).toBeGreaterThan(50);
    expect(DEFINED.filter((id) => !ID_SHAPE.test(id))).toEqual([]);
    expect(DEFINED.filter((id, i) => DEFINED.indexOf(id) !== i)).toEqual([]);
    expect(GROUPS.sort()).toEqual(['general', 'handshake', 'option', 'peer', 'reply', 'tls', 'transmission']);
  });

  it('every entry names its spec section and what this server does', () => {
    const entries = CATALOGUE.split(/^### /m).slice(1);
    expect(entries).toHaveLength(DEFINED.length);
    const incomplete = entries.filter((e) => !/^- \*\*Rule:\*\*/m.test(e) || !/^- \*\*Spec:\*\*/m.test(e) || !/^- \*\*Here:\*\*/m.test(e));
    expect(incomplete.map((e) => e.slice(0, e.indexOf('\n')))).toEqual([]);
  });

  it('every rule ID cited in src/, test/, README.md or docs/design.md is defined', () => {
    const files = [...walk('src', CODE), ...walk('test', CODE), path.resolve(ROOT, 'README.md'), path.resolve(ROOT, 'docs/design.md')];
    const cited = files.filter((f) => f !== SELF).flatMap(citationsIn);
    expect(cited.length).toBeGreaterThan(100);
    const undefinedIds = cited.filter((c) => !DEFINED_SET.has(c.id)).map((c) => `${c.where}: ${c.id}`);
    expect(undefinedIds).toEqual([]);
  });

  it('every rule ID defined is cited by at least one test', () => {
    // Test files, and the model tests' command classes (their checks are the test).
    const tests = walk('test', ['.ts']).filter((f) => f !== SELF && (f.endsWith('.test.ts') || rel(f).startsWith('test/property/model/')));
    const covered = new Set(tests.flatMap(citationsIn).map((c) => c.id));
    expect(DEFINED.filter((id) => !covered.has(id))).toEqual([]);
  });

  it('every refusal of the transmission machine starts with a defined rule ID', () => {
    const bad = REFUSALS.filter((r) => !DEFINED_SET.has(r.code) || !r.message.startsWith(`${r.code}: `));
    expect(bad.map((r) => r.message)).toEqual([]);
  });
});

// ── nothing points outside the repository ────────────────────────────────

const FORBIDDEN: ReadonlyArray<[RegExp, string]> = [
  [/\.\.\/shared/, '../shared'],
  [/protocol\.md/, 'protocol.md'],
  [/style\.md/, 'style.md'],
  [/(?<!docs\/)design\.md/, 'design.md (only docs/design.md exists)'],
  [/\brules? \d/i, '"rule <number>" (cite the rule ID instead)'],
  [/§/, '§ section numbers of outside notes'],
];

describe('the product carries its own docs', () => {
  const targets = [...walk('src', CODE), path.resolve(ROOT, 'README.md'), path.resolve(ROOT, 'package.json')];

  it('src/, README.md and package.json mention no document outside the repository', () => {
    const hits: string[] = [];
    for (const file of targets) {
      read(file)
        .split('\n')
        .forEach((line, i) => {
          for (const [re, what] of FORBIDDEN) if (re.test(line)) hits.push(`${rel(file)}:${i + 1}: ${what}`);
        });
    }
    expect(hits).toEqual([]);
  });

  it('docs/ points at nothing outside the repository either', () => {
    const hits: string[] = [];
    for (const file of walk('docs', ['.md'])) {
      read(file)
        .split('\n')
        .forEach((line, i) => {
          // docs/design.md is linked from docs/ as design.md.
          for (const [re, what] of FORBIDDEN) if (!what.startsWith('design.md') && re.test(line)) hits.push(`${rel(file)}:${i + 1}: ${what}`);
        });
    }
    expect(hits).toEqual([]);
  });

  it('the checks above do catch each kind of outside reference', () => {
    const samples = [
      'see ../shared/docs/protocol.md',
      'as protocol.md says',
      'style.md practice 8',
      '(design.md §2)',
      '// rule 25: write to a read-only export',
      'rules 19–38',
      '§1.14',
    ];
    for (const s of samples) expect(FORBIDDEN.some(([re]) => re.test(s)), s).toBe(true);
    expect(FORBIDDEN.some(([re]) => re.test('docs/design.md, "Flow control"'))).toBe(false);
    expect(FORBIDDEN.some(([re]) => re.test('doc/proto.md in NetworkBlockDevice/nbd'))).toBe(false);
  });

  it('the citation pattern finds IDs and skips events, file names and longer dotted names', () => {
    const found = (s: string) => [...s.matchAll(CITATION)].map((m) => m[0]);
    expect(found("rule: 'transmission.write-read-only: write to a read-only export'")).toEqual(['transmission.write-read-only']);
    expect(found('// option.length-mismatch, general.string-limits.')).toEqual(['option.length-mismatch', 'general.string-limits']);
    expect(found("{ type: 'tls.established' } import './handshake.js' tls.verify-peer.test.ts a.option.too-big")).toEqual([]);
  });
});
