/**
 * STARTTLS at the byte level (docs/rules.md, the tls.* rules): the option replies of the
 * three TLS modes, forgetting negotiated state on STARTTLS, the pipelined-
 * plaintext rule, bad TLS input, and the client identity reaching the
 * application. A raw client drives the NBD side and node:tls the TLS side;
 * real clients are in tls.test.ts.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { firstValueFrom, filter } from 'rxjs';
import { memoryBackend, type ConnectionEvent, type ServerOptions } from '../../src/index.js';
import { startServer, tmpDir, type Running } from './harness.js';
import { makePki, makePsk, pskKey, rawClient, until } from './tls-support.js';
import { CMD, RawClient } from './raw-client.js';
import { OPT, REP, W, encodeInfoGoData, encodeMetaContextData, encodeOption } from '../helpers/wire.js';

const types = (rs: { type: number }[]) => rs.map((r) => r.type);

let dir: string;
let pki: string;
let pskFile: string;

beforeAll(() => {
  dir = tmpDir('nbd-engine-tls-raw-');
  pki = makePki(path.join(dir, 'pki'));
  pskFile = makePsk(path.join(dir, 'keys.psk'), ['alice', 'bob']);
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const x509 = () => ({ cert: path.join(pki, 'server-cert.pem'), key: path.join(pki, 'server-key.pem') });
const clientTls = () => ({ ca: fs.readFileSync(path.join(pki, 'ca-cert.pem')), servername: 'localhost' });

function exportsWithSecret(): ServerOptions['exports'] {
  return [
    { name: 'public', backend: memoryBackend({ size: 1 << 20 }) },
    { name: 'secret', backend: memoryBackend({ size: 2 << 20 }), tlsOnly: true },
  ];
}

/** Open, greet, STARTTLS, wrap with TLS. */
async function tlsClient(srv: Running, tlsOptions: Parameters<RawClient['startTls']>[0] = clientTls()): Promise<RawClient> {
  const c = await rawClient(srv.socket);
  await c.greet();
  expect(types(await c.option(OPT.STARTTLS))).toEqual([REP.ACK]);
  await c.startTls(tlsOptions);
  return c;
}

describe('FORCEDTLS (tls.mode require)', () => {
  let srv: Running;
  beforeAll(async () => {
    srv = await startServer({ exports: exportsWithSecret(), tls: { mode: 'require', ...x509() } });
  });
  afterAll(() => srv.close());

  it('tls.mode-forcedtls: every option but STARTTLS and ABORT gets ERR_TLS_REQD before TLS; LIST is refused', async () => {
    const c = await rawClient(srv.socket);
    await c.greet();
    for (const [code, data] of [
      [OPT.INFO, encodeInfoGoData('public')],
      [OPT.GO, encodeInfoGoData('public')],
      [OPT.INFO, encodeInfoGoData('')],
      [OPT.LIST, undefined],
      [OPT.STRUCTURED_REPLY, undefined],
      [OPT.EXTENDED_HEADERS, undefined],
      [OPT.SET_META_CONTEXT, encodeMetaContextData('public', ['base:allocation'])],
      [OPT.LIST_META_CONTEXT, encodeMetaContextData('public', [])],
      [0x4242, undefined],
    ] as const) {
      const rs = await c.option(code, data);
      expect(types(rs), `option ${code}`).toEqual([REP.ERR_TLS_REQD]);
      expect(rs[0]!.option).toBe(code);
    }
    c.write(encodeOption(OPT.ABORT));
    expect(types(await c.optionReplies())).toEqual([REP.ACK]);
    expect(await c.closed()).toBe(true);
  });

  it('tls.mode-forcedtls: a plaintext EXPORT_NAME is disconnected without a reply', async () => {
    const c = await rawClient(srv.socket);
    await c.greet();
    c.write(encodeOption(OPT.EXPORT_NAME, Buffer.from('public')));
    expect(await c.closed()).toBe(true);
    expect(c.pending).toBe(0);
  });

  it('tls.starttls-repeat: after STARTTLS: options are served, ERR_TLS_REQD never appears, a second STARTTLS gets ERR_INVALID', async () => {
    const c = await tlsClient(srv);
    const list = await c.option(OPT.LIST);
    expect(types(list)).toEqual([REP.SERVER, REP.SERVER, REP.ACK]);
    expect(types(await c.option(OPT.STARTTLS))).toEqual([REP.ERR_INVALID]);
    const info = await c.option(OPT.INFO, encodeInfoGoData('secret'));
    expect(types(info).at(-1)).toBe(REP.ACK);
    expect(types(info)).not.toContain(REP.ERR_TLS_REQD);
    expect(types(await c.option(OPT.STRUCTURED_REPLY))).toEqual([REP.ACK]);
    const go = await c.option(OPT.GO, encodeInfoGoData('secret'));
    expect(types(go).at(-1)).toBe(REP.ACK);
    // Transmission over TLS: a read answers with a structured reply.
    c.write(RawClient.request(CMD.READ, 0, 512, 7n));
    const hdr = await c.read(20);
    expect(hdr.readUInt32BE(0)).toBe(W.STRUCTURED_REPLY_MAGIC);
    c.destroy();
  });

  it('tls.mode-forcedtls, option.abort-ack: ABORT before TLS is allowed', async () => {
    const c = await rawClient(srv.socket);
    await c.greet();
    expect(types(await c.option(OPT.ABORT))).toEqual([REP.ACK]);
    expect(await c.closed()).toBe(true);
  });
});

