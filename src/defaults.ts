/**
 * The one home of every default limit. `ServerLimits` (src/api/server.ts)
 * documents them, `LIMIT_RANGES` (src/api/limits.ts) validates against
 * them, and the machines, the decoder and the session fall back to them
 * when built without a server around them (tests, tools).
 */
const KiB = 1024;
const MiB = 1024 * KiB;

export const DEFAULTS = Object.freeze({
  /** Requests with the application at once, per connection. */
  maxInFlight: 64,
  /** Bytes owed per connection: payloads and READ lengths in flight plus unwritten replies. */
  maxInFlightBytes: 128 * MiB,
  /** Reply bytes queued and not yet written, per connection. */
  maxQueuedReplyBytes: 4 * MiB,
  /** Largest READ / WRITE payload served (as nbdkit). */
  maxPayload: 64 * MiB,
  /** Largest option data parsed. */
  maxOptionLength: 64 * KiB,
  /** Largest option data skipped (refused with ERR_TOO_BIG, the connection going on); longer ones disconnect. */
  maxOptionSkip: 64 * MiB,
  /** Largest WRITE payload skipped (refused, the connection going on); longer ones disconnect. Every compact length. */
  maxPayloadSkip: 0xffff_ffff,
  /** Options per handshake before a disconnect. */
  maxOptions: 128,
  /** Bytes of the NBD_REP_SERVER replies one NBD_OPT_LIST answer makes from a `listExports` hook's list. */
  maxListBytes: 4 * MiB,
  /** Descriptors per BLOCK_STATUS reply and context (more are dropped: the spec lets a server describe less than asked). */
  maxExtents: 65_536,
  /** What a connection's decoder may hold on top of the largest payload (maxBufferedBytes = maxPayload + this). */
  bufferedSlack: 1 * MiB,
  /** Idle READ buffers kept for reuse, server-wide (lent to backends with readInto and to NbdRequest.readBuffer). */
  readBufferPool: 32 * MiB,
  /** Milliseconds to finish negotiating (as qemu-nbd). */
  handshakeTimeout: 10_000,
  /** Milliseconds a negotiated connection may sit idle (0: off). */
  idleTimeout: 0,
  /** Milliseconds a connection the server ended may stay open for the client to close its side (0: none). */
  lingerTimeout: 2000,
  /** Milliseconds server.close() waits for connections to finish. */
  closeTimeout: 10_000,
  /** Milliseconds `nbd-engine serve` lets requests in flight finish after a stop signal (`--shutdown-timeout`). */
  shutdownTimeout: 5000,
});

/** The port of `serve --inspect` (the live view) when none is given. */
export const INSPECT_PORT = 10880;
