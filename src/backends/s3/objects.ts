/**
 * The export as fixed-size objects in an S3 bucket: object n holds bytes
 * [n·objectSize, (n+1)·objectSize) at key prefix + n (16 digits, zero-padded,
 * so key order is offset order and ListObjectsV2 can walk a range). A missing
 * object is zeroes.
 *
 * Safety across connections and servers: a write that covers a whole object
 * replaces it outright (its result does not depend on what was there, so
 * last-writer-wins is the NBD meaning of two overlapping writes in flight). A
 * write that covers part of an object is read-modify-write, and its PUT is
 * conditional on what it read: `If-Match: <etag>` or, when the object did not
 * exist, `If-None-Match: *`. If another writer (another connection, another
 * server process) changed the object in between, the store refuses (412) and
 * the whole read-modify-write is redone after a random pause, so no update is
 * ever lost. Within one process, operations on the same object also queue
 * behind each other, so our own connections do not make each other retry.
 */
import type { Extent, ReadSegment } from '../../api/backend.js';
import { S3Client, S3Error } from './client.js';
import { BlockLocks } from '../../plugins/common.js';

const HOLE = 1;
const ZERO = 2;
/** Digits of an object's number in its key. */
const DIGITS = 16;
/** 5xx answers to a conditional PUT redone at most (see modify). */
const SERVER_ERROR_ATTEMPTS = 5;

/** One object's part of a request: object n, bytes [within, within + length) of it, at `at` in the request. */
interface Piece {
  readonly n: number;
  readonly within: number;
  readonly length: number;
  readonly at: number;
}

/** Wait for every promise (a failed piece must not end the request while others still use its buffer), then throw the first failure. */
async function settleAll<T>(work: Promise<T>[]): Promise<T[]> {
  const results = await Promise.allSettled(work);
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
  return results.map((r) => (r as PromiseFulfilledResult<T>).value);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class ObjectStore {
  /** Read-modify-write cycles of this process on one object run one after another. */
  private readonly locks = new BlockLocks();
  private readonly keyPattern: RegExp;
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

  async read(offset: number, length: number): Promise<ReadSegment[]> {
    const parts = await settleAll(
      this.pieces(offset, length).map(async (p): Promise<ReadSegment> => {
        const obj = await this.client.get(this.key(p.n), this.whole(p) ? undefined : { from: p.within, length: p.length });
        if (!obj) return { hole: p.length };
        if (obj.body.length === p.length) return { data: obj.body };
        // A shorter object than ours (written by someone else): the rest reads as zeroes.
        const data = Buffer.alloc(p.length);
        obj.body.copy(data, 0, 0, Math.min(obj.body.length, p.length));
        return { data };
      }),
    );
    return parts;
  }

  /**
   * Read-modify-write object n with a conditional PUT, redone while another writer
   * changes the object under us. `skipIfMissing`: a missing object needs no change.
   */
  private async modify(n: number, patch: (object: Buffer) => void, skipIfMissing = false): Promise<void> {
    const key = this.key(n);
    const length = this.objectLength(n);
    let serverErrors = 0;
    for (let attempt = 1; ; attempt++) {
      const obj = await this.client.get(key);
      if (!obj && skipIfMissing) return;
      const buf = Buffer.alloc(length);
      if (obj) obj.body.copy(buf, 0, 0, Math.min(obj.body.length, length));
      patch(buf);
      let answer: 'ok' | 'conflict';
      try {
        answer = await this.client.put(key, buf, obj ? { ifMatch: obj.etag } : { ifNoneMatch: '*' });
      } catch (e) {
        // radosgw answers a conditional PUT that loses a race inside the store (RADOS's ECANCELED
        // when the object changed between its check and its write) with 500. Redoing the whole
        // read-modify-write is safe whatever happened, since the patch only sets our bytes; a store
        // that keeps failing still fails the request after a few tries.
        if (!(e instanceof S3Error) || e.status === undefined || e.status < 500 || ++serverErrors > SERVER_ERROR_ATTEMPTS) throw e;
        answer = 'conflict';
      }
      if (answer === 'ok') return;
      this.conflicts++;
      this.onConflict(key);
      if (attempt >= this.maxAttempts) {
        throw new S3Error(`PUT ${this.client.where(key)}: still changed by another writer after ${attempt} read-modify-write attempts`);
      }
      // Random pause, growing with the attempts, so competing writers do not collide in step.
      await sleep(Math.random() * Math.min(1000, 4 * 2 ** Math.min(attempt, 8)));
    }
  }

  async write(offset: number, data: Buffer): Promise<void> {
    await settleAll(
      this.pieces(offset, data.length).map((p) =>
        this.locks.with(p.n, async () => {
          const slice = data.subarray(p.at, p.at + p.length);
          if (this.whole(p)) {
            await this.client.put(this.key(p.n), slice);
          } else {
            await this.modify(p.n, (buf) => slice.copy(buf, p.within));
          }
        }),
      ),
    );
  }

  /**
   * Zero a range: whole objects are deleted (or, with `keepAllocated`, replaced by zeroes);
   * with `edges`, the parts of objects at either end are zeroed by read-modify-write
   * (WRITE_ZEROES), without them only whole objects go (TRIM, which may leave data).
   */
  async zero(offset: number, length: number, edges: boolean, keepAllocated = false): Promise<void> {
    await settleAll(
      this.pieces(offset, length).map((p) =>
        this.locks.with(p.n, async () => {
          if (this.whole(p)) {
            if (keepAllocated) await this.client.put(this.key(p.n), Buffer.alloc(p.length));
            else await this.client.delete(this.key(p.n));
          } else if (edges) {
            await this.modify(p.n, (buf) => buf.fill(0, p.within, p.within + p.length), true);
          }
        }),
      ),
    );
  }

  /** base:allocation from which objects exist: a missing object is a hole that reads as zeroes. */
  async extents(offset: number, length: number): Promise<Extent[]> {
    const first = Math.floor(offset / this.objectSize);
    const last = Math.floor((offset + length - 1) / this.objectSize);
    const keys = await this.client.list(this.prefix, first > 0 ? this.key(first - 1) : undefined, this.key(last));
    const present = new Set<number>();
    for (const k of keys) {
      const rest = k.slice(this.prefix.length);
      if (this.keyPattern.test(rest)) present.add(Number(rest));
    }
    const out: { length: number; flags: number }[] = [];
    for (const p of this.pieces(offset, length)) {
      const flags = present.has(p.n) ? 0 : HOLE | ZERO;
      const prev = out[out.length - 1];
      if (prev && prev.flags === flags) prev.length += p.length;
      else out.push({ length: p.length, flags });
    }
    return out;
  }
}