describe('NOTLS (tls.mode off)', () => {
  it('tls.mode-notls: STARTTLS gets ERR_POLICY and the plaintext session continues; never ERR_TLS_REQD', async () => {
    const srv = await startServer({ exports: exportsWithSecret() });
    try {
      const c = await rawClient(srv.socket);
      await c.greet();
      expect(types(await c.option(OPT.STARTTLS))).toEqual([REP.ERR_POLICY]);
      // tlsOnly means nothing without TLS configured: not ERR_TLS_REQD.
      const info = await c.option(OPT.INFO, encodeInfoGoData('secret'));
      expect(types(info)).not.toContain(REP.ERR_TLS_REQD);
      expect(types(await c.option(OPT.GO, encodeInfoGoData('public'))).at(-1)).toBe(REP.ACK);
      c.destroy();
    } finally {
      await srv.close();
    }
  });
});

describe('SELECTIVETLS (tls.mode on)', () => {
  let srv: Running;
  beforeAll(async () => {
    srv = await startServer({ exports: exportsWithSecret(), tls: { mode: 'on', ...x509() } });
  });
  afterAll(() => srv.close());

  it('tls.mode-selectivetls: a tlsOnly export is refused in plaintext, the others are served', async () => {
    const c = await rawClient(srv.socket);
    await c.greet();
    expect(types(await c.option(OPT.INFO, encodeInfoGoData('secret')))).toEqual([REP.ERR_TLS_REQD]);
    expect(types(await c.option(OPT.GO, encodeInfoGoData('secret')))).toEqual([REP.ERR_TLS_REQD]);
    expect(types(await c.option(OPT.INFO, encodeInfoGoData('public'))).at(-1)).toBe(REP.ACK);
    expect(types(await c.option(OPT.GO, encodeInfoGoData('public'))).at(-1)).toBe(REP.ACK);
    c.destroy();
  });

  it('tls.mode-selectivetls: a plaintext EXPORT_NAME for a tlsOnly export is disconnected', async () => {
    const c = await rawClient(srv.socket);
    await c.greet();
    c.write(encodeOption(OPT.EXPORT_NAME, Buffer.from('secret')));
    expect(await c.closed()).toBe(true);
    expect(c.pending).toBe(0);
  });

  it('tls.mode-selectivetls: the tlsOnly export is served after STARTTLS', async () => {
    const c = await tlsClient(srv);
    const go = await c.option(OPT.GO, encodeInfoGoData('secret'));
    expect(types(go).at(-1)).toBe(REP.ACK);
    c.write(RawClient.request(CMD.READ, 0, 4096, 1n));
    const hdr = await c.read(16);
    expect(hdr.readUInt32BE(0)).toBe(W.SIMPLE_REPLY_MAGIC);
    expect(hdr.readUInt32BE(4)).toBe(0);
    expect((await c.read(4096)).every((b) => b === 0)).toBe(true);
    c.destroy();
  });

  it('tls.starttls-resets: everything negotiated before STARTTLS is forgotten (structured replies, meta contexts)', async () => {
    const c = await rawClient(srv.socket);
    await c.greet();
    expect(types(await c.option(OPT.STRUCTURED_REPLY))).toEqual([REP.ACK]);
    expect(types(await c.option(OPT.SET_META_CONTEXT, encodeMetaContextData('public', ['base:allocation'])))).toEqual([REP.META_CONTEXT, REP.ACK]);
    expect(types(await c.option(OPT.STARTTLS))).toEqual([REP.ACK]);
    await c.startTls(clientTls());
    // Meta contexts need structured replies: without SR re-negotiated, SET_META_CONTEXT is refused.
    expect(types(await c.option(OPT.SET_META_CONTEXT, encodeMetaContextData('public', ['base:allocation'])))).toEqual([REP.ERR_INVALID]);
    const go = await c.option(OPT.GO, encodeInfoGoData('public'));
    expect(types(go).at(-1)).toBe(REP.ACK);
    // Simple replies: structured replies did not survive STARTTLS.
    c.write(RawClient.request(CMD.READ, 0, 512, 2n));
    const hdr = await c.read(16);
    expect(hdr.readUInt32BE(0)).toBe(W.SIMPLE_REPLY_MAGIC);
    c.destroy();
  });
});

