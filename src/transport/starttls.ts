/**
 * NBD_OPT_STARTTLS on a live connection: after the handshake machine has
 * queued the ACK and entered `upgradingTls`, the ACK goes out in plaintext,
 * the raw socket stops being read, and TLS takes it over. Anything the
 * client pipelined behind STARTTLS is plaintext that must never be
 * interpreted (docs/rules.md, tls.plaintext-after-starttls): the client is
 * disconnected, none of it parsed. The session continues on the encrypted
 * stream (`adopt`) or drops the connection (`fail`: one log line, only this
 * connection affected).
 */
import type { Duplex } from 'node:stream';
import type { TlsUpgrade } from './tls.js';

/** Why an upgrade is abandoned (src/protocol/errors.ts). */
export type TlsDropCode = 'NBD_ERR_TLS_NOT_CONFIGURED' | 'tls.plaintext-after-starttls' | 'tls.handshake-failed' | 'NBD_ERR_HANDSHAKE_TIMEOUT';

export interface UpgradeHost {
  /** Drop what the decoder holds (bytes pipelined behind STARTTLS); how many there were. */
  discardPlaintext(): number;
  /** Send what is queued (the ACK), stop reading the raw socket, and hand it over. */
  releaseRaw(): Duplex;
  /** The upgrade is still wanted: the connection is open and the handshake still upgrading. */
  stillUpgrading(): boolean;
  /** Continue the session on the encrypted stream. */
  adopt(upgraded: TlsUpgrade): void;
  /** Drop the connection: one log line, the handshake machine told `tls.failed`; `code` says why. */
  fail(code: TlsDropCode, logLine: string): void;
}

export function startTls(host: UpgradeHost, upgrade: ((socket: Duplex) => Promise<TlsUpgrade>) | undefined): void {
  if (!upgrade) {
    host.fail('NBD_ERR_TLS_NOT_CONFIGURED', 'STARTTLS accepted but no TLS credentials are configured; disconnecting');
    return;
  }
  const dropped = host.discardPlaintext();
  if (dropped > 0) {
    plaintextDuringUpgrade(host, dropped);
    return;
  }
  upgrade(host.releaseRaw()).then(
    (upgraded) => {
      // The upgrade was abandoned meanwhile (timeout, the connection gone): the new stream goes too.
      if (!host.stillUpgrading()) {
        upgraded.stream.destroy();
        return;
      }
      host.adopt(upgraded);
    },
    (err: Error) => host.fail('tls.handshake-failed', `TLS handshake failed: ${err.message}; disconnecting`),
  );
}

/** Plaintext arrived on the raw socket while the upgrade was under way: never interpreted. */
export function plaintextDuringUpgrade(host: UpgradeHost, bytes: number): void {
  host.fail('tls.plaintext-after-starttls', `${bytes} plaintext bytes pipelined behind STARTTLS; disconnecting`);
}
