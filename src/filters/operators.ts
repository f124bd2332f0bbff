/**
 * The operational filters as rxjs operators, for exports served from the
 * request stream (`server.requests$.pipe(...)`, serveRequests): the same
 * option objects and the same engines as the Backend filters.
 *
 *  - delayRequests: each request goes on after its operation's delay
 *    (timers; requests overtake each other, as on a real slow disk).
 *  - injectErrors: some requests are failed with the chosen errno and go
 *    no further.
 *  - logRequests: a line when a request passes, another when it is
 *    answered (with the request's cookie as well as its id).
 *  - collectStats: counts, bytes, errors and latency from passing to answer.
 *
 * logRequests and collectStats see the answer by wrapping the request's
 * own `reply` / `fail`, so they must come before the handler in the pipe.
 */
import { finalize, mergeMap, Observable, of, timer, map, type OperatorFunction } from 'rxjs';
import type { NbdRequest } from '../api/request.js';
import { NbdRequestError } from '../api/errors.js';
import { delayFor, refusesFastZero, type DelayOptions } from './delay.js';
import { ErrorInjector, type ErrorOptions } from './error.js';
import { LogWriter, type LogOptions } from './log.js';
import { bytesOf, StatsCollector } from './stats.js';
import { OP_OF_TYPE, type OpCall } from './ops-common.js';

/** The request as the filters describe a call. */
export function callOf(req: NbdRequest): OpCall {
  const f = req.flags;
  const op = OP_OF_TYPE[req.type];
  return { op, offset: req.offset, count: op === 'flush' ? 0 : req.length, fua: f.fua, noHole: f.noHole, fastZero: f.fastZero, reqOne: f.reqOne };
}

/** Run `after(error?)` once the request is answered, by wrapping its reply and fail. */
function onAnswer(req: NbdRequest, after: (error?: unknown) => void): void {
  const reply = req.reply.bind(req);
  const fail = req.fail.bind(req);
  const r = req as { reply: NbdRequest['reply']; fail: NbdRequest['fail'] };
  r.reply = (data) => {
    reply(data);
    after();
  };
  r.fail = (error, message) => {
    fail(error, message);
    after(typeof error === 'object' ? error : new NbdRequestError(error));
  };
}

export function delayRequests(options: DelayOptions): OperatorFunction<NbdRequest, NbdRequest> {
  return mergeMap((req) => {
    const call = callOf(req);
    if (refusesFastZero(options, call)) {
      req.fail('ENOTSUP', 'delay: fast zero refused (delay-fast-zero=false)');
      return [];
    }
    const ms = delayFor(options, call.op);
    return ms > 0 ? timer(ms).pipe(map(() => req)) : of(req);
  });
}

export function injectErrors(options: ErrorOptions | ErrorInjector): OperatorFunction<NbdRequest, NbdRequest> {
  const injector = options instanceof ErrorInjector ? options : new ErrorInjector(options);
  return (source) =>
    new Observable<NbdRequest>((subscriber) =>
      source.subscribe({
        next: (req) => {
          const errno = injector.decide(callOf(req));
          if (errno === undefined) subscriber.next(req);
          else req.fail(errno, `error: injecting ${errno} into ${callOf(req).op}`);
        },
        error: (e) => subscriber.error(e),
        complete: () => subscriber.complete(),
      }),
    );
}

/**
 * Log each request and its answer. Given options, the operator opens the
 * file and closes it when the stream ends; given a LogWriter (to share one
 * file with log filters or other streams), closing it is the caller's.
 */
export function logRequests(options: LogOptions | LogWriter): OperatorFunction<NbdRequest, NbdRequest> {
  const owned = !(options instanceof LogWriter);
  const writer = options instanceof LogWriter ? options : new LogWriter(options);
  return (source) =>
    source.pipe(
      map((req) => {
        let settle!: (error?: unknown) => void;
        const answered = new Promise<void>((resolve, reject) => (settle = (e) => (e === undefined ? resolve() : reject(e))));
        // The reply line is written when `answered` settles; its rejection is only the failed answer, already logged.
        (writer.around(req.connection.id, callOf(req), () => answered, ` cookie=${req.cookie}`) as Promise<void>).catch(() => {});
        onAnswer(req, settle);
        return req;
      }),
      finalize(() => owned && writer.close()),
    );
}

export function collectStats(collector: StatsCollector): OperatorFunction<NbdRequest, NbdRequest> {
  return map((req) => {
    const call = callOf(req);
    const start = process.hrtime.bigint();
    onAnswer(req, (error) => collector.record(call.op, bytesOf(call.op, call.count), error !== undefined, process.hrtime.bigint() - start));
    return req;
  });
}
