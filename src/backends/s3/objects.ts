/**
 * The export as fixed-size objects in an S3 bucket: object n holds bytes
 * [n·objectSize, (n+1)·objectSize) at key prefix + n (16 digits, zero-padded,
 * so key order is offset order and ListObjectsV2 can walk a range). A missing
 * object, or an empty one, is zeroes (a hole).
 *
 * Safety across connections and servers: every PUT is conditional, on the
 * ETag the object had (`If-Match`) or on its absence (`If-None-Match: *`).
 * A write that covers part of an object is read-modify-write: GET, patch, PUT
 * on the ETag it read. A write that covers a whole object, and a TRIM or
 * WRITE_ZEROES of a whole object (which PUTs an empty object: a hole), does
 * not need what was there but still PUTs on the ETag it last saw (`etags`, a
 * bounded cache; unknown: it guesses "absent" and learns the ETag with a HEAD
 * when that is refused). If another writer (another connection, another
 * server process) changed the object in between, the store refuses (412) and
 * the write is redone (after a random pause), so no update is ever lost. And a
 * request that timed out here but reaches the store later is refused there as
 * soon as anything was written to the object after it: an unconditional PUT or
 * DELETE would replace what was acknowledged since (radosgw 16 ignores
 * conditions on DELETE, which is why a hole is an empty object, not a missing
 * one). What this cannot see: a late request whose ETag is current again
 * because the object was rewritten with exactly the bytes it held when that
 * request was sent (S3 ETags are content hashes). Within one process,
 * operations on the same object queue behind each other, so our own
 * connections do not make each other retry.
 *
 * One NBD request's store calls share a deadline (`timeout` from when the
 * request started, waiting for a slot included) and stop being sent once one
 * of them failed: a request to a store that stopped answering fails within
 * about `timeout`, however many objects it spans.
 */
import type { Extent, ReadSegment } from '../../api/backend.js';
import { S3Client, S3Error, type CallContext, type PutCondition } from './client.js';
import { BlockLocks } from '../../plugins/common.js';

const HOLE = 1;
const ZERO = 2;
/** Digits of an object's number in its key. */
const DIGITS = 16;
/** 5xx answers to a conditional PUT redone at most (see modify). */
const SERVER_ERROR_ATTEMPTS = 5;
/** The body of an object that marks a hole. */
const EMPTY = Buffer.alloc(0);

/** An object found by a LIST: its number and its size (0: an empty object, a hole). */
export interface ListedObject {
  readonly n: number;
  readonly size: number;
}

/** One object's part of a request: object n, bytes [within, within + length) of it, at `at` in the request. */
interface Piece {
  readonly n: number;
  readonly within: number;
  readonly length: number;
  readonly at: number;
}

/**
 * Run one piece per object of a request: they share a deadline, and once one fails the pieces
 * not yet sent are not sent (CallContext). Waits for every piece (a failed piece must not end
 * the request while others still use its buffer), then throws the first failure.
 */
