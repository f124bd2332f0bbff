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
  create(params: Params, context: PluginContext): Promise<Filter>;
}

/** Backend name → its plugin, loaded on first use. */
export const BACKENDS: Readonly<Record<string, () => Promise<BackendPlugin>>> = {
  memory: () => import('../backends/builtin-plugins.js').then((m) => m.memoryPlugin),
  file: () => import('../backends/builtin-plugins.js').then((m) => m.filePlugin),
};

/** Filter name → its plugin, loaded on first use. */
export const FILTERS: Readonly<Record<string, () => Promise<FilterPlugin>>> = {
  partition: () => import('../filters/partition.js').then((m) => m.partitionPlugin),
};

async function lookup<T>(table: Readonly<Record<string, () => Promise<T>>>, kind: string, name: string): Promise<T> {
  const load = Object.hasOwn(table, name) ? table[name] : undefined;
  if (!load) throw new Error(`unknown ${kind} "${name}" (known: ${Object.keys(table).sort().join(', ') || 'none'})`);
  return load();
}

export const backendPlugin = (name: string): Promise<BackendPlugin> => lookup(BACKENDS, 'backend', name);
export const filterPlugin = (name: string): Promise<FilterPlugin> => lookup(FILTERS, 'filter', name);
