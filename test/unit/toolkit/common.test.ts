/**
 * Shared building blocks (src/plugins/common.ts): the power-of-2 test past
 * 2^32, where a bitwise test truncates, and the seeded generator's sequence.
 */
import { describe, expect, it } from 'vitest';
import { isPowerOf2, mulberry32 } from '../../../src/plugins/common.js';
import { seededRandom } from '../../../src/filters/ops-common.js';

describe('isPowerOf2', () => {
  it('is true for every power of 2 up to 2^52 and false beside them', () => {
    for (let k = 0; k <= 52; k++) {
      expect(isPowerOf2(2 ** k)).toBe(true);
      if (k >= 2) expect(isPowerOf2(2 ** k + 2 ** (k - 1))).toBe(false);
      if (k >= 2) expect(isPowerOf2(2 ** k - 1)).toBe(false);
    }
  });
  it('is false for 3 * 2^32 (a bitwise n & (n - 1) sees only its low 32 bits: zero), non-integers, 0, negatives', () => {
    expect(isPowerOf2(3 * 2 ** 32)).toBe(false);
    for (const n of [0, -2, 1.5, NaN, Infinity, 2 ** 53]) expect(isPowerOf2(n)).toBe(false);
  });
});

describe('mulberry32', () => {
  it('gives the same unsigned 32-bit sequence for a seed, and seededRandom is it scaled to [0, 1)', () => {
    const a = mulberry32(42);
    const b = mulberry32(42);
    const r = seededRandom(42);
    for (let i = 0; i < 1000; i++) {
      const x = a();
      expect(x).toBe(b());
      expect(Number.isInteger(x) && x >= 0 && x < 2 ** 32).toBe(true);
      expect(r()).toBe(x / 2 ** 32);
    }
    expect(mulberry32(43)()).not.toBe(mulberry32(42)());
  });
});
