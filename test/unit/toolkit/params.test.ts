/**
 * key=value parameters of command-line backends and filters: conversion by
 * kind, nbdkit's magic key for a bare value, and one clear error per mistake.
 */
import { describe, expect, it } from 'vitest';
import { ParamError, readParams, type ParamSpec } from '../../../src/plugins/params.js';
import { backendPlugin, filterPlugin } from '../../../src/plugins/registry.js';

const SPECS: ParamSpec[] = [
  { name: 'size', kind: 'size', summary: 'size', required: true },
  { name: 'count', kind: 'integer', summary: 'count' },
  { name: 'rate', kind: 'number', summary: 'rate' },
  { name: 'on', kind: 'boolean', summary: 'flag' },
  { name: 'mode', kind: 'string', summary: 'mode', choices: ['a', 'b'] },
  { name: 'tag', kind: 'string', summary: 'tag', repeat: true },
];

describe('readParams', () => {
  it('converts each kind', () => {
    expect(readParams('p', SPECS, ['size=1G', 'count=-3', 'rate=0.25', 'on=yes', 'mode=b', 'tag=x', 'tag=y=z'])).toEqual({
      size: 2 ** 30,
      count: -3,
      rate: 0.25,
      on: true,
      mode: 'b',
      tag: ['x', 'y=z'],
    });
    expect(readParams('p', SPECS, ['size=2048s', 'on=OFF'])).toEqual({ size: 2048 * 512, on: false });
  });

  it('takes a bare value as the magic key', () => {
    expect(readParams('memory', SPECS, ['64M'], 'size')).toEqual({ size: 64 * 2 ** 20 });
  });

  it.each([
    [['size=1G', 'colour=red'], /unknown parameter "colour" \(known: size, count/],
    [['count=1'], /size=… is required/],
    [['size=1G', 'count=1.5'], /count=1.5: not an integer/],
    [['size=lots'], /size=lots: cannot parse size/],
    [['size=1G', 'on=maybe'], /on=maybe: expected true/],
    [['size=1G', 'mode=c'], /mode=c: expected one of a, b/],
    [['size=1G', 'size=2G'], /size given twice/],
    [['1G'], /"1G" is not key=value/],
  ])('refuses %j with one clear message', (args, message) => {
    expect(() => readParams('p', SPECS, args)).toThrow(ParamError);
    expect(() => readParams('p', SPECS, args)).toThrow(message);
  });
});

describe('registry', () => {
  it('loads the memory and file plugins by name and refuses unknown names', async () => {
    expect((await backendPlugin('memory')).magic).toBe('size');
    const mem = await (await backendPlugin('memory')).create({ size: 4096 }, { logger: { warn() {}, error() {} }, readOnly: true });
    expect(mem.size).toBe(4096);
    expect(mem.readOnly).toBe(true);
    await expect(backendPlugin('floppy')).rejects.toThrow(/unknown backend "floppy" \(known: .*memory/);
    await expect(filterPlugin('nope')).rejects.toThrow(/unknown filter "nope"/);
    await expect(backendPlugin('toString')).rejects.toThrow(/unknown backend/);
  });
});
