/**
 * The few S3 calls the s3 backend needs (GET, HEAD, conditional PUT,
 * ListObjectsV2), signed with SigV4 by aws4fetch over Node's fetch, path-style
 * (`endpoint/bucket/key`, as radosgw and MinIO serve by default). Every request
 * has a timeout and waits for one of `concurrency` slots, so a slow or dead
 * store never piles up unbounded requests or hangs a client forever.
 */
import { AwsClient } from 'aws4fetch';

export interface S3ClientOptions {
  /** e.g. http://127.0.0.1:7480 (no bucket in it). */
  readonly endpoint: string;
  readonly bucket: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
  readonly region: string;
  /** Requests in flight at most. */
  readonly concurrency: number;
  /** Milliseconds before a request is abandoned (an error). */
  readonly timeout: number;
}

/** A failure of the store (HTTP status ≠ the expected ones, network, timeout): the client gets EIO. */
export class S3Error extends Error {
  constructor(
    message: string,
    readonly status?: number,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'S3Error';
  }
}

export interface S3Object {
  readonly body: Buffer;
  /** The ETag as the store sent it (quotes included). */
  readonly etag: string;
}

/** Condition of a PUT: the object must not exist, or it must still have this ETag. */
export type PutCondition = { readonly ifMatch: string } | { readonly ifNoneMatch: '*' };

/**
 * What one NBD request's store calls share: `deadline` (Date.now() milliseconds) bounds them all,
 * waiting for a slot included; once `signal` is aborted (another piece of the request failed),
 * calls that have not started fail at once with its reason instead of waiting their turn.
 */
export interface CallContext {
  readonly deadline: number;
  readonly signal: AbortSignal;
}

/** A key as ListObjectsV2 lists it. */
export interface ListedKey {
  readonly key: string;
  readonly size: number;
}

/** A counting semaphore: at most `n` holders. */
class Slots {
  private free: number;
  private readonly waiting: (() => void)[] = [];
  constructor(n: number) {
    this.free = n;
  }
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    }
  }
}

/** The <Code> of an S3 XML error body, if any. */
function errorCode(xml: string): string | undefined {
  return /<Code>([^<]*)<\/Code>/.exec(xml)?.[1];
}

function unescapeXml(s: string): string {
  return s.replace(/&(lt|gt|quot|apos|amp);/g, (_, e: string) => ({ lt: '<', gt: '>', quot: '"', apos: "'", amp: '&' })[e]!);
}

export class S3Client {
  private readonly aws: AwsClient;
  private readonly slots: Slots;
  private readonly base: string;

  constructor(readonly options: S3ClientOptions) {
    // Only its signing is used (see request()); retries: 0 all the same — its own fetch would retry 5xx
    // answers with growing sleeps, and a failure must reach the NBD client as EIO promptly (the retry
    // filter exists for retrying).
    this.aws = new AwsClient({
      accessKeyId: options.accessKeyId,
      secretAccessKey: options.secretAccessKey,
      sessionToken: options.sessionToken,
      service: 's3',
      region: options.region,
      retries: 0,
    });
    this.slots = new Slots(options.concurrency);
    this.base = `${options.endpoint.replace(/\/+$/, '')}/${encodeURIComponent(options.bucket)}`;
  }

  /** Where `key` is, for messages. */
  where(key?: string): string {
    return `s3://${this.options.bucket}/${key ?? ''}`;
  }

  private url(key: string, query = ''): string {
    return `${this.base}/${key.split('/').map(encodeURIComponent).join('/')}${query}`;
  }

