/**
 * What the data-path filters share beyond src/plugins/common.ts: parameter
 * checks with errors that name the filter and the key, and the one-export
 * rule of stateful filters.
 */
import { ParamError } from '../plugins/params.js';

/** Throw a ParamError unless `ok` (configuration mistakes name the filter and the key). */
export function check(ok: boolean, filter: string, message: string): void {
  if (!ok) throw new ParamError(`${filter}: ${message}`);
}

/**
 * A stateful filter object (its overlay, cache or window generation) serves
 * one export: the same object in two exports would mix their data. Returns
 * a check to call in `wrap`.
 */
export function oneExport(filter: string): (exportName: string) => void {
  let bound: string | undefined;
  return (exportName) => {
    bound ??= exportName;
    check(bound === exportName, filter, `this filter object already serves export "${bound}": make one per export (for "${exportName}")`);
  };
}
