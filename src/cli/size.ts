/**
 * nbdkit-style sizes: a number with an optional suffix — b (bytes), s
 * (512-byte sectors), k/K, m/M, g/G, t/T, p/P, e/E (powers of 1024).
 */
const MULT: Record<string, number> = {
  b: 1,
  s: 512,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
  p: 2 ** 50,
  e: 2 ** 60,
};

export function parseSize(text: string): number {
  const m = /^\s*(\d+)\s*([bskmgtpe])?(?:i?b)?\s*$/i.exec(text);
  if (!m) throw new RangeError(`cannot parse size "${text}" (examples: 1048576, 512M, 1G, 16T)`);
  const n = Number(m[1]) * (m[2] ? MULT[m[2].toLowerCase()]! : 1);
  if (!Number.isSafeInteger(n)) throw new RangeError(`size "${text}" is larger than 2^53 bytes`);
  return n;
}
