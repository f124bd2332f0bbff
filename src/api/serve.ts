/**
 * Serving requests from a Backend: the emulations nbdkit applies (FUA via
 * flush, WRITE_ZEROES via write, CACHE as a no-op, synthesised extents),
 * errors mapped to errnos, and rxjs operators with bounded concurrency:
 * serveBackend (a Backend) and serveRequests (a handler of your own).
 */
import { mergeMap, Observable, type OperatorFunction } from 'rxjs';
import { BASE_ALLOCATION, CMD, CMD_FLAG, ERRNO, hostErrnoToNbd } from '../protocol/constants.js';
import { NbdError, NbdRequestError } from './errors.js';
import type { Backend, Capabilities } from './backend.js';
import { backendCapabilities } from './backend.js';
import type { NbdRequest } from './request.js';
import type { ReadSegment } from '../protocol/replies.js';
import type { Logger } from '../transport/logger.js';
import { isThenable, writeZeroChunks } from '../plugins/common.js';

/** Run `fn`; continue with `ok` synchronously when it returned a plain value. */
function step<T>(fn: () => T | PromiseLike<T>, ok: (v: T) => void | Promise<void>, fail: (e: unknown) => void): void | Promise<void> {
  let r: T | PromiseLike<T>;
  try {
    r = fn();
  } catch (e) {
    fail(e);
    return;
  }
  if (isThenable<T>(r)) {
    return Promise.resolve(r).then(
      (v) => {
        try {
          return ok(v);
        } catch (e) {
          fail(e);
        }
      },
      fail,
    );
  }
  try {
    return ok(r);
  } catch (e) {
    fail(e);
  }
}

/** Emulated WRITE_ZEROES: write zero buffers in 1 MiB pieces (as nbdkit emulates zeroing). */
async function writeZeroes(backend: Backend, offset: number, length: number, fua: boolean): Promise<void> {
  await writeZeroChunks((o, data) => backend.write!(o, data, NO_FUA), offset, length);
  if (fua && backend.flush) await backend.flush();
}

const NO_FUA: { readonly fua: boolean } = Object.freeze({ fua: false });
const WITH_FUA: { readonly fua: boolean } = Object.freeze({ fua: true });

/**
 * Whether a backend's error is a deliberate answer rather than a fault: an
 * NbdRequestError (the backend chose the errno), or a host error whose code
 * has an NBD errno of its own (EROFS, ENOSPC, … as hostErrnoToNbd maps them).
 */
function isExpectedFailure(err: Error): boolean {
  if (err instanceof NbdRequestError) return true;
  const code = (err as NodeJS.ErrnoException).code;
  return typeof code === 'string' && (code === 'EIO' || hostErrnoToNbd(code) !== ERRNO.NBD_EIO);
}

/** An error on one line: its name and message, and where it was thrown (the stack's top frame) when known. */
function describeError(err: Error): string {
  const at = err.stack?.split('\n').find((l) => l.trimStart().startsWith('at '));
  return at ? `${String(err)} (${at.trim()})` : String(err);
}

/**
 * Fail a request with the errno its error maps to. Expected outcomes are
 * logged at debug level; anything else (a backend bug, an unexpected
 * exception) gets one error line naming the connection, the export and the
 * request, since the client only ever sees EIO.
 */
function failRequest(req: NbdRequest, e: unknown, logger: Logger | undefined): void {
  const where = `${req.connection.peer}: export "${req.export.name}": ${req.toString()}`;
  if (req.isAnswered) {
    logger?.error(`${where}: ${String(e)}`);
    return;
  }
  const err = e instanceof Error ? e : new Error(String(e));
  if (isExpectedFailure(err)) logger?.debug?.(`${where} failed: ${err.message}`);
  else logger?.error(`${where} failed with EIO: backend error: ${e instanceof Error ? describeError(e) : `non-Error thrown: ${String(e)}`}`);
  req.fail(err);
}

