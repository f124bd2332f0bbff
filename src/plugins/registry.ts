/**
 * Backends and filters by name, for the command line (`nbd-engine serve
 * memory 1G`, `--filter=cow file base.img`): each entry loads its module
 * only when used, so `serve` does not load every plugin at start.
 */
import type { Backend } from '../api/backend.js';
import type { Filter } from '../api/filter.js';
import type { Logger } from '../transport/logger.js';
import type { ParamSpec, Params } from './params.js';

export interface PluginContext {
  readonly logger: Logger;
  /** Open the export read-only (`-r`). */
  readonly readOnly: boolean;
}

export interface BackendPlugin {
  readonly name: string;
  /** One line for `--help`. */
  readonly summary: string;
  readonly params: readonly ParamSpec[];
  /** The key a bare value stands for (`file disk.img` = `file=disk.img`). */
  readonly magic?: string;
  create(params: Params, context: PluginContext): Promise<Backend>;
}

export interface FilterPlugin {
  readonly name: string;
  readonly summary: string;
  readonly params: readonly ParamSpec[];
  /** The filter never writes to the backend below it (cow): the command line opens that backend read-only. */
  readonly readOnlyBelow?: boolean;
  create(params: Params, context: PluginContext): Promise<Filter>;
}

/** Backend name → its plugin, loaded on first use. */
export const BACKENDS: Readonly<Record<string, () => Promise<BackendPlugin>>> = {
  data: () => import('../backends/everyday-plugins.js').then((m) => m.dataPlugin),
  memory: () => import('../backends/builtin-plugins.js').then((m) => m.memoryPlugin),
  file: () => import('../backends/builtin-plugins.js').then((m) => m.filePlugin),
  null: () => import('../backends/everyday-plugins.js').then((m) => m.nullPlugin),
  pattern: () => import('../backends/everyday-plugins.js').then((m) => m.patternPlugin),
  s3: () => import('../backends/s3/plugin.js').then((m) => m.s3Plugin),
  'sparse-random': () => import('../backends/everyday-plugins.js').then((m) => m.sparseRandomPlugin),
  zero: () => import('../backends/everyday-plugins.js').then((m) => m.zeroPlugin),
};

/** Filter name → its plugin, loaded on first use. */
export const FILTERS: Readonly<Record<string, () => Promise<FilterPlugin>>> = {
  blocksize: () => import('../filters/plugins.js').then((m) => m.blocksizePlugin),
  cache: () => import('../filters/plugins.js').then((m) => m.cachePlugin),
  cow: () => import('../filters/plugins.js').then((m) => m.cowPlugin),
  readahead: () => import('../filters/plugins.js').then((m) => m.readaheadPlugin),
  delay: () => import('../filters/ops-plugins.js').then((m) => m.delayPlugin),
  error: () => import('../filters/ops-plugins.js').then((m) => m.errorPlugin),
  log: () => import('../filters/ops-plugins.js').then((m) => m.logPlugin),
  rate: () => import('../filters/ops-plugins.js').then((m) => m.ratePlugin),
  retry: () => import('../filters/ops-plugins.js').then((m) => m.retryPlugin),
  stats: () => import('../filters/ops-plugins.js').then((m) => m.statsPlugin),
  partition: () => import('../filters/partition.js').then((m) => m.partitionPlugin),
  offset: () => import('../filters/offset.js').then((m) => m.offsetPlugin),
};

async function lookup<T>(table: Readonly<Record<string, () => Promise<T>>>, kind: string, name: string): Promise<T> {
  const load = Object.hasOwn(table, name) ? table[name] : undefined;
  if (!load) throw new Error(`unknown ${kind} "${name}" (known: ${Object.keys(table).sort().join(', ') || 'none'})`);
  return load();
}

export const backendPlugin = (name: string): Promise<BackendPlugin> => lookup(BACKENDS, 'backend', name);
export const filterPlugin = (name: string): Promise<FilterPlugin> => lookup(FILTERS, 'filter', name);
