import fs from 'node:fs';

/** The logger the library writes to. Only warn and error are required. */
export interface Logger {
  debug?(message: string): void;
  info?(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

let stderrGuarded = false;

/**
 * Write `text` to stderr, dropping it when stderr cannot be written (a full disk, a log pipe whose
 * reader exited: ENOSPC, EPIPE): a server never stops over its log, as nbdkit keeps serving. Node
 * reports a failed write as an 'error' event on process.stderr, which unhandled ends the process,
 * and then destroys the stream; later lines go straight to fd 2 (libuv never closes it), so a log
 * that becomes writable again (space freed) gets them.
 */
export function writeStderr(text: string): void {
  if (!stderrGuarded) {
    stderrGuarded = true;
    process.stderr.on('error', () => {});
  }
  try {
    if (!process.stderr.destroyed) process.stderr.write(text);
    else fs.writeSync(2, text);
  } catch {
    // dropped: see above
  }
}

/** Writes warnings and errors to stderr; with `verbose`, info and debug as well. A line stderr cannot take is dropped (writeStderr). */
export function consoleLogger(verbose = false): Logger {
  const line = (level: string, message: string) => writeStderr(`nbd-engine: ${level}: ${message}\n`);
  return {
    debug: verbose ? (m) => line('debug', m) : undefined,
    info: verbose ? (m) => line('info', m) : undefined,
    warn: (m) => line('warn', m),
    error: (m) => line('error', m),
  };
}

export const silentLogger: Logger = { warn: () => {}, error: () => {} };
