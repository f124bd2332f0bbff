/**
 * `serve s3 --endpoint URL --bucket B --size 10G` means `serve s3
 * endpoint=URL bucket=B size=10G`: after the backend's name, `--KEY VALUE`
 * and `--KEY=VALUE` for one of that backend's own keys become `KEY=VALUE`.
 * Only keys that are not server options are taken, so this changes nothing
 * for a command line that parsed before (such an option was an error).
 */
import { REGISTRY, type PluginTables } from './nbdkit-args.js';
import { isServeOption } from './serve-args.js';

export async function backendOptionsToPairs(args: readonly string[], tables: PluginTables = REGISTRY): Promise<string[]> {
  const at = args.findIndex((a) => Object.hasOwn(tables.backends, a));
  if (at < 0) return [...args];
  const keys = new Set((await tables.backends[args[at]!]!()).params.map((p) => p.name));
  const out = args.slice(0, at + 1);
  for (let i = at + 1; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') {
      out.push(...args.slice(i));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq < 0 ? a.slice(2) : a.slice(2, eq);
      if (keys.has(name) && !isServeOption(name)) {
        if (eq >= 0) {
          out.push(`${name}=${a.slice(eq + 1)}`);
          continue;
        }
        if (i + 1 < args.length) {
          out.push(`${name}=${args[++i]!}`);
          continue;
        }
      }
    }
    out.push(a);
  }
  return out;
}
