/**
 * STARTTLS with real clients: libnbd (nbdinfo, nbdcopy, python3-libnbd) and
 * qemu's own TLS client (qemu-img, qemu-io), x509 certificates made here
 * with certtool and PSK files made with psktool. Byte-level checks of the
 * option replies are in tls.raw.test.ts.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memoryBackend, type ConnectionEvent, type ConnectionInfo, type ServerOptions } from '../../src/index.js';
import { CLI, execFileP, nbdPython, run, spawnCli, startServer, tmpDir, type Running } from './harness.js';
import { makePki, makePsk, until } from './tls-support.js';

let dir: string;
let pki: string;
let otherPki: string;
let caOnly: string;
let pskFile: string;
let wrongPskFile: string;
let qemuPskDir: string;

beforeAll(() => {
  dir = tmpDir('nbd-engine-tls-');
  pki = makePki(path.join(dir, 'pki'));
  // A second, unrelated CA: its clients do not trust our server.
  otherPki = makePki(path.join(dir, 'other'), { caName: 'some other CA' });
  // Trusts our CA but has no client certificate.
  caOnly = path.join(dir, 'ca-only');
  fs.mkdirSync(caOnly);
  fs.copyFileSync(path.join(pki, 'ca-cert.pem'), path.join(caOnly, 'ca-cert.pem'));
  pskFile = makePsk(path.join(dir, 'keys.psk'), ['alice', 'bob']);
  // Same username, another random key.
  wrongPskFile = makePsk(path.join(dir, 'wrong', 'keys.psk'), ['alice']);
  // qemu's tls-creds-psk wants a directory holding keys.psk.
  qemuPskDir = path.dirname(pskFile);
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const serverCert = () => ({ cert: path.join(pki, 'server-cert.pem'), key: path.join(pki, 'server-key.pem') });
const q = encodeURIComponent;
const tlsUnix = (srv: Running, query: string, user = '', exportName = '') =>
  `nbds+unix://${user ? `${user}@` : ''}/${q(exportName)}?socket=${srv.socket}&${query}`;

/** Record connection events; `identities()` lists the TLS identity of every negotiated connection. */
function watch(srv: Running) {
  const events: ConnectionEvent[] = [];
  srv.server.connections$.subscribe((e) => events.push(e));
  return {
    events,
    negotiated: (): ConnectionInfo[] => events.filter((e) => e.type === 'negotiated').map((e) => e.connection),
    warnings: (from: number) => srv.logs.slice(from).filter((l) => /^(warn|error):/.test(l)),
  };
}

async function fails(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    return `${e.stderr ?? ''}${e.message}`;
  }
  throw new Error('expected the client to fail');
}

