/**
 * The STARTTLS byte upgrade (docs/rules.md, the `tls.*` rules): after the handshake
 * machine's ACK, the same socket is wrapped by node:tls as a server
 * (TLS 1.2 minimum, 1.3 preferred) and the option phase continues on the
 * encrypted stream. x509 certificates (optionally verifying the client's
 * against a CA) and GnuTLS-style pre-shared keys (`username:hexkey` lines,
 * as psktool writes them).
 */
import { constants as cryptoConstants } from 'node:crypto';
import fs from 'node:fs';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { NbdError } from '../api/errors.js';

export interface TlsConfig {
  /** off = NOTLS, on = SELECTIVETLS (per-export tlsOnly), require = FORCEDTLS. */
  readonly mode: 'off' | 'on' | 'require';
  /** PEM certificate chain (contents or a file path). */
  readonly cert?: string | Buffer;
  /** PEM private key (contents or a file path). */
  readonly key?: string | Buffer;
  /** PEM CA bundle used to verify client certificates. */
  readonly ca?: string | Buffer;
  /**
   * Require a client certificate signed by `ca` (which must then be given);
   * a client that authenticates with a PSK needs none.
   */
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

/** A file the TLS configuration names, read now: a missing or unreadable one is a configuration error naming the option. */
function readConfigFile(what: string, file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new NbdError('NBD_ERR_CONFIG', `${what}: cannot read ${JSON.stringify(file)}: ${(err as Error).message}`);
  }
}

function pem(what: string, v: string | Buffer | undefined): string | Buffer | undefined {
  if (v === undefined) return undefined;
  if (Buffer.isBuffer(v)) return v;
  return v.includes('-----BEGIN') ? v : readConfigFile(what, v);
}

/** The longest pre-shared key OpenSSL (node:tls) takes, in bytes. */
const PSK_MAX_KEY = 512;

/** Parse a GnuTLS psktool file: `identity:hexkey` per line. */
export function parsePskFile(text: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  // Messages name the line and never quote it: the rest of a line is key material.
  text.split(/\r?\n/).forEach((raw, n) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    // As GnuTLS (nbdkit's --tls-psk) reads the file: the identity ends at the first colon.
    const i = line.indexOf(':');
    if (i <= 0) throw new NbdError('NBD_ERR_CONFIG', `PSK file line ${n + 1}: expected "identity:hexkey"`);
    const identity = line.slice(0, i);
    const hex = line.slice(i + 1);
    if (!/^([0-9a-fA-F]{2})+$/.test(hex)) throw new NbdError('NBD_ERR_CONFIG', `PSK file line ${n + 1}: the key for ${JSON.stringify(identity)} is not an even number of hex digits`);
    if (hex.length / 2 > PSK_MAX_KEY) throw new NbdError('NBD_ERR_CONFIG', `PSK file line ${n + 1}: the key for ${JSON.stringify(identity)} has ${hex.length / 2} bytes, more than ${PSK_MAX_KEY}`);
    // The first line for an identity is the one used (as GnuTLS).
    if (!keys.has(identity)) keys.set(identity, Buffer.from(hex, 'hex'));
  });
  if (keys.size === 0) throw new NbdError('NBD_ERR_CONFIG', 'PSK file has no keys');
  return keys;
}

/**
 * OpenSSL's messages carry a hex prefix and a source path; keep the reason
 * ("wrong version number", "tlsv1 alert unknown ca", ...) for the log line.
 */
function tidyError(err: Error): Error {
  const reason = (err as Error & { reason?: unknown }).reason;
  if (typeof reason !== 'string' || !reason) return err;
  const hint = /wrong version number|unknown protocol|http request|record layer failure/i.test(reason)
    ? ' (the client did not send a TLS ClientHello)'
    : /peer did not return a certificate/i.test(reason)
      ? ' (the client sent no certificate; verifyPeer requires one signed by the configured CA)'
      : '';
  return Object.assign(new Error(`${reason}${hint}`), { code: (err as NodeJS.ErrnoException).code, cause: err });
}

/**
 * Cipher list when PSK is configured. TLS 1.3 suites first and SHA-256 ones
 * before SHA-384: OpenSSL's PSK server callback yields a SHA-256 PSK in
 * TLS 1.3, which a SHA-384 suite would ignore (GnuTLS clients, libnbd and
 * qemu, then fail with "insufficient credentials"). Node's default list
 * excludes PSK for TLS 1.2 (`!PSK`); re-enable the AEAD PSK suites there.
 */
