/**
 * Strict mode (issue 14): clients that break the protocol on purpose, and
 * what `server.violations$` and the strict log say about it. python3-libnbd
 * with `set_strict_mode(0)` sends the bad requests libnbd can send; the raw
 * client sends what libnbd cannot (bad client flags, data after ABORT,
 * requests after DISC, a WRITE longer than its header).
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { memoryBackend, type Backend, type Violation } from '../../src/index.js';
import { REFUSAL_LINES } from '../../src/api/violations.js';
import { serverPerTest, tmpDir, type Running } from './harness.js';
import { makePki } from './tls-support.js';
import { py } from './pylibnbd.js';
import { RawClient, requestBytes, CMD } from './raw-client.js';
import { CLIENT_FLAG, OPT, encodeClientFlags, encodeExtendedRequest, encodeMetaContextData, encodeOption, encodeRequest } from '../helpers/wire.js';

const MiB = 1 << 20;

/** A writable backend without flush, so the export advertises no FUA. */
function noFuaBackend(): Backend {
  const m = memoryBackend({ size: MiB });
  return { size: MiB, read: (o, l) => m.read(o, l), write: (o, d, opts) => m.write!(o, d, opts) };
}

const { serve, track } = serverPerTest();

async function strictServer(): Promise<{ running: Running; violations: Violation[] }> {
  const running = await serve({
    strict: true,
    exports: [
      { name: 'aligned', backend: memoryBackend({ size: MiB }), blockSizes: { minimum: 512 } },
      { name: 'ro', backend: memoryBackend({ size: MiB }), readOnly: true },
      { name: 'nofua', backend: noFuaBackend() },
    ],
  });
  const violations: Violation[] = [];
  track(running.server.violations$.subscribe((v) => violations.push(v)));
  return { running, violations };
}

/** Wait until the server saw every connection close (violations of a closing connection come before it). */
async function allClosed(running: Running): Promise<void> {
  while (running.server.connectionCount > 0) await new Promise((r) => setTimeout(r, 10));
}

