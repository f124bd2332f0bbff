/**
 * The client library's STARTTLS against our server: x509 (a certtool PKI,
 * with and without a client certificate the server verifies) and a PSK
 * (psktool); the upgrade happens in place on the same socket after the
 * option's ACK, and the whole transmission phase then runs over TLS.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdConnection, REP } from '../../src/client/index.js';
import { memoryBackend } from '../../src/index.js';
import { serverPerTest, tmpDir } from './harness.js';
import { MiB, roundTrips } from './client-support.js';
import { makePki, makePsk, pskKey } from './tls-support.js';

let dir: string;
let pki: string;
let pskFile: string;
beforeAll(() => {
  dir = tmpDir('nbd-client-tls-');
  pki = makePki(path.join(dir, 'pki'));
  pskFile = makePsk(path.join(dir, 'keys.psk'), ['alice']);
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const servers = serverPerTest();
const file = (f: string) => fs.readFileSync(path.join(pki, f));
const exports = () => [{ name: '', backend: memoryBackend({ size: 8 * MiB }) }];

describe('client STARTTLS ↔ our server', () => {
  it('x509: GO is refused before TLS (TLS_REQD), STARTTLS upgrades in place, then negotiation and round trips over TLS', async () => {
    const s = await servers.serve({ exports: exports(), tls: { mode: 'require', cert: path.join(pki, 'server-cert.pem'), key: path.join(pki, 'server-key.pem') } });
    const c = await NbdConnection.connect({ path: s.socket }, { timeoutMs: 20_000 });
    await c.handshake();
    const refused = await c.go('');
    expect(refused.replies.at(-1)!.type).toBe(REP.NBD_REP_ERR_TLS_REQD);
    const st = await c.starttls({ ca: file('ca-cert.pem'), servername: 'localhost' });
    expect(st.at(-1)!.type).toBe(REP.NBD_REP_ACK);
    expect(c.tlsSocket?.encrypted).toBe(true);
    expect(c.tlsSocket?.authorized).toBe(true);
    expect((await c.structuredReply()).ok).toBe(true);
    expect((await c.setMetaContext('', ['base:allocation'])).ok).toBe(true);
    expect((await c.go('')).ok).toBe(true);
    await roundTrips(c);
    expect(c.deviations).toEqual([]);
    expect(await c.disc()).toBe(true);
  });

  it('x509 with a client certificate the server verifies', async () => {
    const s = await servers.serve({
      exports: exports(),
      tls: { mode: 'require', cert: path.join(pki, 'server-cert.pem'), key: path.join(pki, 'server-key.pem'), ca: path.join(pki, 'ca-cert.pem'), verifyPeer: true },
    });
    const c = await NbdConnection.connect({ path: s.socket }, { timeoutMs: 20_000 });
    await c.handshake();
    await c.starttls({ ca: file('ca-cert.pem'), cert: file('client-cert.pem'), key: file('client-key.pem') });
    expect((await c.go('')).ok).toBe(true);
    const r = await c.write(0, Buffer.alloc(4096, 3));
    expect(r.error).toBe(0);
    expect((await c.read(0, 4096)).data).toEqual(Buffer.alloc(4096, 3));
    expect(c.deviations).toEqual([]);
    await c.disc();
  });

  it('a pre-shared key', async () => {
    const s = await servers.serve({ exports: exports(), tls: { mode: 'require', psk: pskFile } });
    const c = await NbdConnection.connect({ path: s.socket }, { timeoutMs: 20_000 });
    await c.handshake();
    await c.starttls({ psk: { identity: 'alice', key: pskKey(pskFile, 'alice') } });
    expect(c.tlsSocket?.encrypted).toBe(true);
    expect((await c.go('')).ok).toBe(true);
    expect((await c.read(0, 512)).data).toEqual(Buffer.alloc(512));
    await c.disc();
  });

  it('a server certificate from a CA the client does not trust: starttls rejects, nothing hangs', async () => {
    const other = makePki(path.join(dir, 'other'), { caName: 'another CA' });
    const s = await servers.serve({ exports: exports(), tls: { mode: 'require', cert: path.join(pki, 'server-cert.pem'), key: path.join(pki, 'server-key.pem') } });
    const c = await NbdConnection.connect({ path: s.socket }, { timeoutMs: 20_000 });
    await c.handshake();
    await expect(c.starttls({ ca: fs.readFileSync(path.join(other, 'ca-cert.pem')) })).rejects.toThrow();
    c.destroy();
  });
});