  /**
   * One request; the body is read inside the slot so the connection is freed before the slot is.
   *
   * The timeout is a timer of our own that aborts the fetch and fails the request, answer or not.
   * Not `AbortSignal.timeout()` handed through aws4fetch: aws4fetch signs into a `Request` and
   * fetch() copies that Request, and a copied Request loses its link to the caller's signal once
   * the garbage collector has run (nodejs/undici#4068) — the timeout then never fired and a
   * request to a store that stopped answering hung its NBD client for good (seen under load).
   * So the request is signed by aws4fetch and sent by us with the URL, the signed headers and our
   * own signal, and the timer rejects even if the abort should not reach the socket.
   */
  private request(method: string, key: string, init: { headers?: Record<string, string>; body?: Buffer; query?: string; label?: string; call?: CallContext } = {}) {
    const what = init.label ?? `${method} ${this.where(key)}`;
    const call = init.call;
    return this.slots.run(async () => {
      // A call of a request that already failed, or whose time ran out while it waited for its slot, is not sent.
      call?.signal.throwIfAborted();
      const timeout = call ? Math.min(this.options.timeout, call.deadline - Date.now()) : this.options.timeout;
      if (timeout <= 0) throw new S3Error(`${what}: not sent, the request's ${this.options.timeout} ms ran out`);
      const controller = new AbortController();
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          const err = new S3Error(`${what}: no answer in ${this.options.timeout} ms`);
          controller.abort(err);
          reject(err);
        }, timeout);
      });
      // Only ever raced against: a timeout after the answer is nobody's concern.
      timedOut.catch(() => {});
      try {
        let res: Response;
        try {
          const signed = await this.aws.sign(this.url(key, init.query), { method, headers: init.headers });
          res = await Promise.race([fetch(signed.url, { method, headers: signed.headers, body: init.body, signal: controller.signal }), timedOut]);
        } catch (e) {
          if (e instanceof S3Error) throw e;
          const err = e as Error;
          throw new S3Error(`${what}: ${err.message}${err.cause ? ` (${(err.cause as Error).message ?? String(err.cause)})` : ''}`);
        }
        try {
          const body = Buffer.from(await Promise.race([res.arrayBuffer(), timedOut]));
          return { status: res.status, headers: res.headers, body };
        } catch (e) {
          if (e instanceof S3Error) throw e;
          throw new S3Error(`${what}: reading the answer: ${(e as Error).message}`);
        }
      } finally {
        clearTimeout(timer);
      }
    });
  }

  private fail(method: string, key: string, res: { status: number; body: Buffer }): S3Error {
    const code = errorCode(res.body.toString('utf8', 0, Math.min(res.body.length, 4096)));
    return new S3Error(`${method} ${this.where(key)}: HTTP ${res.status}${code ? ` ${code}` : ''}`, res.status, code);
  }

  /**
   * The object (or bytes [from, from + length) of it), or null when there is no such key.
   * A missing bucket is an error, not a missing object.
   */
  async get(key: string, range?: { from: number; length: number }, call?: CallContext): Promise<S3Object | null> {
    const headers = range ? { range: `bytes=${range.from}-${range.from + range.length - 1}` } : undefined;
    const res = await this.request('GET', key, { headers, call });
    if (res.status === 200 || res.status === 206) return { body: res.body, etag: res.headers.get('etag') ?? '' };
    // A range that starts past the object's end: the object is shorter (an empty one marks a hole), nothing of it is there.
    if (res.status === 416 && range) return { body: Buffer.alloc(0), etag: res.headers.get('etag') ?? '' };
    const err = this.fail('GET', key, res);
    if (res.status === 404 && (err.code === 'NoSuchKey' || err.code === undefined)) return null;
    throw err;
  }

  /**
   * PUT the object on a condition: its new ETag ('' if the store sent none) once the store has
   * it, or null when the condition no longer holds (412, or 409 which some stores answer to a
   * concurrent conditional write, or 404 NoSuchKey: deleted meanwhile). Never unconditional: a
   * PUT that timed out may still be carried out by the store later, and only its condition keeps
   * it from replacing what was written since (objects.ts).
   */
  async put(key: string, body: Buffer, condition: PutCondition, call?: CallContext): Promise<string | null> {
    const headers: Record<string, string> = {};
    // radosgw (16.x) compares If-Match with the ETag without its quotes, and fails a quoted one.
    if ('ifMatch' in condition) headers['if-match'] = condition.ifMatch.replace(/^"|"$/g, '');
    else headers['if-none-match'] = '*';
    const res = await this.request('PUT', key, { headers, body, call });
    if (res.status === 200) return res.headers.get('etag') ?? '';
    if (res.status === 412 || res.status === 409) return null;
    const err = this.fail('PUT', key, res);
    // radosgw: an If-Match PUT whose object is deleted between its check and its write (another
    // server's TRIM) fails with RADOS's ENOENT, answered as 404 NoSuchKey: the object changed.
    if (res.status === 404 && err.code === 'NoSuchKey') return null;
    throw err;
  }

  /** The object's ETag ('' if the store sent none), or null when there is no such key. */
  async head(key: string, call?: CallContext): Promise<string | null> {
    const res = await this.request('HEAD', key, { call });
    if (res.status === 200) return res.headers.get('etag') ?? '';
    // A HEAD answer has no body, so no error code: 404 is a missing key (a missing bucket fails the PUT before it).
    if (res.status === 404) return null;
    throw this.fail('HEAD', key, res);
  }

  /**
   * Keys beginning with `prefix`, after `startAfter`, in order, until `last` (inclusive) or the end, with
   * their sizes; at most `maxKeys` of them (when there are that many, the listing may have stopped short).
   */
  async list(prefix: string, startAfter: string | undefined, last: string, call?: CallContext, maxKeys = Infinity): Promise<ListedKey[]> {
    const keys: ListedKey[] = [];
    let token: string | undefined;
    for (;;) {
      const q = new URLSearchParams({ 'list-type': '2', prefix, 'max-keys': String(Math.min(1000, maxKeys - keys.length)) });
      if (token) q.set('continuation-token', token);
      else if (startAfter !== undefined) q.set('start-after', startAfter);
      const res = await this.request('GET', '', { query: `?${q.toString()}`, label: `LIST ${this.where(prefix)}`, call });
      if (res.status !== 200) throw this.fail('LIST', prefix, res);
      const xml = res.body.toString('utf8');
      for (const m of xml.matchAll(/<Contents>([\s\S]*?)<\/Contents>/g)) {
        const key = unescapeXml(/<Key>([^<]*)<\/Key>/.exec(m[1]!)?.[1] ?? '');
        if (key > last) return keys;
        keys.push({ key, size: Number(/<Size>(\d+)<\/Size>/.exec(m[1]!)?.[1] ?? 0) });
        if (keys.length >= maxKeys) return keys;
      }
      token = /<IsTruncated>true<\/IsTruncated>/.test(xml) ? /<NextContinuationToken>([^<]*)<\/NextContinuationToken>/.exec(xml)?.[1] : undefined;
      if (!token) return keys;
      token = unescapeXml(token);
    }
  }
}
