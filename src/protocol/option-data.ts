/**
 * Option data: the names of the option codes, which options the decoder
 * parses, and the parsers that turn an option's data into a typed frame.
 * Problems in the data become part of the frame (`OptionProblem`), never
 * exceptions.
 */
import { OPT, SIZE, camelNames } from './constants.js';
import type { OptionFrame, OptionProblem } from './frames.js';

/**
 * The frame name of each option code, derived from OPT (`NBD_OPT_LIST_META_CONTEXT`
 * ⇒ `listMetaContext`). The withdrawn PEEK_EXPORT is left out: it counts as
 * unknown. An option added to OPT without a frame type does not compile.
 */
const OPTION_NAMES: ReadonlyMap<number, OptionFrame['opt']> = camelNames(OPT, 'NBD_OPT_', ['NBD_OPT_PEEK_EXPORT']);

/** Options whose data we parse (and therefore buffer). */
export const PARSED_OPTIONS = new Set<number>([
  OPT.NBD_OPT_EXPORT_NAME,
  OPT.NBD_OPT_INFO,
  OPT.NBD_OPT_GO,
  OPT.NBD_OPT_LIST_META_CONTEXT,
  OPT.NBD_OPT_SET_META_CONTEXT,
]);

// ignoreBOM: a leading U+FEFF is part of the name, not a byte-order mark to strip.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Validate a protocol string (general.string-limits: UTF-8, no NUL, ≤ limit). */
export function decodeString(bytes: Buffer, maxLength: number): { ok: true; value: string } | { ok: false; message: string } {
  if (bytes.length > maxLength) return { ok: false, message: `string of ${bytes.length} bytes exceeds ${maxLength}` };
  if (bytes.includes(0)) return { ok: false, message: 'string contains NUL' };
  try {
    return { ok: true, value: utf8.decode(bytes) };
  } catch {
    return { ok: false, message: 'string is not valid UTF-8' };
  }
}

/**
 * The frame for an option whose data was skipped, not buffered: an option
 * we do not parse (`hasData` says whether it came with data; unknown codes
 * become 'unknown'), or a parsed one refused for `problem` (its data too big).
 */
export function skippedOption(code: number, length: number, problem: OptionProblem | undefined): OptionFrame {
  const base = { kind: 'option' as const, code, length };
  const opt = OPTION_NAMES.get(code);
  if (opt === undefined || opt === 'unknown') return { ...base, opt: 'unknown' };
  if (problem) {
    if (opt === 'exportName') return { ...base, opt, name: '', problem };
    if (opt === 'info' || opt === 'go') return { ...base, opt, name: '', requests: [], problem };
    if (opt === 'listMetaContext' || opt === 'setMetaContext') return { ...base, opt, name: '', queries: [], problem };
  }
  return { ...base, opt: opt as 'abort' | 'list' | 'starttls' | 'structuredReply' | 'extendedHeaders', hasData: length > 0 };
}

const invalid = (message: string): OptionProblem => ({ reply: 'NBD_REP_ERR_INVALID', message });

/** Parse a buffered option's data into a typed frame. Problems become data, never exceptions. */
export function parseOption(code: number, data: Buffer, maxString: number = SIZE.MAX_STRING): OptionFrame {
  const base = { kind: 'option' as const, code, length: data.length };
  switch (code) {
    case OPT.NBD_OPT_EXPORT_NAME: {
      const s = decodeString(data, maxString);
      return s.ok ? { ...base, opt: 'exportName', name: s.value } : { ...base, opt: 'exportName', name: '', problem: invalid(s.message) };
    }
    case OPT.NBD_OPT_INFO:
    case OPT.NBD_OPT_GO: {
      const opt = code === OPT.NBD_OPT_INFO ? 'info' : 'go';
      const bad = (message: string): OptionFrame => ({ ...base, opt, name: '', requests: [], problem: invalid(message) });
      // option.length-mismatch: namelen ≤ optlen − 6 and optlen == 6 + N + 2K exactly.
      if (data.length < 6) return bad(`${opt.toUpperCase()} data of ${data.length} bytes is shorter than 6`);
      const n = data.readUInt32BE(0);
      if (n > data.length - 6) return bad(`export name length ${n} exceeds option length ${data.length} - 6`);
      const k = data.readUInt16BE(4 + n);
      if (data.length !== 6 + n + 2 * k) return bad(`option length ${data.length} is not 6 + ${n} + 2×${k}`);
      const s = decodeString(data.subarray(4, 4 + n), maxString);
      if (!s.ok) return bad(s.message);
      const requests: number[] = [];
      for (let i = 0; i < k; i++) requests.push(data.readUInt16BE(6 + n + 2 * i));
      return { ...base, opt, name: s.value, requests };
    }
    case OPT.NBD_OPT_LIST_META_CONTEXT:
    case OPT.NBD_OPT_SET_META_CONTEXT: {
      const opt = code === OPT.NBD_OPT_LIST_META_CONTEXT ? 'listMetaContext' : 'setMetaContext';
      const bad = (message: string): OptionFrame => ({ ...base, opt, name: '', queries: [], problem: invalid(message) });
      // option.length-mismatch: minimum 8 bytes; a length running past the option ⇒ ERR_INVALID (MUST).
      if (data.length < 8) return bad(`meta context data of ${data.length} bytes is shorter than 8`);
      const n = data.readUInt32BE(0);
      if (n > data.length - 8) return bad(`export name length ${n} runs past the option`);
      const s = decodeString(data.subarray(4, 4 + n), maxString);
      if (!s.ok) return bad(s.message);
      const q = data.readUInt32BE(4 + n);
      let pos = 8 + n;
      // Each query needs at least 4 bytes: cap before allocating anything.
      if (q > (data.length - pos) / 4) return bad(`${q} queries cannot fit in ${data.length - pos} bytes`);
      const queries: string[] = [];
      for (let i = 0; i < q; i++) {
        if (pos + 4 > data.length) return bad(`query ${i} length runs past the option`);
        const l = data.readUInt32BE(pos);
        pos += 4;
        if (l > data.length - pos) return bad(`query ${i} of ${l} bytes runs past the option`);
        const qs = decodeString(data.subarray(pos, pos + l), maxString);
        if (!qs.ok) return bad(`query ${i}: ${qs.message}`);
        queries.push(qs.value);
        pos += l;
      }
      if (pos !== data.length) return bad(`${data.length - pos} trailing bytes after the queries`);
      return { ...base, opt, name: s.value, queries };
    }
    default: {
      const opt = OPTION_NAMES.get(code);
      if (opt === undefined) return { ...base, opt: 'unknown' };
      return { ...base, opt: opt as 'abort' | 'list' | 'starttls' | 'structuredReply' | 'extendedHeaders', hasData: data.length > 0 };
    }
  }
}