/**
 * The asynchronous tail of the fast paths: answer with what the backend's
 * promise resolves to (READ data; nothing for WRITE, whose `reply` ignores
 * it), or fail with what it rejects with.
 */
function replyWhenSettled(req: NbdRequest, r: PromiseLike<unknown>, logger: Logger | undefined): Promise<void> {
  return Promise.resolve(r).then(
    (data) => {
      try {
        req.reply(data as Buffer | readonly ReadSegment[] | undefined);
      } catch (e) {
        failRequest(req, e, logger);
      }
    },
    (e: unknown) => failRequest(req, e, logger),
  );
}

/** READ into the buffer the request lent (Backend.readInto), then answer with it; synchronous when the backend is. */
function readIntoLent(req: NbdRequest, backend: Backend, into: Buffer, logger: Logger | undefined): void | Promise<void> {
  let r: void | PromiseLike<void>;
  try {
    r = backend.readInto!(req.offset, into);
    if (!isThenable(r)) {
      req.reply(into);
      return;
    }
  } catch (e) {
    failRequest(req, e, logger);
    return;
  }
  return Promise.resolve(r).then(
    () => {
      try {
        req.reply(into);
      } catch (e) {
        failRequest(req, e, logger);
      }
    },
    (e: unknown) => failRequest(req, e, logger),
  );
}

/**
 * A WRITE's asynchronous tail: once the backend's promise settles, either
 * way, the payload's lifetime is over (Backend.write) and it is released;
 * then the request is answered.
 */
function releaseWhenSettled(req: NbdRequest, r: PromiseLike<unknown>, logger: Logger | undefined): Promise<void> {
  return Promise.resolve(r).then(
    () => {
      req.releasePayload();
      try {
        req.reply();
      } catch (e) {
        failRequest(req, e, logger);
      }
    },
    (e: unknown) => {
      req.releasePayload();
      failRequest(req, e, logger);
    },
  );
}

/**
 * Answer one request from a backend. Returns a promise only when the
 * backend was asynchronous; synchronous backends are answered inline.
 * Never throws: every failure becomes an errno reply.
 *
 * READ, and WRITE without emulated FUA, take a fast path that allocates
 * no closures when the backend answers synchronously; everything else
 * goes through the general path below. Both behave the same.
 */
export function handleWithBackend(req: NbdRequest, backend: Backend, caps: Capabilities, logger?: Logger): void | Promise<void> {
  const command = req.command;
  if (command === CMD.NBD_CMD_READ) {
    // A backend that fills buffers (nbdkit's pread) gets one the server lends and takes back once written.
    const into = backend.readInto !== undefined ? req.readBuffer() : undefined;
    if (into !== undefined) return readIntoLent(req, backend, into, logger);
    let r: ReturnType<Backend['read']>;
    try {
      r = backend.read(req.offset, req.length);
      if (!isThenable(r)) {
        req.reply(r as Buffer | readonly ReadSegment[]);
        return;
      }
    } catch (e) {
      failRequest(req, e, logger);
      return;
    }
    return replyWhenSettled(req, r, logger);
  }
  if (command === CMD.NBD_CMD_WRITE) {
    const fua = (req.rawFlags & CMD_FLAG.NBD_CMD_FLAG_FUA) !== 0;
    // Zero-copy WRITE: the whole payload is in memory the backend handed out (writeTargets): apply it, then reply.
    if (req.isPlaced) {
      const fail = (e: unknown) => failRequest(req, e, logger);
      // FUA (placed only with native FUA): durable before the reply (transmission.fua-durable), via flush after the commit.
      const done = fua && backend.flush ? () => step(() => backend.flush!(), () => req.reply(), fail) : () => req.reply();
      return step(() => req.commitPlacement(), done, fail);
    }
    if (!fua || caps.fua !== 'emulate') {
      let r: void | PromiseLike<void>;
      try {
        const o = fua && caps.fua === 'native' ? WITH_FUA : NO_FUA;
        const parts = backend.writev ? req.dataParts : undefined;
        r = parts ? backend.writev!(req.offset, parts, o) : backend.write!(req.offset, req.data!, o);
        if (!isThenable(r)) {
          // write returned: the payload's lifetime is over (Backend.write), its read memory may be reused.
          req.releasePayload();
          req.reply();
          return;
        }
      } catch (e) {
        req.releasePayload();
        failRequest(req, e, logger);
        return;
      }
      return releaseWhenSettled(req, r, logger);
    }
  }
  return handleGeneral(req, backend, caps, logger);
}

