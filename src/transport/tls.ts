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
  /** Negotiated protocol version, e.g. `TLSv1.3`. */
  readonly protocol?: string;
  /** Negotiated cipher suite (OpenSSL name). */
  readonly cipher?: string;
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

/**
 * OpenSSL's messages carry a hex prefix and a source path; keep the reason
 * ("wrong version number", "tlsv1 alert unknown ca", ...) for the log line.
 */
function tidyError(err: Error): Error {
  const reason = (err as Error & { reason?: unknown }).reason;
  if (typeof reason !== 'string' || !reason) return err;
  const hint = /wrong version number|unknown protocol|http request|record layer failure/i.test(reason) ? ' (the client did not send a TLS ClientHello)' : '';
  return Object.assign(new Error(`${reason}${hint}`), { code: (err as NodeJS.ErrnoException).code, cause: err });
}

/**
 * Cipher list when PSK is configured. TLS 1.3 suites first and SHA-256 ones
 * before SHA-384: OpenSSL's PSK server callback yields a SHA-256 PSK in
 * TLS 1.3, which a SHA-384 suite would ignore (GnuTLS clients, libnbd and
 * qemu, then fail with "insufficient credentials"). Node's default list
 * excludes PSK for TLS 1.2 (`!PSK`); re-enable the AEAD PSK suites there.
 */
function pskCipherList(): string {
  const tls13 = ['TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256', 'TLS_AES_256_GCM_SHA384'];
  const defaults = tls.DEFAULT_CIPHERS.split(':').filter((c) => !tls13.includes(c) && c !== '!PSK');
  const firstExclusion = defaults.findIndex((c) => c.startsWith('!'));
  const positive = firstExclusion < 0 ? defaults : defaults.slice(0, firstExclusion);
  const exclusions = firstExclusion < 0 ? [] : defaults.slice(firstExclusion);
  const psk12 = ['ECDHE-PSK-CHACHA20-POLY1305', 'DHE-PSK-AES128-GCM-SHA256', 'DHE-PSK-AES256-GCM-SHA384', 'DHE-PSK-CHACHA20-POLY1305', 'PSK-AES128-GCM-SHA256', 'PSK-AES256-GCM-SHA384', 'PSK-CHACHA20-POLY1305', 'ECDHE-PSK-AES128-CBC-SHA256'];
  return [...tls13, ...positive, ...psk12, ...exclusions].join(':');
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
    ...(psk ? { ciphers: pskCipherList(), honorCipherOrder: true } : {}),
  });
  const timeout = cfg.handshakeTimeout ?? 30_000;
  return (socket: Duplex) =>
    new Promise<TlsUpgrade>((resolve, reject) => {
      let identity: string | undefined;
      let unknownIdentity: string | undefined;
      const secure = new tls.TLSSocket(socket as Socket, {
        isServer: true,
        secureContext: context,
        requestCert: !!cfg.verifyPeer,
        rejectUnauthorized: !!cfg.verifyPeer,
        ...(psk
          ? {
              pskCallback: (_s: tls.TLSSocket, id: string) => {
                const k = psk.get(id);
                if (k) identity = id;
                else unknownIdentity = id;
                return k ?? null;
              },
            }
          : {}),
      } as tls.TLSSocketOptions);
      const timer = setTimeout(() => fail(new Error(`TLS handshake timed out after ${timeout} ms`)), timeout);
      const cleanup = () => {
        clearTimeout(timer);
        secure.off('secure', onSecure);
        secure.off('error', fail);
        secure.off('close', onClose);
        secure.off('end', onClose);
      };
      function fail(err: Error) {
        cleanup();
        secure.destroy();
        const e = tidyError(err);
        // A PSK client whose identity we do not know fails later, with an unhelpful reason.
        if (unknownIdentity !== undefined && !identity) e.message = `unknown PSK identity ${JSON.stringify(unknownIdentity)} (${e.message})`;
        else if (psk && /binder does not verify|decrypt/i.test(e.message)) e.message += ' (wrong PSK key?)';
        reject(e);
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
        resolve({ stream: secure, identity, protocol: secure.getProtocol() ?? undefined, cipher: secure.getCipher()?.name });
      }
      secure.once('secure', onSecure);
      secure.once('error', fail);
      secure.once('close', onClose);
      secure.once('end', onClose);
    });
}
