/**
 * `nbd-engine probe` against real servers: nbd-engine itself, nbdkit
 * (memory), qemu-nbd and Debian's nbd-server. nbd-engine, nbdkit and qemu-nbd
 * fail nothing; nbd-server (3.24) fails exactly the checks whose findings were
 * confirmed by hand (docs/probe.md: the NBD_OPT_INFO size, checked with
 * python3-libnbd's opt_info too; a GO whose inner name length runs past the
 * option is read past its end, so it never answers; a LIST carrying data is
 * refused but its data is not skipped, which the generated option sequences
 * found first). Every check ends within its timeout; writes stay in the
 * announced scratch region.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memoryBackend } from '../../src/index.js';
import { CLI, execFileP, requireTool, startServer, tmpDir, type Running } from './harness.js';
import { makePki, until } from './tls-support.js';

interface Line { status: string; rule: string }
interface Report { results: Array<{ status: string; rule: string; title: string; detail: string; evidence?: string }>; summary: Record<string, number>; scratch: { offset: string; length: number } | null }

async function probeJson(uri: string, extra: string[] = []): Promise<{ code: number; report: Report; stderr: string }> {
  const r = await execFileP(process.execPath, [CLI, 'probe', uri, '--json', '--timeout', '3', ...extra]).then(
    (ok) => ({ code: 0, stdout: ok.stdout, stderr: ok.stderr }),
    (err: { code: number; stdout: string; stderr: string }) => ({ code: err.code, stdout: err.stdout, stderr: err.stderr }),
  );
  return { code: r.code, report: JSON.parse(r.stdout) as Report, stderr: r.stderr };
}

const failed = (r: Report): string[] => r.results.filter((x) => x.status === 'FAIL').map((x) => x.rule);
const statusOf = (r: Report, rule: string): string | undefined => r.results.find((x) => x.rule === rule)?.status;

function background(cmd: string, args: string[]): ChildProcess {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.resume();
  return child;
}

let dir: string;
const children: ChildProcess[] = [];
beforeAll(() => {
  for (const t of ['nbdkit', 'qemu-nbd', 'nbd-server']) requireTool(t);
  dir = tmpDir('nbd-engine-probe-');
});
afterAll(() => {
  for (const c of children) c.kill('SIGTERM');
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('nbd-engine probe', () => {
  let srv: Running;
  afterAll(() => srv?.close());

  it('nbd-engine passes every check it offers; the lines name each rule; exit 0', async () => {
    srv = await startServer({ exports: [{ name: 'disk', backend: memoryBackend({ size: 64 << 20 }) }] });
    const { stdout } = await execFileP(process.execPath, [CLI, 'probe', srv.uri(), '--timeout', '3']);
    const lines = stdout.trim().split('\n');
    expect(lines[0]).toBe(`scratch region: bytes ${(64 << 20) - 65536}..${(64 << 20) - 1} of ${64 << 20} may be overwritten`);
    const results: Line[] = lines.slice(1, -1).map((l) => ({ status: l.slice(0, 14).trim(), rule: l.slice(15).split(/\s+/)[0]! }));
    expect(results.length).toBeGreaterThanOrEqual(20);
    expect(results.filter((r) => r.status === 'FAIL')).toEqual([]);
    expect(results.filter((r) => r.status === 'PASS').length).toBeGreaterThanOrEqual(20);
    const rules = fs.readFileSync(path.join(import.meta.dirname, '../../docs/rules.md'), 'utf8');
    for (const r of results) expect(rules, r.rule).toContain(`### \`${r.rule}\``);
    expect(lines.at(-1)).toMatch(/^\d+ passed, 0 failed, \d+ not advertised, 0 skipped$/);
  });

  it('--scratch outside the export is a usage error naming it (exit 2), not "cannot negotiate"; a read-only export is announced as such', async () => {
    const ro = await startServer({ exports: [{ name: 'ro', backend: memoryBackend({ size: 1 << 20 }), readOnly: true }] });
    try {
      const bad = await execFileP(process.execPath, [CLI, 'probe', ro.uri(), '--scratch', `${1 << 20}:4096`, '--timeout', '3']).catch((e: { code: number; stderr: string }) => e);
      expect(bad).toMatchObject({ code: 2, stderr: `nbd-engine probe: --scratch: the region ${1 << 20}+4096 is not inside the export (size ${1 << 20})\n` });
      const huge = await execFileP(process.execPath, [CLI, 'probe', ro.uri(), '--scratch', '0:18446744073709551616']).catch((e: { code: number; stderr: string }) => e);
      expect(huge).toMatchObject({ code: 2, stderr: expect.stringMatching(/--scratch: expected OFFSET:LENGTH in bytes \(LENGTH from 512 to 1 GiB\)/) });
      const { stdout } = await execFileP(process.execPath, [CLI, 'probe', ro.uri(), '--timeout', '3']);
      expect(stdout.split('\n')[0]).toBe(`the export is read-only: writes are sent only to check they are refused (at bytes ${(1 << 20) - 65536}..${(1 << 20) - 1})`);
    } finally {
      await ro.close();
    }
  });

  it('over STARTTLS (an nbds URI with a certificate directory) against nbd-engine requiring TLS: nothing fails', async () => {
    const pki = makePki(path.join(dir, 'pki'));
    const tlsSrv = await startServer({
      exports: [{ name: 'disk', backend: memoryBackend({ size: 16 << 20 }) }],
      tls: { mode: 'require', cert: path.join(pki, 'server-cert.pem'), key: path.join(pki, 'server-key.pem') },
    });
    try {
      const { code, report } = await probeJson(`nbds+unix:///disk?socket=${tlsSrv.socket}&tls-certificates=${pki}`);
      expect(failed(report)).toEqual([]);
      expect(code).toBe(0);
      expect(report.results.find((r) => r.rule === 'tls.mode-selectivetls')!.detail).toBe('the probe connects with TLS (nbds URI)');
      expect(report.results.filter((r) => r.status === 'PASS').length).toBeGreaterThanOrEqual(25);
      // The STARTTLS rules themselves: a second STARTTLS is refused; nothing before TLS to forget (every
      // option before it gets TLS_REQD); plaintext behind STARTTLS ends the session unanswered.
      expect(statusOf(report, 'tls.starttls-repeat')).toBe('PASS');
      expect(statusOf(report, 'tls.starttls-resets')).toBe('NOT ADVERTISED');
      expect(statusOf(report, 'tls.plaintext-after-starttls')).toBe('PASS');
      expect(statusOf(report, 'tls.handshake-failed')).toBe('PASS');
      // Plaintext against a TLS-only server: the probe cannot negotiate and says so (exit 1).
      const plain = await execFileP(process.execPath, [CLI, 'probe', `nbd+unix:///disk?socket=${tlsSrv.socket}`, '--timeout', '3']).then(() => null, (e: { code: number; stderr: string }) => e);
      expect(plain?.code).toBe(1);
      expect(plain!.stderr).toMatch(/^nbd-engine probe: cannot negotiate with .*NBD_REP_ERR_TLS_REQD/);
    } finally {
      await tlsSrv.close();
    }
  });

  it('STARTTLS rules with TLS optional (SELECTIVETLS): nbd-engine and nbdkit --tls=on pass all four; nothing else fails but nbdkit\'s refused WRITE over TLS', async () => {
    const pki = makePki(path.join(dir, 'pki-on'));
    const onSrv = await startServer({
      exports: [{ name: 'disk', backend: memoryBackend({ size: 16 << 20 }) }],
      tls: { mode: 'on', cert: path.join(pki, 'server-cert.pem'), key: path.join(pki, 'server-key.pem') },
    });
    const sock = path.join(dir, 'nbdkit-tls.sock');
    children.push(background('nbdkit', ['-f', '-U', sock, '--tls=on', `--tls-certificates=${pki}`, 'memory', '16M']));
    try {
      await until(() => fs.existsSync(sock), 10_000, 'nbdkit --tls=on');
      for (const uri of [`nbds+unix:///disk?socket=${onSrv.socket}&tls-certificates=${pki}`, `nbds+unix:///?socket=${sock}&tls-certificates=${pki}`]) {
        const { code, report } = await probeJson(uri);
        if (uri.includes('nbdkit')) {
          // nbdkit 1.32 over TLS never reads a refused WRITE's payload (docs/probe.md, findings): with the probe's
          // TLS records the connection hangs (FAIL); with other record layouts it drops (a hard disconnect, allowed).
          const pc = report.results.find((r) => r.rule === 'transmission.payload-consumed')!;
          expect(pc.status === 'FAIL' ? pc.detail : pc.status === 'PASS' && pc.detail.includes('disconnected')).toBeTruthy();
          expect(failed(report).filter((r) => r !== 'transmission.payload-consumed'), uri).toEqual([]);
        } else {
          expect(failed(report), uri).toEqual([]);
          expect(code).toBe(0);
        }
        for (const rule of ['tls.starttls-repeat', 'tls.starttls-resets', 'tls.handshake-failed', 'tls.plaintext-after-starttls']) expect(statusOf(report, rule), `${uri} ${rule}`).toBe('PASS');
        expect(report.results.find((r) => r.rule === 'tls.starttls-resets')!.detail).toBe('STRUCTURED_REPLY acknowledged before TLS; after it, simple replies');
      }
    } finally {
      await onSrv.close();
    }
  });

  it('a plain URI to a server offering STARTTLS: the TLS checks bring TLS up without checking its certificate, unless it wants client credentials', async () => {
    const pki = makePki(path.join(dir, 'pki-plain'));
    const sock = path.join(dir, 'nbdkit-tls-plain.sock');
    children.push(background('nbdkit', ['-f', '-U', sock, '--tls=on', `--tls-certificates=${pki}`, 'memory', '16M']));
    const strict = await startServer({
      exports: [{ name: '', backend: memoryBackend({ size: 16 << 20 }) }],
      tls: { mode: 'on', cert: path.join(pki, 'server-cert.pem'), key: path.join(pki, 'server-key.pem'), ca: path.join(pki, 'ca-cert.pem'), verifyPeer: true },
    });
    try {
      await until(() => fs.existsSync(sock), 10_000, 'nbdkit --tls=on');
      const open = (await probeJson(`nbd+unix:///?socket=${sock}`)).report;
      for (const rule of ['tls.starttls-repeat', 'tls.starttls-resets', 'tls.handshake-failed', 'tls.plaintext-after-starttls']) expect(statusOf(open, rule), rule).toBe('PASS');
      const { code, report } = await probeJson(`nbd+unix:///?socket=${strict.socket}`);
      expect(failed(report)).toEqual([]);
      expect(code).toBe(0);
      for (const rule of ['tls.starttls-repeat', 'tls.starttls-resets']) {
        expect(statusOf(report, rule), rule).toBe('NOT ADVERTISED');
        expect(report.results.find((r) => r.rule === rule)!.detail).toMatch(/^TLS did not come up without credentials \(.*certificate required/);
      }
    } finally {
      await strict.close();
    }
  });

  it('--read-only writes nothing: the writing check is SKIPPED and the scratch region null', async () => {
    const { code, report } = await probeJson(srv.uri(), ['--read-only']);
    expect(code).toBe(0);
    expect(report.scratch).toBeNull();
    expect(report.results.find((r) => r.rule === 'transmission.flush-durable')!.status).toBe('SKIPPED');
  });

  it('nbdkit memory: nothing fails', async () => {
    const sock = path.join(dir, 'nbdkit.sock');
    children.push(background('nbdkit', ['-f', '-U', sock, 'memory', '64M']));
    await until(() => fs.existsSync(sock), 10_000, 'nbdkit');
    const { code, report } = await probeJson(`nbd+unix:///?socket=${sock}`);
    expect(failed(report)).toEqual([]);
    expect(code).toBe(0);
    // nbdkit serves any export name (the spec allows that), and has no extended headers in Debian 12.
    expect(report.results.find((r) => r.rule === 'option.export-unknown')!.status).toBe('NOT ADVERTISED');
  });

  it('qemu-nbd: nothing fails', async () => {
    const sock = path.join(dir, 'qemu.sock');
    const img = path.join(dir, 'qemu.img');
    fs.writeFileSync(img, Buffer.alloc(0));
    fs.truncateSync(img, 64 << 20);
    children.push(background('qemu-nbd', ['-k', sock, '-f', 'raw', '-x', 'disk', '--persistent', img]));
    await until(() => fs.existsSync(sock), 10_000, 'qemu-nbd');
    const { code, report } = await probeJson(`nbd+unix:///disk?socket=${sock}`);
    expect(failed(report)).toEqual([]);
    expect(code).toBe(0);
  });

  it("Debian's nbd-server: exactly the confirmed findings fail, each within its timeout; exit 1", async () => {
    const sock = path.join(dir, 'nbd-server.sock');
    const img = path.join(dir, 'ns.img');
    fs.writeFileSync(img, Buffer.alloc(0));
    fs.truncateSync(img, 64 << 20);
    const conf = path.join(dir, 'ns.conf');
    // nbd-server also needs a TCP port (port 0 means inetd mode); it daemonizes and writes its pid.
    fs.writeFileSync(conf, `[generic]\n    unixsock = ${sock}\n    listenaddr = 127.0.0.1\n    port = 0\n[disk]\n    exportname = ${img}\n`.replace('port = 0', `port = ${20000 + (process.pid % 20000)}`));
    const pidFile = path.join(dir, 'ns.pid');
    await execFileP('nbd-server', ['-C', conf, '-p', pidFile]);
    try {
      await until(() => fs.existsSync(sock), 10_000, 'nbd-server');
      const { code, report } = await probeJson(`nbd+unix:///disk?socket=${sock}`);
      expect(failed(report)).toEqual(['option.info-export', 'option.length-mismatch', 'option.unexpected-data', 'option.errors-not-disconnects']);
      // The generated sequence that showed it (seed 1) has a LIST carrying data in it.
      expect(report.results.find((r) => r.rule === 'option.errors-not-disconnects')!.detail).toMatch(/after the sequence, GO and a READ failed/);
      expect(report.results.find((r) => r.rule === 'option.info-export')!.detail).toMatch(/^INFO says size 0 /);
      expect(report.results.find((r) => r.rule === 'option.length-mismatch')!.detail).toBe('no answer within 3000 ms');
      expect(code).toBe(1);
    } finally {
      await until(() => fs.existsSync(pidFile), 5000, 'the pid file').catch(() => undefined);
      if (fs.existsSync(pidFile)) process.kill(Number(fs.readFileSync(pidFile, 'utf8').trim()), 'SIGTERM');
    }
  });

  it('exports of 0 and 1 bytes: nothing fails; on the empty one, what needs bytes is SKIPPED and nothing is written', async () => {
    const sock = path.join(dir, 'null0.sock');
    children.push(background('nbdkit', ['-f', '-U', sock, 'null', '0']));
    await until(() => fs.existsSync(sock), 10_000, 'nbdkit null 0');
    const empty = await probeJson(`nbd+unix:///?socket=${sock}`);
    expect(failed(empty.report)).toEqual([]);
    expect(empty.code).toBe(0);
    expect(empty.report.scratch).toBeNull();
    const skipped = empty.report.results.filter((r) => r.status === 'SKIPPED');
    // The data checks: READs with and without DF, cookies, pipelining, DISC draining, every write, BLOCK_STATUS.
    for (const rule of ['reply.structured-chunks', 'reply.cookie-echo', 'transmission.flush-durable', 'transmission.error-values', 'reply.block-status-chunks']) {
      expect(skipped.map((r) => r.rule), rule).toContain(rule);
    }
    for (const r of skipped) expect(r.detail).toBe('the export is empty (0 bytes): nothing to read or write');
    // What needs no bytes still ran, each ending with a READ refused in step (a 1-byte READ of nothing).
    expect(statusOf(empty.report, 'transmission.unknown-command')).toBe('PASS');
    expect(statusOf(empty.report, 'option.export-name-terminates')).toBe('PASS');
    expect(statusOf(empty.report, 'transmission.payload-consumed')).toBe('PASS');

    const one = await startServer({ exports: [{ name: 'one', backend: memoryBackend({ size: 1 }) }] });
    try {
      const r = await probeJson(one.uri());
      expect(failed(r.report)).toEqual([]);
      expect(r.report.results.filter((x) => x.status === 'SKIPPED')).toEqual([]);
      expect(r.report.scratch).toEqual({ offset: '0', length: 1 });
    } finally {
      await one.close();
    }
  });

  it('a peer that is not a newstyle NBD server: exit 1 and one line that says what it sent', async () => {
    const net = (await import('node:net')).default;
    for (const [name, greeting, message] of [
      ['http', Buffer.from('HTTP/1.0 200 OK\r\n\r\n'), 'not an NBD server: greeting starts with 0x485454502f312e30, not NBDMAGIC'],
      ['oldstyle', Buffer.concat([Buffer.from('NBDMAGIC'), Buffer.from('0000420281861253', 'hex'), Buffer.alloc(8 + 4 + 124)]), 'the server sent an oldstyle greeting: it takes no options, and the probe checks newstyle servers'],
    ] as const) {
      const sock = path.join(dir, `not-nbd-${name}.sock`);
      const server = net.createServer((c) => {
        c.on('error', () => {});
        c.write(greeting);
      });
      await new Promise<void>((resolve) => server.listen(sock, resolve));
      try {
        const e = await execFileP(process.execPath, [CLI, 'probe', `nbd+unix:///?socket=${sock}`, '--timeout', '3']).then(() => null, (err: { code: number; stderr: string }) => err);
        expect(e?.code, name).toBe(1);
        expect(e!.stderr.trim(), name).toBe(`nbd-engine probe: cannot negotiate with nbd+unix:///?socket=${sock}: ${message}`);
      } finally {
        server.close();
      }
    }
  });

  it('a bad command line is one stderr line and exit 2; a server that is not there, exit 1', async () => {
    for (const args of [[], ['http://x/'], ['nbd://h/', '--timeout', '0'], ['nbd://h/', '--scratch', '12']]) {
      const e = await execFileP(process.execPath, [CLI, 'probe', ...args]).then(() => null, (err: { code: number; stderr: string }) => err);
      expect(e?.code, args.join(' ')).toBe(2);
      expect(e!.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
    }
    const e = await execFileP(process.execPath, [CLI, 'probe', `nbd+unix:///?socket=${path.join(dir, 'none.sock')}`]).then(() => null, (err: { code: number; stderr: string }) => err);
    expect(e?.code).toBe(1);
    expect(e!.stderr).toMatch(/^nbd-engine probe: cannot negotiate with .*ENOENT/);
  });
});

describe('nbd-engine probe against a server with known defects', () => {
  // A small server written for this test, wrong on purpose in three ways the probe must catch
  // (it acknowledges options it does not know instead of NBD_REP_ERR_UNSUP, answers a READ with
  // the cookie plus one, and advertises an undefined handshake flag bit), and, when asked, in three
  // more: it ACKs STARTTLS and reads on in plaintext, leaves a refused WRITE's payload in the stream,
  // or reads 64-bit lengths (extended headers) as their low 32 bits.
  function defectiveServer(
    sock: string,
    o: { ackStartTls?: boolean; keepRefusedPayload?: boolean; truncating64?: boolean; structuredStrict?: boolean; listAnsweredTwice?: boolean; closeOnOutsideWrite?: boolean } = {},
  ): Promise<import('node:net').Server> {
    return import('node:net').then(({ default: net }) => {
      const size = 16n << 20n;
      const optReply = (opt: number, type: number, data = Buffer.alloc(0)) => {
        const b = Buffer.alloc(20);
        b.writeBigUInt64BE(0x3e889045565a9n, 0);
        b.writeUInt32BE(opt, 8);
        b.writeUInt32BE(type, 12);
        b.writeUInt32BE(data.length, 16);
        return Buffer.concat([b, data]);
      };
      /** A reply chunk with NBD_REPLY_FLAG_DONE: structured (20-byte header) or extended (32-byte). */
      const chunkOf = (extendedHeader: boolean, cookie: bigint, offset: bigint) => (chunkType: number, payload: Buffer) => {
        const h = Buffer.alloc(extendedHeader ? 32 : 20);
        h.writeUInt32BE(extendedHeader ? 0x6e8a278c : 0x668e33ef, 0);
        h.writeUInt16BE(1, 4);
        h.writeUInt16BE(chunkType, 6);
        h.writeBigUInt64BE(cookie, 8);
        if (extendedHeader) {
          h.writeBigUInt64BE(offset, 16);
          h.writeBigUInt64BE(BigInt(payload.length), 24);
        } else h.writeUInt32BE(payload.length, 16);
        return Buffer.concat([h, payload]);
      };
      /** EINVAL past the end, the data of a READ (zeroes), or NONE. */
      const answer = (chunk: (t: number, p: Buffer) => Buffer, type: number, offset: bigint, len: number) => {
        if (offset + BigInt(len) > size) {
          const err = Buffer.alloc(6);
          err.writeUInt32BE(22, 0);
          return chunk(0x8001, err); // NBD_REPLY_TYPE_ERROR
        }
        if (type !== 0) return chunk(0, Buffer.alloc(0)); // NBD_REPLY_TYPE_NONE
        const data = Buffer.alloc(8 + len);
        data.writeBigUInt64BE(offset, 0);
        return chunk(1, data); // NBD_REPLY_TYPE_OFFSET_DATA
      };
      const server = net.createServer((s) => {
        const g = Buffer.alloc(18);
        g.write('NBDMAGICIHAVEOPT', 0, 'latin1');
        g.writeUInt16BE(0x8003, 16); // FIXED_NEWSTYLE | NO_ZEROES | an undefined bit
        s.write(g);
        let buf = Buffer.alloc(0);
        let phase: 'flags' | 'options' | 'transmission' = 'flags';
        let extended = false;
        let structured = false;
        s.on('data', (d) => {
          buf = Buffer.concat([buf, d]);
          for (;;) {
            if (phase === 'flags') {
              if (buf.length < 4) return;
              buf = buf.subarray(4);
              phase = 'options';
            } else if (phase === 'options') {
              if (buf.length < 16) return;
              const opt = buf.readUInt32BE(8);
              const len = buf.readUInt32BE(12);
              if (buf.length < 16 + len) return;
              buf = buf.subarray(16 + len);
              if (opt === 7) {
                const info = Buffer.alloc(12);
                info.writeBigUInt64BE(size, 2);
                info.writeUInt16BE(o.truncating64 ? 0x41 : 1, 10); // HAS_FLAGS (| SEND_WRITE_ZEROES)
                s.write(Buffer.concat([optReply(opt, 3, info), optReply(opt, 1)]));
                phase = 'transmission';
              } else if (opt === 2) {
                s.end(optReply(opt, 1));
                return;
              } else if (opt === 3 && len > 0 && o.listAnsweredTwice) {
                // defect (as Debian's nbd-server 3.24 without listenaddr): a LIST carrying data is refused, and
                // then answered anyway, so each later option reads the replies of the one before it
                s.write(Buffer.concat([optReply(opt, 0x8000_0003), optReply(opt, 2, Buffer.from([0, 0, 0, 4, 0x64, 0x69, 0x73, 0x6b])), optReply(opt, 1)]));
              } else if (opt === 8 && o.structuredStrict) {
                structured = true;
                s.write(optReply(opt, 1));
              } else if (opt === 11 && o.truncating64) {
                extended = true;
                s.write(optReply(opt, 1));
              } else if (opt === 5 && o.ackStartTls) {
                s.write(optReply(opt, 1)); // defect: ACKs STARTTLS and goes on in plaintext
              } else if (opt === 8 || opt === 11 || opt === 5 || opt === 10) {
                s.write(optReply(opt, 0x8000_0001)); // ERR_UNSUP for what it really lacks
              } else {
                s.write(optReply(opt, 1)); // defect: ACK for anything else, known or not
              }
            } else if (structured) {
              // Structured replies, right cookies, and a request magic check that hangs up on a bad one —
              // but defect: a WRITE past the end is refused without reading its payload off the wire.
              if (buf.length < 28) return;
              if (buf.readUInt32BE(0) !== 0x25609513) {
                // A clean hang-up (FIN after what was written): destroy() while the client's next request sits
                // unread makes the kernel reset the connection, and the reply to the hidden READ could be lost
                // with it — the probe then saw only a disconnect (1 run in 8 under load).
                s.end();
                buf = Buffer.alloc(0);
                s.removeAllListeners('data');
                return;
              }
              const type = buf.readUInt16BE(6);
              const cookie = buf.readBigUInt64BE(8);
              const offset = buf.readBigUInt64BE(16);
              const len = buf.readUInt32BE(24);
              const outside = offset + BigInt(len) > size;
              if (type === 1 && !outside && buf.length < 28 + len) return;
              buf = buf.subarray(28 + (type === 1 && !outside ? len : 0));
              if (type === 2) {
                s.end();
                return;
              }
              s.write(answer(chunkOf(false, cookie, offset), type, offset, len));
            } else if (extended) {
              // Extended headers (32-byte requests and reply chunks), with the right cookies, but
              // defect: a 64-bit length is read as its low 32 bits (4 GiB + 512 becomes 512).
              if (buf.length < 32) return;
              const type = buf.readUInt16BE(6);
              const cookie = buf.readBigUInt64BE(8);
              const offset = buf.readBigUInt64BE(16);
              const len = Number(buf.readBigUInt64BE(24) & 0xffff_ffffn);
              if (type === 1 && buf.length < 32 + len) return;
              buf = buf.subarray(32 + (type === 1 ? len : 0));
              if (type === 2) {
                s.end();
                return;
              }
              s.write(answer(chunkOf(true, cookie, offset), type, offset, len));
            } else {
              if (buf.length < 28) return;
              const type = buf.readUInt16BE(6);
              const cookie = buf.readBigUInt64BE(8);
              const len = buf.readUInt32BE(24);
              const past = buf.readBigUInt64BE(16) + BigInt(len) > size;
              if (o.keepRefusedPayload && type === 1 && buf.readBigUInt64BE(16) + BigInt(len) > size) {
                // defect: a WRITE past the end is refused (right cookie, EINVAL) but its payload stays in the stream
                buf = buf.subarray(28);
                const e = Buffer.alloc(16);
                e.writeUInt32BE(0x67446698, 0);
                e.writeUInt32BE(22, 4);
                e.writeBigUInt64BE(cookie, 8);
                s.write(e);
                continue;
              }
              if (o.closeOnOutsideWrite && type === 1 && past) {
                // Allowed (not a defect): a WRITE past the end gets ENOSPC, then a hard disconnect instead of reading its payload.
                const e = Buffer.alloc(16);
                e.writeUInt32BE(0x67446698, 0);
                e.writeUInt32BE(28, 4);
                e.writeBigUInt64BE(cookie, 8);
                s.end(e);
                s.destroySoon?.();
                return;
              }
              buf = buf.subarray(28 + (type === 1 ? len : 0));
              if (type === 2) {
                s.end();
                return;
              }
              const h = Buffer.alloc(16);
              h.writeUInt32BE(0x67446698, 0);
              // defect: the wrong cookie (the right one when only the disconnect is under test)
              h.writeBigUInt64BE(o.closeOnOutsideWrite ? cookie : (cookie + 1n) & 0xffff_ffff_ffff_ffffn, 8);
              // READs it cannot serve (past 16 MiB: the probe asks for 4 GiB − 1 too) get EINVAL, no data;
              // so does any request past the end when only the disconnect is under test.
              const bad = (type === 0 && len > 16 << 20) || (o.closeOnOutsideWrite === true && type !== 3 && past);
              if (bad) h.writeUInt32BE(22, 4);
              s.write(type === 0 && !bad ? Buffer.concat([h, Buffer.alloc(len)]) : h);
            }
          }
        });
        s.on('error', () => {});
      });
      return new Promise((resolve) => server.listen(sock, () => resolve(server)));
    });
  }

  /** Probe a defective server made with `opts` (read-only unless `writes`), and close it. */
  async function probeDefective(name: string, opts: Parameters<typeof defectiveServer>[1], writes = false): ReturnType<typeof probeJson> {
    const sock = path.join(dir, `defective-${name}.sock`);
    const server = await defectiveServer(sock, opts);
    try {
      return await probeJson(`nbd+unix:///?socket=${sock}`, [...(writes ? [] : ['--read-only']), '--timeout', '2']);
    } finally {
      server.close();
    }
  }
  const result = (report: Report, rule: string) => report.results.find((x) => x.rule === rule)!;

  it('fails the checks of each defect, with evidence, and never hangs', async () => {
    const { code, report } = await probeDefective('plain', {});
    expect(code).toBe(1);
    const f = failed(report);
    expect(f).toContain('handshake.greeting-flags');
    expect(f).toContain('option.unknown-code');
    expect(f).toContain('reply.cookie-echo');
    expect(result(report, 'option.unknown-code').detail).toBe('answered NBD_REP_ACK');
    // The cookie checks name the wrong cookie, not what the unclaimed READ data did to the stream after it.
    const cookieChecks = report.results.filter((r) => r.rule === 'reply.cookie-echo');
    expect(cookieChecks).toHaveLength(2);
    for (const r of cookieChecks) {
      expect(r.status).toBe('FAIL');
      expect(r.detail).toMatch(/^a reply came back with a cookie that was not sent: simple reply for cookie \d+, which no request in flight has/);
      expect(r.evidence).toMatch(/^peer\.unknown-cookie: 67446698/);
    }
  });

  it("a server still answering an earlier option fails option.unexpected-data, though the replies' types look right", async () => {
    const r = result((await probeDefective('list', { listAnsweredTwice: true })).report, 'option.unexpected-data');
    expect(r.status, r.detail).toBe('FAIL');
    expect(r.detail).toBe('the next option (INFO): reply names option 3, the option sent was 6: the server is answering an earlier option');
  });

  it('a server that ACKs STARTTLS and goes on in plaintext fails tls.plaintext-after-starttls, with the bytes as evidence', async () => {
    const { report } = await probeDefective('tls', { ackStartTls: true });
    const r = result(report, 'tls.plaintext-after-starttls');
    expect(r.status).toBe('FAIL');
    expect(r.detail).toBe('the LIST behind STARTTLS was answered in plaintext');
    expect(r.evidence).toBe('0003e889045565a9');
    // After the ACK it reads the probe's non-TLS bytes as an option and waits for the rest of it.
    expect(statusOf(report, 'tls.handshake-failed')).toBe('FAIL');
    expect(result(report, 'tls.handshake-failed').detail).toMatch(/^the session went on: still open \d+ ms after the failed TLS handshake$/);
  });

  it('a server that refuses a WRITE past the end and then hard-disconnects (as the spec allows) passes the random request sequences: those sequences end there', async () => {
    const { report } = await probeDefective('oob-close', { closeOnOutsideWrite: true }, true);
    const seq = result(report, 'transmission.error-values');
    expect(seq.status, seq.detail).toBe('PASS');
    expect(seq.detail).toMatch(/; [1-9]\d* ended by the server after a request past the end, as the spec allows$/);
    expect(result(report, 'transmission.payload-consumed').status).toBe('PASS');
  });

  it('a server that refuses a WRITE but leaves its payload in the stream fails transmission.payload-consumed', async () => {
    const r = result((await probeDefective('payload', { keepRefusedPayload: true })).report, 'transmission.payload-consumed');
    expect(r.status, r.detail).toBe('FAIL');
    // Its next "request" is the READ hidden in the payload: a reply the client never asked for.
    expect(r.detail).toMatch(/payload was parsed as requests|a plain READ afterwards/);
  });

  it("a server that answers the READ hidden in a refused WRITE's payload, then hangs up on the padding, fails too", async () => {
    const r = result((await probeDefective('strict', { structuredStrict: true })).report, 'transmission.payload-consumed');
    expect(r.status, r.detail).toBe('FAIL');
    expect(r.detail).toBe("the READ inside the refused WRITE's payload was answered: the payload was parsed as requests");
  });

  it('a server that reads 64-bit lengths as 32 bits fails both extended-length checks', async () => {
    const { report } = await probeDefective('64', { truncating64: true }, true);
    const byTitle = (t: RegExp) => report.results.find((x) => t.test(x.title))!;
    const read = byTitle(/READ of 4 GiB \+ 512/);
    expect(read.status, read.detail).toBe('FAIL');
    expect(read.detail).toBe('succeeded: the length was read as 512 (or the server served 4 GiB + 512 bytes)');
    const zero = byTitle(/WRITE_ZEROES of 4 GiB \+ 512/);
    expect(zero.status, zero.detail).toBe('FAIL');
    expect(zero.detail).toBe('WRITE_ZEROES past the end succeeded');
  });
});
