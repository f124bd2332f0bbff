/** Make a filter the way the command line does: its plugin from the registry, its key=value parameters checked by readParams. */
import { readParams } from '../../../src/plugins/params.js';
import { FILTERS } from '../../../src/plugins/registry.js';
import { silentLogger, type Filter } from '../../../src/index.js';

export async function filterFromArgs(name: string, args: string[]): Promise<Filter> {
  const plugin = await FILTERS[name]!();
  return plugin.create(readParams(name, plugin.params, args), { logger: silentLogger, readOnly: false });
}