describe('bad input around STARTTLS', () => {
  let srv: Running;
  let events: ConnectionEvent[];
  beforeAll(async () => {
    srv = await startServer({ exports: exportsWithSecret(), tls: { mode: 'require', ...x509(), handshakeTimeout: 3000 } });
    events = [];
    srv.server.connections$.subscribe((e) => events.push(e));
  });
  afterAll(() => srv.close());

  /** A healthy TLS client that stays open across the bad one, then is used. */
  async function bystander(): Promise<RawClient> {
    const c = await tlsClient(srv);
    expect(types(await c.option(OPT.GO, encodeInfoGoData('public'))).at(-1)).toBe(REP.ACK);
    return c;
  }
  async function stillServes(c: RawClient): Promise<void> {
    c.write(RawClient.request(CMD.READ, 0, 512, 9n));
    const hdr = await c.read(16);
    expect(hdr.readUInt32BE(0)).toBe(W.SIMPLE_REPLY_MAGIC);
    await c.read(512);
  }
  function newLogs(from: number): string[] {
    return srv.logs.slice(from).filter((l) => l.startsWith('warn') || l.startsWith('error'));
  }
  async function closedEvent(id: number): Promise<void> {
    await until(() => events.some((e) => e.type === 'closed' && e.connection.id === id), 5000, `closed event for connection ${id}`);
  }
  function lastOpenedId(): number {
    return [...events].reverse().find((e) => e.type === 'opened')!.connection.id;
  }
  /** A raw client through STARTTLS's ACK (the TLS handshake not begun), with its connection id. */
  async function atStartTls(): Promise<{ c: RawClient; id: number }> {
    const c = await rawClient(srv.socket);
    await c.greet();
    const id = lastOpenedId();
    expect(types(await c.option(OPT.STARTTLS))).toEqual([REP.ACK]);
    return { c, id };
  }
  /** Connection `id` is closed, with exactly one warning or error logged since `mark`, matching `pattern`. */
  async function closedWithOneLine(id: number, mark: number, pattern: RegExp): Promise<void> {
    await closedEvent(id);
    const lines = newLogs(mark);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(pattern);
  }

  it('tls.plaintext-after-starttls: plaintext options pipelined behind STARTTLS are never interpreted: the client is disconnected alone', async () => {
    const other = await bystander();
    const mark = srv.logs.length;
    const c = await rawClient(srv.socket);
    await c.greet();
    const id = lastOpenedId();
    // STARTTLS and, in the same write, a plaintext INFO and LIST.
    c.write(Buffer.concat([encodeOption(OPT.STARTTLS), encodeOption(OPT.INFO, encodeInfoGoData('secret')), encodeOption(OPT.LIST)]));
    expect(await c.closed()).toBe(true);
    // Nothing but (at most) the STARTTLS ACK came back: the INFO/LIST were not answered.
    const got = await c.read(c.pending, 10).catch(() => Buffer.alloc(0));
    expect(got.length === 0 || got.length === 20).toBe(true);
    if (got.length === 20) expect(got.readUInt32BE(12)).toBe(REP.ACK);
    await closedWithOneLine(id, mark, /pipelined behind STARTTLS/);
    await stillServes(other);
    other.destroy();
  });

  it('tls.handshake-failed: garbage instead of a TLS ClientHello: disconnected alone, one log line', async () => {
    const other = await bystander();
    const mark = srv.logs.length;
    const { c, id } = await atStartTls();
    // A plaintext option where the ClientHello should be.
    c.write(encodeOption(OPT.INFO, encodeInfoGoData('secret')));
    expect(await c.closed()).toBe(true);
    await closedWithOneLine(id, mark, /TLS handshake failed/);
    await stillServes(other);
    other.destroy();
  });

  it('tls.handshake-failed: a client that drops during the TLS handshake: closed alone, one log line', async () => {
    const other = await bystander();
    const mark = srv.logs.length;
    const { c, id } = await atStartTls();
    // The first bytes of a TLS record header (handshake, TLS 1.0), then gone.
    c.write(Buffer.from([0x16, 0x03, 0x01, 0x02]));
    await new Promise((r) => setTimeout(r, 50));
    c.destroy();
    await closedWithOneLine(id, mark, /TLS handshake failed/);
    await stillServes(other);
    other.destroy();
  });

  it('tls.handshake-failed: a client that drops right after the STARTTLS ACK: closed alone, one log line', async () => {
    const mark = srv.logs.length;
    const { c, id } = await atStartTls();
    c.destroy();
    await closedWithOneLine(id, mark, /TLS handshake failed/);
  });

  it('tls.handshake-failed: a client that stalls in the TLS handshake is dropped after handshakeTimeout', async () => {
    const { c, id } = await atStartTls();
    expect(await c.closed(6000)).toBe(true);
    await closedEvent(id);
    expect(srv.logs.some((l) => /timed out/.test(l))).toBe(true);
  });

  it('an untrusted server certificate: the client gives up, the server logs one line and keeps serving', async () => {
    const other = await bystander();
    const mark = srv.logs.length;
    const { c, id } = await atStartTls();
    await expect(c.startTls({ servername: 'localhost' /* system CAs only */ })).rejects.toThrow();
    c.destroy();
    await closedEvent(id);
    expect(newLogs(mark).length).toBeLessThanOrEqual(1);
    await stillServes(other);
    other.destroy();
  });
});