async function eachPiece<P, T>(pieces: P[], timeout: number, run: (piece: P, call: CallContext) => Promise<T>): Promise<T[]> {
  const abort = new AbortController();
  const call: CallContext = { deadline: Date.now() + timeout, signal: abort.signal };
  const results = await Promise.allSettled(
    pieces.map(async (p) => {
      try {
        call.signal.throwIfAborted();
        return await run(p, call);
      } catch (e) {
        if (!abort.signal.aborted) abort.abort(e);
        throw e;
      }
    }),
  );
  if (abort.signal.aborted) throw abort.signal.reason;
  return results.map((r) => (r as PromiseFulfilledResult<T>).value);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class ObjectStore {
  /** Read-modify-write cycles of this process on one object run one after another. */
  private readonly locks = new BlockLocks();
  private readonly keyPattern: RegExp;
  /**
   * The ETag each object had after this process last wrote it (null: absent), so that a
   * whole-object write can be conditional without asking first; at most `etagCacheSize`
   * objects, the oldest forgotten first. Deleted while a PUT of the object is under way.
   */
  private readonly etags = new Map<number, string | null>();
  /** Conditional PUTs refused because another writer got there first (for tests and stats). */
  conflicts = 0;

  constructor(
    readonly client: S3Client,
    readonly prefix: string,
    readonly size: number,
    readonly objectSize: number,
    /** Read-modify-write attempts before giving up with an error. */
    readonly maxAttempts: number,
    /** Told of each refused conditional PUT (the key), e.g. for a debug log line. */
    private readonly onConflict: (key: string) => void = () => {},
    /** Objects whose ETag is remembered at most. */
    readonly etagCacheSize = 65_536,
    /** Keys one BLOCK_STATUS lists at most (its reply ends with the last object listed). */
    readonly listKeys = 10_000,
  ) {
    this.keyPattern = new RegExp(`^\\d{${DIGITS}}$`);
  }

  key(n: number): string {
    return this.prefix + String(n).padStart(DIGITS, '0');
  }

  /** Length of object n (the last one may be short). */
  objectLength(n: number): number {
    return Math.min(this.objectSize, this.size - n * this.objectSize);
  }

  pieces(offset: number, length: number): Piece[] {
    const out: Piece[] = [];
    let at = 0;
    while (at < length) {
      const pos = offset + at;
      const n = Math.floor(pos / this.objectSize);
      const within = pos - n * this.objectSize;
      const len = Math.min(this.objectLength(n) - within, length - at);
      out.push({ n, within, length: len, at });
      at += len;
    }
    return out;
  }

  private whole(p: Piece): boolean {
    return p.within === 0 && p.length === this.objectLength(p.n);
  }

  private get timeout(): number {
    return this.client.options.timeout;
  }

  private remember(n: number, etag: string | null): void {
    this.etags.delete(n);
    // '' is a store that sends no ETag: nothing to be conditional on, so nothing to remember.
    if (etag === '') return;
    if (this.etags.size >= this.etagCacheSize) this.etags.delete(this.etags.keys().next().value!);
    this.etags.set(n, etag);
  }

  async read(offset: number, length: number): Promise<ReadSegment[]> {
    return eachPiece(this.pieces(offset, length), this.timeout, async (p, call): Promise<ReadSegment> => {
      const obj = await this.client.get(this.key(p.n), this.whole(p) ? undefined : { from: p.within, length: p.length }, call);
      if (!obj || obj.body.length === 0) return { hole: p.length };
      if (obj.body.length === p.length) return { data: obj.body };
      // A shorter object than ours (written by someone else): the rest reads as zeroes.
      const data = Buffer.alloc(p.length);
      obj.body.copy(data, 0, 0, Math.min(obj.body.length, p.length));
      return { data };
    });
  }

  /**
   * Read-modify-write object n with a conditional PUT, redone while another writer
   * changes the object under us. `skipIfMissing`: a missing object needs no change.
   */
  private async modify(n: number, call: CallContext, patch: (object: Buffer) => void, skipIfMissing = false): Promise<void> {
    const key = this.key(n);
    const length = this.objectLength(n);
    const serverErrors = { count: 0 };
    for (let attempt = 1; ; attempt++) {
      const obj = await this.client.get(key, undefined, call);
      // An empty object is a hole: already zeroes.
      if ((!obj || obj.body.length === 0) && skipIfMissing) return;
      const buf = Buffer.alloc(length);
      if (obj) obj.body.copy(buf, 0, 0, Math.min(obj.body.length, length));
      patch(buf);
      const answer = await this.put(n, buf, obj ? { ifMatch: obj.etag } : { ifNoneMatch: '*' }, call, serverErrors);
      if (answer !== null) return;
      await this.conflict(key, attempt, 'read-modify-write');
    }
  }

  /**
   * A conditional PUT of object n: its new ETag, or null when refused. The object's remembered
   * ETag is forgotten until the store answers (a PUT that fails or times out may have happened or
   * not). radosgw answers a conditional PUT that loses a race inside the store (RADOS's ECANCELED
   * when the object changed between its check and its write) with 500: taken as a refusal, since
   * redoing the write is safe whatever happened (it only sets the request's own bytes); a store
   * that keeps failing still fails the request after a few tries.
   */
  private async put(n: number, body: Buffer, condition: PutCondition, call: CallContext, serverErrors: { count: number }): Promise<string | null> {
    this.etags.delete(n);
    try {
      const etag = await this.client.put(this.key(n), body, condition, call);
      if (etag !== null) this.remember(n, etag);
      return etag;
    } catch (e) {
      if (!(e instanceof S3Error) || e.status === undefined || e.status < 500 || ++serverErrors.count > SERVER_ERROR_ATTEMPTS) throw e;
      return null;
    }
  }

  /** Count a refused conditional PUT; throw after maxAttempts, else pause (random, growing with the attempts, so competing writers do not collide in step). */
  private async conflict(key: string, attempt: number, what: string): Promise<void> {
    this.conflicts++;
    this.onConflict(key);
    if (attempt >= this.maxAttempts) {
      throw new S3Error(`PUT ${this.client.where(key)}: still changed by another writer after ${attempt} ${what} attempts`);
    }
    await sleep(Math.random() * Math.min(1000, 4 * 2 ** Math.min(attempt, 8)));
  }

  /**
   * Replace object n by `body` (whole-object WRITE; an empty body for a hole), conditional on
   * the ETag this process last saw, or on the object's absence when it has not seen one. Refused:
   * the object is not as remembered — HEAD it and try again (a refusal of a remembered ETag is
   * another writer: counted and paused as a conflict; of a guess, it is not).
   */
  private async replace(n: number, body: Buffer, call: CallContext): Promise<void> {
    const key = this.key(n);
    const serverErrors = { count: 0 };
    for (let attempt = 1; ; attempt++) {
      const known = this.etags.get(n);
      if ((await this.put(n, body, known ? { ifMatch: known } : { ifNoneMatch: '*' }, call, serverErrors)) !== null) return;
      this.remember(n, await this.client.head(key, call));
      if (known !== undefined || attempt >= this.maxAttempts) await this.conflict(key, attempt, 'write');
    }
  }

  async write(offset: number, data: Buffer): Promise<void> {
    await eachPiece(this.pieces(offset, data.length), this.timeout, (p, call) =>
      this.locks.with(p.n, async () => {
        call.signal.throwIfAborted();
        const slice = data.subarray(p.at, p.at + p.length);
        if (this.whole(p)) await this.replace(p.n, slice, call);
        else await this.modify(p.n, call, (buf) => slice.copy(buf, p.within));
      }),
    );
  }

  /**
   * Zero a range: whole objects become holes (empty objects; with `keepAllocated`, objects of
   * zeroes); with `edges`, the parts of objects at either end are zeroed by read-modify-write
   * (WRITE_ZEROES), without them only whole objects go (TRIM, which may leave data).
   */
  async zero(offset: number, length: number, edges: boolean, keepAllocated = false): Promise<void> {
    await eachPiece(this.pieces(offset, length), this.timeout, (p, call) =>
      this.locks.with(p.n, async () => {
        call.signal.throwIfAborted();
        if (this.whole(p)) await this.replace(p.n, keepAllocated ? Buffer.alloc(p.length) : EMPTY, call);
        else if (edges) await this.modify(p.n, call, (buf) => buf.fill(0, p.within, p.within + p.length), true);
      }),
    );
  }

  /** The object number of a listed key, or undefined for a key that is not one of ours. */
  private objectOf(key: string): number | undefined {
    const rest = key.slice(this.prefix.length);
    return this.keyPattern.test(rest) ? Number(rest) : undefined;
  }

  /**
   * base:allocation from which objects exist: a missing or empty object is a hole that reads as
   * zeroes. The cost follows the objects stored, not the range: one LIST of at most `listKeys`
   * keys (and `max`, the extents the reply carries), holes are the runs between listed objects.
   * When the listing stopped short, the answer ends with the last object listed (a reply may
   * cover less than asked; the client asks again from there).
   */
  async extents(offset: number, length: number, max: number = Infinity): Promise<Extent[]> {
    const first = Math.floor(offset / this.objectSize);
    const last = Math.floor((offset + length - 1) / this.objectSize);
    const call: CallContext = { deadline: Date.now() + this.timeout, signal: new AbortController().signal };
    const want = Math.max(1, Math.min(this.listKeys, max));
    const listed: ListedObject[] = [];
    let after = first > 0 ? this.key(first - 1) : undefined;
    for (;;) {
      const keys = await this.client.list(this.prefix, after, this.key(last), call, want);
      for (const { key, size } of keys) {
        const n = this.objectOf(key);
        if (n !== undefined) listed.push({ n, size });
      }
      if (keys.length < want) return this.extentsOf(offset, length, listed, true, max);
      if (listed.length > 0) return this.extentsOf(offset, length, listed, false, max);
      // A full page of keys that are not ours (someone else's, under our prefix): nothing learnt yet.
      after = keys[keys.length - 1]!.key;
    }
  }

  /**
   * The extents of [offset, offset + length) given the objects listed in it, in order: data for
   * each object with bytes (neighbours merged), a hole for each run between them. `complete`: the
   * listing reached the end of the range; otherwise the answer ends with the last object listed.
   * At most `max` extents; the work is proportional to `listed`, whatever the range.
   */
  extentsOf(offset: number, length: number, listed: readonly ListedObject[], complete: boolean, max: number = Infinity): Extent[] {
    let end = offset + length;
    if (!complete && listed.length > 0) end = Math.min(end, listed[listed.length - 1]!.n * this.objectSize + this.objectLength(listed[listed.length - 1]!.n));
    const out: { length: number; flags: number }[] = [];
    const add = (len: number, flags: number) => {
      if (len <= 0) return;
      const prev = out[out.length - 1];
      if (prev && prev.flags === flags) prev.length += len;
      else out.push({ length: len, flags });
    };
    let pos = offset;
    for (const { n, size } of listed) {
      if (out.length > max) break;
      if (size === 0) continue;
      const start = Math.max(n * this.objectSize, pos);
      const stop = Math.min(n * this.objectSize + this.objectLength(n), end);
      if (start >= end) break;
      if (stop <= start) continue;
      add(start - pos, HOLE | ZERO);
      add(stop - start, 0);
      pos = stop;
    }
    if (out.length <= max) add(end - pos, HOLE | ZERO);
    return out.length > max ? out.slice(0, max) : out;
  }
}
