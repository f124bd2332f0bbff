/**
 * s3Backend: an export kept in an S3 bucket (Ceph radosgw, MinIO, AWS S3, …)
 * as fixed-size objects (see objects.ts for the layout and why concurrent
 * writers never lose an update). The export's size and object size are in a
 * metadata object, prefix + 'meta', written once when the export is created;
 * a server that opens an existing export with other settings refuses to start.
 *
 * Every acknowledged write has had its PUT completed by the store, so FLUSH
 * has nothing left to do and FUA costs nothing: both are advertised and honest.
 * A failure of the store (an HTTP error, no answer within `timeout`, the
 * network) fails the request with EIO and logs one line naming the object.
 */
import type { Backend, ExtentsOptions, WriteOptions, ZeroOptions } from '../../api/backend.js';
import { NbdRequestError } from '../../api/errors.js';
import { consoleLogger, type Logger } from '../../transport/logger.js';
import { S3Client, S3Error } from './client.js';
import { ObjectStore } from './objects.js';
import { isPowerOf2 } from '../../plugins/common.js';
import { DEFAULTS } from '../../defaults.js';
import { MAX_TIMER_MS } from '../../api/limits.js';

export const S3_DEFAULTS = {
  objectSize: 1024 * 1024,
  concurrency: 16,
  timeout: 30_000,
  maxAttempts: 100,
  etagCache: 65_536,
  listKeys: 10_000,
  region: 'us-east-1',
} as const;

export interface S3BackendOptions {
  /** The store's URL, e.g. http://127.0.0.1:7480 (path-style requests: endpoint/bucket/key). */
  readonly endpoint: string;
  readonly bucket: string;
  /** Prepended to every key (default ''); end it with '/' to keep exports apart. */
  readonly prefix?: string;
  /** Export size in bytes: required to create an export; when opening one, must match if given. */
  readonly size?: number;
  /** Bytes per object, a power of 2 from 4 KiB to 32 MiB (default 1 MiB); must match an existing export if given. */
  readonly objectSize?: number;
  /** Default: $AWS_ACCESS_KEY_ID. */
  readonly accessKeyId?: string;
  /** Default: $AWS_SECRET_ACCESS_KEY. */
  readonly secretAccessKey?: string;
  /** Default: $AWS_SESSION_TOKEN. */
  readonly sessionToken?: string;
  /** Default: $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1. */
  readonly region?: string;
  /** HTTP requests in flight at most (default 16). */
  readonly concurrency?: number;
  /** Milliseconds before a request to the store is given up (default 30000, at most 2^31 − 1). */
  readonly timeout?: number;
  /** Write attempts when other writers keep changing an object (default 100). */
  readonly maxAttempts?: number;
  /** Objects whose ETag is remembered for conditional whole-object writes (default 65 536; about 100 bytes each). */
  readonly etagCache?: number;
  /** Keys one BLOCK_STATUS lists at most (default 10 000, 10 LIST pages); its reply ends with the last object listed. */
  readonly listKeys?: number;
  readonly readOnly?: boolean;
  /** Where store failures are reported (default: stderr). */
  readonly logger?: Logger;
}

export interface S3Backend extends Backend {
  readonly size: number;
  readonly objectSize: number;
  /** Conditional PUTs refused so far because another writer changed the object first. */
  conflicts(): number;
}

/** A mistake in the configuration or an export that does not match it: the server must not start. */
export class S3ConfigError extends Error {
  override name = 'S3ConfigError';
}

const META_FORMAT = 'nbd-engine-s3/1';

interface Meta {
  readonly size: number;
  readonly objectSize: number;
}

function parseMeta(where: string, body: Buffer): Meta {
  let m: { format?: unknown; size?: unknown; objectSize?: unknown };
  try {
    m = JSON.parse(body.toString('utf8')) as typeof m;
  } catch {
    throw new S3ConfigError(`${where} is not an nbd-engine metadata object (not JSON)`);
  }
  if (m.format !== META_FORMAT || typeof m.size !== 'number' || typeof m.objectSize !== 'number') {
    throw new S3ConfigError(`${where} is not an nbd-engine metadata object (format ${JSON.stringify(m.format)})`);
  }
  return { size: m.size, objectSize: m.objectSize };
}

/** Read the export's metadata, creating it (exactly once, whoever races) when absent. */
async function openMeta(client: S3Client, key: string, want: { size?: number; objectSize?: number }, readOnly: boolean): Promise<Meta> {
  const where = client.where(key);
  for (;;) {
    const found = await client.get(key);
    if (found) {
      const meta = parseMeta(where, found.body);
      const diff: string[] = [];
      if (want.size !== undefined && want.size !== meta.size) diff.push(`size ${meta.size} (asked for ${want.size})`);
      if (want.objectSize !== undefined && want.objectSize !== meta.objectSize) diff.push(`object size ${meta.objectSize} (asked for ${want.objectSize})`);
      if (diff.length) throw new S3ConfigError(`the export at ${client.where()}${key.slice(0, -4)} already exists with ${diff.join(' and ')}; open it with its own settings or use another prefix`);
      return meta;
    }
    if (readOnly) throw new S3ConfigError(`no export at ${where} (read-only: not creating one)`);
    if (want.size === undefined) throw new S3ConfigError(`no export at ${where}: give its size to create it`);
    const meta = { size: want.size, objectSize: want.objectSize ?? S3_DEFAULTS.objectSize };
    const body = Buffer.from(JSON.stringify({ format: META_FORMAT, ...meta }) + '\n');
    // If-None-Match: * — when another server creates it at the same moment, read theirs and compare.
    if ((await client.put(key, body, { ifNoneMatch: '*' })) !== null) return meta;
  }
}

