/**
 * The retry filter (nbdkit-retry-filter): a failed request is tried again,
 * up to `retries` times, after `delay` (doubling each time when
 * `exponential`), before its error reaches the client. Between tries the
 * backend may be reopened, when there is a way to (see `Reopen`), since a
 * request that failed because a connection below broke will fail again on
 * the same handle. With `readonly`, the first failure makes the rest of
 * the connection read-only (writes fail with EPERM at once), as nbdkit's
 * retry-readonly.
 *
 * Waiting is on timers: other requests go on meanwhile. A WRITE's payload
 * stays valid for all the tries, since the write has not returned yet.
 *
 * Scope: 'connection' — the read-only switch and a reopened backend are
 * the connection's, as nbdkit reopens the plugin for one connection.
 */
import type { Backend, MaybePromise } from '../api/backend.js';
import type { Filter } from '../api/filter.js';
import { NbdRequestError } from '../api/errors.js';
import { ERRNO } from '../protocol/constants.js';
import { interceptOps, sleep } from './ops-common.js';

/**
 * How to get a fresh backend after a failure: given the one that failed,
 * return its replacement (which this connection then uses). The retry
 * filter closes the replacements it opened when the connection ends, never
 * the original.
 */
export type Reopen = (failed: Backend) => MaybePromise<Backend>;

/**
 * A backend that can reopen itself: the retry filter calls `reopen()` when
 * it sits directly above such a backend and no `reopen` option is given.
 * (Filters between the two do not forward `reopen`: use the option then.)
 */
export interface ReopenableBackend extends Backend {
  reopen(): MaybePromise<Backend>;
}

export interface RetryOptions {
  /** Tries after the first (default 5). 0 turns retrying off. */
  readonly retries?: number;
  /** Milliseconds before the first retry (default 2000). */
  readonly delay?: number;
  /** Double the delay after each retry (default true). */
  readonly exponential?: boolean;
  /** After a failure, fail writes of this connection at once (default false). */
  readonly readonly?: boolean;
  readonly reopen?: Reopen;
}

const WRITES = new Set(['write', 'zero', 'trim']);

export function retryFilter(options: RetryOptions = {}): Filter {
  const retries = options.retries ?? 5;
  const firstDelay = options.delay ?? 2000;
  if (!(Number.isSafeInteger(retries) && retries >= 0)) throw new RangeError('retry filter: retries must be an integer ≥ 0');
  if (!(Number.isFinite(firstDelay) && firstDelay >= 0)) throw new RangeError('retry filter: delay must be ≥ 0 milliseconds');
  const exponential = options.exponential ?? true;
  return {
    name: 'retry',
    scope: 'connection',
    wrap: (next, ctx) => {
      let current = next;
      let readOnly = false;
      const opened: Backend[] = [];
      const where = `retry filter: export "${ctx.export}"${ctx.connection ? `: ${ctx.connection.peer}` : ''}`;
      const reopen: Reopen | undefined = options.reopen ?? (typeof (next as Partial<ReopenableBackend>).reopen === 'function' ? () => (next as ReopenableBackend).reopen() : undefined);
      ctx.onClose(async () => {
        for (const b of opened) await b.close?.();
      });
      return interceptOps(next, async (call, invoke) => {
        let delay = firstDelay;
        for (let attempt = 0; ; attempt++) {
          if (readOnly && WRITES.has(call.op)) throw new NbdRequestError('EPERM', `${where}: read-only after an earlier failure (retry-readonly)`);
          try {
            return await invoke(current);
          } catch (e) {
            // A refused fast zero is an answer, not a fault: the client falls back to writing.
            const refusedFastZero = call.fastZero === true && e instanceof NbdRequestError && e.errno === ERRNO.NBD_ENOTSUP;
            if (attempt >= retries || refusedFastZero) throw e;
            ctx.logger.warn(`${where}: ${call.op} at ${call.offset} failed (${(e as Error).message}); retry ${attempt + 1} of ${retries} in ${delay} ms`);
            if (options.readonly) readOnly = true;
            await sleep(delay);
            if (exponential) delay *= 2;
            if (reopen) {
              try {
                const fresh = await reopen(current);
                if (fresh !== current) opened.push(fresh);
                current = fresh;
              } catch (err) {
                ctx.logger.warn(`${where}: reopen failed: ${(err as Error).message}`);
              }
            }
          }
        }
      });
    },
  };
}
