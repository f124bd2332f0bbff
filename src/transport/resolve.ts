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
import type { EffectHost } from './effects.js';

/** Ask the server's handler, answer the handshake machine if it still waits. */
export function askServer(request: ResolveRequest, host: Pick<EffectHost, 'log' | 'peer' | 'resolver' | 'resolving' | 'answer'>): void {
  const handler = host.resolver();
  // Always asynchronous: the machine is mid-step when it emits `resolve`.
  const asked = handler ? Promise.resolve().then(() => handler(request)) : Promise.reject(new Error('this server resolves no exports'));
  const what = request.kind === 'list' ? 'listing exports' : `opening export ${quoteName(request.name)}`;
  asked
    .catch((err: unknown): ResolveEvent => {
      const message = err instanceof Error ? err.message : String(err);
      host.log().warn(`${host.peer()}: ${what} failed: ${message}`);
      return { type: 'resolve.failed', message };
    })
    .then((answer) => {
      if (host.resolving()) host.answer(answer);
    })
    // Not reached: sending to the machine reports its own failures (machines.ts); kept so nothing is unhandled.
    .catch((err: unknown) => host.log().error(`${host.peer()}: answering the handshake machine: ${String(err)}`));
}
