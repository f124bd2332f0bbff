/**
 * The STARTTLS byte upgrade (protocol.md §1.10): after the handshake
 * machine's ACK, the same socket is wrapped by node:tls as a server
 * (TLS 1.2 minimum, 1.3 preferred) and the option phase continues on the
 * encrypted stream. x509 certificates (optionally verifying the client's
 * against a CA) and GnuTLS-style pre-shared keys (`username:hexkey` lines,
 * as psktool writes them).
 */
import fs from 'node:fs';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';

export interface TlsConfig {
  /** off = NOTLS, on = SELECTIVETLS (per-export tlsOnly), require = FORCEDTLS. */
  readonly mode: 'off' | 'on' | 'require';
  /** PEM certificate chain (contents or a file path). */
  readonly cert?: string | Buffer;
  /** PEM private key (contents or a file path). */
  readonly key?: string | Buffer;
  /** PEM CA bundle used to verify client certificates. */
  readonly ca?: string | Buffer;
  /** Require and verify a client certificate against `ca`. */
  readonly verifyPeer?: boolean;
  /** Pre-shared keys: a psktool file path, or a map identity → key. */
  readonly psk?: string | ReadonlyMap<string, Buffer>;
  /** Milliseconds allowed for the TLS handshake (default 30 s). */
  readonly handshakeTimeout?: number;
}

export interface TlsUpgrade {
  readonly stream: Duplex;
  /** PSK identity, or the client certificate's subject CN. */
  readonly identity?: string;
}

function pem(v: string | Buffer | undefined): string | Buffer | undefined {
  if (v === undefined) return undefined;
  if (Buffer.isBuffer(v)) return v;
  return v.includes('-----BEGIN') ? v : fs.readFileSync(v);
}

/** Parse a GnuTLS psktool file: `identity:hexkey` per line. */
export function parsePskFile(text: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(':');
    if (i <= 0) throw new Error(`PSK file line without "identity:key": ${JSON.stringify(line.slice(0, 40))}`);
    const hex = line.slice(i + 1);
    if (!/^([0-9a-fA-F]{2})+$/.test(hex)) throw new Error(`PSK key for "${line.slice(0, i)}" is not hex`);
    keys.set(line.slice(0, i), Buffer.from(hex, 'hex'));
  }
  if (keys.size === 0) throw new Error('PSK file has no keys');
  return keys;
}

/** Build the upgrade function for a TLS configuration (validated now, not per connection). */
export function createTlsUpgrader(cfg: TlsConfig): (socket: Duplex) => Promise<TlsUpgrade> {
  const psk = cfg.psk === undefined ? undefined : typeof cfg.psk === 'string' ? parsePskFile(fs.readFileSync(cfg.psk, 'utf8')) : cfg.psk;
  const cert = pem(cfg.cert);
  const key = pem(cfg.key);
  const ca = pem(cfg.ca);
  if (!psk && (!cert || !key)) throw new Error('TLS needs a certificate and key (tls-cert / tls-key) or a PSK file (tls-psk)');
  const context = tls.createSecureContext({
    cert,
    key,
    ca,
    minVersion: 'TLSv1.2',
    // PSK suites exist only in TLS 1.2 for Node; keep the defaults and add them.
    ciphers: psk ? `${tls.DEFAULT_CIPHERS}:PSK:DHE-PSK:ECDHE-PSK` : undefined,
  });
  const timeout = cfg.handshakeTimeout ?? 30_000;
  return (socket: Duplex) =>
    new Promise<TlsUpgrade>((resolve, reject) => {
      let identity: string | undefined;
      const secure = new tls.TLSSocket(socket as Socket, {
        isServer: true,
        secureContext: context,
        requestCert: !!cfg.verifyPeer,
        rejectUnauthorized: !!cfg.verifyPeer,
        // Without certificates only PSK suites can be negotiated: cap at 1.2 where Node offers them.
        ...(psk
          ? {
              pskCallback: (_s: tls.TLSSocket, id: string) => {
                const k = psk.get(id);
                if (k) identity = id;
                return k ?? null;
              },
              ...(cert ? {} : { maxVersion: 'TLSv1.2' as const }),
            }
          : {}),
      } as tls.TLSSocketOptions);
      const timer = setTimeout(() => fail(new Error(`TLS handshake timed out after ${timeout} ms`)), timeout);
      const cleanup = () => {
        clearTimeout(timer);
        secure.off('secure', onSecure);
        secure.off('error', fail);
        secure.off('close', onClose);
      };
      function fail(err: Error) {
        cleanup();
        secure.destroy();
        reject(err);
      }
      function onClose() {
        fail(new Error('client closed during the TLS handshake'));
      }
      function onSecure() {
        cleanup();
        if (!identity) {
          const peer = secure.getPeerCertificate?.();
          const cn = peer && typeof peer === 'object' ? (peer.subject as { CN?: string } | undefined)?.CN : undefined;
          if (cn) identity = cn;
        }
        resolve({ stream: secure, identity });
      }
      secure.once('secure', onSecure);
      secure.once('error', fail);
      secure.once('close', onClose);
    });
}