function positive(name: string, v: number | undefined, fallback: number, max = Number.MAX_SAFE_INTEGER): number {
  const n = v ?? fallback;
  if (!Number.isSafeInteger(n) || n < 1 || n > max) {
    throw new S3ConfigError(`s3: ${name} must be a positive integer${max < Number.MAX_SAFE_INTEGER ? ` of at most ${max}` : ''} (got ${v})`);
  }
  return n;
}

/** Open (or create) the export; rejects with S3ConfigError or S3Error when it cannot be served. */
export async function s3Backend(options: S3BackendOptions): Promise<S3Backend> {
  const env = process.env;
  const accessKeyId = options.accessKeyId ?? env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = options.secretAccessKey ?? env.AWS_SECRET_ACCESS_KEY;
  if (!accessKeyId || !secretAccessKey) {
    throw new S3ConfigError('s3: no credentials: give access-key and secret-key, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY');
  }
  if (!/^https?:\/\//.test(options.endpoint)) throw new S3ConfigError(`s3: endpoint must be an http:// or https:// URL (got ${JSON.stringify(options.endpoint)})`);
  if (!options.bucket) throw new S3ConfigError('s3: bucket is required');
  if (options.objectSize !== undefined && (!isPowerOf2(options.objectSize) || options.objectSize < 4096 || options.objectSize > 32 * 1024 * 1024)) {
    throw new S3ConfigError(`s3: object size must be a power of 2 from 4K to 32M (got ${options.objectSize})`);
  }
  if (options.size !== undefined && (!Number.isSafeInteger(options.size) || options.size < 0)) throw new S3ConfigError(`s3: bad size ${options.size}`);
  const prefix = options.prefix ?? '';
  const logger = options.logger ?? consoleLogger();
  const client = new S3Client({
    endpoint: options.endpoint,
    bucket: options.bucket,
    accessKeyId,
    secretAccessKey,
    sessionToken: options.sessionToken ?? env.AWS_SESSION_TOKEN,
    region: options.region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? S3_DEFAULTS.region,
    concurrency: positive('concurrency', options.concurrency, S3_DEFAULTS.concurrency),
    // A Node timer of more than 2^31 − 1 ms fires at once: every request would fail at once.
    timeout: positive('timeout', options.timeout, S3_DEFAULTS.timeout, MAX_TIMER_MS),
  });
  const meta = await openMeta(client, `${prefix}meta`, options, options.readOnly ?? false);
  const store = new ObjectStore(
    client,
    prefix,
    meta.size,
    meta.objectSize,
    positive('maxAttempts', options.maxAttempts, S3_DEFAULTS.maxAttempts),
    (key) => logger.debug?.(`s3: ${client.where(key)} was changed by another writer; reading it again`),
    positive('etagCache', options.etagCache, S3_DEFAULTS.etagCache),
    positive('listKeys', options.listKeys, S3_DEFAULTS.listKeys),
  );

  /** A store failure: one log line, EIO to the client. Anything else is a bug and goes up as it is. */
  const guard = async <T>(op: string, offset: number, length: number, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (e) {
      if (!(e instanceof S3Error)) throw e;
      logger.error(`s3: ${op} ${offset}+${length} failed: ${e.message}`);
      throw new NbdRequestError('EIO', e.message);
    }
  };

  const backend: S3Backend = {
    size: meta.size,
    objectSize: meta.objectSize,
    conflicts: () => store.conflicts,
    readOnly: options.readOnly ?? false,
    multiConn: true,
    fua: 'native',
    canFastZero: false,
    blockSizes: { minimum: 1, preferred: meta.objectSize, maximum: 32 * 1024 * 1024 },
    read: (offset, length) => guard('read', offset, length, () => store.read(offset, length)),
    write: (offset: number, data: Buffer, _o: WriteOptions) => guard('write', offset, data.length, () => store.write(offset, data)),
    // Every write's PUT has completed before it was acknowledged: nothing is pending.
    flush: () => {},
    trim: (offset: number, length: number, _o: WriteOptions) => guard('trim', offset, length, () => store.zero(offset, length, false)),
    zero: (offset: number, length: number, o: ZeroOptions) => guard('zero', offset, length, () => store.zero(offset, length, true, o.noHole)),
    // A reply carries at most maxExtents extents (one with REQ_ONE): the listing need not go further.
    extents: (offset: number, length: number, o: ExtentsOptions) =>
      guard('block status', offset, length, () => store.extents(offset, length, o.reqOne ? 1 : (o.maxExtents ?? DEFAULTS.maxExtents))),
  };
  if (options.readOnly) {
    delete (backend as { write?: unknown }).write;
    delete (backend as { trim?: unknown }).trim;
    delete (backend as { zero?: unknown }).zero;
  }
  return backend;
}
