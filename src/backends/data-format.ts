/**
 * nbdkit-data-plugin's `data=` format (a useful subset), parsed into the
 * pieces of a sparse image: `parseData('0 1 2 3 @0x1fe 0x55 0xaa')` is
 * bytes 0-3 at 0, 0x55 0xaa at 510, size 512.
 *
 * Supported: BYTE (decimal, 0octal, 0xhex), le16:/be16:/le32:/be32:/le64:/
 * be64:WORD, @OFFSET, @+N, @-N, @^ALIGN, "STRING" (C escapes \\ \" \n \t \r
 * \a \b \f \v \xHH), <FILE, ( … ) groups, EXPR*N, EXPR[N:M] slices,
 * EXPR -> \NAME and \NAME, # comments. Not supported: <(SCRIPT) (it runs a
 * shell) and $VAR.
 *
 * An expression's value is sparse — its length and the pieces written in
 * it — so `( 1 @1M ) * 1000` costs 1000 one-byte pieces, not 1 GB. The
 * length of a sequence is the furthest offset it reached (by writing or by
 * @), as nbdkit computes it; later writes win where pieces overlap.
 */
import fs from 'node:fs';
import path from 'node:path';

export class DataFormatError extends Error {}

export interface DataPiece {
  readonly at: number;
  readonly buf: Buffer;
}
export interface DataImage {
  /** The furthest offset reached: the export's size unless `size=` is given. */
  readonly length: number;
  /** In order; later pieces overwrite earlier ones where they overlap. */
  readonly pieces: readonly DataPiece[];
}

export interface DataParseLimits {
  /** Bytes of piece data the image may hold in total (default 1 GiB). */
  readonly maxBytes?: number;
  /** Pieces the image may consist of (default 1,000,000). */
  readonly maxPieces?: number;
  /** Directory `<FILE` paths are relative to (default: the process's working directory). */
  readonly cwd?: string;
}

export const DATA_MAX_BYTES = 1024 * 1024 * 1024;
export const DATA_MAX_PIECES = 1_000_000;

/** Groups nested deeper than this are refused (a clear error, not a stack overflow). */
const MAX_DEPTH = 1000;

/** At most `limit` bytes of a file, reading in pieces (a device such as /dev/urandom never ends). */
function readUpTo(file: string, limit: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const parts: Buffer[] = [];
    let total = 0;
    while (total < limit) {
      const chunk = Buffer.allocUnsafe(Math.min(limit - total, 1 << 20));
      const n = fs.readSync(fd, chunk, 0, chunk.length, null);
      if (n === 0) break;
      parts.push(chunk.subarray(0, n));
      total += n;
    }
    return Buffer.concat(parts, total);
  } finally {
    fs.closeSync(fd);
  }
}

/** An expression's value: its length, and the pieces written in it (offsets relative to its start). */
interface Value {
  len: number;
  pieces: DataPiece[];
}

