/**
 * Plain-data types shared by the machines: what an export looks like to the
 * protocol, what negotiation produces. No Buffers, no functions: this is
 * what the inspector shows and the model tests compare.
 */
import type { Frame } from '../protocol/encoder.js';
import type { OptionFrame, RequestFrame } from '../protocol/frames.js';
import type { DecodeFailureCode } from '../protocol/decoder.js';
import type { CloseCode, OptionErrorCode, RefusalCode } from '../protocol/errors.js';

export type TlsPolicy = 'off' | 'optional' | 'required';

export interface ExportDescriptor {
  /** Canonical export name. */
  readonly name: string;
  readonly description?: string;
  /** Size in bytes (≤ 2^53: docs/design.md, "Sizes are numbers"). */
  readonly size: number;
  /** Transmission flags without HAS_FLAGS / SEND_DF (those depend on negotiation). */
  readonly flags: number;
  /** Block size constraints (option.block-size-constraints); `minimum: 1` means unconstrained. */
  readonly blockSizes: { readonly minimum: number; readonly preferred: number; readonly maximum: number };
  /** SELECTIVETLS: only served over TLS (tls.mode-selectivetls). */
  readonly tlsOnly?: boolean;
}

/** One entry of an export list made per connection (NBD_OPT_LIST with a `listExports` hook). */
export interface ListedExport {
  readonly name: string;
  readonly description?: string;
}

/**
 * What the handshake machine asks the server to work out while it waits
 * (`resolving`): the export a name means on this connection (a name the
 * server does not hold statically, or the empty name with a computed default),
 * or this connection's export list.
 */
export type ResolveRequest = { readonly kind: 'export'; readonly name: string } | { readonly kind: 'list' };

/** The answer to a ResolveRequest, fed back to the handshake machine. */
export type ResolveEvent =
  /** The export the name means (null: none). */
  | { type: 'resolve.export'; export: ExportDescriptor | null }
  | { type: 'resolve.list'; exports: readonly ListedExport[] }
  /** The hook threw or gave something unusable; `message` is for the log (the client gets the catalogue's text). */
  | { type: 'resolve.failed'; message: string };

export interface MetaContextSelection {
  readonly id: number;
  readonly name: string;
}

export interface Negotiated {
  readonly export: ExportDescriptor;
  /** Transmission flags as sent to the client (HAS_FLAGS, SEND_DF as negotiated). */
  readonly flags: number;
  readonly structuredReplies: boolean;
  readonly extendedHeaders: boolean;
  readonly metaContexts: readonly MetaContextSelection[];
  readonly tls: boolean;
  /** Negotiated through EXPORT_NAME (true) or GO (false). */
  readonly viaExportName: boolean;
}

export type HandshakeOutcome =
  | { readonly outcome: 'negotiated'; readonly negotiated: Negotiated }
  | { readonly outcome: 'aborted' }
  /** `code`: why, in the error catalogue (src/protocol/errors.ts); `reason`: its text with the details. */
  | { readonly outcome: 'rejected'; readonly code: CloseCode; readonly reason: string }
  | { readonly outcome: 'disconnected' };

/** The frame of one option (e.g. `go` ⇒ InfoGoOption). */
export type OptionFrameOf<O extends OptionFrame['opt']> = OptionFrame extends infer F ? (F extends OptionFrame ? (O extends F['opt'] ? F : never) : never) : never;

/**
 * One event per option, `opt.<name>`, carrying that option's frame. A union of
 * one member per option (not one member with a union of names) so that
 * xstate's `assertEvent(event, 'opt.go')` narrows the frame too. The
 * transport builds it from any decoded frame: type `opt.` + frame.opt.
 */
export type OptionEvent = { [O in OptionFrame['opt']]: { type: `opt.${O}`; frame: OptionFrameOf<O> } }[OptionFrame['opt']];

/** Events the transport feeds the handshake machine. */
export type HandshakeEvent =
  | { type: 'wire.clientFlags'; flags: number }
  | OptionEvent
  /** The decoder gave up on the stream: its failure code (without one: NBD_ERR_PROTOCOL) and message. */
  | { type: 'wire.fatal'; code?: DecodeFailureCode; message: string }
  | { type: 'tls.established' }
  | { type: 'tls.failed'; message: string }
  | { type: 'socket.closed' }
  | { type: 'server.shutdown' }
  /** The server's handshake timeout expired before negotiation finished. */
  | { type: 'timer.handshake'; ms: number }
  | ResolveEvent;

/** Effects the handshake machine asks the transport to carry out. */
export type HandshakeEmitted =
  /** `code`: for an option error reply, the catalogue entry it answers with. */
  | { type: 'send'; frame: Frame; label: string; code?: OptionErrorCode }
  | { type: 'startTls' }
  /** Work out an export or the export list (the answer comes back as a ResolveEvent); no option is read meanwhile. */
  | { type: 'resolve'; request: ResolveRequest }
  /** The session ends: `code` is why, in the error catalogue (src/protocol/errors.ts); `reason` its text with the details. */
  | { type: 'close'; hard: boolean; code: CloseCode; reason: string }
  | { type: 'log'; level: 'debug' | 'info' | 'warn'; message: string };

/** Events the transport feeds the transmission machine. */
export type TransmissionEvent =
  | { type: 'request'; frame: RequestFrame }
  /**
   * Several requests decoded from one socket read, in wire order (never
   * NBD_CMD_DISC: the transport sends that one alone). The same as one
   * `request` event per frame, for one event's cost (docs/design.md, "One machine event per burst").
   */
  | { type: 'requests'; frames: readonly RequestFrame[] }
  /** Draining, and the last request in flight completed. */
  | { type: 'inflight.idle' }
  /** The decoder gave up on the stream: its failure code (without one: NBD_ERR_PROTOCOL) and message. */
  | { type: 'wire.fatal'; code?: DecodeFailureCode; message: string }
  | { type: 'socket.closed' }
  | { type: 'client.eof' }
  | { type: 'server.shutdown' }
  /** The server's idle timeout expired with nothing in flight. */
  /** `unread`: replies are waiting that the client stopped taking (a soft close would wait for them for ever). */
  | { type: 'timer.idle'; ms: number; unread?: boolean };

/** A request the machine refused: its code in the error catalogue (the rule's ID in docs/rules.md), the spec's errno, and the message (rule ID first). */
export interface Refusal {
  readonly frame: RequestFrame;
  readonly code: RefusalCode;
  readonly errno: number;
  readonly message: string;
}

/** Effects of the transmission machine. */
export type TransmissionEmitted =
  | { type: 'request'; frame: RequestFrame }
  | { type: 'refuse'; frame: RequestFrame; code: RefusalCode; errno: number; message: string }
  /** The answer to a `requests` event: accepted frames and refusals, each in wire order. */
  | { type: 'requests'; accepted: readonly RequestFrame[]; refused: readonly Refusal[] }
  | { type: 'draining'; reason: 'disc' | 'eof' | 'shutdown' | 'idle' }
  | { type: 'close'; hard: boolean; code: CloseCode; reason: string };
