/**
 * `tls.verifyPeer` (`--tls-verify-peer`) over a real socket with Node's
 * tls client, which sends whatever certificate it is given (GnuTLS
 * clients such as libnbd only send a certificate issued by a CA the
 * server names, so they never exercise a foreign CA).
 *
 * Each client speaks NBD in plaintext up to STARTTLS (greeting, client
 * flags, NBD_OPT_STARTTLS and its ACK), then runs the TLS handshake on the
 * same socket and asks for the export list.
 */
import fs from 'node:fs';
import path from 'node:path';
import type tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memoryBackend, NbdError, type ConnectionEvent, type ServerOptions } from '../../src/index.js';
import { createServer } from '../../src/index.js';
import { startServer, tmpDir, type Running } from './harness.js';
import { makePki, makePsk, makeSelfSignedClient, pskKey, rawClient, until } from './tls-support.js';
import type { RawClient } from './raw-client.js';
import { OPT, REP, encodeInfoGoData, encodeOption } from '../helpers/wire.js';

const types = (rs: { type: number }[]) => rs.map((r) => r.type);

let dir: string;
/** The CA the server is configured with (client CN "alice"). */
let good: string;
/** A CA the client made itself (client CN "mallory"), never given to the server. */
let rogue: string;
let pskFile: string;
/** A self-signed client certificate (CN "eve"). */
let self: { cert: string; key: string };

