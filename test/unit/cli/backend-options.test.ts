/** `serve BACKEND --key value` is `serve BACKEND key=value` for the backend's own keys (docs/s3.md). */
import { describe, expect, it } from 'vitest';
import { backendOptionsToPairs } from '../../../src/cli/backend-options.js';
import type { PluginTables } from '../../../src/cli/nbdkit-args.js';
import type { BackendPlugin } from '../../../src/plugins/registry.js';

const fake: BackendPlugin = {
  name: 'store',
  summary: 'test',
  params: [
    { name: 'endpoint', kind: 'string', summary: '' },
    { name: 'size', kind: 'size', summary: '' },
    { name: 'port', kind: 'integer', summary: 'also a server option: stays the server’s' },
  ],
  create: async () => ({ read: () => Buffer.alloc(0) }),
};
const tables: PluginTables = { backends: { store: async () => fake }, filters: {} };

describe('backendOptionsToPairs', () => {
  it('after the backend name, --KEY VALUE and --KEY=VALUE of its keys become KEY=VALUE', async () => {
    expect(await backendOptionsToPairs(['-U', 's', 'store', '--endpoint', 'http://x:1', '--size=10G', 'other=1'], tables)).toEqual([
      '-U',
      's',
      'store',
      'endpoint=http://x:1',
      'size=10G',
      'other=1',
    ]);
  });

  it('server options, options before the backend name, unknown keys and everything after -- are left alone', async () => {
    const args = ['--size', '1', 'store', '--port', '0', '--verbose', '--nope', 'v', '--', '--endpoint', 'e'];
    expect(await backendOptionsToPairs(args, tables)).toEqual(args);
    expect(await backendOptionsToPairs(['-U', 's', '--endpoint', 'x'], tables)).toEqual(['-U', 's', '--endpoint', 'x']);
  });
});
