/**
 * The live view (`nbd-engine serve --inspect[=PORT]`): a small HTTP server on
 * a loopback address that serves one self-contained page, and a WebSocket on
 * the same port over which the page receives every connection's trace
 * records as they happen (the records of `./trace-format.ts`, each with its
 * transcript line). Nothing is fetched from anywhere else.
 *
 * It costs nothing while no page is open: each open page is one tap on the
 * server (`server.tap`), attached when the page connects and detached when it
 * goes; a tap attached mid-connection first gets the connection's current
 * states. A page that cannot keep up (more than `maxBufferedBytes` unsent) is
 * disconnected rather than let the server's memory grow; it can reload.
 */
import http from 'node:http';
import { WebSocketServer, type WebSocket } from 'ws';
import type { TraceRecord, TraceSink } from './trace-format.js';
import { MACHINE_NAMES, MACHINES, machineGraph, toSvg } from './statechart.js';
import { livePage } from './live-page.js';
import { describeRecord } from './transcript.js';
import { inlineSvg, valueStateIds } from './view.js';
import type { Logger } from '../transport/logger.js';
import { INSPECT_PORT } from '../defaults.js';

export { INSPECT_PORT };

export interface LiveOptions {
  /** Loopback only: 127.0.0.1 (default), ::1 or localhost. */
  readonly host?: string;
  /** 0 picks a free port. Default INSPECT_PORT. */
  readonly port?: number;
  /**
   * Listen on this UNIX socket instead of a TCP port (for example to forward
   * it over ssh: `ssh -L 10880:/path/to/socket host`); `url` is then
   * `unix:PATH`, and only clients that send no Origin are accepted.
   */
  readonly path?: string;
  /** Unsent bytes a page may fall behind by before it is disconnected (default 8 MiB; each queued message counted as its bytes + MESSAGE_OVERHEAD). */
  readonly maxBufferedBytes?: number;
  /** Pages open at once; one more is refused (its WebSocket closed at once, one log line). Default 8. */
  readonly maxPages?: number;
  readonly logger?: Logger;
}

/** What the live view needs of a server. */
export interface Tappable {
  tap(sink: TraceSink): { unsubscribe(): void };
}

export interface LiveInspector {
  /** The page's address, e.g. http://127.0.0.1:10880/ */
  readonly url: string;
  /** Pages open now. */
  readonly pages: number;
  close(): Promise<void>;
}

/** What one queued message is counted as besides its bytes, in a page's backlog (measured: about 230). */
export const MESSAGE_OVERHEAD = 256;

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

/** The message a page receives: a record, its transcript line, and for a step or snapshot the ids of its machine's active states. */
export interface LiveMessage {
  readonly record: TraceRecord;
  readonly line: string;
  readonly active?: readonly string[];
}

export async function startLiveInspector(server: Tappable, options: LiveOptions = {}): Promise<LiveInspector> {
  const host = options.host ?? '127.0.0.1';
  if (options.path === undefined && !LOOPBACK.has(host)) throw new Error(`the live view listens on a loopback address only (127.0.0.1, ::1, localhost), not ${JSON.stringify(host)}`);
  const maxBuffered = options.maxBufferedBytes ?? 8 * 1024 * 1024;
  const maxPages = options.maxPages ?? 8;
  const log = options.logger;
  const charts = Object.fromEntries(await Promise.all(MACHINE_NAMES.map(async (name) => [name, inlineSvg(await toSvg(machineGraph(MACHINES[name])), name)] as const)));
  const page = livePage(charts);

  const http$ = http.createServer((req, res) => {
    if (req.method === 'GET' && (req.url === '/' || req.url === '/index.html')) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', 'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:" });
      res.end(page);
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
  });
  await new Promise<void>((resolve, reject) => {
    http$.once('error', reject);
    const listening = () => {
      http$.off('error', reject);
      resolve();
    };
    if (options.path !== undefined) http$.listen(options.path, listening);
    else http$.listen(options.port ?? INSPECT_PORT, host, listening);
  });
  const address = http$.address();
  let origin: string;
  const origins = new Set<string>();
  if (typeof address === 'string' || address === null) {
    origin = `unix:${options.path}`;
  } else {
    origin = `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`;
    origins.add(origin).add(`http://localhost:${address.port}`);
  }

  // A web page elsewhere may not read the trace: browsers send their page's Origin with a WebSocket
  // handshake, and only this page's own is accepted (tools that send none, like `ws` clients, are).
  const wss = new WebSocketServer({
    server: http$,
    path: '/events',
    verifyClient: ({ origin: o }: { origin?: string }) => o === undefined || origins.has(o),
    // The page sends nothing: a peer's messages are not buffered (ws's default would take 100 MiB each).
    maxPayload: 1024,
  });
  const pages = new Set<WebSocket>();
  // The server hands each record to every page's sink in turn: it is encoded once, and the pages'
  // queues share the one buffer. (Encoded per page, 8 pages made 8 strings and 8 buffers of every
  // record: under a connection flood that garbage took the server's peak RSS 176 MiB over the same
  // flood without pages, and the CPU it cost cut the connections served to a sixth.)
  let last: { readonly record: TraceRecord; readonly data: Buffer } | undefined;
  const encode = (record: TraceRecord): Buffer => {
    if (last?.record === record) return last.data;
    const active = record.type === 'step' ? record.active : record.type === 'snapshot' ? valueStateIds(MACHINES[record.actor].id, record.value) : undefined;
    const message: LiveMessage = { record, line: describeRecord(record), active };
    last = { record, data: Buffer.from(JSON.stringify(message)) };
    return last.data;
  };
  wss.on('connection', (ws) => {
    // Each page holds up to maxBuffered of its own backlog: their number bounds the memory they may take.
    if (pages.size >= maxPages) {
      log?.warn?.(`live view: ${maxPages} pages open already (maxPages); one more refused`);
      ws.close(1013, 'too many pages open');
      return;
    }
    ws.on('message', () => {}); // nothing a page sends is used
    pages.add(ws);
    let open = true;
    // Messages handed to the socket and not yet written: each costs about 230 bytes besides its own
    // (its frame header and write-queue entries, measured), counted as MESSAGE_OVERHEAD in the backlog.
    let queued = 0;
    const written = () => void queued--;
    const sink: TraceSink = {
      write(record) {
        if (!open) return;
        if (ws.bufferedAmount + queued * MESSAGE_OVERHEAD > maxBuffered) {
          // Not a closing handshake: the page is not reading, it would never answer. Drop it and its tap now.
          log?.warn?.(`live view: a page fell more than ${maxBuffered} bytes behind; disconnected`);
          done();
          ws.terminate();
          return;
        }
        // A text frame, as before: the page reads JSON.
        queued++;
        ws.send(encode(record), { binary: false }, written);
      },
    };
    let tap: { unsubscribe(): void } | undefined;
    const done = () => {
      if (!pages.delete(ws)) return;
      open = false;
      tap?.unsubscribe();
    };
    tap = server.tap(sink);
    // Fell behind already while being sent the live connections' current states.
    if (!open) tap.unsubscribe();
    ws.on('close', done);
    ws.on('error', done);
  });

  return {
    url: typeof address === 'string' || address === null ? origin : `${origin}/`,
    get pages() {
      return pages.size;
    },
    async close() {
      for (const ws of pages) ws.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
      http$.closeAllConnections?.();
      await new Promise<void>((resolve) => http$.close(() => resolve()));
    },
  };
}
