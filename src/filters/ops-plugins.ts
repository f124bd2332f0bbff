/**
 * Command-line descriptors of the operational filters (delay, error, log,
 * stats, rate, retry), with nbdkit's parameter names: each turns checked
 * `key=value` parameters into the filter's options.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { ErrnoName } from '../protocol/constants.js';
import { ParamError, type ParamSpec, type Params } from '../plugins/params.js';
import type { FilterPlugin } from '../plugins/registry.js';
import { parseBitRate, parseDuration, parseErrno, parseProbability, type OpName } from './ops-common.js';
import type { ErrorOptions, ErrorRule } from './error.js';

const str = (name: string, summary: string): ParamSpec => ({ name, kind: 'string', summary });

/** Convert a parameter with `parse`, as a ParamError naming filter and key. */
function parsed<T>(filter: string, params: Params, key: string, parse: (text: string) => T): T | undefined {
  const v = params[key];
  if (v === undefined) return undefined;
  try {
    return parse(String(v));
  } catch (e) {
    throw new ParamError(`${filter}: ${key}=${String(v)}: ${(e as Error).message}`);
  }
}

const DELAY_KEYS: ReadonlyArray<[string, OpName]> = [
  ['delay-read', 'read'],
  ['delay-write', 'write'],
  ['delay-zero', 'zero'],
  ['delay-trim', 'trim'],
  ['delay-extents', 'extents'],
  ['delay-cache', 'cache'],
  ['delay-flush', 'flush'],
];

export const delayPlugin: FilterPlugin = {
  name: 'delay',
  summary: 'delay requests by a fixed time per operation (SECS or NNms)',
  params: [
    str('rdelay', 'delay reads (same as delay-read)'),
    str('wdelay', 'delay writes, zeroes and trims'),
    ...DELAY_KEYS.map(([k, op]) => str(k, `delay ${op} requests`)),
    { name: 'delay-fast-zero', kind: 'boolean', summary: 'false: fail fast-zero requests at once with ENOTSUP (default true)' },
  ],
  async create(params) {
    const ms = (key: string) => parsed('delay', params, key, parseDuration);
    const o: Record<string, number | boolean | undefined> = {};
    const w = ms('wdelay');
    o.read = ms('rdelay');
    o.write = o.zero = o.trim = w;
    // The specific keys win over rdelay / wdelay.
    for (const [key, op] of DELAY_KEYS) o[op] = ms(key) ?? o[op];
    if (params['delay-fast-zero'] !== undefined) o.fastZero = params['delay-fast-zero'] as boolean;
    const { delayFilter } = await import('./delay.js');
    return delayFilter(o);
  },
};

/** nbdkit's names for the per-operation error keys. */
const ERROR_OPS: ReadonlyArray<[string, OpName]> = [
  ['pread', 'read'],
  ['pwrite', 'write'],
  ['zero', 'zero'],
  ['trim', 'trim'],
  ['extents', 'extents'],
  ['cache', 'cache'],
  ['flush', 'flush'],
];

function errorRule(params: Params, prefix: string): ErrorRule | undefined {
  const rule: { error?: ErrnoName; rate?: number; file?: string } = {};
  rule.error = parsed('error', params, prefix, parseErrno);
  rule.rate = parsed('error', params, `${prefix}-rate`, parseProbability);
  rule.file = params[`${prefix}-file`] as string | undefined;
  return rule.error === undefined && rule.rate === undefined && rule.file === undefined ? undefined : rule;
}

export const errorPlugin: FilterPlugin = {
  name: 'error',
  summary: 'inject errors by rate, operation, file presence and byte range',
  params: [
    str('error', 'errno to inject: EIO (default), EPERM, ENOMEM, EINVAL, ENOSPC, ESHUTDOWN, …'),
    str('error-rate', 'probability per request: N% or 0..1 (default 0)'),
    { name: 'error-file', kind: 'path', summary: 'inject only while this file exists' },
    ...ERROR_OPS.flatMap(([k]): ParamSpec[] => [
      str(`error-${k}`, `errno for ${k} requests`),
      str(`error-${k}-rate`, `rate for ${k} requests`),
      { name: `error-${k}-file`, kind: 'path', summary: `file gating ${k} errors` },
    ]),
    { name: 'error-offset', kind: 'size', summary: 'only requests touching bytes from here (ours)' },
    { name: 'error-length', kind: 'size', summary: 'only requests touching this many bytes from error-offset (ours)' },
    { name: 'error-seed', kind: 'integer', summary: 'seed: the same seed and requests give the same errors' },
  ],
  async create(params, context) {
    const o: Record<string, unknown> = { ...errorRule(params, 'error') };
    // One line per injected error, in nbdkit's words ("injecting EIO error into pread").
    const key = new Map(ERROR_OPS.map(([k, op]) => [op, k]));
    o.onInject = (errno: ErrnoName, op: OpName) => context.logger.error(`error filter: injecting ${errno} error into ${key.get(op) ?? op}`);
    for (const [key, op] of ERROR_OPS) o[op] = errorRule(params, `error-${key}`);
    o.offset = params['error-offset'];
    o.length = params['error-length'];
    o.seed = params['error-seed'];
    const { errorFilter } = await import('./error.js');
    return errorFilter(o as ErrorOptions);
  },
};