function handleGeneral(req: NbdRequest, backend: Backend, caps: Capabilities, logger?: Logger): void | Promise<void> {
  const fail = (e: unknown) => failRequest(req, e, logger);
  const done = () => req.reply();
  const fua = req.flags.fua;
  // FUA emulated by a flush after the operation (nbdkit NBDKIT_FUA_EMULATE).
  const afterWrite = () => (fua && caps.fua === 'emulate' ? step(() => backend.flush!(), done, fail) : done());
  switch (req.type) {
    case 'read':
      return step(() => backend.read(req.offset, req.length), (data) => req.reply(data), fail);
    case 'write':
      // The payload is released once write returns or settles, before an emulated FUA's flush.
      return step(
        () => backend.write!(req.offset, req.data!, { fua: fua && caps.fua === 'native' }),
        () => {
          req.releasePayload();
          return afterWrite();
        },
        (e) => {
          req.releasePayload();
          fail(e);
        },
      );
    case 'flush':
      return backend.flush ? step(() => backend.flush!(), done, fail) : done();
    case 'trim':
      return step(() => backend.trim!(req.offset, req.length, { fua: fua && caps.fua === 'native' }), afterWrite, fail);
    case 'writeZeroes':
      if (caps.zero === 'emulate') {
        // transmission.fast-zero: emulated zeroing is not fast: fail FAST_ZERO at once with ENOTSUP.
        if (req.flags.fastZero) return req.fail(ERRNO.NBD_ENOTSUP, 'zeroing is emulated by writing');
        return step(() => writeZeroes(backend, req.offset, req.length, fua && caps.fua !== 'none'), done, fail);
      }
      return step(
        () => backend.zero!(req.offset, req.length, { fua: fua && caps.fua === 'native', noHole: req.flags.noHole, fastZero: req.flags.fastZero }),
        afterWrite,
        fail,
      );
    case 'cache':
      // CACHE is a hint: without a native cache it is a no-op (transmission.cache-hint).
      return backend.cache ? step(() => backend.cache!(req.offset, req.length), done, fail) : done();
    case 'blockStatus': {
      const reqOne = req.flags.reqOne;
      // No extents callback: reply() without extents synthesises one allocated-data extent, as nbdkit does.
      if (!backend.extents) return req.reply();
      return step(
        () => backend.extents!(req.offset, req.length, { reqOne, context: BASE_ALLOCATION, maxExtents: req.maxExtents }),
        // reply() makes the extents fit the reply rules (normalizeExtents).
        (extents) => req.reply(extents),
        fail,
      );
    }
  }
}

/**
 * An rxjs operator that serves a stream of requests from a backend with at
 * most `concurrency` requests at once. Emits each request once answered.
 *
 *   server.requests$.pipe(serveBackend(myBackend, { concurrency: 16 })).subscribe();
 */
export function serveBackend(
  backend: Backend,
  options: { concurrency?: number; readOnly?: boolean; logger?: Logger } = {},
): OperatorFunction<NbdRequest, NbdRequest> {
  const caps = backendCapabilities(backend, options.readOnly);
  return mergeMap(async (req: NbdRequest) => {
    await handleWithBackend(req, backend, caps, options.logger);
    return req;
  }, options.concurrency ?? 32);
}

/**
 * Answers one request from `serveRequests`: answer it (reply / fail) inline,
 * or return a promise that settles once it is done. What it returns or
 * resolves to is ignored.
 */
export type RequestHandler = (req: NbdRequest) => unknown;

