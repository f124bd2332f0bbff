/**
 * Errors the library raises, with stable codes. Per-request failures are
 * data (an errno in a reply), not exceptions; these are for programming
 * errors and configuration mistakes.
 */
import { ERRNO, type ErrnoName, type NbdErrno } from '../protocol/constants.js';

export type NbdErrorCode =
  | 'NBD_ERR_ALREADY_ANSWERED'
  | 'NBD_ERR_BAD_REPLY'
  | 'NBD_ERR_PAYLOAD_RELEASED'
  | 'NBD_ERR_CONFIG'
  | 'NBD_ERR_NOT_LISTENING'
  | 'NBD_ERR_CLOSED';

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