function pskCipherList(verifyPeer: boolean): string {
  const tls13 = ['TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256', 'TLS_AES_256_GCM_SHA384'];
  const defaults = tls.DEFAULT_CIPHERS.split(':').filter((c) => !tls13.includes(c) && c !== '!PSK');
  const firstExclusion = defaults.findIndex((c) => c.startsWith('!'));
  const positive = firstExclusion < 0 ? defaults : defaults.slice(0, firstExclusion);
  const exclusions = firstExclusion < 0 ? [] : defaults.slice(firstExclusion);
  // RSA_PSK suites authenticate the server with its certificate, so OpenSSL
  // also asks the client for one: with verifyPeer a PSK client (which has
  // none) would be refused. The plain and (EC)DHE PSK suites remain.
  if (verifyPeer) exclusions.push('!kRSAPSK');
  const psk12 = ['ECDHE-PSK-CHACHA20-POLY1305', 'DHE-PSK-AES128-GCM-SHA256', 'DHE-PSK-AES256-GCM-SHA384', 'DHE-PSK-CHACHA20-POLY1305', 'PSK-AES128-GCM-SHA256', 'PSK-AES256-GCM-SHA384', 'PSK-CHACHA20-POLY1305', 'ECDHE-PSK-AES128-CBC-SHA256'];
  return [...tls13, ...positive, ...psk12, ...exclusions].join(':');
}

/**
 * Verify-error codes that mean "this chain does not lead to the configured
 * CA" (as opposed to, say, an expired certificate from the right CA).
 */
const NOT_FROM_OUR_CA = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'CERT_SIGNATURE_FAILURE',
]);

/**
 * OpenSSL's verdict on the client's certificate chain, as node:tls keeps
 * it. Node's OpenSSL verify callback accepts every chain during the
 * handshake and leaves the verdict to JavaScript; only node's tls.Server
 * looks at it (and sets `authorized`), a TLSSocket made from an existing
 * socket never does. So the check is made here, with the same call
 * tls.Server makes. Without that call available, nothing is trusted.
 */
function chainVerdict(secure: tls.TLSSocket): { ok: true } | { ok: false; code?: string; message: string } {
  const handle = (secure as unknown as { _handle?: { verifyError?: () => (Error & { code?: string }) | null | undefined } })._handle;
  if (typeof handle?.verifyError !== 'function') return { ok: false, message: 'node:tls gave no verification result for the client certificate' };
  const err = handle.verifyError();
  return err ? { ok: false, code: err.code, message: err.message } : { ok: true };
}

/** The subject CN a certificate claims (not trusted until verified). */
function subjectCn(secure: tls.TLSSocket): string | undefined {
  const peer = secure.getPeerCertificate();
  const cn = peer && typeof peer === 'object' ? (peer.subject as { CN?: string | string[] } | undefined)?.CN : undefined;
  const first = Array.isArray(cn) ? cn[0] : cn;
  return typeof first === 'string' && first ? first : undefined;
}

/**
 * Whether the handshake was authenticated by a pre-shared key. The PSK
 * callback runs whenever the client offers an identity, also when OpenSSL
 * then cannot use that key (a TLS 1.3 suite with another hash) and falls
 * back to a certificate handshake: the identity counts only when the key
 * was used. TLS 1.2: a PSK cipher suite. TLS 1.3: an external PSK makes the
 * handshake a resumed one (session tickets are off, so nothing else does).
 */
function pskWasUsed(secure: tls.TLSSocket): boolean {
  if (secure.getProtocol() === 'TLSv1.3') return secure.isSessionReused();
  return /PSK/.test(secure.getCipher()?.name ?? '');
}

/** OpenSSL's context; a certificate, key or CA it cannot use (not PEM, a key that does not match) is a configuration error. */
function secureContext(options: tls.SecureContextOptions): tls.SecureContext {
  try {
    return tls.createSecureContext(options);
  } catch (err) {
    throw new NbdError('NBD_ERR_CONFIG', `TLS: the certificate, key or CA cannot be used: ${(err as Error).message}`);
  }
}

