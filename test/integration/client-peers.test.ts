/**
 * The client library against other servers: nbdkit (memory plugin) and
 * qemu-nbd (a sparse raw file), each on a UNIX socket. Same negotiation and
 * round trips as against our server, data verified, and no deviation
 * expected from either. Extended headers: Debian's nbdkit 1.32 and
 * qemu-nbd 7.2 predate them, so both must refuse the option (and the
 * connection must go on normally).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdConnection, OPT, REP } from '../../src/client/index.js';
import { requireTool, tmpDir } from './harness.js';
import { MiB, open, pipelined, roundTrips } from './client-support.js';

async function waitForSocket(file: string, child: ChildProcess, stderr: () => string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (fs.existsSync(file)) return;
    if (child.exitCode !== null) throw new Error(`server exited ${child.exitCode}: ${stderr()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`no socket ${file}: ${stderr()}`);
}

interface Peer {
  readonly name: string;
  start(dir: string): Promise<{ socket: string; child: ChildProcess }>;
}

async function launch(tool: string, args: string[], socket: string): Promise<{ socket: string; child: ChildProcess }> {
  let err = '';
  const child = spawn(requireTool(tool), args, { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.on('data', (d) => (err += d));
  await waitForSocket(socket, child, () => err);
  return { socket, child };
}

const PEERS: Peer[] = [
  {
    name: 'nbdkit memory 64M',
    start: (dir) => {
      const socket = path.join(dir, 'nbdkit.sock');
      return launch('nbdkit', ['-f', '-U', socket, 'memory', '64M'], socket);
    },
  },
  {
    name: 'qemu-nbd raw file',
    start: (dir) => {
      const socket = path.join(dir, 'qemu.sock');
      const file = path.join(dir, 'disk.raw');
      fs.writeFileSync(file, '');
      fs.truncateSync(file, 64 * MiB);
      return launch('qemu-nbd', ['-k', socket, '-f', 'raw', '--persistent', '--shared=8', file], socket);
    },
  },
];

for (const peer of PEERS) {
  describe(`client ↔ ${peer.name}`, () => {
    let dir: string;
    let server: { socket: string; child: ChildProcess };
    beforeAll(async () => {
      dir = tmpDir('nbd-client-peer-');
      server = await peer.start(dir);
    });
    afterAll(() => {
      server?.child.kill('SIGTERM');
      fs.rmSync(dir, { recursive: true, force: true });
    });

    it('negotiates: LIST, INFO, LIST_META_CONTEXT, structured replies, SET_META_CONTEXT base:allocation, GO with infos', async () => {
      const c = await NbdConnection.connect({ path: server.socket }, { timeoutMs: 20_000 });
      const g = await c.handshake();
      expect(g.flags & 1).toBe(1);
      const l = await c.list();
      expect(l.ok).toBe(true);
      expect(l.exports.map((e) => e.name)).toContain('');
      const info = await c.info('');
      expect(info.ok).toBe(true);
      expect(info.size).toBe(BigInt(64 * MiB));
      expect((await c.structuredReply()).ok).toBe(true);
      const listed = await c.listMetaContext('', ['base:allocation']);
      expect(listed.contexts.map((x) => x.name)).toEqual(['base:allocation']);
      const set = await c.setMetaContext('', ['base:allocation']);
      expect(set.contexts.map((x) => x.name)).toEqual(['base:allocation']);
      const go = await c.go('');
      expect(go.ok).toBe(true);
      // NBD_INFO_EXPORT always; block sizes are optional (nbdkit's memory plugin sends none).
      expect(go.infos.map((i) => i.info)).toContain('export');
      if (go.blockSize) expect(go.blockSize.minimum).toBeGreaterThan(0);
      expect(c.deviations).toEqual([]);
      expect(await c.disc()).toBe(true);
    });

    it('refuses EXTENDED_HEADERS (this version predates them), and the connection goes on', async () => {
      const c = await NbdConnection.connect({ path: server.socket }, { timeoutMs: 20_000 });
      await c.handshake();
      const r = await c.extendedHeaders();
      expect(r.ok).toBe(false);
      expect(r.replies.at(-1)!.type).toBe(REP.NBD_REP_ERR_UNSUP);
      expect(c.mode).toBe('simple');
      expect((await c.go('')).ok).toBe(true);
      expect(c.deviations).toEqual([]);
      await c.disc();
    });

    for (const structured of [true, false]) {
      it(`round trips and 128 pipelined requests with ${structured ? 'structured' : 'simple'} replies, data verified`, async () => {
        const c = await open({ path: server.socket }, { structured });
        await roundTrips(c);
        await pipelined(c);
        expect(c.deviations).toEqual([]);
        await c.disc();
      });
    }

    it('an unknown option gets an error reply and the next option still works', async () => {
      const c = await NbdConnection.connect({ path: server.socket }, { timeoutMs: 20_000 });
      await c.handshake();
      const r = await c.option(4242, Buffer.from('junk'));
      expect(r.at(-1)!.type).toBe(REP.NBD_REP_ERR_UNSUP);
      expect((await c.option(OPT.NBD_OPT_STRUCTURED_REPLY)).at(-1)!.type).toBe(REP.NBD_REP_ACK);
      expect(c.deviations).toEqual([]);
      c.destroy();
    });
  });
}
