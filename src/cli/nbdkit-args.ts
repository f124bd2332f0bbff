/**
 * nbdkit's positional command line for `nbd-engine serve`: `BACKEND
 * [[KEY=]VALUE ...]` plus `--filter=NAME` options. The first positional
 * names the backend; every `key=value` goes to the first filter (the one
 * closest to the client) that declares `key`, else to the backend, as an
 * nbdkit filter's .config takes the keys it knows and passes the rest on; a
 * bare value is the backend's magic key (`memory 1G` = `memory size=1G`).
 * A key nobody declares is a usage error naming it, before anything is
 * opened. Only the plugins named are loaded (the registry's loaders).
 */
import { BACKENDS, FILTERS, type BackendPlugin, type FilterPlugin } from '../plugins/registry.js';
import { ParamError, readParams, splitPair, type ParamSpec, type Params } from '../plugins/params.js';
import { prepareExports, type ExportConfig } from '../api/export-entry.js';
import type { Filter } from '../api/filter.js';
import { consoleLogger, type Logger } from '../transport/logger.js';
import { UsageError } from './serve-args.js';

/** Where plugins are looked up: the built-in registry, or (in tests) another table. */
export interface PluginTables {
  readonly backends: Readonly<Record<string, () => Promise<BackendPlugin>>>;
  readonly filters: Readonly<Record<string, () => Promise<FilterPlugin>>>;
}

export const REGISTRY: PluginTables = { backends: BACKENDS, filters: FILTERS };

/** The plugins a command line names, with their parameters checked and converted. */
export interface ResolvedPlugins {
  readonly backend: { readonly plugin: BackendPlugin; readonly params: Params };
  /** In command-line order: the first is closest to the client. */
  readonly filters: ReadonlyArray<{ readonly plugin: FilterPlugin; readonly params: Params }>;
}

function known(table: Readonly<Record<string, unknown>>): string {
  return Object.keys(table).sort().join(', ') || 'none';
}

async function load<T>(table: Readonly<Record<string, () => Promise<T>>>, kind: string, name: string): Promise<T> {
  const loader = Object.hasOwn(table, name) ? table[name] : undefined;
  if (!loader) throw new UsageError(`unknown ${kind} ${JSON.stringify(name)} (known: ${known(table)}; nbd-engine --help lists them)`);
  return loader();
}

/** What names the plugins: the positionals, the `--filter`s, and serve's older `--memory` / `--file`. */
export interface PluginWords {
  readonly positionals: readonly string[];
  /** Filter names, the first closest to the client. */
  readonly filters: readonly string[];
  /** `--file PATH`. */
  readonly file?: string;
  /** `--memory SIZE`, in bytes (used when given, or when nothing else names a backend). */
  readonly memorySize?: number;
  /** Whether `--memory` was given. */
  readonly memory?: boolean;
}

/**
 * The backend's name and its own arguments. The old `--memory SIZE` /
 * `--file PATH` options stand for `memory size=SIZE` / `file file=PATH`
 * (then every positional is a parameter); with neither and no positional,
 * a 1 GiB memory backend, as before.
 */
function backendWords(words: PluginWords, tables: PluginTables): { name: string; args: string[] } {
  const { positionals } = words;
  if (words.file !== undefined) return { name: 'file', args: [`file=${words.file}`, ...positionals] };
  if (words.memory || positionals.length === 0) return { name: 'memory', args: [`size=${words.memorySize ?? 2 ** 30}`, ...positionals] };
  const [name, ...args] = positionals;
  if (name!.includes('=')) {
    throw new UsageError(`${JSON.stringify(name)}: expected a backend name first (nbd-engine serve BACKEND key=value …; known: ${known(tables.backends)})`);
  }
  return { name: name!, args };
}

function declares(specs: readonly ParamSpec[], key: string): boolean {
  return specs.some((s) => s.name === key);
}

