/**
 * descriptorWatch: one warn line when an accepted socket took the last file descriptor (the next
 * accept fails with EMFILE and libuv drops those clients unseen), at most one a second, counting
 * the times in between.
 */
import type net from 'node:net';
import { describe, expect, it } from 'vitest';
import { descriptorWatch, openFileLimit } from '../../../src/transport/listen.js';

const socketOn = (fd: number) => ({ _handle: { fd } }) as unknown as net.Socket;

describe('descriptorWatch', () => {
  it('silent below the limit; one line when the last descriptor is taken; then at most one a second, with the count', () => {
    const lines: string[] = [];
    let t = 0;
    const watch = descriptorWatch((m) => lines.push(m), 64, 1000, () => t);
    for (let fd = 20; fd < 63; fd++) watch(socketOn(fd));
    expect(lines).toEqual([]);
    watch(socketOn(63));
    expect(lines).toEqual(['out of file descriptors: all 64 (ulimit -n) are open; new connections are dropped until some close']);
    for (t = 100; t < 1000; t += 100) watch(socketOn(63));
    expect(lines).toHaveLength(1);
    t = 1000;
    watch(socketOn(63));
    expect(lines[1]).toBe('out of file descriptors: all 64 (ulimit -n) are open (10 times since the last such line); new connections are dropped until some close');
  });

  it('a socket without a descriptor (not a net.Socket of its own): nothing', () => {
    const lines: string[] = [];
    descriptorWatch((m) => lines.push(m), 64)({} as net.Socket);
    expect(lines).toEqual([]);
  });

  it('openFileLimit reads the soft limit of this process', () => {
    expect(openFileLimit()).toBeGreaterThan(0);
  });
});
