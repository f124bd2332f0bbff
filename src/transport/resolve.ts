/**
 * The handshake machine's `resolve` effect: the server's hooks (openExport,
 * a computed default export, listExports) work out what an export name
 * means on this connection, or its export list, while the machine waits in
 * `resolving`. The options the client sent meanwhile stay in the decoder
 * (flow control does not pull while the machine resolves) and are read, in
 * order, once the answer is in. A hook that throws becomes `resolve.failed`
 * and one log line; the connection goes on. An answer that comes after the
 * machine moved on (the client left, the handshake timed out) is dropped
 * here: the server closes what it opened when the connection closes.
 */
import type { ResolveEvent, ResolveRequest } from '../machines/types.js';
import { quoteName } from '../protocol/errors.js';
import type { Logger } from './logger.js';

export interface ResolveHost {
  /** The server's handler (SessionHandlers.resolve) for this session, if any. */
  readonly handler: ((request: ResolveRequest) => Promise<ResolveEvent>) | undefined;
  readonly log: Logger;
  readonly peer: string;
  /** The handshake machine still waits for this answer. */
  waiting(): boolean;
  /** Give the machine its answer (and read on). */
  answer(event: ResolveEvent): void;
  /** Something failed that is not the hook's: drop the connection. */
  fail(message: string): void;
}

export function askServer(request: ResolveRequest, host: ResolveHost): void {
  const handler = host.handler;
  // Always asynchronous: the machine is mid-step when it emits `resolve`.
  const asked = handler ? Promise.resolve().then(() => handler(request)) : Promise.reject(new Error('this server resolves no exports'));
  const what = request.kind === 'list' ? 'listing exports' : `opening export ${quoteName(request.name)}`;
  asked
    .catch((err: unknown): ResolveEvent => {
      const message = err instanceof Error ? err.message : String(err);
      host.log.warn(`${host.peer}: ${what} failed: ${message}`);
      return { type: 'resolve.failed', message };
    })
    .then((answer) => {
      if (host.waiting()) host.answer(answer);
    })
    .catch((err: unknown) => host.fail(`answering the handshake machine: ${String(err)}`));
}
