/**
 * What a session is built from: its options (limits, clocks, logger,
 * STARTTLS), the application's handlers, and its connection actor, which a
 * server may build ahead of time.
 */
import type { Duplex } from 'node:stream';
import { createActor, type Actor, type InspectionEvent, type Observer } from 'xstate';
import type { DecoderLimits } from '../protocol/decoder.js';
import type { RequestFrame } from '../protocol/frames.js';
import { connectionMachine } from '../machines/connection.js';
import type { HandshakeInput } from '../machines/handshake.js';
import type { Negotiated, ResolveEvent, ResolveRequest } from '../machines/types.js';
import type { FlowLimits } from './flow.js';
import type { Logger } from './logger.js';
import type { TlsUpgrade } from './tls.js';
import type { Session } from './session.js';
import type { CloseInfo } from './endings.js';
import type { BufferPool } from './buffer-pool.js';

export interface SessionOptions extends FlowLimits {
  readonly id: number;
  readonly handshake: HandshakeInput;
  readonly decoderLimits?: Partial<DecoderLimits>;
  /** Milliseconds to finish the handshake before the connection is dropped (0 or absent: no limit). */
  readonly handshakeTimeout?: number;
  /** Milliseconds a negotiated connection may sit idle before it is closed (0 or absent: no limit). */
  readonly idleTimeout?: number;
  /** Milliseconds a connection the server ended may stay open for the client to close (ReplyWriter.lingerMs). */
  readonly lingerTimeout?: number;
  /** Extent descriptors per BLOCK_STATUS reply and context (default DEFAULTS.maxExtents); more are dropped. */
  readonly maxExtents?: number;
  readonly inspect?: Observer<InspectionEvent> | ((event: InspectionEvent) => void);
  readonly logger: Logger;
  /** Performs the STARTTLS upgrade on the raw socket; resolves with the encrypted stream. */
  readonly upgradeTls?: (socket: Duplex) => Promise<TlsUpgrade>;
  /** Peer description for logs. */
  readonly peer?: string;
  /**
   * A connection actor built ahead of time by `createConnectionActor` (not
   * started) with this session's handshake input, decoder maxPayload and
   * inspect hook; built here when absent.
   */
  readonly actor?: ConnectionActor;
  /** Where READ buffers are lent from and go back to (the server's, shared by its sessions); one of its own when absent. */
  readonly readPool?: BufferPool;
}

export type ConnectionActor = Actor<typeof connectionMachine>;

/**
 * Build (not start) one connection's actor. Building resolves the initial
 * states of the connection and handshake machines, which is most of the
 * work a new connection costs before its greeting can go out, so a server
 * may build the next connection's actor while it is idle.
 */
export function createConnectionActor(
  handshake: HandshakeInput,
  maxPayload: number,
  inspect?: SessionOptions['inspect'],
): ConnectionActor {
  return createActor(connectionMachine, {
    input: { handshake, maxPayload },
    inspect: inspect as Observer<InspectionEvent> | undefined,
  });
}

export interface SessionHandlers {
  onNegotiated?(session: Session, negotiated: Negotiated): void;
  /** A validated request for the application; answer with `session.complete()`. */
  onRequest(session: Session, frame: RequestFrame): void;
  /**
   * Zero-copy WRITE: storage views to receive this (not yet validated,
   * payload-less) WRITE's payload in, or null to buffer it. Asked only for
   * requests the transmission machine's table accepts right now.
   */
  placeWrite?(session: Session, frame: RequestFrame): readonly Buffer[] | null;
  /**
   * Work out what an export name means on this connection, or its export
   * list (the handshake machine's `resolve`). The answer goes to the machine;
   * a rejection becomes `resolve.failed` (one log line). Without this handler
   * every request fails.
   */
  resolve?(session: Session, request: ResolveRequest): Promise<ResolveEvent>;
  /** The connection ended: the handshake's outcome, and why (a catalogue code and its text). */
  onClose?(session: Session, info: CloseInfo): void;
}