describe('FORCEDTLS with x509 and PSK (libnbd)', () => {
  let srv: Running;
  let w: ReturnType<typeof watch>;
  let port: number;
  beforeAll(async () => {
    srv = await startServer({
      exports: [{ name: '', backend: memoryBackend({ size: 64 << 20 }) }],
      tls: { mode: 'require', ...serverCert(), psk: pskFile },
    });
    const [l] = await srv.server.listen({ port: 0, host: 'localhost' });
    port = l!.address.port!;
    expect(l!.uris[0]).toMatch(/^nbds:\/\//);
    w = watch(srv);
  });
  afterAll(() => srv.close());

  it('the listener URIs use nbds+unix:// and nbds://', () => {
    expect(srv.server.uris.length).toBeGreaterThanOrEqual(2);
    for (const u of srv.server.uris) expect(u).toMatch(/^nbds(\+unix)?:\/\//);
  });

  it('nbdinfo over nbds+unix:// with tls-certificates=DIR', async () => {
    const { stdout } = await run('nbdinfo', [tlsUnix(srv, `tls-certificates=${pki}`)]);
    expect(stdout).toMatch(/newstyle-fixed with TLS/);
    expect(stdout).toMatch(/export-size: 67108864/);
  });

  it('nbdinfo over nbds:// (TCP) with tls-certificates=DIR', async () => {
    const { stdout } = await run('nbdinfo', [`nbds://localhost:${port}/?tls-certificates=${pki}`]);
    expect(stdout).toMatch(/newstyle-fixed with TLS/);
    expect(stdout).toMatch(/export-size: 67108864/);
  });

  it('nbdinfo with a PSK file (tls-psk-file=, username in the URI); the identity reaches the application', async () => {
    const before = w.negotiated().length;
    const { stdout } = await run('nbdinfo', [tlsUnix(srv, `tls-psk-file=${pskFile}`, 'alice')]);
    expect(stdout).toMatch(/newstyle-fixed with TLS/);
    await until(() => w.negotiated().length > before, 5000, 'negotiated event');
    expect(w.negotiated().at(-1)).toMatchObject({ tls: true, tlsIdentity: 'alice' });
  });

  it('python3-libnbd with set_tls_psk_file + set_tls_username', async () => {
    const before = w.negotiated().length;
    const out = await nbdPython(
      `import nbd, sys
h = nbd.NBD()
h.set_tls(nbd.TLS_REQUIRE)
h.set_tls_psk_file(sys.argv[2])
h.set_tls_username('bob')
h.connect_unix(sys.argv[1])
print(h.get_tls_negotiated(), h.get_size())
h.pwrite(b'\\x5a' * 4096, 8192)
assert h.pread(4096, 8192) == b'\\x5a' * 4096
h.shutdown()`,
      [srv.socket, pskFile],
    );
    expect(out.trim()).toBe('True 67108864');
    await until(() => w.negotiated().length > before, 5000, 'negotiated event');
    expect(w.negotiated().at(-1)).toMatchObject({ tls: true, tlsIdentity: 'bob' });
  });

  it('a wrong PSK key fails cleanly with one log line; the server keeps serving', async () => {
    const mark = srv.logs.length;
    const msg = await fails(run('nbdinfo', [tlsUnix(srv, `tls-psk-file=${wrongPskFile}`, 'alice')]));
    expect(msg).toMatch(/gnutls_handshake/);
    await until(() => w.warnings(mark).length > 0, 5000, 'the log line');
    expect(w.warnings(mark)).toHaveLength(1);
    expect(w.warnings(mark)[0]).toMatch(/TLS handshake failed/);
    await until(() => srv.server.connectionCount === 0, 5000, 'the connection to go');
    const { stdout } = await run('nbdinfo', [tlsUnix(srv, `tls-psk-file=${pskFile}`, 'alice')]);
    expect(stdout).toMatch(/with TLS/);
  });

  it('an unknown PSK username fails cleanly; the log names it', async () => {
    const mark = srv.logs.length;
    const carol = makePsk(path.join(dir, 'carol', 'keys.psk'), ['carol']);
    await fails(run('nbdinfo', [tlsUnix(srv, `tls-psk-file=${carol}`, 'carol')]));
    await until(() => w.warnings(mark).length > 0, 5000, 'the log line');
    expect(w.warnings(mark)).toHaveLength(1);
    expect(w.warnings(mark)[0]).toMatch(/unknown PSK identity "carol"/);
  });

  it('an untrusted server certificate fails cleanly; the server keeps serving', async () => {
    const mark = srv.logs.length;
    // Over TCP: libnbd checks the server certificate against the host name it connected to
    // (over a UNIX socket it has no host name and skips the check).
    const msg = await fails(run('nbdinfo', [`nbds://localhost:${port}/?tls-certificates=${otherPki}`]));
    expect(msg).toMatch(/certificate verification/);
    await until(() => srv.server.connectionCount === 0, 5000, 'the connection to go');
    expect(w.warnings(mark).length).toBeLessThanOrEqual(1);
    const { stdout } = await run('nbdinfo', [tlsUnix(srv, `tls-certificates=${pki}`)]);
    expect(stdout).toMatch(/with TLS/);
  });

  it('TLS 1.2 when the client offers nothing newer (GnuTLS with TLS 1.3 disabled): x509 and PSK', async () => {
    const conf = path.join(dir, 'no-tls13.conf');
    fs.writeFileSync(conf, '[overrides]\ndisabled-version = tls1.3\n');
    const env = { GNUTLS_SYSTEM_PRIORITY_FILE: conf };
    const mark = srv.logs.length;
    await run('nbdinfo', [`nbds://localhost:${port}/?tls-certificates=${pki}`], { env });
    await run('nbdinfo', [tlsUnix(srv, `tls-psk-file=${pskFile}`, 'bob')], { env });
    await until(() => srv.logs.slice(mark).filter((l) => /TLS established/.test(l)).length === 2, 5000, 'two TLS connections');
    const established = srv.logs.slice(mark).filter((l) => /TLS established/.test(l));
    expect(established[0]).toMatch(/TLSv1\.2/);
    expect(established[1]).toMatch(/TLSv1\.2, .*PSK.*identity bob/);
    // And TLS 1.3 when offered (the default).
    const mark2 = srv.logs.length;
    await run('nbdinfo', [tlsUnix(srv, `tls-psk-file=${pskFile}`, 'bob')]);
    await until(() => srv.logs.slice(mark2).some((l) => /TLS established/.test(l)), 5000, 'TLS connection');
    expect(srv.logs.slice(mark2).find((l) => /TLS established/.test(l))).toMatch(/TLSv1\.3/);
  });

  it('libnbd opt mode in plaintext: INFO, GO and LIST are refused (ERR_TLS_REQD maps to ENOTSUP)', async () => {
    const out = await nbdPython(
      `import nbd, sys
h = nbd.NBD()
h.set_opt_mode(True)
h.set_tls(nbd.TLS_DISABLE)
h.connect_unix(sys.argv[1])
for name, f in [('info', h.opt_info), ('go', h.opt_go), ('list', lambda: h.opt_list(lambda n, d: 0))]:
    try:
        f()
        print(name, 'accepted')
    except nbd.Error as e:
        print(name, 'refused', e.errnum)
h.opt_abort()`,
      [srv.socket],
    );
    expect(out.trim().split('\n')).toEqual(['info refused 95', 'go refused 95', 'list refused 95']);
  });

  it('plain nbdinfo (no TLS) cannot connect', async () => {
    const msg = await fails(run('nbdinfo', [`nbd+unix:///?socket=${srv.socket}`]));
    expect(msg).toMatch(/nbdinfo/);
  });

  it('qemu-img info through tls-creds-x509 (UNIX and TCP) and tls-creds-psk', async () => {
    const x509 = `tls-creds-x509,id=tls0,endpoint=client,dir=${pki}`;
    const psk = `tls-creds-psk,id=tls0,endpoint=client,dir=${qemuPskDir},username=alice`;
    for (const [obj, opts] of [
      [x509, `driver=nbd,path=${srv.socket},tls-creds=tls0,tls-hostname=localhost`],
      [x509, `driver=nbd,host=localhost,port=${port},tls-creds=tls0`],
      [psk, `driver=nbd,path=${srv.socket},tls-creds=tls0`],
    ] as const) {
      const { stdout } = await run('qemu-img', ['info', '--object', obj, '--image-opts', opts]);
      expect(stdout, opts).toMatch(/virtual size: 64 MiB \(67108864 bytes\)/);
    }
  });

  it('qemu-io read-write through qemu TLS (PSK writes, x509 reads back)', async () => {
    const psk = `tls-creds-psk,id=tls0,endpoint=client,dir=${qemuPskDir},username=bob`;
    const w1 = await run('qemu-io', ['--object', psk, '--image-opts', `driver=nbd,path=${srv.socket},tls-creds=tls0`, '-c', 'write -P 0xa7 3M 192k', '-c', 'read -P 0xa7 3M 192k']);
    expect(w1.stdout).toMatch(/wrote 196608\/196608 bytes at offset 3145728/);
    expect(w1.stdout).toMatch(/read 196608\/196608 bytes at offset 3145728/);
    const x509 = `tls-creds-x509,id=tls0,endpoint=client,dir=${pki}`;
    const r = await run('qemu-io', ['--object', x509, '--image-opts', `driver=nbd,host=localhost,port=${port},tls-creds=tls0`, '-c', 'read -P 0xa7 3M 192k', '-c', 'read -P 0 32M 64k']);
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
    expect(r.stdout).toMatch(/read 196608\/196608 bytes at offset 3145728/);
  });

  it('qemu-img with an untrusted CA fails cleanly', async () => {
    const x509 = `tls-creds-x509,id=tls0,endpoint=client,dir=${otherPki}`;
    const msg = await fails(run('qemu-img', ['info', '--object', x509, '--image-opts', `driver=nbd,path=${srv.socket},tls-creds=tls0,tls-hostname=localhost`]));
    expect(msg).toMatch(/known issuer/);
    await until(() => srv.server.connectionCount === 0, 5000, 'the connection to go');
  });
});

describe('nbdcopy 64 MiB through TLS, both directions', () => {
  it('file → nbds (x509) → file, and nbds (PSK) → file: checksums equal', async () => {
    const srv = await startServer({
      exports: [{ name: 'disk', backend: memoryBackend({ size: 64 << 20 }) }],
      tls: { mode: 'require', ...serverCert(), psk: pskFile },
    });
    try {
      const src = path.join(dir, 'src.img');
      const back = path.join(dir, 'back.img');
      const back2 = path.join(dir, 'back2.img');
      const data = randomBytes(64 << 20);
      // Some zero runs too, so sparse/zero paths are crossed.
      data.fill(0, 5 << 20, 9 << 20);
      fs.writeFileSync(src, data);
      const sum = (f: string) => createHash('sha256').update(fs.readFileSync(f)).digest('hex');
      await run('nbdcopy', [src, tlsUnix(srv, `tls-certificates=${pki}`, '', 'disk')], { timeout: 120_000 });
      await run('nbdcopy', [tlsUnix(srv, `tls-certificates=${pki}`, '', 'disk'), back], { timeout: 120_000 });
      await run('nbdcopy', [tlsUnix(srv, `tls-psk-file=${pskFile}`, 'alice', 'disk'), back2], { timeout: 120_000 });
      expect(fs.statSync(back).size).toBe(64 << 20);
      expect(sum(back)).toBe(sum(src));
      expect(sum(back2)).toBe(sum(src));
    } finally {
      await srv.close();
    }
  });
});

describe('tls-verify-peer (client certificates)', () => {
  let srv: Running;
  let w: ReturnType<typeof watch>;
  beforeAll(async () => {
    srv = await startServer({
      exports: [{ name: '', backend: memoryBackend({ size: 1 << 20 }) }],
      tls: { mode: 'require', ...serverCert(), ca: path.join(pki, 'ca-cert.pem'), verifyPeer: true },
    });
    w = watch(srv);
  });
  afterAll(() => srv.close());

  it('a client with a certificate from the CA is served; its CN is the identity', async () => {
    const { stdout } = await run('nbdinfo', [tlsUnix(srv, `tls-certificates=${pki}`)]);
    expect(stdout).toMatch(/with TLS/);
    await until(() => w.negotiated().length > 0, 5000, 'negotiated event');
    expect(w.negotiated().at(-1)).toMatchObject({ tls: true, tlsIdentity: 'alice' });
  });

  it('a client without a certificate is refused; the server keeps serving', async () => {
    await fails(run('nbdinfo', [tlsUnix(srv, `tls-certificates=${caOnly}`)]));
    await until(() => srv.server.connectionCount === 0, 5000, 'the connection to go');
    const { stdout } = await run('nbdinfo', [tlsUnix(srv, `tls-certificates=${pki}`)]);
    expect(stdout).toMatch(/with TLS/);
  });

  it('a certificate from another CA is refused', async () => {
    await fails(run('nbdinfo', [tlsUnix(srv, `tls-certificates=${otherPki}&tls-verify-peer=false`)]));
    await until(() => srv.server.connectionCount === 0, 5000, 'the connection to go');
  });
});

describe('SELECTIVETLS and NOTLS with libnbd', () => {
  const exportsWithSecret = (): ServerOptions['exports'] => [
    { name: 'public', backend: memoryBackend({ size: 1 << 20 }) },
    { name: 'secret', backend: memoryBackend({ size: 2 << 20 }), tlsOnly: true },
  ];

  it('optional: a tlsOnly export is refused in plaintext and served after STARTTLS; LIST hides it in plaintext', async () => {
    const srv = await startServer({ exports: exportsWithSecret(), tls: { mode: 'on', ...serverCert() } });
    try {
      expect(srv.server.uris.every((u) => u.startsWith('nbd+unix://'))).toBe(true);
      await fails(run('nbdinfo', [`nbd+unix:///secret?socket=${srv.socket}`]));
      const pub = await run('nbdinfo', [`nbd+unix:///public?socket=${srv.socket}`]);
      expect(pub.stdout).not.toMatch(/with TLS/);
      const sec = await run('nbdinfo', [tlsUnix(srv, `tls-certificates=${pki}`, '', 'secret')]);
      expect(sec.stdout).toMatch(/with TLS/);
      expect(sec.stdout).toMatch(/export-size: 2097152/);
      const plainList = await run('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${srv.socket}`]);
      expect((JSON.parse(plainList.stdout) as { exports: { 'export-name': string }[] }).exports.map((e) => e['export-name'])).toEqual(['public']);
      const tlsList = await run('nbdinfo', ['--list', '--json', tlsUnix(srv, `tls-certificates=${pki}`)]);
      expect((JSON.parse(tlsList.stdout) as { exports: { 'export-name': string }[] }).exports.map((e) => e['export-name']).sort()).toEqual(['public', 'secret']);
    } finally {
      await srv.close();
    }
  });

  it('off: a client requiring TLS is refused (ERR_POLICY), plaintext is served', async () => {
    const srv = await startServer({ exports: exportsWithSecret() });
    try {
      await fails(run('nbdinfo', [tlsUnix(srv, `tls-certificates=${pki}`, '', 'public')]));
      const { stdout } = await run('nbdinfo', [`nbd+unix:///public?socket=${srv.socket}`]);
      expect(stdout).not.toMatch(/with TLS/);
    } finally {
      await srv.close();
    }
  });
});

describe('CLI --tls flags', () => {
  it('--tls=require with x509: prints nbds URIs that nbdinfo can use', async () => {
    const sock = path.join(dir, 'cli-x509.sock');
    const { child, uris } = await spawnCli(['serve', '--memory', '8M', '--socket', sock, '--tls=require', '--tls-cert', path.join(pki, 'server-cert.pem'), '--tls-key', path.join(pki, 'server-key.pem')]);
    try {
      expect(uris).toEqual([`nbds+unix:///?socket=${sock}`]);
      const { stdout } = await run('nbdinfo', [`${uris[0]}&tls-certificates=${pki}`]);
      expect(stdout).toMatch(/with TLS/);
      expect(stdout).toMatch(/export-size: 8388608/);
    } finally {
      child.kill('SIGTERM');
    }
  });

  it('--tls=require --tls-psk FILE over TCP: nbds:// URI', async () => {
    const { child, uris } = await spawnCli(['serve', '--memory', '8M', '--port', '0', '--tls=require', '--tls-psk', pskFile]);
    try {
      expect(uris[0]).toMatch(/^nbds:\/\/[^/]+:\d+\/$/);
      const withUser = uris[0]!.replace('nbds://', 'nbds://alice@');
      const { stdout } = await run('nbdinfo', [`${withUser}?tls-psk-file=${pskFile}`]);
      expect(stdout).toMatch(/with TLS/);
    } finally {
      child.kill('SIGTERM');
    }
  });

  it('--tls=on with --tls-ca --tls-verify-peer: plain nbd URIs, TLS clients need a client certificate', async () => {
    const sock = path.join(dir, 'cli-on.sock');
    const { child, uris } = await spawnCli([
      'serve',
      '--memory',
      '8M',
      '--socket',
      sock,
      '--tls',
      'on',
      '--tls-cert',
      path.join(pki, 'server-cert.pem'),
      '--tls-key',
      path.join(pki, 'server-key.pem'),
      '--tls-ca',
      path.join(pki, 'ca-cert.pem'),
      '--tls-verify-peer',
    ]);
    try {
      expect(uris).toEqual([`nbd+unix:///?socket=${sock}`]);
      expect((await run('nbdinfo', [uris[0]!])).stdout).not.toMatch(/with TLS/);
      expect((await run('nbdinfo', [`${uris[0]!.replace('nbd+unix', 'nbds+unix')}&tls-certificates=${pki}`])).stdout).toMatch(/with TLS/);
      await fails(run('nbdinfo', [`${uris[0]!.replace('nbd+unix', 'nbds+unix')}&tls-certificates=${caOnly}`]));
    } finally {
      child.kill('SIGTERM');
    }
  });

  it('--tls=require without credentials, or a bad mode, is a usage error', async () => {
    const noCreds = await fails(execFileP(process.execPath, [CLI, 'serve', '--memory', '1M', '--socket', path.join(dir, 'x.sock'), '--tls=require']));
    expect(noCreds).toMatch(/certificate and key|PSK/);
    const bad = await fails(execFileP(process.execPath, [CLI, 'serve', '--tls=maybe']));
    expect(bad).toMatch(/--tls: expected off, on or require, got "maybe"/);
    const off = await fails(execFileP(process.execPath, [CLI, 'serve', '--memory', '1M', '--tls=off', '--tls-psk', pskFile]));
    expect(off).toMatch(/--tls-psk given but --tls=off/);
  });

  it('--tls-verify-peer without --tls-ca is refused at startup (not "any public CA")', async () => {
    const noCa = await fails(
      execFileP(process.execPath, [
        CLI,
        'serve',
        '--memory',
        '1M',
        '--socket',
        path.join(dir, 'noca.sock'),
        '--tls=require',
        '--tls-cert',
        path.join(pki, 'server-cert.pem'),
        '--tls-key',
        path.join(pki, 'server-key.pem'),
        '--tls-verify-peer',
      ]),
    );
    expect(noCa).toMatch(/--tls-verify-peer\) needs tls\.ca \(--tls-ca\)/);
  });
});
