/**
 * The data backend (nbdkit-data-plugin): an image given inline — nbdkit's
 * `data=` format, `raw=` bytes or `base64=` — for tests. Like nbdkit's it
 * is writable, into memory (a sparse memory backend: writes, trim and zero
 * work and are lost when the server ends), unless `readOnly`.
 */
import { memoryBackend, type MemoryBackend } from './memory.js';
import { parseData, type DataImage, type DataParseLimits } from './data-format.js';

export interface DataBackendOptions extends DataParseLimits {
  /** nbdkit's `data=` format (see docs/backends.md). Exactly one of data, raw, base64, bytes. */
  readonly data?: string;
  /** The bytes of a string, as UTF-8 (nbdkit's `raw=`). */
  readonly raw?: string;
  /** Base64-encoded bytes (nbdkit's `base64=`). */
  readonly base64?: string;
  /** The bytes themselves (library only). */
  readonly bytes?: Uint8Array;
  /** Truncate or extend (with zeroes) to this size; default: where the data ends. */
  readonly size?: number;
  readonly readOnly?: boolean;
}

const BASE64 = /^[A-Za-z0-9+/\s]*={0,2}\s*$/;

/** The image the options describe (exactly one source). Throws RangeError for a bad option. */
export function dataImage(o: DataBackendOptions): DataImage {
  const given = (['data', 'raw', 'base64', 'bytes'] as const).filter((k) => o[k] !== undefined);
  if (given.length !== 1) throw new RangeError(`data backend: give exactly one of data, raw, base64 (got ${given.length ? given.join(', ') : 'none'})`);
  const whole = (buf: Buffer): DataImage => ({ length: buf.length, pieces: buf.length ? [{ at: 0, buf }] : [] });
  if (o.raw !== undefined) return whole(Buffer.from(o.raw, 'utf8'));
  if (o.bytes !== undefined) return whole(Buffer.from(o.bytes));
  if (o.base64 !== undefined) {
    // Buffer.from(…, 'base64') ignores what is not base64: check first, so a typo is an error and not missing bytes.
    if (!BASE64.test(o.base64)) throw new RangeError('data backend: base64= is not valid base64');
    return whole(Buffer.from(o.base64, 'base64'));
  }
  return parseData(o.data!, o);
}

/** A writable (unless readOnly) in-memory image of the given data. */
export function dataBackend(options: DataBackendOptions): MemoryBackend {
  const image = dataImage(options);
  const size = options.size ?? image.length;
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`data backend: size must be a safe integer ≥ 0 (got ${size})`);
  // readOnly only changes what is advertised (no WRITE): the data is still written in here.
  const mem = memoryBackend({ size, readOnly: options.readOnly });
  // Pieces past `size` are cut off (nbdkit truncates the data to size=).
  for (const p of image.pieces) {
    if (p.at >= size) continue;
    const buf = p.at + p.buf.length > size ? p.buf.subarray(0, size - p.at) : p.buf;
    mem.write!(p.at, buf, { fua: false });
  }
  return mem;
}
