/**
 * docs/s3.md's command-line example runs two servers on one export. A filter
 * that keeps data (cache, readahead, cow) makes a server's view private: the
 * example once put `--filter=cache` on the second server, which then kept
 * serving what it had cached after the first server's acknowledged writes,
 * while advertising multi-conn. No example may run such a filter on an s3
 * export that another example server also serves, and the page says why.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../../..');
const DATA_FILTERS = ['cache', 'readahead', 'cow'];

/** Every `nbd-engine serve … s3 …` line in the sh blocks: its filters and the export it serves. */
function s3Servers(markdown: string): { filters: string[]; where: string; line: string }[] {
  const out: { filters: string[]; where: string; line: string }[] = [];
  for (const block of markdown.matchAll(/^```sh\n([\s\S]*?)^```/gm)) {
    for (const line of block[1]!.split('\n')) {
      const cmd = line.replace(/#.*/, '');
      if (!/\bnbd-engine serve\b.*\bs3\b/.test(cmd)) continue;
      const filters = [...cmd.matchAll(/--filter[= ](\S+)/g)].map((m) => m[1]!);
      const key = (k: string) => new RegExp(`\\b${k}=(\\S+)`).exec(cmd)?.[1] ?? '';
      out.push({ filters, where: `${key('endpoint')} ${key('bucket')} ${key('prefix')}`, line });
    }
  }
  return out;
}

describe('docs/s3.md: two servers on one export', () => {
  const doc = fs.readFileSync(path.join(ROOT, 'docs/s3.md'), 'utf8');

  it('no example serves an export another example server serves through a filter that keeps data', () => {
    const servers = s3Servers(doc);
    expect(servers.length).toBeGreaterThan(1);
    for (const s of servers) {
      const shared = servers.filter((o) => o.where === s.where).length > 1;
      if (shared) expect({ line: s.line, dataFilters: s.filters.filter((f) => DATA_FILTERS.includes(f)) }).toEqual({ line: s.line, dataFilters: [] });
    }
  });

  it('says that cache, readahead and cow make a server\'s view private', () => {
    expect(doc).toMatch(/Filters that keep data — `cache`, `readahead`, `cow` — make a server's view of the export private/);
    expect(doc).toMatch(/Don't use them on an export that another server writes/);
  });
});
