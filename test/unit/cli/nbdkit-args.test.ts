/**
 * nbdkit's command line for serve: option aliases and short options, and
 * the routing of `key=value` words between the backend and the filters.
 * Routing is checked against plugin tables given to resolvePlugins (the
 * built-in registry has no filters of its own yet), with filters that only
 * record what they were given.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseServeArgs, UsageError } from '../../../src/cli/serve-args.js';
import { pluginHelp, resolvePlugins, type PluginTables } from '../../../src/cli/nbdkit-args.js';
import type { BackendPlugin, FilterPlugin } from '../../../src/plugins/registry.js';
import { BACKENDS } from '../../../src/plugins/registry.js';

function recordingFilter(name: string, keys: string[]): FilterPlugin {
  return {
    name,
    summary: `test filter ${name}`,
    params: keys.map((k) => ({ name: k, kind: 'string' as const, summary: `${k} of ${name}` })),
    create: async () => ({ name, scope: 'shared', wrap: (next) => next }),
  };
}

const tables: PluginTables = {
  backends: BACKENDS,
  filters: {
    outer: async () => recordingFilter('outer', ['shared-key', 'outer-key']),
    inner: async () => recordingFilter('inner', ['shared-key', 'inner-key']),
  },
};

const resolve = async (args: string[]) => {
  const p = parseServeArgs(args);
  return resolvePlugins({ positionals: p.positionals, filters: p.filters, file: p.values.file, memory: p.values.memory !== undefined, memorySize: p.memorySize }, tables);
};

describe('nbdkit option names', () => {
  it('short options and nbdkit spellings set the same values as ours', () => {
    const a = parseServeArgs(['-U', '-', '-p', '0', '-i', '::1', '-e', 'disk', '-r', '-f', '-P', '/tmp/pid', '--exit-with-parent']);
    expect(a.values).toMatchObject({ socket: '-', port: '0', host: '::1', export: 'disk', 'read-only': true, foreground: true, pidfile: '/tmp/pid', 'exit-with-parent': true });
    const b = parseServeArgs(['--unix', '/tmp/s', '--ipaddr=127.0.0.1', '--exportname', 'x', '--readonly', '--pid-file=/tmp/p', '--no-fork']);
    expect(b.values).toMatchObject({ socket: '/tmp/s', host: '127.0.0.1', export: 'x', 'read-only': true, pidfile: '/tmp/p', foreground: true });
    expect(parseServeArgs(['-s']).values.single).toBe(true);
    expect(parseServeArgs(['--stdin']).values.single).toBe(true);
    expect(parseServeArgs(['--ip-addr', 'h', '--export-name', 'y']).values).toMatchObject({ host: 'h', export: 'y' });
  });

  it('-V and --version ask for the version; --filter keeps its order', () => {
    expect(parseServeArgs(['-V']).version).toBe(true);
    expect(parseServeArgs(['--version']).version).toBe(true);
    expect(parseServeArgs(['--filter=b', '--filter', 'a', 'memory', '1G']).filters).toEqual(['b', 'a']);
  });

  it('options may follow the backend and its parameters, as with nbdkit', () => {
    const a = parseServeArgs(['memory', '1G', '--run', 'true', '-r']);
    expect(a.positionals).toEqual(['memory', '1G']);
    expect(a.values).toMatchObject({ run: 'true', 'read-only': true });
  });

  it('-s cannot listen, run or print', () => {
    for (const extra of [['-U', '-'], ['-p', '0'], ['-i', 'h'], ['--run', 'x'], ['--print-uri']]) {
      expect(() => parseServeArgs(['-s', ...extra])).toThrow(/^-s \(--single\) serves stdin\/stdout: it cannot be used with --/);
    }
  });

  it('a missing value is named as the user wrote it', () => {
    expect(() => parseServeArgs(['-U'])).toThrow(new UsageError('-U: missing value'));
    expect(() => parseServeArgs(['--pidfile'])).toThrow(new UsageError('--pidfile: missing value'));
    expect(() => parseServeArgs(['-P', ''])).toThrow(/^--pidfile: expected a path/);
  });

  it('--tls-certificates names nbdkit\'s three files, the CA only when present', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-engine-certs-'));
    try {
      expect(parseServeArgs(['--tls=on', '--tls-certificates', dir]).tlsFiles).toEqual({ cert: path.join(dir, 'server-cert.pem'), key: path.join(dir, 'server-key.pem'), ca: undefined });
      fs.writeFileSync(path.join(dir, 'ca-cert.pem'), '');
      expect(parseServeArgs(['--tls=require', '--tls-certificates', dir]).tlsFiles?.ca).toBe(path.join(dir, 'ca-cert.pem'));
      // As nbdkit: the directory alone turns TLS on; --tls=off with it is a contradiction.
      expect(parseServeArgs(['--tls-certificates', dir]).tlsMode).toBe('on');
      expect(() => parseServeArgs(['--tls=off', '--tls-certificates', dir])).toThrow(/--tls-certificates given but --tls=off/);
      expect(() => parseServeArgs(['--tls=on', '--tls-certificates', dir, '--tls-key', 'k'])).toThrow(/^--tls-certificates and --tls-key are exclusive/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('resolvePlugins: backend, filters and key routing', () => {
  it('a bare value is the backend\'s magic key; size=… is the same', async () => {
    expect((await resolve(['memory', '1G'])).backend.params).toEqual({ size: 2 ** 30 });
    expect((await resolve(['memory', 'size=512M'])).backend.params).toEqual({ size: 512 * 2 ** 20 });
    expect((await resolve(['file', 'disk.img'])).backend).toMatchObject({ plugin: { name: 'file' }, params: { file: 'disk.img' } });
  });

  it('the old options stand for the backend; nothing at all is memory 1G', async () => {
    expect((await resolve(['--memory', '2M'])).backend).toMatchObject({ plugin: { name: 'memory' }, params: { size: 2 ** 21 } });
    expect((await resolve(['--file', '/x'])).backend).toMatchObject({ plugin: { name: 'file' }, params: { file: '/x' } });
    expect((await resolve([])).backend).toMatchObject({ plugin: { name: 'memory' }, params: { size: 2 ** 30 } });
  });

  it('each key goes to the first filter declaring it, else to the backend; filters keep command-line order', async () => {
    const r = await resolve(['--filter=outer', '--filter=inner', 'memory', 'inner-key=i', '1M', 'shared-key=s', 'outer-key=o']);
    expect(r.filters.map((f) => f.plugin.name)).toEqual(['outer', 'inner']);
    expect(r.filters[0]!.params).toEqual({ 'shared-key': 's', 'outer-key': 'o' });
    expect(r.filters[1]!.params).toEqual({ 'inner-key': 'i' });
    expect(r.backend.params).toEqual({ size: 2 ** 20 });
    // Reversed, the shared key goes to the other filter.
    const rev = await resolve(['--filter=inner', '--filter=outer', 'memory', '1M', 'shared-key=s']);
    expect(rev.filters.map((f) => [f.plugin.name, f.params])).toEqual([['inner', { 'shared-key': 's' }], ['outer', {}]]);
  });

  it('a filter key without its filter on the line is unknown, named with who takes what', async () => {
    await expect(resolve(['memory', '1M', 'inner-key=x'])).rejects.toThrow(/^unknown parameter "inner-key" in "inner-key=x" \(known keys — backend memory: [^;]*\bsize\b[^;]*\)$/);
    await expect(resolve(['--filter=outer', 'memory', '1M', 'bogus=1'])).rejects.toThrow(/^unknown parameter "bogus" in "bogus=1" \(known keys — backend memory: [^;]*\bsize\b[^;]*; filter outer: shared-key, outer-key\)$/);
  });

  it('unknown backend or filter, a key before the backend, a bad value: UsageErrors naming them', async () => {
    await expect(resolve(['nosuch'])).rejects.toThrow(/^unknown backend "nosuch" \(known: [^;]*\bmemory\b[^;]*;/);
    await expect(resolve(['--filter=nosuch', 'memory', '1M'])).rejects.toThrow(/^unknown filter "nosuch" \(known: inner, outer;/);
    await expect(resolve(['size=1G'])).rejects.toThrow(/^"size=1G": expected a backend name first/);
    await expect(resolve(['memory', 'lots'])).rejects.toThrow(/^memory: size=lots: cannot parse size/);
    await expect(resolve(['memory'])).rejects.toThrow(/^memory: size=… is required$/);
    await expect(resolve(['memory', '1M', '2M'])).rejects.toThrow(/^memory: size given twice$/);
    await expect(resolve(['--memory', '1M', 'file', 'x'])).rejects.toThrow(/^--memory and a backend name \("file"\) are exclusive/);
  });

  it('--help text lists every backend and filter with its keys', async () => {
    const help = await pluginHelp(tables);
    expect(help).toMatch(/^ {2}memory +a sparse RAM disk/m);
    expect(help).toMatch(/^ {6}size=SIZE +export size .*required; "size=" may be left out/m);
    expect(help).toMatch(/^ {2}outer +test filter outer\n {6}shared-key=STRING +shared-key of outer\n {6}outer-key=STRING/m);
    expect(await pluginHelp({ backends: BACKENDS, filters: {} })).toMatch(/\(none built in\)/);
  });
});

describe('unit: plugin type shapes', () => {
  it('the built-in memory backend is a BackendPlugin with a magic key', async () => {
    const p: BackendPlugin = await BACKENDS.memory!();
    expect(p.magic).toBe('size');
  });
});
