/**
 * The log filter (nbdkit-log-filter): one line per request and one per
 * reply, in nbdkit's log format, to a file (or stderr). See
 * docs/filters-ops.md for the line format.
 *
 * The file is opened once, when the filter is made, and closed when the
 * server closes. Each line is written with one write(2) as it happens, so
 * the log is complete up to the last request even if the process dies, and
 * lines from concurrent requests never interleave within a line.
 *
 * Scope: 'connection' — each connection's instance numbers its requests
 * (id=1, 2, … as nbdkit does) and logs Connect / Disconnect; all of them
 * write to the one file the filter object holds.
 */
import fs from 'node:fs';
import { consoleLogger, type Logger } from '../transport/logger.js';
import { backendCapabilities, normalizeExtents, type Extent } from '../api/backend.js';
import type { Filter } from '../api/filter.js';
import { errnoOf, interceptOps, NBDKIT_ACTION, whenSettled, type OpCall } from './ops-common.js';

export interface LogOptions {
  /** The log file; '-' for stderr. */
  readonly file: string;
  /** Where a failure to write the log is reported (once; logging then stops, serving goes on). */
  readonly logger?: Logger;
  /** Append to an existing file instead of truncating it (nbdkit's logappend). Default false. */
  readonly append?: boolean;
}

const hex = (n: number) => `0x${n.toString(16)}`;
const bit = (b: boolean | undefined) => (b ? 1 : 0);

/** `YYYY-MM-DD HH:MM:SS.uuuuuu` in UTC, as nbdkit's (which is local time). */
export function logTimestamp(): string {
  const micros = Math.floor((performance.timeOrigin + performance.now()) * 1000);
  const d = new Date(Math.floor(micros / 1000));
  return `${d.toISOString().slice(0, 19).replace('T', ' ')}.${String(micros % 1_000_000).padStart(6, '0')}`;
}

/** The request's own fields, as nbdkit prints them for each action. */
export function describeCall(call: OpCall): string {
  const range = `offset=${hex(call.offset)} count=${hex(call.count)}`;
  switch (call.op) {
    case 'read':
    case 'cache':
      return range;
    case 'write':
    case 'trim':
      return `${range} fua=${bit(call.fua)}`;
    case 'zero':
      // nbdkit's order and names: trim (the inverse of NO_HOLE), fua, fast.
      return `${range} trim=${bit(!call.noHole)} fua=${bit(call.fua)} fast=${bit(call.fastZero)}`;
    case 'extents':
      return `${range} req_one=${bit(call.reqOne)}`;
    case 'flush':
      return '';
  }
}

/** nbdkit's words for an extent's flags: "" (data), "hole", "zero" or "hole,zero". */
const extentType = (flags: number): string => [flags & 1 ? 'hole' : '', flags & 2 ? 'zero' : ''].filter(Boolean).join(',');

/**
 * What nbdkit prints of an Extents reply: `extents=(OFFSET LENGTH "TYPE" …) `, from the request's offset,
 * as nbdkit's extent list holds them — within the request, neighbours of the same type merged: the
 * list normalizeExtents makes of it, which is also what the client is sent.
 */
export function describeExtents(offset: number, count: number, value: unknown): string {
  if (!Array.isArray(value)) return '';
  let at = offset;
  const parts = normalizeExtents(value as readonly Extent[], count, false).map((e) => {
    const part = `${hex(at)} ${hex(e.length)} "${extentType(e.flags)}"`;
    at += e.length;
    return part;
  });
  return `extents=(${parts.join(' ')}) `;
}

/** The open log: writes whole lines, numbers requests per connection. */
export class LogWriter {
  private fd: number | undefined;
  private readonly owned: boolean;
  private readonly ids = new Map<number, number>();
  /** Where write failures go (the options' logger, else the first server's that uses the filter). */
  logger: Logger | undefined;

  constructor(private readonly options: LogOptions) {
    this.logger = options.logger;
    if (options.file === '-') {
      this.fd = 2;
      this.owned = false;
    } else {
      this.fd = fs.openSync(options.file, options.append ? 'a' : 'w');
      this.owned = true;
    }
  }

  /** Write one line (timestamp, then `connection=N` when known). Lines after close are dropped. */
  line(connection: number | undefined, text: string): void {
    if (this.fd === undefined) return;
    const who = connection === undefined ? '' : `connection=${connection} `;
    try {
      fs.writeSync(this.fd, `${logTimestamp()} ${who}${text}\n`);
    } catch (e) {
      // A full disk must not fail the requests: say so once and stop logging.
      (this.logger ?? consoleLogger()).error(`log filter: cannot write ${this.options.file}: ${(e as Error).message}; logging stops`);
      this.close();
    }
  }

  /** The next request id of a connection (1, 2, …). */
  nextId(connection: number | undefined): number {
    const key = connection ?? 0;
    const id = (this.ids.get(key) ?? 0) + 1;
    this.ids.set(key, id);
    return id;
  }

  /** Requests logged for a connection so far (and forget it). */
  finish(connection: number | undefined): number {
    const key = connection ?? 0;
    const n = this.ids.get(key) ?? 0;
    this.ids.delete(key);
    return n;
  }

  /** Log the call line, run it, log its reply line; `extra` adds fields (the request stream's cookie). */
  around<T>(connection: number | undefined, call: OpCall, run: () => T | PromiseLike<T>, extra = ''): T | Promise<T> {
    const id = this.nextId(connection);
    const action = NBDKIT_ACTION[call.op];
    const fields = describeCall(call);
    this.line(connection, `${action} id=${id}${extra}${fields ? ` ${fields}` : ''} ...`);
    const start = process.hrtime.bigint();
    return whenSettled(run, (failed, err, value) => {
      const elapsed = (Number(process.hrtime.bigint() - start) / 1e9).toFixed(6);
      const result = failed ? `return=-1 error=${errnoOf(err)}` : `${call.op === 'extents' ? describeExtents(call.offset, call.count, value) : ''}return=0`;
      this.line(connection, `...${action} id=${id} ${result} elapsed=${elapsed}`);
    });
  }

  close(): void {
    const fd = this.fd;
    this.fd = undefined;
    if (fd !== undefined && this.owned) {
      try {
        fs.closeSync(fd);
      } catch {
        // Already unusable: nothing more to do with it.
      }
    }
  }
}

export interface LogFilter extends Filter {
  readonly writer: LogWriter;
}

export function logFilter(options: LogOptions): LogFilter {
  const writer = new LogWriter(options);
  return {
    name: 'log',
    scope: 'connection',
    writer,
    wrap: (next, ctx) => {
      const conn = ctx.connection?.id;
      writer.logger ??= ctx.logger;
      if (ctx.connection === undefined) {
        // The export-wide instance lives as long as the server: close the file with it.
        ctx.onClose(() => writer.close());
      } else {
        const c = backendCapabilities(next);
        writer.line(
          conn,
          `Connect export=${JSON.stringify(ctx.export)} peer=${JSON.stringify(ctx.connection.peer)} tls=${bit(ctx.connection.tls)} size=${hex(next.size ?? 0)} ` +
            `write=${bit(c.write)} flush=${bit(c.flush)} rotational=${bit(c.rotational)} trim=${bit(c.trim)} zero=${c.zero} fua=${c.fua} extents=${bit(c.extents)} cache=${c.cache} fast_zero=${bit(c.fastZero)}`,
        );
        ctx.onClose(() => writer.line(conn, `Disconnect transactions=${writer.finish(conn)}`));
      }
      return interceptOps(next, (call, invoke) => writer.around(conn, call, () => invoke()));
    },
  };
}