describe('the client identity reaches the application', () => {
  async function identityOf(options: ServerOptions, tlsOptions: Parameters<RawClient['startTls']>[0]) {
    const srv = await startServer(options);
    try {
      const negotiated = firstValueFrom(srv.server.connections$.pipe(filter((e) => e.type === 'negotiated')));
      const request = firstValueFrom(srv.server.requests$);
      const c = await tlsClient(srv, tlsOptions);
      expect(types(await c.option(OPT.GO, encodeInfoGoData('app'))).at(-1)).toBe(REP.ACK);
      c.write(RawClient.request(CMD.READ, 0, 512, 5n));
      const req = await request;
      req.reply(Buffer.alloc(512, 7));
      const hdr = await c.read(16);
      expect(hdr.readUInt32BE(4)).toBe(0);
      expect((await c.read(512))[0]).toBe(7);
      const ev = await negotiated;
      c.destroy();
      return { event: ev.connection, request: req.connection };
    } finally {
      await srv.close();
    }
  }

  it('PSK: the username, on connections$ and NbdRequest.connection', async () => {
    const { event, request } = await identityOf(
      { exports: [{ name: 'app', size: 1 << 20 }], tls: { mode: 'require', psk: pskFile } },
      {
        ciphers: 'PSK',
        checkServerIdentity: () => undefined,
        pskCallback: () => ({ identity: 'bob', psk: pskKey(pskFile, 'bob') }),
      },
    );
    expect(event).toMatchObject({ tls: true, tlsIdentity: 'bob' });
    expect(request).toMatchObject({ tls: true, tlsIdentity: 'bob' });
  });

  it('x509 with tls-verify-peer: the client certificate CN', async () => {
    const { event, request } = await identityOf(
      {
        exports: [{ name: 'app', size: 1 << 20 }],
        tls: { mode: 'require', ...x509(), ca: path.join(pki, 'ca-cert.pem'), verifyPeer: true },
      },
      { ...clientTls(), cert: fs.readFileSync(path.join(pki, 'client-cert.pem')), key: fs.readFileSync(path.join(pki, 'client-key.pem')) },
    );
    expect(event).toMatchObject({ tls: true, tlsIdentity: 'alice' });
    expect(request).toMatchObject({ tls: true, tlsIdentity: 'alice' });
  });

  it('x509 with tls-verify-peer: a client without a certificate is refused', async () => {
    const srv = await startServer({
      exports: [{ name: 'app', size: 1 << 20 }],
      tls: { mode: 'require', ...x509(), ca: path.join(pki, 'ca-cert.pem'), verifyPeer: true },
    });
    try {
      const closed = firstValueFrom(srv.server.connections$.pipe(filter((e) => e.type === 'closed')));
      const c = await rawClient(srv.socket);
      await c.greet();
      expect(types(await c.option(OPT.STARTTLS))).toEqual([REP.ACK]);
      // TLS 1.3: the refusal may arrive after the client thinks it is done.
      const up = await c.startTls(clientTls()).then(
        () => true,
        () => false,
      );
      if (up) {
        c.write(encodeOption(OPT.LIST));
        expect(await c.closed()).toBe(true);
      }
      await closed;
      c.destroy();
    } finally {
      await srv.close();
    }
  });
});
