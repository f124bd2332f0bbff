/**
 * The s3 backend on the command line: `nbd-engine serve s3 endpoint=URL
 * bucket=B [prefix=P] [size=10G] [object-size=1M] …`. Credentials come from
 * access-key / secret-key, else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
 */
import type { BackendPlugin } from '../../plugins/registry.js';
import { ParamError } from '../../plugins/params.js';
import { s3Backend, S3ConfigError, S3_DEFAULTS } from './backend.js';
import { S3Error } from './client.js';
import { MAX_TIMER_MS } from '../../api/limits.js';

export const s3Plugin: BackendPlugin = {
  name: 's3',
  summary: 'an export kept as fixed-size objects in an S3 bucket (radosgw, MinIO, AWS); safe for several servers',
  params: [
    { name: 'endpoint', kind: 'string', summary: 'the store URL, e.g. http://127.0.0.1:7480', required: true },
    { name: 'bucket', kind: 'string', summary: 'bucket name', required: true },
    { name: 'prefix', kind: 'string', summary: "prefix of every key (default ''; end it with /)" },
    { name: 'size', kind: 'size', summary: 'export size: needed to create the export; checked when opening one' },
    { name: 'object-size', kind: 'size', summary: `bytes per object, a power of 2 from 4K to 32M (default ${S3_DEFAULTS.objectSize / 1024 / 1024}M)` },
    { name: 'access-key', kind: 'string', summary: 'access key id (default $AWS_ACCESS_KEY_ID)' },
    { name: 'secret-key', kind: 'string', summary: 'secret access key (default $AWS_SECRET_ACCESS_KEY)' },
    { name: 'session-token', kind: 'string', summary: 'session token (default $AWS_SESSION_TOKEN)' },
    { name: 'region', kind: 'string', summary: `signing region (default $AWS_REGION, else ${S3_DEFAULTS.region})` },
    { name: 'concurrency', kind: 'integer', summary: `HTTP requests in flight at most (default ${S3_DEFAULTS.concurrency})` },
    { name: 'timeout', kind: 'integer', summary: `milliseconds an NBD request may spend on the store before it fails (default ${S3_DEFAULTS.timeout}, at most ${MAX_TIMER_MS})` },
    { name: 'max-attempts', kind: 'integer', summary: `write attempts while other writers keep changing an object (default ${S3_DEFAULTS.maxAttempts})` },
    { name: 'list-keys', kind: 'integer', summary: `keys one BLOCK_STATUS lists at most; its reply ends with the last object listed (default ${S3_DEFAULTS.listKeys})` },
    { name: 'etag-cache', kind: 'integer', summary: `objects whose ETag is remembered for conditional whole-object writes (default ${S3_DEFAULTS.etagCache})` },
  ],
  create: async (p, ctx) => {
    try {
      return await s3Backend({
        endpoint: p.endpoint as string,
        bucket: p.bucket as string,
        prefix: p.prefix as string | undefined,
        size: p.size as number | undefined,
        objectSize: p['object-size'] as number | undefined,
        accessKeyId: p['access-key'] as string | undefined,
        secretAccessKey: p['secret-key'] as string | undefined,
        sessionToken: p['session-token'] as string | undefined,
        region: p.region as string | undefined,
        concurrency: p.concurrency as number | undefined,
        timeout: p.timeout as number | undefined,
        maxAttempts: p['max-attempts'] as number | undefined,
        etagCache: p['etag-cache'] as number | undefined,
        listKeys: p['list-keys'] as number | undefined,
        readOnly: ctx.readOnly,
        logger: ctx.logger,
      });
    } catch (e) {
      // Settings that do not fit, or a store that cannot be reached at start: a clean error, not a crash.
      if (e instanceof S3ConfigError) throw new ParamError(e.message);
      if (e instanceof S3Error) throw new ParamError(`s3: cannot open the export: ${e.message}`);
      throw e;
    }
  },
};
