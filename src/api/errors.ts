/**
 * Errors the library raises, with stable codes. Per-request failures are
 * data (an errno in a reply), not exceptions; these are for programming
 * errors and configuration mistakes.
 */
import { ERRNO, SPEC_ERRNOS, type ErrnoName, type NbdErrno } from '../protocol/constants.js';
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
  /** Always one the spec defines: a name or number it does not (a typo from JavaScript, 0, 999) is NBD_EIO. */
  readonly errno: NbdErrno;
  constructor(errno: ErrnoName | NbdErrno, message?: string) {
    super(message ?? (typeof errno === 'string' ? errno : `NBD errno ${errno}`));
    this.name = 'NbdRequestError';
    this.errno = specErrno(errno);
  }
}

/**
 * The errno a name or number stands for, if the spec defines it; anything else (an unknown name,
 * 0 — which would read as success —, a host errno, a non-number) is NBD_EIO. No other errno reaches the wire.
 */
export function specErrno(errno: unknown): NbdErrno {
  if (typeof errno === 'number') return SPEC_ERRNOS.has(errno) ? (errno as NbdErrno) : ERRNO.NBD_EIO;
  if (typeof errno === 'string') return (ERRNO as Record<string, NbdErrno>)[`NBD_${errno}`] ?? ERRNO.NBD_EIO;
  return ERRNO.NBD_EIO;
}
