/**
 * What the client found wrong in what a server sent. Nothing is thrown
 * away: every deviation from the NBD spec is kept, with the rule it breaks
 * (an ID of docs/rules.md: the server rules of this project, `reply.*`,
 * `option.*`, `handshake.*`, and the `peer.*` rules only a client can see)
 * and the bytes that showed it.
 */

/** One departure from the spec, seen in the server's bytes. */
export interface Deviation {
  /** Stable rule ID from docs/rules.md, e.g. `reply.structured-chunks` or `peer.unknown-cookie`. */
  readonly rule: string;
  /** What was wrong, in words. */
  readonly message: string;
  /** The offending bytes (a header, a payload, a whole frame); may be empty. */
  readonly evidence: Buffer;
}

/** Where deviations go: the connection's list, and the reply or option reply they belong to. */
export type DeviationSink = (d: Deviation) => void;

/** A deviation record, with the evidence copied so later reads cannot change it. */
export function deviation(rule: string, message: string, evidence: Buffer | readonly Buffer[] = []): Deviation {
  const bytes = Buffer.isBuffer(evidence) ? Buffer.from(evidence) : Buffer.concat(evidence as Buffer[]);
  return { rule, message, evidence: bytes };
}

/** Why a call of the client failed (the connection closed, a timeout, a stream that cannot be followed). */
export class NbdClientError extends Error {
  override readonly name = 'NbdClientError';
  constructor(
    message: string,
    /**
     * `closed`: the connection ended; `timeout`: no answer in time; `desync`: the bytes cannot be
     * followed; `refused`: an error reply where the spec allows none (EXPORT_NAME); `state`: the
     * call does not fit the connection's phase; `limit`: the server sent more replies to one call
     * than `maxReplyBytes` lets the client keep (the connection is given up); `internal`: a fault
     * of this client (a bug to report), never the server's.
     */
    readonly code: 'closed' | 'timeout' | 'desync' | 'refused' | 'state' | 'limit' | 'internal',
    /** Deviations seen on the way (also on the connection's list). */
    readonly deviations: readonly Deviation[] = [],
  ) {
    super(message);
  }
}

/** A short hex rendering of bytes for messages (at most `max` bytes shown). */
export function hexOf(b: Buffer, max = 32): string {
  const h = b.subarray(0, max).toString('hex');
  return b.length > max ? `${h}… (${b.length} bytes)` : h;
}