/** Build the upgrade function for a TLS configuration (validated now, not per connection). */
export function createTlsUpgrader(cfg: TlsConfig): (socket: Duplex) => Promise<TlsUpgrade> {
  const psk = cfg.psk === undefined ? undefined : typeof cfg.psk === 'string' ? parsePskFile(readConfigFile('tls.psk', cfg.psk).toString('utf8')) : cfg.psk;
  const cert = pem('tls.cert', cfg.cert);
  const key = pem('tls.key', cfg.key);
  const ca = pem('tls.ca', cfg.ca);
  if (!psk && (!cert || !key)) throw new NbdError('NBD_ERR_CONFIG', 'TLS needs a certificate and key (tls.cert / tls.key, --tls-cert / --tls-key) or a PSK file (tls.psk, --tls-psk)');
  // Without a CA, OpenSSL would check client certificates against the
  // system's public CAs: anyone with a certificate from any of them would
  // get in. (A PSK-only server has no certificate handshake to verify.)
  if (cfg.verifyPeer && cert && !ca) {
    throw new NbdError('NBD_ERR_CONFIG', 'tls.verifyPeer (--tls-verify-peer) needs tls.ca (--tls-ca): the CA whose client certificates are accepted');
  }
  const verifyPeer = !!cfg.verifyPeer;
  const context = secureContext({
    cert,
    key,
    ca,
    minVersion: 'TLSv1.2',
    // No session tickets: every connection authenticates afresh, and a
    // resumed TLS 1.3 handshake can only be a PSK one (see pskWasUsed).
    secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
    // OpenSSL refuses PSK (which TLS 1.3 treats like a resumption) while
    // verifying peers unless a session id context is set.
    sessionIdContext: 'nbd-engine',
    ...(psk ? { ciphers: pskCipherList(verifyPeer), honorCipherOrder: true } : {}),
  });
  const timeout = cfg.handshakeTimeout ?? 30_000;
  return (socket: Duplex) =>
    new Promise<TlsUpgrade>((resolve, reject) => {
      let pskIdentity: string | undefined;
      let unknownIdentity: string | undefined;
      // requestCert + rejectUnauthorized: OpenSSL asks for a certificate and
      // ends the handshake with an alert when none comes. Whether the one
      // that comes is signed by `ca` is checked in onSecure.
      const secure = new tls.TLSSocket(socket as Socket, {
        isServer: true,
        secureContext: context,
        requestCert: verifyPeer,
        rejectUnauthorized: verifyPeer,
        ...(psk
          ? {
              pskCallback: (_s: tls.TLSSocket, id: string) => {
                const k = psk.get(id);
                if (k) pskIdentity = id;
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
        if (unknownIdentity !== undefined && !pskIdentity) e.message = `unknown PSK identity ${JSON.stringify(unknownIdentity)} (${e.message})`;
        else if (psk && /binder does not verify|decrypt/i.test(e.message)) e.message += ' (wrong PSK key?)';
        reject(e);
      }
      /** Refuse a client whose handshake completed but who is not authenticated. */
      function refuse(message: string) {
        cleanup();
        // Synchronously, from OpenSSL's handshake-done callback: in TLS 1.2
        // the server's Finished has not left yet, so the client's handshake
        // fails; in TLS 1.3 the client gets nothing after its own Finished.
        secure.destroy();
        reject(new Error(message));
      }
      function onClose() {
        fail(new Error('client closed during the TLS handshake'));
      }
      function onSecure() {
        const viaPsk = pskIdentity !== undefined && pskWasUsed(secure);
        let identity = viaPsk ? pskIdentity : undefined;
        // A PSK client is authenticated by its key (as with nbdkit); anyone
        // else needs a certificate chain that leads to the configured CA.
        if (verifyPeer && !viaPsk) {
          const verdict = chainVerdict(secure);
          if (!verdict.ok) {
            const claimed = subjectCn(secure);
            const what = verdict.code && NOT_FROM_OUR_CA.has(verdict.code) ? 'client certificate not signed by the configured CA' : 'client certificate refused';
            refuse(`${what}: ${verdict.message}${claimed ? ` (it names itself CN ${JSON.stringify(claimed.slice(0, 64))})` : ''}`);
            return;
          }
          identity = subjectCn(secure);
        }
        cleanup();
        resolve({ stream: secure, identity, protocol: secure.getProtocol() ?? undefined, cipher: secure.getCipher()?.name });
      }
      secure.once('secure', onSecure);
      secure.once('error', fail);
      secure.once('close', onClose);
      secure.once('end', onClose);
    });
}
