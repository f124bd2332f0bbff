/**
 * Zero-copy WRITEs, the transport's side: a large WRITE's payload is read
 * from the socket straight into storage the application offers
 * (`Backend.writeTargets`), but only when the transmission machine's own
 * check accepts the request now, and only when the storage offered fits
 * the payload exactly — otherwise the payload is buffered and the request
 * goes the ordinary way, with one warning.
 */
import type { AnyActorRef } from 'xstate';
import type { RequestFrame } from '../protocol/frames.js';
import type { Logger } from './logger.js';

/**
 * The targets `offer` gives for `frame`, checked: null (buffer it) when it
 * declines, throws, or gives storage that does not hold exactly the payload.
 */
export function checkedTargets(
  frame: RequestFrame,
  offer: (frame: RequestFrame) => readonly Buffer[] | null,
  log: Logger,
  peer: string,
): readonly Buffer[] | null {
  let targets: readonly Buffer[] | null;
  try {
    targets = offer(frame);
  } catch (err) {
    log.warn(`${peer}: WRITE placement failed, buffering instead: ${String(err)}`);
    return null;
  }
  if (targets === null) return null;
  // The payload must fit the targets exactly, or bytes would land outside them or be lost.
  let total = 0;
  try {
    for (const t of targets) total += t.length;
  } catch (err) {
    log.warn(`${peer}: WRITE placement gave unusable targets, buffering instead: ${String(err)}`);
    return null;
  }
  if (total !== frame.length) {
    log.warn(`${peer}: writeTargets gave ${total} bytes for a ${frame.length}-byte WRITE; buffering instead`);
    return null;
  }
  return targets;
}

/**
 * A session's placement decision for one large WRITE: only a request the
 * transmission machine's own check accepts now (transmission open, not
 * draining), and only if the application offers storage that fits.
 */
export function acceptedTargets(
  frame: RequestFrame,
  transmission: AnyActorRef | null,
  closed: boolean,
  offer: ((frame: RequestFrame) => readonly Buffer[] | null) | undefined,
  log: Logger,
  peer: string,
): readonly Buffer[] | null {
  if (!offer || !transmission || closed) return null;
  const snap = transmission.getSnapshot();
  if (snap.status !== 'active' || !snap.matches('open') || snap.context.check(frame) !== null) return null;
  return checkedTargets(frame, offer, log, peer);
}