beforeAll(() => {
  dir = tmpDir('nbd-engine-tls-verify-');
  good = makePki(path.join(dir, 'good'));
  rogue = makePki(path.join(dir, 'rogue'), { caName: 'mallory CA', clientCn: 'mallory' });
  pskFile = makePsk(path.join(dir, 'keys.psk'), ['bob']);
  self = makeSelfSignedClient(path.join(dir, 'self'), 'eve');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const read = (pki: string, f: string) => fs.readFileSync(path.join(pki, f));

function serverTls(extra: Partial<NonNullable<ServerOptions['tls']>> = {}): NonNullable<ServerOptions['tls']> {
  return {
    mode: 'require',
    cert: path.join(good, 'server-cert.pem'),
    key: path.join(good, 'server-key.pem'),
    ca: path.join(good, 'ca-cert.pem'),
    verifyPeer: true,
    ...extra,
  };
}

/** The client trusts the server (good CA) and presents the given certificate, if any. */
function clientTls(pki: string | null, extra: tls.ConnectionOptions = {}): tls.ConnectionOptions {
  return {
    ca: read(good, 'ca-cert.pem'),
    servername: 'localhost',
    ...(pki ? { cert: read(pki, 'client-cert.pem'), key: read(pki, 'client-key.pem') } : {}),
    ...extra,
  };
}

interface Attempt {
  /** The client's TLS handshake completed (in TLS 1.3 a client is done before the server has checked its certificate). */
  handshakeCompleted: boolean;
  handshakeError?: Error;
  /** Bytes received after the TLS handshake: NBD option replies, export data. */
  bytesAfterTls: number;
  closed: boolean;
  id: number;
}

class Harness {
  events: ConnectionEvent[] = [];
  constructor(readonly srv: Running) {
    srv.server.connections$.subscribe((e) => this.events.push(e));
  }

  /** Greeting, client flags, STARTTLS, then TLS with `options`; then LIST. */
  async attempt(options: tls.ConnectionOptions): Promise<Attempt> {
    const { c, id } = await this.connect();
    expect(types(await c.option(OPT.STARTTLS))).toEqual([REP.ACK]);
    let handshakeError: Error | undefined;
    const handshakeCompleted = await c.startTls(options).then(
      () => true,
      (e: Error) => ((handshakeError = e), false),
    );
    let bytesAfterTls = 0;
    let closed: boolean;
    if (handshakeCompleted) {
      c.write(encodeOption(OPT.LIST));
      closed = await c.closed();
      bytesAfterTls = c.pending;
    } else {
      closed = true;
    }
    // The server's side of the refusal (its log line) is complete once the connection is closed.
    if (closed) await until(() => this.events.some((e) => e.type === 'closed' && e.connection.id === id), 5000, `closed event for ${id}`);
    c.destroy();
    return { handshakeCompleted, handshakeError, bytesAfterTls, closed, id };
  }

  /** A client that gets through TLS, lists, and takes the export. */
  async served(options: tls.ConnectionOptions): Promise<{ id: number; identity: string | undefined }> {
    const { c, id } = await this.connect();
    expect(types(await c.option(OPT.STARTTLS))).toEqual([REP.ACK]);
    await c.startTls(options);
    expect(types(await c.option(OPT.LIST))).toEqual([REP.SERVER, REP.ACK]);
    expect(types(await c.option(OPT.GO, encodeInfoGoData('disk'))).at(-1)).toBe(REP.ACK);
    const negotiated = () => this.events.find((e) => e.type === 'negotiated' && e.connection.id === id);
    await until(() => negotiated() !== undefined, 5000, `negotiated event for ${id}`);
    c.destroy();
    return { id, identity: negotiated()!.connection.tlsIdentity };
  }

  /** Connect, greeting and client flags; with the server's id for this connection. */
  private async connect(): Promise<{ c: RawClient; id: number }> {
    const before = new Set(this.events.filter((e) => e.type === 'opened').map((e) => e.connection.id));
    const c = await rawClient(this.srv.socket);
    await c.greet();
    const fresh = () => this.events.filter((e) => e.type === 'opened' && !before.has(e.connection.id));
    await until(() => fresh().length === 1, 5000, 'opened event');
    return { c, id: fresh()[0]!.connection.id };
  }

  warnings(from: number): string[] {
    return this.srv.logs.slice(from).filter((l) => l.startsWith('warn') || l.startsWith('error'));
  }
  negotiatedIds(): number[] {
    return this.events.filter((e) => e.type === 'negotiated').map((e) => e.connection.id);
  }
}

/** A PSK client offering the identity "bob" with `key`; it still trusts the server's certificate. */
function pskClient(key: Buffer, extra: tls.ConnectionOptions = {}): tls.ConnectionOptions {
  return {
    ciphers: 'PSK',
    ca: read(good, 'ca-cert.pem'),
    checkServerIdentity: () => undefined,
    pskCallback: () => ({ identity: 'bob', psk: key }),
    ...extra,
  };
}

function expectRefused(a: Attempt): void {
  expect(a.closed).toBe(true);
  // Nothing of NBD after TLS: no option reply, no export data.
  expect(a.bytesAfterTls).toBe(0);
}

describe('verifyPeer with x509 (the configured CA is the only one trusted)', () => {
  let h: Harness;
  beforeAll(async () => {
    h = new Harness(await startServer({ exports: [{ name: 'disk', backend: memoryBackend({ size: 1 << 20 }) }], tls: serverTls() }));
  });
  afterAll(() => h.srv.close());

  it('a certificate from a CA the client made itself is refused in the TLS handshake (TLS 1.2: the client never completes it)', async () => {
    const mark = h.srv.logs.length;
    const a = await h.attempt(clientTls(rogue, { maxVersion: 'TLSv1.2' }));
    expect(a.handshakeCompleted).toBe(false);
    expectRefused(a);
    expect(h.negotiatedIds()).not.toContain(a.id);
    const lines = h.warnings(mark);
    expect(lines).toHaveLength(1);
    // One line, naming the connection and the reason.
    expect(lines[0]).toMatch(
      new RegExp(`^warn: connection ${a.id}: tls\\.handshake-failed: TLS handshake failed: client certificate not signed by the configured CA: unable to verify the first certificate \\(it names itself CN "mallory"\\)`),
    );
  });

  it('a certificate from a CA the client made itself is refused (TLS 1.3): no option reply, no data, one warning', async () => {
    const mark = h.srv.logs.length;
    const a = await h.attempt(clientTls(rogue));
    expectRefused(a);
    expect(h.negotiatedIds()).not.toContain(a.id);
    const lines = h.warnings(mark);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/client certificate not signed by the configured CA/);
  });

  it('sending the foreign CA along with the certificate (a chain) does not help', async () => {
    const chain = Buffer.concat([read(rogue, 'client-cert.pem'), read(rogue, 'ca-cert.pem')]);
    const mark = h.srv.logs.length;
    const a = await h.attempt(clientTls(null, { cert: chain, key: read(rogue, 'client-key.pem') }));
    expectRefused(a);
    expect(h.negotiatedIds()).not.toContain(a.id);
    const lines = h.warnings(mark);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/client certificate not signed by the configured CA: self-signed certificate in certificate chain/);
  });

  it('a self-signed client certificate is refused', async () => {
    const mark = h.srv.logs.length;
    const a = await h.attempt(clientTls(null, { cert: fs.readFileSync(self.cert), key: fs.readFileSync(self.key) }));
    expectRefused(a);
    expect(h.negotiatedIds()).not.toContain(a.id);
    const lines = h.warnings(mark);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/client certificate not signed by the configured CA: self-signed certificate \(it names itself CN "eve"\)/);
  });

  it('no certificate at all is refused in the TLS handshake', async () => {
    for (const maxVersion of ['TLSv1.2', 'TLSv1.3'] as const) {
      const mark = h.srv.logs.length;
      const a = await h.attempt(clientTls(null, { maxVersion }));
      // TLS 1.2: a handshake_failure alert; TLS 1.3: certificate_required, after the client's Finished.
      if (maxVersion === 'TLSv1.2') expect(a.handshakeCompleted).toBe(false);
      expectRefused(a);
      expect(h.negotiatedIds()).not.toContain(a.id);
      const lines = h.warnings(mark);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/the client sent no certificate/);
    }
  });

  it('a certificate from the configured CA is served, and its CN becomes tlsIdentity', async () => {
    for (const maxVersion of ['TLSv1.2', 'TLSv1.3'] as const) {
      const { identity } = await h.served(clientTls(good, { maxVersion }));
      expect(identity).toBe('alice');
    }
  });
});

