/**
 * Exports made per connection, the edges: exports chosen by the TLS
 * identity (PSK, libnbd), a throwing listExports, NBD_OPT_EXPORT_NAME for
 * an opened export, the handshake timeout and a server shutdown while an
 * open is pending, configurations the server refuses; directoryExports
 * (compared with nbdkit file dir=); and nbd-engine probe against exports
 * made per connection (the same results as against a static export).
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, directoryExports, layer, memoryBackend, NbdError, type ExportConfig } from '../../../src/index.js';
import { py } from '../pylibnbd.js';
import { CLI, execFileP, run, serverPerTest, startServer, tmpDir } from '../harness.js';
import { makePsk, pskKey } from '../tls-support.js';
import { NbdConnection } from '../../../src/client/index.js';
import { RawClient } from '../raw-client.js';
import { CLIENT_FLAG, OPT, REP, encodeClientFlags, encodeInfoGoData, encodeOption, parseExportNameReply } from '../../helpers/wire.js';

const MiB = 1 << 20;
const { serve } = serverPerTest();

/** A promise and its resolver, for hooks the test answers when it chooses. */
function deferred<T>(): { promise: Promise<T>; resolve(v: T): void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Wait (without timers) until the hook was called. */
async function called(flag: () => boolean): Promise<void> {
  while (!flag()) await new Promise((r) => setImmediate(r));
}

describe('exports per TLS identity (PSK, python3-libnbd)', () => {
  let dir: string;
  let pskFile: string;
  beforeAll(() => {
    dir = tmpDir('nbd-engine-dynexp-tls-');
    pskFile = makePsk(path.join(dir, 'keys.psk'), ['alice', 'bob', 'admin']);
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('each identity lists and opens its own home export, and only its own', async () => {
    const srv = await serve({
      exports: [],
      tls: { mode: 'require', psk: pskFile },
      listExports: (conn) => (conn.tlsIdentity ? [{ name: `home-${conn.tlsIdentity}` }] : []),
      openExport: (name, conn) => (conn.tls && name === `home-${conn.tlsIdentity}` ? { name, backend: memoryBackend({ size: (conn.tlsIdentity === 'alice' ? 1 : 2) * MiB }) } : null),
    });
    const asUser = (user: string) =>
      py<{ list: string[]; own: number; other: string | null }>(`nbds+unix:///?socket=${srv.socket}`, `
        def opened(user, name):
            h = nbd.NBD()
            h.set_opt_mode(True)
            h.set_tls(nbd.TLS_REQUIRE)
            h.set_tls_psk_file(ARGS[0])
            h.set_tls_username(user)
            h.connect_uri('nbd+unix:///?socket=' + ARGS[1])
            return h
        h = opened('${user}', '')
        got = []
        h.opt_list(lambda name, desc: got.append(name) or 0)
        h.set_export_name('home-${user}')
        h.opt_go()
        own = h.get_size()
        h.shutdown()
        other = opened('${user}', '')
        other.set_export_name('home-${user === 'alice' ? 'bob' : 'alice'}')
        out = {'list': got, 'own': own, 'other': err(other.opt_info)}
      `, [pskFile, srv.socket]);
    expect(await asUser('alice')).toEqual({ list: ['home-alice'], own: MiB, other: 'ENOENT' });
    expect(await asUser('bob')).toEqual({ list: ['home-bob'], own: 2 * MiB, other: 'ENOENT' });
  });

  // tls.starttls-resets: nothing a hook answered before STARTTLS carries over.
  it('an export looked up in plaintext is asked for again after STARTTLS, with the TLS identity: a refused identity stays refused', async () => {
    const asked: string[] = [];
    const srv = await serve({
      exports: [],
      tls: { mode: 'on', psk: pskFile },
      defaultExport: (conn) => (conn.tlsIdentity === 'admin' ? 'secret' : null),
      openExport: (name, conn) => {
        asked.push(`${name} tls=${conn.tls} ${conn.tlsIdentity ?? '-'}`);
        if (name !== 'secret') return null;
        if (!conn.tls) return { name, backend: memoryBackend({ size: MiB }), tlsOnly: true };
        return conn.tlsIdentity === 'admin' ? { name, backend: memoryBackend({ size: 2 * MiB }) } : null;
      },
    });
    const session = async (user: string) => {
      const c = await NbdConnection.connect({ path: srv.socket }, { timeoutMs: 5000 });
      await c.handshake();
      const before = await c.info('secret', []);
      const defaultBefore = await c.info('', []);
      await c.starttls({ psk: { identity: user, key: pskKey(pskFile, user) } });
      const after = await c.go('secret', []);
      c.destroy();
      return { before: before.replies.at(-1)!.typeName, defaultBefore: defaultBefore.replies.at(-1)!.typeName, after: after.ok ? `served ${after.size}` : after.replies.at(-1)!.typeName };
    };
    expect(await session('alice')).toEqual({ before: 'NBD_REP_ERR_TLS_REQD', defaultBefore: 'NBD_REP_ERR_UNKNOWN', after: 'NBD_REP_ERR_UNKNOWN' });
    expect(asked).toEqual(['secret tls=false -', 'secret tls=true alice']);
    asked.length = 0;
    expect(await session('admin')).toEqual({ before: 'NBD_REP_ERR_TLS_REQD', defaultBefore: 'NBD_REP_ERR_UNKNOWN', after: 'served 2097152' });
    expect(asked).toEqual(['secret tls=false -', 'secret tls=true admin']);
  });
});

describe('exports per connection: edges', () => {
  it('listExports throwing: NBD_REP_ERR_PLATFORM, one log line, the next LIST asks again', async () => {
    let calls = 0;
    const srv = await serve({
      exports: [{ name: 'static', backend: memoryBackend({ size: MiB }) }],
      listExports: () => {
        if (++calls === 1) throw new Error('directory unreadable');
        return [{ name: 'later' }];
      },
    });
    const client = await RawClient.connect({ path: srv.socket });
    await client.greet();
    const first = await client.option(OPT.LIST);
    expect(first.map((r) => r.type)).toEqual([REP.ERR_PLATFORM]);
    const second = await client.option(OPT.LIST);
    expect(second.map((r) => r.type)).toEqual([REP.SERVER, REP.SERVER, REP.ACK]);
    expect(second.slice(0, 2).map((r) => r.data.subarray(4).toString())).toEqual(['static', 'later']);
    expect(srv.logs.filter((l) => l.includes('directory unreadable'))).toEqual([expect.stringMatching(/^warn: connection \d+: listing exports failed: directory unreadable$/)]);
    client.socket.destroy();
  });

  it('listExports returning a bad entry: the same error reply, the log names the entry', async () => {
    const srv = await serve({ exports: [{ name: 'static', backend: memoryBackend({ size: MiB }) }], listExports: () => [{ name: 'a\0b' }] });
    const client = await RawClient.connect({ path: srv.socket });
    await client.greet();
    expect((await client.option(OPT.LIST)).map((r) => r.type)).toEqual([REP.ERR_PLATFORM]);
    expect(srv.logs.filter((l) => l.includes('listExports()[0].name'))).toHaveLength(1);
    client.socket.destroy();
  });

  it('listExports returning 10 000 exports is listed; 10 001 gets the error reply (nbdkit\'s limit), one log line', async () => {
    let n = 10_000;
    const srv = await serve({ exports: [], listExports: () => Array.from({ length: n }, (_, i) => ({ name: `e${i}` })), openExport: () => null });
    const client = await RawClient.connect({ path: srv.socket });
    await client.greet();
    const listed = await client.option(OPT.LIST);
    expect(listed).toHaveLength(10_001);
    expect(listed.at(-1)!.type).toBe(REP.ACK);
    n = 10_001;
    expect((await client.option(OPT.LIST)).map((r) => r.type)).toEqual([REP.ERR_PLATFORM]);
    expect(srv.logs.filter((l) => l.includes('listExports returned 10001 exports, more than 10000'))).toHaveLength(1);
    client.socket.destroy();
  });

  it('listExports within 10 000 exports but over maxListBytes (names and descriptions of 4 KiB): the error reply, one log line; the limit is configurable', async () => {
    // Before: 10 000 entries of 4 KiB names and descriptions made an 82 MB answer in one go (a second
    // client's READ stalled 1.3 s; 20 clients looping on LIST took the server to 1.2 GB).
    const big = (i: number) => ({ name: `${i}`.padStart(4096, 'n'), description: 'd'.repeat(4096) });
    let n = 10_000;
    const srv = await serve({ exports: [], listExports: () => Array.from({ length: n }, (_, i) => big(i)), openExport: () => null });
    const client = await RawClient.connect({ path: srv.socket });
    await client.greet();
    expect((await client.option(OPT.LIST)).map((r) => r.type)).toEqual([REP.ERR_PLATFORM]);
    const lines = srv.logs.filter((l) => l.includes('maxListBytes'));
    expect(lines).toEqual([expect.stringMatching(/^warn: connection \d+: listing exports failed: listExports returned 10000 exports, whose replies pass maxListBytes \(4194304 bytes\) at entry 510$/)]);
    // Within the default 4 MiB: 510 entries of 8216 bytes (24 + 4096 + 4096) are listed.
    n = 510;
    const listed = await client.option(OPT.LIST);
    expect(listed).toHaveLength(511);
    expect(listed.at(-1)!.type).toBe(REP.ACK);
    client.socket.destroy();

    const small = await serve({ exports: [], limits: { maxListBytes: 100 }, listExports: () => [{ name: 'a'.repeat(40) }, { name: 'b'.repeat(40) }], openExport: () => null });
    const c2 = await RawClient.connect({ path: small.socket });
    await c2.greet();
    expect((await c2.option(OPT.LIST)).map((r) => r.type)).toEqual([REP.ERR_PLATFORM]);
    expect(small.logs.filter((l) => l.includes('maxListBytes (100 bytes) at entry 1'))).toHaveLength(1);
    c2.socket.destroy();
  });

  it('NBD_OPT_EXPORT_NAME for an opened export: served; for a failing one: the connection is dropped with one log line', async () => {
    const srv = await serve({
      exports: [],
      openExport: (name) => {
        if (name === 'bad') throw new Error('no such volume group');
        return { name, backend: memoryBackend({ size: 5 * MiB }) };
      },
    });
    const ok = await RawClient.connect({ path: srv.socket });
    await ok.greet(CLIENT_FLAG.FIXED_NEWSTYLE);
    ok.send(encodeOption(OPT.EXPORT_NAME, Buffer.from('vol1')));
    expect(parseExportNameReply(await ok.read(10 + 124)).size).toBe(BigInt(5 * MiB));
    ok.socket.destroy();
    // Without fixed newstyle (the `unfixed` mode) EXPORT_NAME is resolved too.
    const bad = await RawClient.connect({ path: srv.socket });
    await bad.readGreeting();
    bad.send(Buffer.concat([encodeClientFlags(0), encodeOption(OPT.EXPORT_NAME, Buffer.from('bad'))]));
    await bad.closedP;
    // The hook's failure, then the drop (EXPORT_NAME has no error reply).
    expect(srv.logs.filter((l) => l.startsWith('warn: connection 2'))).toEqual([
      'warn: connection 2: opening export "bad" failed: no such volume group',
      expect.stringContaining('disconnecting: option.export-name-terminates: EXPORT_NAME for an export that could not be opened'),
    ]);
  });

  it('the handshake timeout while an open is pending: dropped, and what the open returns later is closed', async () => {
    const open = deferred<ExportConfig>();
    let asked = false;
    let closed!: () => void;
    const closedP = new Promise<void>((r) => (closed = r));
    const srv = await serve({ exports: [], limits: { handshakeTimeout: 1000 }, openExport: () => ((asked = true), open.promise) });
    const client = await RawClient.connect({ path: srv.socket });
    await client.greet();
    client.send(encodeOption(OPT.GO, encodeInfoGoData('slow')));
    // (Were the server too slow to ask before the timeout, the connection would close first: a failure, not a hang.)
    await Promise.race([called(() => asked || client.ended), client.closedP]);
    expect(asked).toBe(true);
    await client.closedP;
    expect(srv.logs.some((l) => l.includes('NBD_ERR_HANDSHAKE_TIMEOUT'))).toBe(true);
    open.resolve({ name: 'slow', backend: layer(memoryBackend({ size: MiB }), { close: () => closed() }) });
    await closedP;
  });

  it('the server shutting down while an open is pending: the option gets NBD_REP_ERR_SHUTDOWN, the open is closed', async () => {
    const open = deferred<ExportConfig>();
    let asked = false;
    let closed = 0;
    const srv = await serve({ exports: [], openExport: () => ((asked = true), open.promise) });
    const client = await RawClient.connect({ path: srv.socket });
    await client.greet();
    client.send(encodeOption(OPT.INFO, encodeInfoGoData('busy')));
    await called(() => asked);
    const closing = srv.server.close({ timeout: 5000 });
    open.resolve({ name: 'busy', backend: layer(memoryBackend({ size: MiB }), { close: () => void closed++ }) });
    expect((await client.optionReplies()).map((r) => r.type)).toEqual([REP.ERR_SHUTDOWN]);
    client.send(encodeOption(OPT.ABORT));
    expect((await client.optionReplies()).map((r) => r.type)).toEqual([REP.ACK]);
    client.socket.destroy();
    await closing;
    // close() waits for the connections' clean-up.
    expect(closed).toBe(1);
  });

  it('a client flooding options while an open is pending: dropped at the buffer limit, one log line; the open is closed when it completes', async () => {
    const open = deferred<ExportConfig>();
    let asked = false;
    let closed!: () => void;
    const closedP = new Promise<void>((r) => (closed = r));
    const srv = await serve({ exports: [], limits: { maxPayload: 64 * 1024, maxBufferedBytes: 128 * 1024 }, openExport: () => ((asked = true), open.promise) });
    const client = await RawClient.connect({ path: srv.socket });
    await client.greet();
    client.send(encodeOption(OPT.INFO, encodeInfoGoData('slow')));
    await Promise.race([called(() => asked || client.ended), client.closedP]);
    expect(asked).toBe(true);
    // 16 000 LISTs (256 KiB) queue behind the pending INFO: more than the connection may buffer.
    client.send(Buffer.concat(Array.from({ length: 16_000 }, () => encodeOption(OPT.LIST))));
    await client.closedP;
    expect(srv.logs.filter((l) => /^warn: .*NBD_ERR_BUFFER_LIMIT/.test(l))).toHaveLength(1);
    open.resolve({ name: 'slow', backend: layer(memoryBackend({ size: MiB }), { close: () => closed() }) });
    await closedP;
    expect(srv.server.connectionCount).toBe(0);
  });

  it('configurations the server refuses', () => {
    const backend = memoryBackend({ size: MiB });
    expect(() => createServer({ exports: [] })).toThrow(NbdError);
    expect(() => createServer({ exports: [], openExport: () => null })).not.toThrow();
    expect(() => createServer({ exports: [{ name: 'a', backend }], defaultExport: 'elsewhere' })).toThrow(/default export "elsewhere" is not defined/);
    // With openExport, a default that is not static is opened like any other name.
    expect(() => createServer({ exports: [{ name: 'a', backend }], defaultExport: 'elsewhere', openExport: () => null })).not.toThrow();
    expect(() => createServer({ exports: [], openExport: 'yes' as never })).toThrow(/openExport must be a function/);
  });
});

describe('directoryExports: a directory of images (nbdkit file dir=)', () => {
  it('nbdinfo --list lists its files; qemu-img and libnbd open them by name; nothing outside it can be named', async () => {
    const dir = tmpDir('nbd-engine-dir-');
    try {
      fs.writeFileSync(path.join(dir, 'a.img'), Buffer.alloc(MiB, 0x61));
      fs.writeFileSync(path.join(dir, 'b.img'), Buffer.alloc(2 * MiB));
      fs.writeFileSync(path.join(dir, '.hidden'), Buffer.alloc(512));
      fs.mkdirSync(path.join(dir, 'sub'));
      fs.writeFileSync(path.join(path.dirname(dir), `outside-${path.basename(dir)}.img`), Buffer.alloc(512));
      const srv = await serve({ exports: [], ...directoryExports({ dir }) });
      const listed = JSON.parse((await run('nbdinfo', ['--list', '--json', srv.uri('a.img')])).stdout) as { exports: Array<{ 'export-name': string; 'export-size': number }> };
      expect(listed.exports.map((e) => [e['export-name'], e['export-size']])).toEqual([['a.img', MiB], ['b.img', 2 * MiB]]);
      const qemu = JSON.parse((await run('qemu-img', ['info', '--output=json', srv.uri('b.img')])).stdout) as { 'virtual-size': number };
      expect(qemu['virtual-size']).toBe(2 * MiB);
      const out = await py<Record<string, string | null>>(srv.uri('a.img'), `
        def tried(name):
            h = nbd.NBD()
            h.set_opt_mode(True)
            h.connect_uri(URI)
            h.set_export_name(name)
            return err(h.opt_info)
        h = connect()
        h.pwrite(b'written', 0)
        out = {'data': h.pread(3, 4).decode(), 'hidden': tried('.hidden'), 'sub': tried('sub'), 'up': tried('../outside-' + ARGS[0] + '.img'), 'none': tried('missing.img')}
      `, [path.basename(dir)]);
      expect(out).toEqual({ data: 'ten', hidden: 'ENOENT', sub: 'ENOENT', up: 'ENOENT', none: 'ENOENT' });
      expect(fs.readFileSync(path.join(dir, 'a.img')).subarray(0, 7).toString()).toBe('written');
    } finally {
      fs.rmSync(path.join(path.dirname(dir), `outside-${path.basename(dir)}.img`), { force: true });
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('lists what nbdkit file dir= lists (hidden files aside: nbdkit lists them, unsorted)', async () => {
    const dir = tmpDir('nbd-engine-dir-cmp-');
    try {
      fs.writeFileSync(path.join(dir, 'z.img'), Buffer.alloc(MiB));
      fs.writeFileSync(path.join(dir, 'a.img'), Buffer.alloc(3 * MiB));
      fs.writeFileSync(path.join(dir, '.hidden'), Buffer.alloc(512));
      fs.mkdirSync(path.join(dir, 'sub'));
      type Listing = { exports: Array<{ 'export-name': string; 'export-size': number }> };
      const entries = (l: Listing) => l.exports.map((e) => `${e['export-name']}=${e['export-size']}`);
      const theirs = JSON.parse((await run('nbdkit', ['-U', '-', 'file', `dir=${dir}`, '--run', 'nbdinfo --list --json "$uri"'])).stdout) as Listing;
      const srv = await serve({ exports: [], ...directoryExports({ dir }) });
      const ours = JSON.parse((await run('nbdinfo', ['--list', '--json', srv.uri('a.img')])).stdout) as Listing;
      expect(entries(ours)).toEqual(['a.img=3145728', 'z.img=1048576']);
      expect(entries(theirs).filter((e) => !e.startsWith('.')).sort()).toEqual(entries(ours));
      expect(entries(theirs)).toContain('.hidden=512');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

});

describe('nbd-engine probe against exports made per connection', () => {
  it('passes what it passes against the same export served statically: nothing fails', async () => {
    const probe = async (uri: string) => {
      const r = await execFileP(process.execPath, [CLI, 'probe', uri, '--json', '--timeout', '3']);
      return (JSON.parse(r.stdout) as { results: Array<{ status: string; rule: string }> }).results;
    };
    const staticSrv = await startServer({ exports: [{ name: 'disk', backend: memoryBackend({ size: 64 << 20 }) }] });
    let expected: Array<{ status: string; rule: string }>;
    try {
      expected = await probe(staticSrv.uri('disk'));
    } finally {
      await staticSrv.close();
    }
    const srv = await serve({
      exports: [],
      defaultExport: () => 'disk',
      listExports: () => [{ name: 'disk' }],
      openExport: (name) => (name === 'disk' ? { name, backend: memoryBackend({ size: 64 << 20 }) } : null),
    });
    const got = await probe(srv.uri('disk'));
    expect(got.filter((r) => r.status === 'FAIL')).toEqual([]);
    expect(got.map((r) => `${r.rule} ${r.status}`)).toEqual(expected.map((r) => `${r.rule} ${r.status}`));
    expect(got.filter((r) => r.status === 'PASS').length).toBeGreaterThanOrEqual(30);
  });
});
