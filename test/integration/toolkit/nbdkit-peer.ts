/**
 * nbdkit as a reference peer for the filter tests: start it on a fresh
 * UNIX socket with the given arguments, run `fn` with its URI, stop it.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, tmpDir } from '../harness.js';

export async function withNbdkit<T>(args: string[], fn: (uri: string) => Promise<T>): Promise<T> {
  requireTool('nbdkit');
  const dir = tmpDir('nbdkit-peer-');
  const sock = path.join(dir, 'kit.sock');
  const kit = spawn('nbdkit', ['-f', '-U', sock, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  kit.stderr!.on('data', (d) => (err += d));
  try {
    // Wait (by polling, no fixed sleep) for the socket, or for nbdkit to fail.
    for (let i = 0; !fs.existsSync(sock); i++) {
      if (kit.exitCode !== null || i > 500) throw new Error(`nbdkit ${args.join(' ')} did not start: ${err}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    return await fn(`nbd+unix:///?socket=${sock}`);
  } finally {
    kit.kill('SIGTERM');
    await new Promise((r) => (kit.exitCode !== null ? r(null) : kit.once('exit', r)));
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