const NUMBER = /^(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/;
const WORD = /^(le|be)(16|32|64):(.*)$/;
const NAME = /^\\[A-Za-z0-9_-]+$/;

function parseNumber(text: string, what: string): bigint {
  if (text.startsWith('-')) throw new DataFormatError(`data: ${what} "${text}": negative numbers are not allowed`);
  if (!NUMBER.test(text)) throw new DataFormatError(`data: ${what} "${text}": not a number (decimal, 0octal or 0xhex)`);
  return text.length > 1 && text[0] === '0' && !/^0[xX]/.test(text) ? BigInt(`0o${text.slice(1)}`) : BigInt(text);
}

function safe(n: bigint, what: string): number {
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new DataFormatError(`data: ${what} ${n} is larger than 2^53 - 1`);
  return Number(n);
}

const ESCAPES: Record<string, number> = { n: 10, t: 9, r: 13, a: 7, b: 8, f: 12, v: 11, '\\': 92, '"': 34, "'": 39, '0': 0 };

class Parser {
  private pos = 0;
  private depth = 0;
  private bytes = 0;
  private pieceCount = 0;
  private readonly maxBytes: number;
  private readonly maxPieces: number;

  constructor(
    private readonly text: string,
    private readonly limits: DataParseLimits,
  ) {
    this.maxBytes = limits.maxBytes ?? DATA_MAX_BYTES;
    this.maxPieces = limits.maxPieces ?? DATA_MAX_PIECES;
  }

  private fail(why: string): never {
    throw new DataFormatError(`data: at character ${this.pos + 1}: ${why}`);
  }

  /** Skip blanks and # comments. */
  private skip(): void {
    const t = this.text;
    while (this.pos < t.length) {
      const c = t[this.pos]!;
      if (c === '#') {
        while (this.pos < t.length && t[this.pos] !== '\n') this.pos++;
      } else if (/\s/.test(c)) this.pos++;
      else break;
    }
  }

  /** A run of characters up to whitespace or one of the operator characters. */
  private token(stop = /[\s()[\]*#"]/): string {
    const start = this.pos;
    while (this.pos < this.text.length && !stop.test(this.text[this.pos]!)) this.pos++;
    return this.text.slice(start, this.pos);
  }

  private account(bytes: number, pieces: number): void {
    this.bytes += bytes;
    this.pieceCount += pieces;
    if (this.bytes > this.maxBytes) this.fail(`the data would hold more than ${this.maxBytes} bytes (maxBytes)`);
    if (this.pieceCount > this.maxPieces) this.fail(`the data would have more than ${this.maxPieces} pieces (maxPieces)`);
  }

  private bytesValue(buf: Buffer): Value {
    this.account(buf.length, 1);
    return { len: buf.length, pieces: buf.length > 0 ? [{ at: 0, buf }] : [] };
  }

  /** Parse a sequence up to `close` (or the end); names bound here live in `scope`. */
  sequence(close: string | undefined, outer: Map<string, Value>): Value {
    if (++this.depth > MAX_DEPTH) this.fail(`groups nested deeper than ${MAX_DEPTH}`);
    const scope = new Map(outer);
    const pieces: DataPiece[] = [];
    let off = 0;
    let len = 0;
    for (;;) {
      this.skip();
      if (this.pos >= this.text.length) {
        if (close) this.fail(`missing "${close}"`);
        break;
      }
      if (close && this.text[this.pos] === close) {
        this.pos++;
        break;
      }
      if (this.text[this.pos] === '@') {
        this.pos++;
        off = this.move(off);
        len = Math.max(len, off);
        continue;
      }
      let value = this.primary(scope);
      // Postfix operators: *N, [N:M], -> \NAME (binds instead of writing).
      let bound = false;
      for (;;) {
        this.skip();
        const c = this.text[this.pos];
        if (c === '*') {
          this.pos++;
          this.skip();
          value = this.repeat(value, safe(parseNumber(this.token(), 'repeat count'), 'repeat count'));
        } else if (c === '[') {
          this.pos++;
          value = this.slice(value);
        } else if (this.text.startsWith('->', this.pos)) {
          this.pos += 2;
          this.skip();
          const name = this.token();
          if (!NAME.test(name)) this.fail(`"-> ${name}": a name is \\ and letters, digits, - or _`);
          scope.set(name, value);
          bound = true;
          break;
        } else break;
      }
      if (bound) continue;
      if (!Number.isSafeInteger(off + value.len)) this.fail(`the data would end past 2^53 - 1`);
      for (const p of value.pieces) pieces.push({ at: off + p.at, buf: p.buf });
      off += value.len;
      len = Math.max(len, off);
    }
    this.depth--;
    return { len, pieces };
  }

  /** After "@": OFFSET, +N, -N or ^ALIGNMENT; returns the new offset. */
  private move(off: number): number {
    const c = this.text[this.pos];
    if (c === '+' || c === '-' || c === '^') this.pos++;
    const n = safe(parseNumber(this.token(), `@${c === '+' || c === '-' || c === '^' ? c : ''}`), 'offset');
    if (c === '+') return safe(BigInt(off) + BigInt(n), 'offset');
    if (c === '-') {
      if (n > off) this.fail(`@-${n} is larger than the current offset ${off}`);
      return off - n;
    }
    if (c === '^') {
      if (n === 0 || (BigInt(n) & (BigInt(n) - 1n)) !== 0n) this.fail(`@^${n}: the alignment must be a power of 2`);
      return Math.ceil(off / n) * n;
    }
    return n;
  }

  private primary(scope: Map<string, Value>): Value {
    const c = this.text[this.pos]!;
    if (c === '(') {
      this.pos++;
      return this.sequence(')', scope);
    }
    if (c === '"') return this.bytesValue(this.string());
    if (c === '<') {
      this.pos++;
      if (this.text[this.pos] === '(') this.fail('<(SCRIPT) is not supported (it would run a shell command)');
      const file = this.token(/[\s[*)]/);
      if (file === '') this.fail('"<" needs a file name');
      // A slice right after (`</dev/urandom[:512]`) says how much is needed: a device need not end.
      const end = /^\s*\[[^:\]]*:\s*(0[xX][0-9a-fA-F]+|\d+)\s*\]/.exec(this.text.slice(this.pos))?.[1];
      const want = end === undefined ? undefined : safe(parseNumber(end, 'slice end'), 'slice end');
      let buf: Buffer;
      try {
        buf = readUpTo(path.resolve(this.limits.cwd ?? process.cwd(), file), want ?? this.maxBytes - this.bytes + 1);
      } catch (e) {
        this.fail(`<${file}: ${(e as Error).message}`);
      }
      if (want === undefined && this.bytes + buf.length > this.maxBytes) this.fail(`<${file}: the data would hold more than ${this.maxBytes} bytes (maxBytes)`);
      return this.bytesValue(buf);
    }
    if (c === '$') this.fail('$VAR is not supported');
    if (c === ')' || c === ']' || c === '*') this.fail(`unexpected "${c}"`);
    const tok = this.token();
    if (NAME.test(tok)) {
      const v = scope.get(tok);
      if (!v) this.fail(`${tok} is not defined here`);
      this.account(v.pieces.reduce((s, p) => s + p.buf.length, 0), v.pieces.length);
      return v;
    }
    const word = WORD.exec(tok);
    if (word) {
      const bits = Number(word[2]);
      const n = parseNumber(word[3]!, `${word[1]}${bits}: word`);
      if (n >= 1n << BigInt(bits)) this.fail(`${tok}: does not fit in ${bits} bits`);
      const buf = Buffer.alloc(bits / 8);
      for (let i = 0; i < bits / 8; i++) {
        const byte = Number((n >> BigInt(8 * i)) & 0xffn);
        buf[word[1] === 'le' ? i : bits / 8 - 1 - i] = byte;
      }
      return this.bytesValue(buf);
    }
    if (tok === '') this.fail(`unexpected "${c}"`);
    const b = parseNumber(tok, 'byte');
    if (b > 255n) this.fail(`byte ${tok} is not in the range 0..255`);
    return this.bytesValue(Buffer.from([Number(b)]));
  }

  /** A "…" string, with C escapes; characters are UTF-8 encoded. */
  private string(): Buffer {
    this.pos++; // the opening quote
    const out: number[] = [];
    const t = this.text;
    while (this.pos < t.length && t[this.pos] !== '"') {
      const ch = t[this.pos]!;
      if (ch !== '\\') {
        const cp = t.codePointAt(this.pos)!;
        const s = String.fromCodePoint(cp);
        out.push(...Buffer.from(s, 'utf8'));
        this.pos += s.length;
        continue;
      }
      const e = t[this.pos + 1];
      if (e === 'x' && /^[0-9a-fA-F]{2}$/.test(t.slice(this.pos + 2, this.pos + 4))) {
        out.push(parseInt(t.slice(this.pos + 2, this.pos + 4), 16));
        this.pos += 4;
      } else if (e !== undefined && e in ESCAPES) {
        out.push(ESCAPES[e]!);
        this.pos += 2;
      } else this.fail(`unknown escape "\\${e ?? ''}" in a string`);
    }
    if (this.pos >= t.length) this.fail('unterminated string');
    this.pos++;
    return Buffer.from(out);
  }

  /** EXPR*N: a dense value becomes one buffer (filled by Buffer#fill), a sparse one N copies of its pieces. */
  private repeat(v: Value, n: number): Value {
    const total = v.len * n;
    if (!Number.isSafeInteger(total)) this.fail(`repeat: ${v.len} × ${n} bytes is larger than 2^53 - 1`);
    if (n === 0 || v.len === 0) return { len: 0, pieces: [] };
    const only = v.pieces.length === 1 ? v.pieces[0]! : undefined;
    if (only && only.at === 0 && only.buf.length === v.len) {
      this.account(total - v.len, 0);
      return { len: total, pieces: [{ at: 0, buf: Buffer.alloc(total, only.buf) }] };
    }
    this.account(v.pieces.reduce((s, p) => s + p.buf.length, 0) * (n - 1), v.pieces.length * (n - 1));
    const pieces: DataPiece[] = [];
    for (let i = 0; i < n; i++) for (const p of v.pieces) pieces.push({ at: i * v.len + p.at, buf: p.buf });
    return { len: total, pieces };
  }

  /** After "[": N:M (either may be omitted) and "]". Bytes [N, M) of the value. */
  private slice(v: Value): Value {
    this.skip();
    const a = this.token(/[\s:\]]/);
    this.skip();
    if (this.text[this.pos] !== ':') this.fail('a slice is [START:END]');
    this.pos++;
    this.skip();
    const b = this.token(/[\s\]]/);
    this.skip();
    if (this.text[this.pos] !== ']') this.fail('missing "]"');
    this.pos++;
    const start = a === '' ? 0 : safe(parseNumber(a, 'slice start'), 'slice start');
    const end = b === '' ? v.len : safe(parseNumber(b, 'slice end'), 'slice end');
    if (start > end) this.fail(`slice [${start}:${end}] ends before it starts`);
    if (end > v.len) this.fail(`slice [${start}:${end}] runs past the end of what it applies to (${v.len} byte${v.len === 1 ? '' : 's'}: a slice applies to the element just before it; group with ( ) to slice more)`);
    const pieces: DataPiece[] = [];
    for (const p of v.pieces) {
      const from = Math.max(p.at, start);
      const to = Math.min(p.at + p.buf.length, end);
      if (from < to) pieces.push({ at: from - start, buf: p.buf.subarray(from - p.at, to - p.at) });
    }
    return { len: end - start, pieces };
  }
}

/** Parse nbdkit's `data=` format. Throws DataFormatError naming the place and the problem. */
export function parseData(text: string, limits: DataParseLimits = {}): DataImage {
  const v = new Parser(text, limits).sequence(undefined, new Map());
  return { length: v.len, pieces: v.pieces };
}
