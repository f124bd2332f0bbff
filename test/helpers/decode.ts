/**
 * Drive a `FrameDecoder` over a chunked byte stream the way a connection
 * would: push a chunk, pull frames until `null`, repeat. A hook sees every
 * frame as it is produced and may switch the decoder's phase right there
 * (at the frame boundary), e.g. `startTransmission` after NBD_OPT_GO.
 */
import { FrameDecoder, type DecodeFailure, type DecoderLimits } from '../../src/protocol/decoder.js';
import type { ClientFrame } from '../../src/protocol/frames.js';

export type Decoded = ClientFrame | DecodeFailure;

export interface DecodeStreamOptions {
  limits?: Partial<DecoderLimits>;
  /** Called with every frame, before the next `next()`; may change the decoder's phase. */
  onFrame?: (frame: Decoded, decoder: FrameDecoder) => void;
  /** Start in this phase instead of `clientFlags`. */
  start?: 'clientFlags' | 'options' | 'requests' | 'extendedRequests';
  /** Called after every push+drain round (e.g. to sample `bufferedBytes`). */
  afterChunk?: (decoder: FrameDecoder) => void;
}

/** Pull every available frame. Stops at the first fatal outcome (it repeats forever otherwise). */
export function drain(decoder: FrameDecoder, onFrame?: DecodeStreamOptions['onFrame']): Decoded[] {
  const out: Decoded[] = [];
  for (;;) {
    const f = decoder.next();
    if (f === null) return out;
    out.push(f);
    onFrame?.(f, decoder);
    if (f.kind === 'fatal') return out;
  }
}

/** A decoder positioned at the requested phase. */
export function decoderAt(start: DecodeStreamOptions['start'] = 'clientFlags', limits?: Partial<DecoderLimits>): FrameDecoder {
  const d = new FrameDecoder(limits);
  if (start === 'options') {
    d.push(Buffer.alloc(4));
    const f = d.next();
    if (f === null || f.kind !== 'clientFlags') throw new Error('could not reach the options phase');
  } else if (start === 'requests' || start === 'extendedRequests') {
    d.startTransmission(start === 'extendedRequests');
  }
  return d;
}

/** Decode a whole chunked stream; returns every frame (and the decoder for further checks). */
export function decodeStream(chunks: readonly Buffer[], o: DecodeStreamOptions = {}): { frames: Decoded[]; decoder: FrameDecoder } {
  const decoder = decoderAt(o.start, o.limits);
  const frames: Decoded[] = [];
  for (const c of chunks) {
    decoder.push(c);
    const got = drain(decoder, o.onFrame);
    frames.push(...got);
    o.afterChunk?.(decoder);
    if (got.some((f) => f.kind === 'fatal')) break;
  }
  return { frames, decoder };
}

/** The usual phase hook: a problem-free GO (or EXPORT_NAME) starts transmission. */
export function goStartsTransmission(extended = false): NonNullable<DecodeStreamOptions['onFrame']> {
  return (f, d) => {
    if (f.kind === 'option' && (f.opt === 'go' || f.opt === 'exportName') && !f.problem) d.startTransmission(extended);
  };
}
