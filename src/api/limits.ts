/**
 * Validation of `ServerLimits`: every numeric limit is checked once, at
 * createServer(), with an error naming the option.
 */
import type { ServerLimits } from './server.js';

/** Throw NbdError('NBD_ERR_CONFIG') naming the first invalid limit. */
export function validateLimits(_limits: ServerLimits | undefined): void {
  // Filled in by the limits-validation change.
}
