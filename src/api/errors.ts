/**
 * Errors the library raises, with stable codes. Per-request failures are
 * data (an errno in a reply), not exceptions; these are for programming
 * errors and configuration mistakes.
 */
import { ERRNO, type ErrnoName, type NbdErrno } from '../protocol/constants.js';
import type { ApiErrorCode } from '../protocol/errors.js';

/** The codes an NbdError may carry: the `thrown` entries of the error catalogue (src/protocol/errors.ts). */
export type NbdErrorCode = ApiErrorCode;

export class NbdError extends Error {
  readonly code: NbdErrorCode;
  constructor(code: NbdErrorCode, message: string) {
    super(message);
    this.name = 'NbdError';
    this.code = code;
  }
}

/**
 * An error a backend may throw to choose the errno the client sees
 * (otherwise: the host errno of a SystemError, or NBD_EIO).
 */
export class NbdRequestError extends Error {
  readonly errno: NbdErrno;
  constructor(errno: ErrnoName | NbdErrno, message?: string) {
    super(message ?? (typeof errno === 'string' ? errno : `NBD errno ${errno}`));
    this.name = 'NbdRequestError';
    this.errno = typeof errno === 'number' ? errno : ERRNO[`NBD_${errno}`];
  }
}
