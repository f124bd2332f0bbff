/** The logger the library writes to. Only warn and error are required. */
export interface Logger {
  debug?(message: string): void;
  info?(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** Writes warnings and errors to stderr; with `verbose`, info and debug as well. */
export function consoleLogger(verbose = false): Logger {
  const line = (level: string, message: string) => process.stderr.write(`nbd-engine: ${level}: ${message}\n`);
  return {
    debug: verbose ? (m) => line('debug', m) : undefined,
    info: verbose ? (m) => line('info', m) : undefined,
    warn: (m) => line('warn', m),
    error: (m) => line('error', m),
  };
}

export const silentLogger: Logger = { warn: () => {}, error: () => {} };
