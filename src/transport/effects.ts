/**
 * What the session does for each effect the handshake and transmission
 * machines emit: send a reply, end the connection (softly: let queued
 * replies go; hard: drop it, one log line), start STARTTLS, log, hand
 * resolve an export name or the export list (asking the server's hooks),
 * accepted requests to the application, answer refused ones, begin draining.
 * The machines decide; these carry it out.
 */
import type { FrameDecoder } from '../protocol/decoder.js';
import type { RequestFrame } from '../protocol/frames.js';
import type { HandshakeEmitted, Refusal, ResolveEvent, ResolveRequest, TransmissionEmitted } from '../machines/types.js';
import { askServer } from './resolve.js';
import type { CloseCode } from '../protocol/errors.js';
import type { Logger } from './logger.js';
import type { ReplyWriter } from './socket.js';

/** The session, as the effects see it. */
export interface EffectHost {
  /** The reply writer now (a new one after STARTTLS). */
  writer(): ReplyWriter;
  decoder(): FrameDecoder;
  log(): Logger;
  peer(): string;
  /** Why the connection ends (for `connections$` and the log): its catalogue code and text. */
  ending(code: CloseCode, reason: string): void;
  /** One warning per dropped connection. */
  logDrop(message: string): void;
  /** Bytes received after the end of the session: dropped, said once in the log. */
  ignoreAfterStop(bytes: number): void;
  startTls(): void;
  /** The server's handler for `resolve` (SessionHandlers.resolve), if any. */
  resolver(): ((request: ResolveRequest) => Promise<ResolveEvent>) | undefined;
  /** The handshake machine waits in `resolving`. */
  resolving(): boolean;
  /** Give the handshake machine the server's answer, then read on. */
  answer(event: ResolveEvent): void;
  deliver(frame: RequestFrame): void;
  refuse(refusal: Pick<Refusal, 'frame' | 'code' | 'errno' | 'message'>): void;
  /** Draining began: the clocks stop; with nothing in flight the machine hears so. */
  draining(): void;
}

export function handshakeEffect(host: EffectHost, e: HandshakeEmitted): void {
  switch (e.type) {
    case 'send':
      host.writer().write(e.frame);
      return;
    case 'close': {
      host.ending(e.code, e.reason);
      // The handshake is over: bytes the client sent after this are never interpreted (after ABORT, said once).
      const left = host.decoder().stop();
      if (!e.hard) host.ignoreAfterStop(left);
      const writer = host.writer();
      if (e.hard) {
        host.logDrop(`disconnecting: ${withCode(e.code, e.reason)}`);
        // Let the socket flush anything already queued, then drop it.
        writer.end();
        setImmediate(() => writer.destroy());
      } else {
        host.log().debug?.(`${host.peer()}: ${withCode(e.code, e.reason)}`);
        writer.end();
      }
      return;
    }
    case 'startTls':
      host.startTls();
      return;
    case 'resolve':
      askServer(e.request, host);
      return;
    case 'log':
      host.log()[e.level]?.(`${host.peer()}: ${e.message}`);
      return;
  }
}

export function transmissionEffect(host: EffectHost, e: TransmissionEmitted): void {
  switch (e.type) {
    case 'request':
      host.deliver(e.frame);
      return;
    case 'refuse':
      host.refuse(e);
      return;
    case 'requests':
      for (const frame of e.accepted) host.deliver(frame);
      for (const r of e.refused) host.refuse(r);
      return;
    case 'draining':
      // transmission.disc-drains: after DISC nothing more is interpreted; what follows is ignored, never fatal.
      if (e.reason === 'disc') host.ignoreAfterStop(host.decoder().stop());
      host.draining();
      return;
    case 'close':
      host.ending(e.code, e.reason);
      if (e.hard) {
        host.decoder().stop();
        host.logDrop(`disconnecting: ${withCode(e.code, e.reason)}`);
        host.writer().destroy();
      } else {
        host.writer().end();
      }
      return;
  }
}

/** A log text that starts with its catalogue code (rule-coded texts already do). */
export function withCode(code: string, text: string): string {
  const rule = code.split('/')[0]!;
  return text.startsWith(rule) ? text : `${code}: ${text}`;
}