describe('strict mode: python3-libnbd with set_strict_mode(0)', () => {
  it('reports each bad request once, in order, with its rule, connection and frame', async () => {
    const { running, violations } = await strictServer();
    const out = await py<Record<string, string | null>>(
      running.uri('aligned'),
      `
      buf = b'x' * 512
      h = connect(strict_off=0xffffffff)
      h.set_strict_mode(0)
      out['oob'] = err(h.pread, 512, MIB)
      out['misaligned'] = err(h.pread, 100, 1)
      out['zero'] = err(h.pread, 0, 0)
      out['df_write'] = err(h.pwrite, buf, 0, nbd.CMD_FLAG_DF)
      h.shutdown()
      h = connect(meta=False)
      h.set_strict_mode(0)
      out['bs_no_ctx'] = err(h.block_status, 512, 0, lambda *a: 0)
      h.shutdown()
      h = connect(uri=URI.replace('/aligned?', '/ro?'))
      h.set_strict_mode(0)
      out['ro_write'] = err(h.pwrite, buf, 0)
      h.shutdown()
      h = connect(uri=URI.replace('/aligned?', '/nofua?'))
      h.set_strict_mode(0)
      out['fua'] = err(h.pwrite, buf, 0, nbd.CMD_FLAG_FUA)
      out['trim'] = err(h.trim, 512, 0)
      out['flush'] = err(h.flush)
      out['unknown_flag'] = err(h.pread, 512, 0, 0x100)
      out['req_one_read'] = err(h.pread, 512, 0, nbd.CMD_FLAG_REQ_ONE)
      h.shutdown()
      h = connect(uri=URI.replace('/aligned?', '/nofua?'), sr=False)
      h.set_strict_mode(0)
      out['df_simple'] = err(h.pread, 512, 0, nbd.CMD_FLAG_DF)
      h.shutdown()
      `.replace(/MIB/g, String(MiB)),
    );
    // The server's answers are the spec's (the zero-length READ is served).
    expect(out).toEqual({ oob: 'EINVAL', misaligned: 'EINVAL', zero: null, df_write: 'EINVAL', bs_no_ctx: 'EINVAL', ro_write: 'EPERM', fua: 'EINVAL', trim: 'EINVAL', flush: 'EINVAL', unknown_flag: 'EINVAL', req_one_read: 'EINVAL', df_simple: 'EINVAL' });
    await allClosed(running);
    expect(violations.map((v) => [v.connection.id, v.rule, v.code, v.frame.name])).toEqual([
      [1, 'transmission.out-of-bounds', 'transmission.out-of-bounds', 'NBD_CMD_READ'],
      [1, 'transmission.misaligned-request', 'transmission.misaligned-request', 'NBD_CMD_READ'],
      [1, 'transmission.zero-length', undefined, 'NBD_CMD_READ'],
      [1, 'transmission.flag-not-for-command', 'transmission.flag-not-for-command', 'NBD_CMD_WRITE'],
      [2, 'transmission.block-status-needs-context', 'transmission.block-status-needs-context', 'NBD_CMD_BLOCK_STATUS'],
      [3, 'transmission.write-read-only', 'transmission.write-read-only', 'NBD_CMD_WRITE'],
      [4, 'transmission.flag-not-advertised', 'transmission.flag-not-advertised', 'NBD_CMD_WRITE'],
      [4, 'transmission.command-not-advertised', 'transmission.command-not-advertised', 'NBD_CMD_TRIM'],
      [4, 'transmission.command-not-advertised', 'transmission.command-not-advertised', 'NBD_CMD_FLUSH'],
      [4, 'transmission.unknown-flag', 'transmission.unknown-flag', 'NBD_CMD_READ'],
      [4, 'transmission.flag-not-for-command', 'transmission.flag-not-for-command', 'NBD_CMD_READ'],
      [5, 'transmission.flag-not-advertised', 'transmission.flag-not-advertised', 'NBD_CMD_READ'],
    ]);
    expect(violations[0]!.frame.fields).toMatchObject({ offset: MiB, length: 512 });
    expect(violations[3]!.frame.fields).toMatchObject({ flags: ['NBD_CMD_FLAG_DF'] });
    expect(violations[6]!.message).toBe('FUA without SEND_FUA');
    expect(violations[0]!.connection.peer).toBe('connection 1');
    // JSON-safe: a violation survives a round trip unchanged.
    expect(JSON.parse(JSON.stringify(violations))).toEqual(JSON.parse(JSON.stringify(violations)));
    // Strict mode logs each one at warn level: rule ID, connection and frame.
    const warned = running.logs.filter((l) => l.includes(': strict: '));
    expect(violations[9]!.frame.fields).toMatchObject({ flags: [], flagsValue: '0x0100' });
    expect(violations[10]!.frame.fields).toMatchObject({ flags: ['NBD_CMD_FLAG_REQ_ONE'] });
    expect(warned).toHaveLength(12);
    expect(warned[0]).toMatch(/^warn: connection 1: strict: transmission\.out-of-bounds: .*frame \{"name":"NBD_CMD_READ"/);
  });
});

describe('strict mode: the raw client (what libnbd cannot send)', () => {
  it('unknown client flags: handshake.client-flags-unknown, with the client flags frame', async () => {
    const { running, violations } = await strictServer();
    const c = await RawClient.connect({ path: running.socket });
    await c.readGreeting();
    await c.write(encodeClientFlags(CLIENT_FLAG.FIXED_NEWSTYLE | 0x80));
    expect(await c.closed()).toBe(true);
    await allClosed(running);
    expect(violations.map((v) => [v.rule, v.code, v.frame])).toEqual([
      ['handshake.client-flags-unknown', 'handshake.client-flags-unknown', { name: 'clientFlags', fields: { flags: ['NBD_FLAG_C_FIXED_NEWSTYLE'], value: '0x00000081' } }],
    ]);
  });

  it('option errors that are the client\'s fault are reported; probing for an unknown export or option is not', async () => {
    const { running, violations } = await strictServer();
    const c = await RawClient.connect({ path: running.socket });
    await c.greet();
    await c.option(OPT.LIST, Buffer.from('junk')); // option.unexpected-data
    await c.option(OPT.GO, Buffer.from([0, 0, 0, 9, 0x61])); // the name runs past the option: option.length-mismatch
    await c.option(OPT.GO, Buffer.from([0, 0, 0, 4, 0x6e, 0x6f, 0x6e, 0x65, 0, 0])); // export "none": a probe, not a violation
    await c.option(OPT.GO, Buffer.from([0, 0, 0, 2, 0x61, 0, 0, 0])); // a name with a NUL: general.string-limits
    await c.option(999); // an option the server does not know: a probe, not a violation
    await c.option(OPT.STRUCTURED_REPLY);
    await c.option(OPT.STRUCTURED_REPLY); // option.structured-reply (repeat)
    c.destroy();
    await allClosed(running);
    expect(violations.map((v) => [v.rule, v.code, v.frame.name])).toEqual([
      ['option.unexpected-data', 'option.unexpected-data', 'NBD_OPT_LIST'],
      ['option.length-mismatch', 'NBD_ERR_BAD_OPTION_DATA', 'NBD_OPT_GO'],
      ['general.string-limits', 'NBD_ERR_BAD_OPTION_DATA', 'NBD_OPT_GO'],
      ['option.structured-reply', 'option.structured-reply/repeat', 'NBD_OPT_STRUCTURED_REPLY'],
    ]);
  });

  it('options out of their time: META_CONTEXT before structured replies, EXPORT_NAME after extended headers, LIST without fixed newstyle', async () => {
    const { running, violations } = await strictServer();
    const c = await RawClient.connect({ path: running.socket });
    await c.greet();
    await c.option(OPT.SET_META_CONTEXT, encodeMetaContextData('aligned', ['base:allocation']));
    await c.option(OPT.EXTENDED_HEADERS);
    await c.write(encodeOption(OPT.EXPORT_NAME, Buffer.from('aligned')));
    expect(await c.closed()).toBe(true);
    const d = await RawClient.connect({ path: running.socket });
    await d.greet(CLIENT_FLAG.NO_ZEROES);
    await d.option(OPT.LIST);
    await d.write(encodeOption(OPT.ABORT));
    await d.closed();
    await allClosed(running);
    expect(violations.map((v) => [v.connection.id, v.rule, v.code, v.frame.name])).toEqual([
      [1, 'option.meta-context-needs-structured', 'option.meta-context-needs-structured', 'NBD_OPT_SET_META_CONTEXT'],
      [1, 'option.extended-headers', 'option.extended-headers/export-name', 'NBD_OPT_EXPORT_NAME'],
      [2, 'handshake.fixed-newstyle-required', 'handshake.fixed-newstyle-required', 'NBD_OPT_LIST'],
    ]);
  });

  it('data after NBD_OPT_ABORT: option.abort-ack, reported once', async () => {
    const { running, violations } = await strictServer();
    const c = await RawClient.connect({ path: running.socket });
    await c.greet();
    await c.write(Buffer.concat([encodeOption(OPT.ABORT), encodeOption(OPT.LIST), encodeOption(OPT.LIST)]));
    await c.closed();
    await allClosed(running);
    expect(violations.map((v) => [v.rule, v.code, v.frame])).toEqual([
      ['option.abort-ack', undefined, { name: 'bytesAfterEnd', fields: { after: 'NBD_OPT_ABORT', bytes: 32 } }],
    ]);
  });

  it('requests after NBD_CMD_DISC: transmission.disc-drains', async () => {
    const { running, violations } = await strictServer();
    const c = await RawClient.open({ path: running.socket }, 'aligned');
    await c.write(Buffer.concat([RawClient.request(CMD.DISC, 0, 0, 1n), RawClient.request(CMD.READ, 0, 512, 2n)]));
    await c.closed();
    await allClosed(running);
    expect(violations.map((v) => [v.rule, v.frame])).toEqual([['transmission.disc-drains', { name: 'bytesAfterEnd', fields: { after: 'NBD_CMD_DISC', bytes: 28 } }]]);
  });

  it('extended headers, a WRITE without NBD_CMD_FLAG_PAYLOAD_LEN: transmission.write-payload-len, tolerated (served), alone and in a burst', async () => {
    const { running, violations } = await strictServer();
    const c = await RawClient.connect({ path: running.socket });
    await c.greet();
    expect((await c.option(OPT.EXTENDED_HEADERS)).at(-1)!.type).toBe(1);
    await c.go('aligned');
    const payload = Buffer.alloc(512, 0x33);
    const write = (cookie: bigint, flags: number) => encodeExtendedRequest({ flags, type: CMD.WRITE, cookie, offset: 0, length: payload.length }, payload);
    // One lone, then a burst of a flagged WRITE (no violation) and one more without the flag.
    await c.write(write(1n, 0));
    expect((await c.read(32)).readUInt16BE(6)).toBe(0); // NBD_REPLY_TYPE_NONE: served
    await c.write(Buffer.concat([write(2n, 1 << 5), write(3n, 0)]));
    await c.read(64);
    await c.write(encodeExtendedRequest({ flags: 0, type: CMD.DISC, cookie: 4n, offset: 0, length: 0 }));
    await c.closed();
    await allClosed(running);
    expect(violations.map((v) => [v.rule, v.code, v.frame.name, v.frame.fields.cookie])).toEqual([
      ['transmission.write-payload-len', undefined, 'NBD_CMD_WRITE', '1'],
      ['transmission.write-payload-len', undefined, 'NBD_CMD_WRITE', '3'],
    ]);
    expect(violations[0]!.message).toContain('without NBD_CMD_FLAG_PAYLOAD_LEN');
  });

  it('a WRITE whose payload is longer than its header says: transmission.request-magic', async () => {
    const { running, violations } = await strictServer();
    const c = await RawClient.open({ path: running.socket }, 'aligned');
    // The header announces 512 bytes; 1024 follow: the second half is read as the next request's header.
    await c.write(Buffer.concat([encodeRequest({ flags: 0, type: CMD.WRITE, cookie: 1n, offset: 0, length: 512 }), Buffer.alloc(1024, 0x55)]));
    expect(await c.closed()).toBe(true);
    await allClosed(running);
    expect(violations.map((v) => [v.rule, v.code, v.frame.name])).toEqual([['transmission.request-magic', 'NBD_ERR_BAD_REQUEST_MAGIC', 'undecodable']]);
    expect(violations[0]!.message).toContain('bad request magic 0x55555555');
  });

  it('bad option magic: handshake.option-magic', async () => {
    const { running, violations } = await strictServer();
    const c = await RawClient.connect({ path: running.socket });
    await c.greet();
    await c.write(Buffer.alloc(16, 0x41));
    await c.closed();
    await allClosed(running);
    expect(violations.map((v) => [v.rule, v.code])).toEqual([['handshake.option-magic', 'NBD_ERR_BAD_OPTION_MAGIC']]);
  });

  it('requests sent together are reported in wire order (accepted and refused alike)', async () => {
    const { running, violations } = await strictServer();
    const c = await RawClient.open({ path: running.socket }, 'aligned');
    await c.write(
      Buffer.concat([
        requestBytes({ type: CMD.READ, offset: 0, length: 0, cookie: 1n }),
        requestBytes({ type: CMD.READ, offset: MiB, length: 512, cookie: 2n }),
        requestBytes({ type: CMD.READ, offset: 0, length: 0, cookie: 3n }),
        requestBytes({ type: CMD.READ, offset: 512, length: 100, cookie: 4n }),
      ]),
    );
    for (let i = 0; i < 4; i++) await c.readSimpleReply(() => 0);
    await c.write(RawClient.request(CMD.DISC, 0, 0, 5n));
    await c.closed();
    await allClosed(running);
    expect(violations.map((v) => [v.rule, v.frame.fields.cookie])).toEqual([
      ['transmission.zero-length', '1'],
      ['transmission.out-of-bounds', '2'],
      ['transmission.zero-length', '3'],
      ['transmission.misaligned-request', '4'],
    ]);
  });

  it('without strict mode violations$ still emits, and nothing strict is logged for it', async () => {
    const running = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }) }] });
    const violations: Violation[] = [];
    track(running.server.violations$.subscribe((v) => violations.push(v)));
    const c = await RawClient.open({ path: running.socket }, '');
    await c.write(requestBytes({ type: CMD.READ, offset: MiB, length: 1, cookie: 7n }));
    expect(await c.readSimpleReply()).toMatchObject({ error: 22, cookie: 7n });
    c.destroy();
    await allClosed(running);
    expect(violations.map((v) => v.rule)).toEqual(['transmission.out-of-bounds']);
    expect(running.logs.filter((l) => l.includes('strict'))).toEqual([]);
    // Outside strict mode a refused request still gets one plain warning line (as nbdkit's "invalid request").
    expect(running.logs.filter((l) => l.startsWith('warn:'))).toEqual(['warn: connection 1: refused: transmission.out-of-bounds: request past the end of the export']);
  });

  it(`outside strict mode: one line per client fault answered with an error, the first ${REFUSAL_LINES} of a connection, then one saying the rest are not logged`, async () => {
    const running = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }) }] });
    // A rejected option (LIST with data), then 15 requests past the end, in one burst.
    const c = await RawClient.connect({ path: running.socket });
    await c.greet();
    await c.write(encodeOption(OPT.LIST, Buffer.from([1, 2, 3])));
    await c.optionReplies();
    await c.go('');
    await c.write(Buffer.concat(Array.from({ length: 15 }, (_, i) => requestBytes({ type: CMD.READ, offset: MiB, length: 1, cookie: BigInt(i) }))));
    for (let i = 0; i < 15; i++) expect((await c.readSimpleReply()).error).toBe(22);
    c.destroy();
    await allClosed(running);
    const lines = running.logs.filter((l) => l.startsWith('warn:'));
    expect(lines[0]).toBe('warn: connection 1: refused: option.unexpected-data: NBD_REP_ERR_INVALID: NBD_OPT_LIST takes no data (got 3 bytes)');
    expect(lines.slice(1, REFUSAL_LINES)).toEqual(Array.from({ length: REFUSAL_LINES - 1 }, () => 'warn: connection 1: refused: transmission.out-of-bounds: request past the end of the export'));
    expect(lines.slice(REFUSAL_LINES)).toEqual(['warn: connection 1: further refusals on this connection are not logged (strict mode logs every one)']);
  });
});