export const logPlugin: FilterPlugin = {
  name: 'log',
  summary: 'log every request and reply to a file (nbdkit log format)',
  params: [
    { name: 'logfile', kind: 'path', summary: 'the log file, or - for stderr (none: the filter is inactive, as in nbdkit)' },
    { name: 'logappend', kind: 'boolean', summary: 'append instead of truncating (default false)' },
  ],
  async create(params, context) {
    // nbdkit: "If neither [logfile nor logscript] then the filter is inactive."
    if (params.logfile === undefined) return { name: 'log', scope: 'shared', wrap: (next) => next };
    const { logFilter } = await import('./log.js');
    try {
      return logFilter({ file: params.logfile as string, append: params.logappend === true, logger: context.logger });
    } catch (e) {
      throw new ParamError(`log: logfile=${String(params.logfile)}: ${(e as Error).message}`);
    }
  },
};

export const statsPlugin: FilterPlugin = {
  name: 'stats',
  summary: 'count requests, bytes, errors and latency; write them at exit and on SIGUSR1',
  params: [
    { name: 'statsfile', kind: 'path', summary: 'where the stats are written', required: true },
    { name: 'statsappend', kind: 'boolean', summary: 'append instead of replacing (default false)' },
    { name: 'statssignal', kind: 'string', summary: 'signal that writes the stats now (default SIGUSR1; none: no signal)' },
  ],
  async create(params, context) {
    const sig = (params.statssignal as string | undefined) ?? 'SIGUSR1';
    if (sig !== 'none' && !/^SIG[A-Z0-9]+$/.test(sig)) throw new ParamError(`stats: statssignal=${sig}: expected a signal name such as SIGUSR1, or none`);
    const { statsFilter } = await import('./stats.js');
    const file = params.statsfile as string;
    try {
      // nbdkit opens the file at start: refuse an unwritable place now rather than at exit.
      fs.accessSync(path.dirname(path.resolve(file)), fs.constants.W_OK);
    } catch (e) {
      throw new ParamError(`stats: statsfile=${file}: ${(e as Error).message}`);
    }
    return statsFilter({ file: params.statsfile as string, append: params.statsappend === true, signal: sig === 'none' ? null : (sig as NodeJS.Signals), logger: context.logger });
  },
};

export const ratePlugin: FilterPlugin = {
  name: 'rate',
  summary: 'limit read and write bandwidth (bits per second, K/M/G suffixes)',
  params: [
    str('rate', 'total bits per second across connections'),
    str('connection-rate', 'bits per second for each connection'),
    { name: 'rate-file', kind: 'path', summary: 'file holding the total rate, re-read while serving' },
    { name: 'connection-rate-file', kind: 'path', summary: 'file holding the per-connection rate' },
    { name: 'burstiness', kind: 'number', summary: 'bucket size in seconds of the rate (default 2)' },
  ],
  async create(params) {
    const { rateFilter } = await import('./rate.js');
    try {
      return rateFilter({
        rate: parsed('rate', params, 'rate', parseBitRate),
        connectionRate: parsed('rate', params, 'connection-rate', parseBitRate),
        rateFile: params['rate-file'] as string | undefined,
        connectionRateFile: params['connection-rate-file'] as string | undefined,
        burstiness: params.burstiness as number | undefined,
      });
    } catch (e) {
      if (e instanceof ParamError) throw e;
      throw new ParamError(`rate: ${(e as Error).message}`);
    }
  },
};

export const retryPlugin: FilterPlugin = {
  name: 'retry',
  summary: 'retry failed requests with a delay (exponential back-off by default)',
  params: [
    { name: 'retries', kind: 'integer', summary: 'tries after the first (default 5)' },
    str('retry-delay', 'seconds (or NNms) before the first retry (default 2)'),
    { name: 'retry-exponential', kind: 'boolean', summary: 'double the delay each time (default yes)' },
    { name: 'retry-readonly', kind: 'boolean', summary: 'after a failure, make the connection read-only (default no)' },
  ],
  async create(params) {
    const { retryFilter } = await import('./retry.js');
    try {
      return retryFilter({
        retries: params.retries as number | undefined,
        delay: parsed('retry', params, 'retry-delay', parseDuration),
        exponential: params['retry-exponential'] as boolean | undefined,
        readonly: params['retry-readonly'] as boolean | undefined,
      });
    } catch (e) {
      if (e instanceof ParamError) throw e;
      throw new ParamError(`retry: ${(e as Error).message}`);
    }
  },
};