/** Load the named backend and filters, route each `key=value`, and check every parameter. */
export async function resolvePlugins(words: PluginWords, tables: PluginTables = REGISTRY): Promise<ResolvedPlugins> {
  const { name, args } = backendWords(words, tables);
  const backend = await load(tables.backends, 'backend', name);
  const filters = [];
  for (const f of words.filters) filters.push(await load(tables.filters, 'filter', f));
  const backendArgs: string[] = [];
  const filterArgs: string[][] = filters.map(() => []);
  for (const arg of args) {
    const pair = splitPair(arg);
    const owner = pair ? filters.findIndex((f) => declares(f.params, pair[0])) : -1;
    if (owner >= 0) {
      filterArgs[owner]!.push(arg);
      continue;
    }
    if (pair && !declares(backend.params, pair[0])) {
      const takers = [`backend ${backend.name}: ${backend.params.map((s) => s.name).join(', ') || 'none'}`];
      for (const f of filters) takers.push(`filter ${f.name}: ${f.params.map((s) => s.name).join(', ') || 'none'}`);
      throw new UsageError(`unknown parameter ${JSON.stringify(pair[0])} in ${JSON.stringify(arg)} (known keys — ${takers.join('; ')})`);
    }
    backendArgs.push(arg);
  }
  try {
    return {
      backend: { plugin: backend, params: readParams(backend.name, backend.params, backendArgs, backend.magic) },
      filters: filters.map((plugin, i) => ({ plugin, params: readParams(`filter ${plugin.name}`, plugin.params, filterArgs[i]!) })),
    };
  } catch (err) {
    if (err instanceof ParamError) throw new UsageError(err.message);
    throw err;
  }
}

/** Build the backend and filters resolvePlugins found (errors opening them are the plugins' own). */
export async function createPlugins(r: ResolvedPlugins, context: { logger: Logger; readOnly: boolean }): Promise<{ backend: ExportConfig['backend']; filters: Filter[] }> {
  // A filter that never writes below it (cow) has its backend opened read-only, as nbdkit does.
  const below = r.filters.some((f) => f.plugin.readOnlyBelow) ? { ...context, readOnly: true } : context;
  const backend = await r.backend.plugin.create(r.backend.params, below);
  const filters: Filter[] = [];
  for (const f of r.filters) filters.push(await f.plugin.create(f.params, context));
  return { backend, filters };
}

/**
 * An export from nbdkit-style words, for library users who take a backend
 * from their own command line or configuration: `['memory', '1G']`,
 * `['--filter=NAME', 'file', 'disk.img', 'key=value']` (`--filter NAME`
 * works too). A mistake in the words throws an Error with one line naming it.
 */
export async function pluginExport(
  words: readonly string[],
  options: { name?: string; description?: string; readOnly?: boolean; logger?: Logger; tables?: PluginTables } = {},
): Promise<ExportConfig> {
  const positionals: string[] = [];
  const filters: string[] = [];
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!;
    if (w.startsWith('--filter=')) filters.push(w.slice('--filter='.length));
    else if (w === '--filter' && i + 1 < words.length) filters.push(words[++i]!);
    else if (w.startsWith('-')) throw new UsageError(`${JSON.stringify(w)}: only --filter=NAME, a backend name and key=value words are read here`);
    else positionals.push(w);
  }
  if (positionals.length === 0) throw new UsageError('no backend named (e.g. memory 1G, file disk.img)');
  const readOnly = !!options.readOnly;
  const resolved = await resolvePlugins({ positionals, filters }, options.tables);
  const { backend, filters: built } = await createPlugins(resolved, { logger: options.logger ?? consoleLogger(), readOnly });
  const exp: ExportConfig = { name: options.name ?? '', description: options.description, backend, readOnly, filters: built.length > 0 ? built : undefined };
  await prepareExports([exp], options.logger);
  return exp;
}

function paramLines(specs: readonly ParamSpec[], magic?: string): string[] {
  return specs.map((s) => {
    const notes = [s.required ? 'required' : '', s.repeat ? 'repeatable' : '', s.name === magic ? `"${s.name}=" may be left out` : '', s.choices ? `one of ${s.choices.join(', ')}` : '']
      .filter(Boolean)
      .join('; ');
    return `      ${`${s.name}=${s.kind.toUpperCase()}`.padEnd(22)} ${s.summary}${notes ? ` (${notes})` : ''}`;
  });
}

/** The backends and filters with their parameters, for `--help` (loads every plugin: fine for help). */
export async function pluginHelp(tables: PluginTables = REGISTRY): Promise<string> {
  const lines = ['', 'Backends (nbd-engine serve BACKEND [[KEY=]VALUE ...]):'];
  for (const name of Object.keys(tables.backends).sort()) {
    const p = await tables.backends[name]!();
    lines.push(`  ${name.padEnd(22)} ${p.summary}`, ...paramLines(p.params, p.magic));
  }
  lines.push('', 'Filters (--filter=NAME, repeatable; the first is closest to the client; each KEY=VALUE goes to the filter that declares KEY):');
  const filters = Object.keys(tables.filters).sort();
  if (filters.length === 0) lines.push('  (none built in)');
  for (const name of filters) {
    const p = await tables.filters[name]!();
    lines.push(`  ${name.padEnd(22)} ${p.summary}`, ...paramLines(p.params));
  }
  return `${lines.join('\n')}\n`;
}