describe('verifyPeer with x509 and PSK both configured', () => {
  let h: Harness;
  beforeAll(async () => {
    h = new Harness(
      await startServer({ exports: [{ name: 'disk', backend: memoryBackend({ size: 1 << 20 }) }], tls: serverTls({ psk: pskFile }) }),
    );
  });
  afterAll(() => h.srv.close());

  it('a PSK client is authenticated by its key (no certificate) and named by its PSK username (TLS 1.2 and 1.3)', async () => {
    for (const maxVersion of ['TLSv1.2', 'TLSv1.3'] as const) {
      const { identity } = await h.served(pskClient(pskKey(pskFile, 'bob'), { maxVersion }));
      expect(identity).toBe('bob');
    }
  });

  it('a client that names a PSK user without using the key (a TLS 1.3 suite the key cannot serve) must present a certificate', async () => {
    const mark = h.srv.logs.length;
    const a = await h.attempt(pskClient(Buffer.alloc(32, 0x55), { ciphers: 'TLS_AES_256_GCM_SHA384' }));
    expectRefused(a);
    expect(h.negotiatedIds()).not.toContain(a.id);
    expect(h.warnings(mark)).toHaveLength(1);
  });

  it('an x509 client with a foreign certificate is still refused', async () => {
    const mark = h.srv.logs.length;
    const a = await h.attempt(clientTls(rogue));
    expectRefused(a);
    expect(h.negotiatedIds()).not.toContain(a.id);
    expect(h.warnings(mark)).toHaveLength(1);
  });

  it('an x509 client with a certificate from the configured CA is served as its CN', async () => {
    expect((await h.served(clientTls(good))).identity).toBe('alice');
  });
});

describe('without verifyPeer, a PSK identity still counts only when its key was used', () => {
  let h: Harness;
  beforeAll(async () => {
    const { ca: _ca, verifyPeer: _v, ...x509 } = serverTls({ psk: pskFile });
    h = new Harness(await startServer({ exports: [{ name: 'disk', backend: memoryBackend({ size: 1 << 20 }) }], tls: x509 }));
  });
  afterAll(() => h.srv.close());

  it('a client that names "bob" with a wrong key and a suite the key cannot serve is anonymous, not "bob"', async () => {
    // OpenSSL calls the PSK callback for the offered identity, cannot use the
    // key with a SHA-384 suite and falls back to the server certificate.
    const { identity } = await h.served(pskClient(Buffer.alloc(32, 0x55), { ciphers: 'TLS_AES_256_GCM_SHA384' }));
    expect(identity).toBeUndefined();
  });

  it('the right key still names the client', async () => {
    expect((await h.served(pskClient(pskKey(pskFile, 'bob')))).identity).toBe('bob');
  });
});

describe('verifyPeer configuration', () => {
  it('verifyPeer with an x509 certificate but no CA is a configuration error at createServer', () => {
    const make = () =>
      createServer({
        exports: [{ name: 'disk', size: 1 << 20 }],
        tls: { mode: 'require', cert: path.join(good, 'server-cert.pem'), key: path.join(good, 'server-key.pem'), verifyPeer: true },
      });
    expect(make).toThrow(NbdError);
    expect(make).toThrow(expect.objectContaining({ code: 'NBD_ERR_CONFIG', message: expect.stringMatching(/verifyPeer|tls-verify-peer/) }));
  });
});