export interface ServeRequestsOptions {
  /** Handler calls whose promises have not settled yet, at most (default 32). Later requests wait, first come first served. */
  concurrency?: number;
  /** Where a handler's unexpected error is logged (once, at error level) when it becomes an EIO reply. */
  logger?: Logger;
}

/**
 * An rxjs operator that serves `server.requests$` with `handler`, as
 * `mergeMap(async (req) => …, concurrency)` does, at a lower cost per
 * request: no inner Observable or subscription per request, no promise
 * when the handler is synchronous, one `then` when it returns a promise.
 *
 * - At most `concurrency` handler calls are unfinished at once (a
 *   synchronous handler finishes when it returns, an asynchronous one when
 *   its promise settles); the rest wait in arrival order.
 * - A handler that throws or rejects does not end the stream: its request
 *   is failed with the errno the error carries (NbdRequestError, a host
 *   errno such as ENOSPC), else EIO, as `serveBackend` does; an error after
 *   the request was answered is only logged.
 * - Each request is emitted once its handler has finished, in the order
 *   they finish (not arrival order).
 * - Completes when the source completes and every handler has finished;
 *   a source error is passed on at once. Requests still waiting when the
 *   subscriber unsubscribes are failed with EIO, so no client waits for
 *   an answer that will never come.
 *
 *   server.requests$.pipe(serveRequests((req) => { … req.reply(…) … }, { concurrency: 64 })).subscribe();
 */
export function serveRequests(handler: RequestHandler, options: ServeRequestsOptions = {}): OperatorFunction<NbdRequest, NbdRequest> {
  const limit = options.concurrency ?? 32;
  if (!(limit >= 1)) throw new NbdError('NBD_ERR_CONFIG', `serveRequests: concurrency must be at least 1 (got ${String(options.concurrency)})`);
  const logger = options.logger;
  return (source) =>
    new Observable<NbdRequest>((subscriber) => {
      let active = 0;
      // Waiting requests: a FIFO as an array and a read index (no shift per request).
      let waiting: NbdRequest[] = [];
      let head = 0;
      let sourceDone = false;

      const finished = (req: NbdRequest): void => {
        active--;
        subscriber.next(req);
        drain();
      };
      const run = (req: NbdRequest): void => {
        active++;
        let r: unknown;
        try {
          r = handler(req);
        } catch (e) {
          failRequest(req, e, logger);
          finished(req);
          return;
        }
        if (isThenable(r)) {
          r.then(
            () => finished(req),
            (e: unknown) => {
              failRequest(req, e, logger);
              finished(req);
            },
          );
          return;
        }
        finished(req);
      };
      // A synchronous handler finishes inside run(), which calls drain() again: the outer loop
      // goes on instead (no recursion as deep as the queue is long).
      let draining = false;
      const drain = (): void => {
        if (draining) return;
        draining = true;
        try {
          while (active < limit && head < waiting.length) {
            const req = waiting[head]!;
            waiting[head++] = undefined as unknown as NbdRequest; // let it be collected
            if (head === waiting.length) {
              waiting = [];
              head = 0;
            }
            run(req);
          }
        } finally {
          draining = false;
        }
        if (sourceDone && active === 0 && head === waiting.length) subscriber.complete();
      };

      const sub = source.subscribe({
        next(req) {
          if (active < limit && head === waiting.length) run(req);
          else waiting.push(req);
        },
        error(err) {
          subscriber.error(err);
        },
        complete() {
          sourceDone = true;
          drain();
        },
      });
      return () => {
        sub.unsubscribe();
        for (let i = head; i < waiting.length; i++) {
          const req = waiting[i]!;
          try {
            if (!req.isAnswered) req.fail('EIO', 'the request stream was unsubscribed before this request was served');
          } catch (e) {
            logger?.error(`${req.connection.peer}: ${req.toString()}: failing it after unsubscribe: ${String(e)}`);
          }
        }
        waiting = [];
        head = 0;
      };
    });
}
