/**
 * Socket activation (LISTEN_PID / LISTEN_FDS): LISTEN_PID may name this
 * process or one of its ancestors (a launcher such as `sh -c` or `timeout`
 * between the activating program and the server), but only when fd 3… are
 * sockets here; anything else is ignored with one line saying why, and
 * sockets meant for us that did not arrive (npx closes them) are `lost`.
 */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { activationFds, isAncestor, processProbe, socketActivation, type ActivationProbe } from '../../../src/transport/listen.js';

/** A process tree 100 → 50 (sh -c) → 10 (nbdinfo) → 1, with fd 3 and 4 open sockets unless told otherwise. */
function probe(options: { sockets?: number[] } = {}): ActivationProbe {
  const parents: Record<number, number> = { 100: 50, 50: 10, 10: 1, 1: 0 };
  const names: Record<number, string> = { 50: 'sh -c node serve', 10: 'nbdinfo -- [' };
  const sockets = new Set(options.sockets ?? [3, 4]);
  return { pid: 100, parentOf: (p) => parents[p], describe: (p) => names[p], isSocket: (fd) => sockets.has(fd) };
}

describe('socketActivation', () => {
  it('LISTEN_PID naming this process: fd 3 … 3+n−1', () => {
    expect(socketActivation({ LISTEN_PID: '100', LISTEN_FDS: '2' }, probe())).toEqual({ fds: [3, 4] });
  });

  it('LISTEN_PID naming the parent or a grandparent: accepted when the sockets are here', () => {
    expect(socketActivation({ LISTEN_PID: '50', LISTEN_FDS: '1' }, probe())).toEqual({ fds: [3] });
    expect(socketActivation({ LISTEN_PID: '10', LISTEN_FDS: '2' }, probe())).toEqual({ fds: [3, 4] });
  });

  it('an ancestor whose sockets did not arrive (npx): lost, with the reason and what to run instead', () => {
    const a = socketActivation({ LISTEN_PID: '10', LISTEN_FDS: '1' }, probe({ sockets: [] }));
    expect(a.fds).toEqual([]);
    expect(a.lost).toBe(true);
    expect(a.ignored).toMatch(/LISTEN_FDS=1 was passed to process 10 \(nbdinfo -- \[\), which started this one, but fd 3 is not an open socket here/);
    expect(a.ignored).toMatch(/npx/);
    expect(a.ignored).toMatch(/node_modules\/\.bin\/nbd-engine/);
  });

  it('this process, but one of the descriptors is not a socket: lost, naming it', () => {
    const a = socketActivation({ LISTEN_PID: '100', LISTEN_FDS: '2' }, probe({ sockets: [3] }));
    expect(a).toMatchObject({ fds: [], lost: true });
    expect(a.ignored).toMatch(/fd 4 is not an open socket/);
  });

  it('LISTEN_PID of an unrelated process: ignored, not lost, saying why', () => {
    const a = socketActivation({ LISTEN_PID: '4242', LISTEN_FDS: '1' }, probe());
    expect(a.fds).toEqual([]);
    expect(a.lost).toBeUndefined();
    expect(a.ignored).toBe('LISTEN_PID=4242 is neither this process (100) nor one of its parents: left over from another program\'s socket activation');
  });

  it('init (pid 1) is everyone\'s ancestor but never the activated process', () => {
    expect(socketActivation({ LISTEN_PID: '1', LISTEN_FDS: '1' }, probe())).toMatchObject({ fds: [], ignored: expect.stringMatching(/^LISTEN_PID=1 is neither/) });
  });

  it('malformed or missing variables', () => {
    expect(socketActivation({}, probe())).toEqual({ fds: [] });
    expect(socketActivation({ LISTEN_PID: '100' }, probe())).toEqual({ fds: [] });
    expect(socketActivation({ LISTEN_PID: '100', LISTEN_FDS: '0' }, probe())).toEqual({ fds: [] });
    expect(socketActivation({ LISTEN_PID: '100', LISTEN_FDS: 'abc' }, probe()).ignored).toMatch(/^LISTEN_FDS="abc" is not a count/);
    expect(socketActivation({ LISTEN_PID: '100', LISTEN_FDS: '-1' }, probe()).ignored).toMatch(/^LISTEN_FDS="-1" is not a count/);
    expect(socketActivation({ LISTEN_FDS: '1' }, probe()).ignored).toMatch(/without a valid LISTEN_PID \(unset\)/);
    expect(socketActivation({ LISTEN_PID: 'x', LISTEN_FDS: '1' }, probe()).ignored).toMatch(/without a valid LISTEN_PID \("x"\)/);
  });
});

describe('activationFds', () => {
  it('warns once, saying it is ignored and why, when LISTEN_FDS is set but not for us', () => {
    const lines: string[] = [];
    expect(activationFds({ LISTEN_PID: '4242', LISTEN_FDS: '1' }, (m) => lines.push(m), probe())).toEqual([]);
    expect(lines).toEqual(["socket activation ignored: LISTEN_PID=4242 is neither this process (100) nor one of its parents: left over from another program's socket activation"]);
  });

  it('says nothing when activation is used or was never asked for', () => {
    const lines: string[] = [];
    expect(activationFds({ LISTEN_PID: '50', LISTEN_FDS: '1' }, (m) => lines.push(m), probe())).toEqual([3]);
    expect(activationFds({}, (m) => lines.push(m), probe())).toEqual([]);
    expect(lines).toEqual([]);
  });
});

describe('the real process tree (/proc)', () => {
  it('parentOf reads our parent pid; our parent and grandparent are ancestors, a child and init are not', async () => {
    expect(processProbe.pid).toBe(process.pid);
    expect(processProbe.parentOf(process.pid)).toBe(process.ppid);
    expect(isAncestor(process.ppid)).toBe(true);
    const grandparent = processProbe.parentOf(process.ppid);
    if (grandparent !== undefined && grandparent > 1) expect(isAncestor(grandparent)).toBe(true);
    expect(isAncestor(1)).toBe(false);
    expect(isAncestor(process.pid)).toBe(false);
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      expect(isAncestor(child.pid!)).toBe(false);
      // From the child's side, this process is an ancestor.
      expect(isAncestor(process.pid, { pid: child.pid!, parentOf: processProbe.parentOf })).toBe(true);
    } finally {
      child.kill();
    }
  });

  it('a descriptor that is not open is not a socket', () => {
    expect(processProbe.isSocket(987654)).toBe(false);
  });
});
