/**
 * examples/stately-inspect.ts, the documented way to use Stately's hosted
 * inspector: the relay runs, the server's machine events reach it over its
 * WebSocket, and a second WebSocket client of the relay (what the relay's
 * page does in a browser) receives them. Nothing here reaches stately.ai.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as stately from '../../examples/stately-inspect.js';
import { requireTool, run, tmpDir } from './harness.js';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

let work: string;
beforeAll(() => {
  requireTool('nbdinfo');
  work = tmpDir();
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

describe('examples/stately-inspect', () => {
  it("a connection's machine snapshots reach the relay's other clients", async () => {
    const port = await freePort();
    const watched = stately.start(port);
    const received: Array<{ type?: string; snapshot?: { value?: unknown; machine?: unknown }; sessionId?: string }> = [];
    const viewer = new WebSocket(`ws://localhost:${port}`);
    try {
      await new Promise<void>((resolve, reject) => {
        viewer.once('open', () => resolve());
        viewer.once('error', reject);
      });
      viewer.on('message', (data) => received.push(JSON.parse(String(data))));
      const sock = path.join(work, 'stately.sock');
      await watched.server.listen({ path: sock });
      const { stdout } = await run('nbdinfo', ['--size', `nbd+unix:///?socket=${sock}`]);
      expect(stdout.trim()).toBe(String(1 << 30));
      // The inspector sends asynchronously: wait until the handshake's last state arrived.
      const negotiated = () => received.some((m) => m.type === '@xstate.snapshot' && m.snapshot?.value === 'negotiated');
      for (let i = 0; i < 100 && !negotiated(); i++) await new Promise((r) => setTimeout(r, 50));
      expect(negotiated()).toBe(true);
      const values = received.filter((m) => m.type === '@xstate.snapshot').map((m) => JSON.stringify(m.snapshot?.value));
      expect(values).toContain('"awaitingClientFlags"');
      expect(values).toContain('"draining"');
      expect(received.some((m) => m.type === '@xstate.actor')).toBe(true);
    } finally {
      viewer.close();
      await watched.stop();
    }
  });
});
