/**
 * Watching a live server on Stately's hosted inspector (stately.ai), with
 * the optional `@statelyai/inspect` package (`npm i -D @statelyai/inspect`).
 * Its WebSocket inspector sends every connection's machine events to a
 * relay; the relay serves a page on the same port that embeds stately.ai and
 * forwards the events to it. The page needs the network; nbd-engine's own
 * viewers (`trace view`, `serve --inspect`) do not.
 *
 *   npx tsc -p tsconfig.examples.json && node dist-examples/stately-inspect.js
 *   # open http://localhost:8080, then: nbdinfo nbd://localhost:10811/
 */
import { createInspectorServer } from '@statelyai/inspect/server';
import { createWebSocketInspector } from '@statelyai/inspect';
import { createServer, memoryBackend, type NbdServer } from 'nbd-engine';

export interface Watched {
  readonly server: NbdServer;
  /** Stop the server, the inspector and the relay. */
  stop(): Promise<void>;
}

export function start(relayPort = 8080): Watched {
  // 1. The relay, first: the inspector connects to it.
  const relay = createInspectorServer({ port: relayPort, autoOpen: false });
  // 2. The inspector: xstate's inspection events, serialised and sent to the relay.
  const inspector = createWebSocketInspector({ url: `ws://localhost:${relayPort}` });
  // 3. The server, with the inspector's observer on every connection actor.
  const server = createServer({
    exports: [{ name: '', description: '1 GiB in memory', backend: memoryBackend({ size: 1 << 30 }) }],
    inspect: inspector.inspect,
  });
  return {
    server,
    async stop() {
      await server.close({ timeout: 2000 });
      inspector.stop();
      relay.stop();
    },
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { server } = start();
  const listening = await server.listen({ port: 10811, host: 'localhost' });
  console.log('relay and Stately inspector page: http://localhost:8080');
  console.log('serving', listening.flatMap((l) => l.uris).join(' '));
}
