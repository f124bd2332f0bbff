/**
 * A decoded WRITE payload after the decoder: a payload that arrived in
 * several socket chunks (`ScatteredRequest`), and reporting a payload's
 * bytes dead once nobody reads it any more (`releasePayload`).
 */
import type { DeadBytes } from './byte-queue.js';
import type { RequestFrame } from './frames.js';

/** The header fields a request frame is made of. */
type RequestHeader = Pick<RequestFrame, 'extended' | 'flags' | 'type' | 'cookie' | 'offset' | 'length' | 'huge' | 'wireOffset'>;

/** Payloads at least this long that span socket chunks are kept as the chunks' views. */
export const SCATTER_MIN = 64 * 1024;

/** A ScatteredRequest's header fields are RequestFrame's own (declared here, copied in by the constructor). */
export interface ScatteredRequest extends RequestHeader {}

/**
 * A request whose payload arrived in several socket chunks. Its `payload`
 * is joined (one copy) on first use; `payloadParts()` gives the pieces
 * without joining, for consumers that can take them (a backend's
 * `writev`). Otherwise the same plain fields as any RequestFrame.
 */
export class ScatteredRequest implements RequestFrame {
  readonly kind = 'request' as const;
  readonly payloadDiscarded = false;
  readonly #parts: readonly Buffer[];
  #joined: Buffer | undefined;
  #released = false;

  constructor(r: RequestHeader, parts: readonly Buffer[]) {
    // Only the header: `r` may be the decoder's pending request, which carries more.
    const { extended, flags, type, cookie, offset, length, huge, wireOffset } = r;
    Object.assign(this, { extended, flags, type, cookie, offset, length, huge }, wireOffset === undefined ? undefined : { wireOffset });
    this.#parts = parts;
  }

  get payload(): Buffer {
    if (this.#joined === undefined && this.#released) throw new Error('WRITE payload used after it was released');
    return (this.#joined ??= Buffer.concat(this.#parts as Buffer[]));
  }

  get parts(): readonly Buffer[] {
    return this.#parts;
  }

  /** The pieces' bytes are dead (nobody reads them any more): report them to `dead`. Once only. */
  release(dead: DeadBytes): void {
    if (this.#released) return;
    this.#released = true;
    for (const p of this.#parts) dead(p.buffer, p.length);
  }
}

/**
 * Report a WRITE payload's bytes as dead to `dead` — scattered or a single
 * view — once nobody reads it any more (the backend's write completed, or
 * the request was answered). A payload that was copied out of several
 * chunks (small, spanning reads) is memory nobody tracks: reporting it is
 * harmless. Call once per frame; nobody may read the payload views afterwards.
 */
export function releasePayload(frame: RequestFrame, dead: DeadBytes): void {
  if (frame instanceof ScatteredRequest) frame.release(dead);
  else if (frame.payload !== undefined) dead(frame.payload.buffer, frame.payload.length);
}

/** The payload of a request as the pieces it arrived in, when it was not joined; else undefined. */
export function payloadParts(frame: RequestFrame): readonly Buffer[] | undefined {
  return frame instanceof ScatteredRequest ? frame.parts : undefined;
}
