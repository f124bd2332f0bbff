/**
 * Typed frames: what the decoder produces from client bytes and what the
 * encoders take. Plain data; Buffers only where a payload travels.
 */
import type { InfoType } from './constants.js';

/** The 4-byte client flags that follow the greeting. */
export interface ClientFlagsFrame {
  readonly kind: 'clientFlags';
  readonly flags: number;
}

/** Why an option's data could not be parsed (→ NBD_REP_ERR_INVALID / TOO_BIG). */
export interface OptionProblem {
  readonly reply: 'NBD_REP_ERR_INVALID' | 'NBD_REP_ERR_TOO_BIG';
  readonly message: string;
}

interface OptionBase {
  readonly kind: 'option';
  /** The raw option code, echoed in every reply. */
  readonly code: number;
  /** Declared data length. */
  readonly length: number;
}

/** EXPORT_NAME: the whole data is the name. */
export interface ExportNameOption extends OptionBase {
  readonly opt: 'exportName';
  readonly name: string;
  readonly problem?: OptionProblem;
}

/** INFO / GO: name length u32 · name · info count u16 · info codes u16[]. */
export interface InfoGoOption extends OptionBase {
  readonly opt: 'info' | 'go';
  readonly name: string;
  readonly requests: readonly number[];
  readonly problem?: OptionProblem;
}

/** LIST_META_CONTEXT / SET_META_CONTEXT: name length u32 · name · query count u32 · queries. */
export interface MetaContextOption extends OptionBase {
  readonly opt: 'listMetaContext' | 'setMetaContext';
  readonly name: string;
  readonly queries: readonly string[];
  readonly problem?: OptionProblem;
}

/** Options that carry no data: ABORT, LIST, STARTTLS, STRUCTURED_REPLY, EXTENDED_HEADERS. */
export interface SimpleOption extends OptionBase {
  readonly opt: 'abort' | 'list' | 'starttls' | 'structuredReply' | 'extendedHeaders';
  /** The option carried data it should not have (data itself is discarded). */
  readonly hasData: boolean;
  readonly problem?: OptionProblem;
}

/** An option code we do not implement; its data was consumed and discarded. */
export interface UnknownOption extends OptionBase {
  readonly opt: 'unknown';
  readonly problem?: OptionProblem;
}

export type OptionFrame = ExportNameOption | InfoGoOption | MetaContextOption | SimpleOption | UnknownOption;
export type OptionName = OptionFrame['opt'];

/** A transmission request (28-byte compact header, or 32-byte extended header). */
export interface RequestFrame {
  readonly kind: 'request';
  /** True when it arrived with the 32-byte extended header. */
  readonly extended: boolean;
  readonly flags: number;
  readonly type: number;
  /** Opaque 8-byte cookie, as a bigint; echoed verbatim. */
  readonly cookie: bigint;
  /**
   * Offset as a JS number. Offsets above 2^53 arrive as `Infinity`-free
   * `offsetHuge = true` with `offset` clamped, so bounds checks refuse them.
   */
  readonly offset: number;
  /** Effect length (or payload length with PAYLOAD_LEN / compact WRITE). */
  readonly length: number;
  /** The 64-bit offset or length did not fit a JS safe integer. */
  readonly huge: boolean;
  /**
   * The offset exactly as sent, present only when it did not fit a safe
   * integer (`offset` is then clamped): extended replies echo it verbatim.
   */
  readonly wireOffset?: bigint;
  /** WRITE (or extended PAYLOAD_LEN) payload, already consumed from the stream. */
  readonly payload?: Buffer;
  /**
   * A payload was announced but was over the payload limit: its bytes were
   * consumed and discarded (never buffered). The request must be refused.
   */
  readonly payloadDiscarded: boolean;
  /**
   * Zero-copy WRITE: the payload was received straight into memory the
   * backend handed out (`Backend.writeTargets`); `payload` is undefined.
   */
  readonly placed?: boolean;
  /**
   * A placed payload's commit (the placement's `commit`): applies the
   * received bytes to the export. Whoever answers the request calls it
   * once, before the reply; until then the export does not show them.
   */
  readonly commitPlacement?: () => void | PromiseLike<void>;
}

export type ClientFrame = ClientFlagsFrame | OptionFrame | RequestFrame;

/** Export description sent in NBD_REP_INFO / EXPORT_NAME replies. */
export interface ExportInfo {
  readonly size: number;
  readonly flags: number;
}

export interface BlockSizes {
  readonly minimum: number;
  readonly preferred: number;
  readonly maximum: number;
}

export type { InfoType };