describe('strict mode: rules the server tolerates', () => {
  it('an option sent before the reply to the one before it: option.wait-for-reply', async () => {
    const { running, violations } = await strictServer();
    const c = await RawClient.connect({ path: running.socket });
    await c.greet();
    // Two LISTs in one write: the second was sent before the first was answered.
    await c.write(Buffer.concat([encodeOption(OPT.LIST), encodeOption(OPT.LIST)]));
    await c.optionReplies();
    await c.optionReplies();
    // One at a time is fine.
    await c.option(OPT.LIST);
    await c.write(encodeOption(OPT.ABORT));
    await c.closed();
    await allClosed(running);
    expect(violations.map((v) => [v.rule, v.code, v.frame.name])).toEqual([['option.wait-for-reply', undefined, 'NBD_OPT_LIST']]);
  });

  it('a DISC with an offset or a length: transmission.disc-fields-zero', async () => {
    const { running, violations } = await strictServer();
    const c = await RawClient.open({ path: running.socket }, 'aligned');
    await c.write(RawClient.request(CMD.DISC, 512, 512, 1n));
    await c.closed();
    await allClosed(running);
    expect(violations.map((v) => [v.rule, v.frame.name, v.frame.fields.offset, v.frame.fields.length])).toEqual([['transmission.disc-fields-zero', 'NBD_CMD_DISC', 512, 512]]);
  });
});

describe('strict mode: TLS', () => {
  const dir = tmpDir('nbd-engine-strict-tls-');
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('plaintext pipelined behind STARTTLS: tls.plaintext-after-starttls, reported once', async () => {
    const pki = makePki(path.join(dir, 'pki'));
    const running = await serve({
      strict: true,
      exports: [{ name: '', backend: memoryBackend({ size: MiB }) }],
      tls: { mode: 'on', cert: path.join(pki, 'server-cert.pem'), key: path.join(pki, 'server-key.pem') },
    });
    const violations: Violation[] = [];
    track(running.server.violations$.subscribe((v) => violations.push(v)));
    const c = await RawClient.connect({ path: running.socket });
    await c.greet();
    // STARTTLS and, in the same write, a plaintext LIST.
    await c.write(Buffer.concat([encodeOption(OPT.STARTTLS), encodeOption(OPT.LIST)]));
    expect(await c.closed()).toBe(true);
    await allClosed(running);
    expect(violations.map((v) => [v.rule, v.code, v.frame.name])).toEqual([['tls.plaintext-after-starttls', 'tls.plaintext-after-starttls', 'NBD_OPT_STARTTLS']]);
  });
});
