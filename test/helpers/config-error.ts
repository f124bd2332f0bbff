/** The NbdError('NBD_ERR_CONFIG') that `fn` throws (the test fails if it throws nothing or something else). */
import { expect } from 'vitest';
import { NbdError } from '../../src/index.js';

export function configError(fn: () => unknown): NbdError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(NbdError);
    expect((err as NbdError).code).toBe('NBD_ERR_CONFIG');
    return err as NbdError;
  }
  throw new Error('expected NBD_ERR_CONFIG, nothing was thrown');
}
