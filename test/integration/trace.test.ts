/**
 * The trace recorder with real clients on real sockets: `trace` +
 * traceFile() and `serve --trace` write JSON Lines that say what each
 * connection did (frames both ways, the machines' steps, TLS, refusals,
 * close); `trace show` prints them; `server.tap()` joins live connections;
 * with nothing recording, no inspection observer is attached.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AnyActorRef } from 'xstate';
import { memoryBackend } from '../../src/index.js';
import { traceFile } from '../../src/inspect/trace-file.js';
import type { FrameRecord, StepRecord, TraceRecord, TraceSink } from '../../src/inspect/trace-format.js';
import { CLI, execFileP, nbdPython, run, spawnCli, startServer, tmpDir, type Running } from './harness.js';
import { RawClient, requestBytes, CMD } from './raw-client.js';
import { makePki, until } from './tls-support.js';

const SIZE = 1 << 20;

function parse(file: string): TraceRecord[] {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as TraceRecord);
}

/** Records of one connection, in file order. */
function byConn(records: readonly TraceRecord[]): Map<number, TraceRecord[]> {
  const m = new Map<number, TraceRecord[]>();
  for (const r of records) if ('conn' in r) m.set(r.conn, [...(m.get(r.conn) ?? []), r]);
  return m;
}

const frames = (rs: readonly TraceRecord[], dir: 'in' | 'out') => rs.filter((r): r is FrameRecord => r.type === 'frame' && r.dir === dir);
const steps = (rs: readonly TraceRecord[], actor: string) => rs.filter((r): r is StepRecord => r.type === 'step' && r.actor === actor);

/** The connection whose client sent an option named `opt`. */
function connWith(conns: Map<number, TraceRecord[]>, name: string): TraceRecord[] {
  const found = [...conns.values()].find((rs) => frames(rs, 'in').some((f) => f.name === name));
  if (!found) throw new Error(`no connection sent ${name}`);
  return found;
}

describe('trace file from createServer({ trace: traceFile(…) })', () => {
  let dir: string;
  let file: string;
  let records: TraceRecord[];
  let conns: Map<number, TraceRecord[]>;

  beforeAll(async () => {
    dir = tmpDir('nbd-engine-trace-');
    file = path.join(dir, 'trace.jsonl');
    const pki = makePki(path.join(dir, 'pki'));
    const trace = traceFile(file);
    const srv = await startServer({
      exports: [{ name: 'disk', backend: memoryBackend({ size: SIZE }) }],
      tls: { mode: 'on', cert: path.join(pki, 'server-cert.pem'), key: path.join(pki, 'server-key.pem') },
      trace,
    });
    try {
      await run('nbdinfo', ['--list', srv.uri()]);
      await run('qemu-img', ['info', srv.uri()]);
      await nbdPython(
        `import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.get_structured_replies_negotiated()
h.pwrite(b'x' * 4096, 8192)
assert h.pread(4096, 8192) == b'x' * 4096
h.shutdown()`,
        [srv.uri()],
      );
      await run('nbdinfo', [`nbds+unix:///disk?socket=${srv.socket}&tls-certificates=${pki}`]);
      const raw = await RawClient.open({ path: srv.socket }, 'disk');
      raw.send(requestBytes({ type: CMD.READ, offset: SIZE, length: 4096, cookie: 77n }));
      expect((await raw.readSimpleReply()).error).not.toBe(0);
      raw.destroy();
      await until(() => srv.server.connectionCount === 0, 5000, 'every connection closed');
    } finally {
      await srv.close();
      await trace.close();
    }
    records = parse(file);
    conns = byConn(records);
  }, 120_000);
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('starts with the header, ends with the end record, and every connection goes from open to close', () => {
    expect(records[0]).toMatchObject({ type: 'trace', v: 1, server: 'nbd-engine' });
    expect(records.at(-1)).toMatchObject({ type: 'end', reason: 'closed' });
    expect(conns.size).toBeGreaterThanOrEqual(5);
    for (const rs of conns.values()) {
      expect(rs[0]!.type).toBe('open');
      expect(rs.at(-1)!.type).toBe('close');
      expect(frames(rs, 'out')[0]).toMatchObject({ name: 'greeting' });
    }
  });

  it('nbdinfo --list: NBD_OPT_LIST answered by NBD_REP_SERVER "disk"; the handshake ends aborted', () => {
    const rs = connWith(conns, 'NBD_OPT_LIST');
    expect(frames(rs, 'out').find((f) => f.name === 'NBD_REP_SERVER')!.fields).toMatchObject({ option: 'NBD_OPT_LIST', name: 'disk' });
    expect(rs.at(-1)).toMatchObject({ type: 'close', outcome: 'aborted' });
  });

  it('a GO with info requests by name, NBD_REP_INFO with the export fields, and the handshake steps from its first state to negotiated', () => {
    const rs = connWith(conns, 'NBD_OPT_GO');
    const go = frames(rs, 'in').find((f) => f.name === 'NBD_OPT_GO')!;
    expect(go.fields.name).toBe('disk');
    expect(go.fields.info).toEqual(expect.arrayContaining(['NBD_INFO_BLOCK_SIZE']));
    const info = frames(rs, 'out').find((f) => f.name === 'NBD_REP_INFO' && f.fields.info === 'NBD_INFO_EXPORT')!;
    expect(info.fields).toMatchObject({ option: 'NBD_OPT_GO', size: SIZE });
    expect(info.fields.flags).toEqual(expect.arrayContaining(['NBD_FLAG_HAS_FLAGS', 'NBD_FLAG_SEND_FLUSH']));
    const hs = steps(rs, 'handshake');
    expect(hs[0]!.transitions[0]).toMatch(/^handshake\.awaitingClientFlags\|wire\.clientFlags\|/);
    expect(hs.at(-1)!).toMatchObject({ event: 'opt.go', value: 'negotiated' });
    expect(hs.at(-1)!.active).toContain('handshake.negotiated');
  });

  it("libnbd's READ: its OFFSET_DATA chunk carries the data's length and no bytes; the WRITE's payload too", () => {
    const rs = connWith(conns, 'NBD_CMD_WRITE');
    const write = frames(rs, 'in').find((f) => f.name === 'NBD_CMD_WRITE')!;
    expect(write.fields).toMatchObject({ offset: 8192, length: 4096 });
    expect(write.payload).toEqual({ length: 4096 });
    const read = frames(rs, 'in').find((f) => f.name === 'NBD_CMD_READ')!;
    const chunk = frames(rs, 'out').find((f) => f.name === 'NBD_REPLY_TYPE_OFFSET_DATA' && f.fields.cookie === read.fields.cookie)!;
    expect(chunk.fields).toMatchObject({ offset: 8192, dataLength: 4096, flags: ['NBD_REPLY_FLAG_DONE'] });
    expect(chunk.payload).toEqual({ length: 4096 });
    expect(JSON.stringify(rs)).not.toContain('7878787878'); // the bytes written ('x') are nowhere
    expect(steps(rs, 'transmission').length).toBeGreaterThan(0);
  });

  it('TLS: STARTTLS, then tls start and established, then GO over TLS', () => {
    const rs = connWith(conns, 'NBD_OPT_STARTTLS');
    const tls = rs.filter((r) => r.type === 'tls').map((r) => (r as { step: string }).step);
    expect(tls).toEqual(['start', 'established']);
    const established = rs.findIndex((r) => r.type === 'tls' && r.step === 'established');
    expect(rs.slice(established).some((r) => r.type === 'frame' && r.name === 'NBD_OPT_GO')).toBe(true);
  });

  it('a READ past the end: a refusal with its catalogue code, and the error reply', () => {
    const rs = [...conns.values()].find((x) => x.some((r) => r.type === 'refusal'))!;
    expect(rs.find((r) => r.type === 'refusal')).toMatchObject({ code: 'transmission.out-of-bounds', errno: 'NBD_EINVAL', command: 'NBD_CMD_READ', cookie: '77' });
    expect(frames(rs, 'out').find((f) => f.fields.cookie === '77')).toMatchObject({ name: 'simpleReply', fields: { error: 'NBD_EINVAL' } });
  });
});

describe('serve --trace FILE and trace show', () => {
  let dir: string;
  let file: string;

  beforeAll(async () => {
    dir = tmpDir('nbd-engine-trace-cli-');
    file = path.join(dir, 'cli.jsonl');
    const { child, uris } = await spawnCli(['serve', '--memory', '1M', '--export', 'disk', '--socket', path.join(dir, 's'), '--trace', file]);
    try {
      const uri = uris.find((u) => u.includes('+unix'))!;
      await run('nbdinfo', [uri]);
      await run('nbdinfo', ['--list', uri]);
    } finally {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGINT');
      await exited;
    }
  }, 60_000);
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('SIGINT flushes and closes the file: two connections, open to close, then the end record', () => {
    const records = parse(file);
    expect(records.at(-1)).toMatchObject({ type: 'end', reason: 'closed' });
    expect([...byConn(records).keys()]).toEqual([1, 2]);
  });

  it('trace show prints the transcript: options, replies, the handshake reaching negotiated, the close', async () => {
    const { stdout } = await execFileP(process.execPath, [CLI, 'trace', 'show', file]);
    const lines = stdout.split('\n');
    expect(lines).toContainEqual(expect.stringMatching(/^\[conn 1 \+[0-9.]+ms\] C→S NBD_OPT_GO name="disk" info=\[.*NBD_INFO_BLOCK_SIZE.*\]/));
    expect(lines).toContainEqual(expect.stringMatching(/^\[conn 1 \+[0-9.]+ms\] S→C NBD_REP_INFO NBD_INFO_EXPORT size=1048576 flags=HAS_FLAGS\|/));
    expect(lines).toContainEqual(expect.stringMatching(/^\[conn 1 \+[0-9.]+ms\] handshake: options\.open → negotiated \(opt\.go\)/));
    expect(lines).toContainEqual(expect.stringMatching(/^\[conn 2 \+[0-9.]+ms\] C→S NBD_OPT_LIST/));
    expect(lines).toContainEqual(expect.stringMatching(/^\[conn 2 \+[0-9.]+ms\] close aborted/));
  });

  it('--connection N shows that connection only; --no-machines hides the machine lines', async () => {
    const { stdout } = await execFileP(process.execPath, [CLI, 'trace', 'show', file, '--connection', '2', '--no-machines']);
    const lines = stdout.trim().split('\n').filter((l) => !l.startsWith('[trace]'));
    expect(lines.length).toBeGreaterThan(3);
    for (const l of lines) expect(l).toMatch(/^\[conn 2 /);
    expect(stdout).not.toMatch(/handshake:|connection:/);
  });

  it('a malformed line is one stderr line naming its number; the rest is still shown', async () => {
    const broken = path.join(dir, 'broken.jsonl');
    const lines = fs.readFileSync(file, 'utf8').split('\n');
    lines.splice(3, 0, '{"not json');
    fs.writeFileSync(broken, lines.join('\n'));
    const r = await execFileP(process.execPath, [CLI, 'trace', 'show', broken]).then(
      () => ({ code: 0, stdout: '', stderr: '' }),
      (e: { code: number; stdout: string; stderr: string }) => e,
    );
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/broken\.jsonl:4: not JSON/)]);
    expect(r.stdout).toContain('close aborted');
  });

  it('--follow prints records appended later, and exits on SIGINT', async () => {
    const growing = path.join(dir, 'growing.jsonl');
    fs.copyFileSync(file, growing);
    const child = spawn(process.execPath, [CLI, 'trace', 'show', growing, '--follow', '--connection', '9'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      await until(() => out.includes('trace ends'), 10_000, 'the existing records');
      fs.appendFileSync(growing, `${JSON.stringify({ type: 'open', t: Date.now(), conn: 9, peer: 'later' })}\n`);
      await until(() => out.includes('[conn 9 +0.000ms] open from later'), 10_000, 'the appended record');
    } finally {
      child.kill('SIGINT');
    }
    expect(await exited).toBe(0);
  });

  it('serve: --trace-max without --trace, or a prefix over 4096, is one stderr line and exit 2', async () => {
    for (const args of [['--trace-max', '1M'], ['--trace', path.join(dir, 'x'), '--trace-prefix', '5000']]) {
      const e = await execFileP(process.execPath, [CLI, 'serve', ...args]).then(
        () => null,
        (err: { code: number; stderr: string }) => err,
      );
      expect(e?.code, args.join(' ')).toBe(2);
      expect(e!.stderr.trim().split('\n')).toEqual([expect.stringMatching(/--trace-(max|prefix)/)]);
    }
  });

  it('serve: a trace file that cannot be written is one stderr line and exit 1, before serving', async () => {
    const e = await execFileP(process.execPath, [CLI, 'serve', '--socket', path.join(dir, 'never.sock'), '--trace', path.join(dir, 'no-such-dir', 't.jsonl')]).then(
      () => null,
      (err: { code: number; stderr: string }) => err,
    );
    expect(e?.code).toBe(1);
    expect(e!.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^nbd-engine: --trace: ENOENT: .*no-such-dir/)]);
    expect(fs.existsSync(path.join(dir, 'never.sock'))).toBe(false);
  });

  it('bad arguments: one stderr line, exit 2', async () => {
    for (const args of [['show'], ['show', file, '--connection', 'x'], ['nope'], ['show', file, '--bogus']]) {
      const e = await execFileP(process.execPath, [CLI, 'trace', ...args]).then(
        () => null,
        (err: { code: number; stderr: string }) => err,
      );
      expect(e?.code, args.join(' ')).toBe(2);
      expect(e!.stderr.trim().split('\n')).toHaveLength(1);
    }
  });
});

describe('server.tap() and the cost of not recording', () => {
  let srv: Running;
  beforeAll(async () => {
    srv = await startServer({ exports: [{ name: 'disk', backend: memoryBackend({ size: SIZE }) }] });
  });
  afterAll(() => srv.close());

  /** The server's prebuilt actor for its next connection, with its system's inspect() counted. */
  async function countedSpare(): Promise<{ attaches: () => number }> {
    const server = srv.server as unknown as { spareActor: AnyActorRef | null };
    await until(() => server.spareActor !== null, 5000, 'the spare actor');
    const system = server.spareActor!.system as { inspect: (o: unknown) => { unsubscribe(): void } };
    const inspect = system.inspect.bind(system);
    let n = 0;
    system.inspect = (o) => {
      n++;
      return inspect(o);
    };
    return { attaches: () => n };
  }

  it('with no trace and no tap, a connection attaches no inspection observer; a tap on the live connection gets its open, snapshots, then its requests; after unsubscribe nothing', async () => {
    const counted = await countedSpare();
    const client = await RawClient.open({ path: srv.socket }, 'disk');
    try {
      client.send(requestBytes({ type: CMD.READ, offset: 0, length: 512, cookie: 1n }));
      await client.readSimpleReply(() => 512);
      expect(counted.attaches()).toBe(0);

      const got: TraceRecord[] = [];
      const sink: TraceSink = { write: (r) => got.push(r) };
      const tap = srv.server.tap(sink);
      expect(counted.attaches()).toBe(1);
      expect(got.map((r) => r.type)).toEqual(['open', 'snapshot', 'snapshot']);
      expect(got.filter((r) => r.type === 'snapshot').map((r) => (r as { actor: string }).actor)).toEqual(['connection', 'transmission']);
      expect(got[2]).toMatchObject({ value: 'open', status: 'active' });

      client.send(requestBytes({ type: CMD.READ, offset: 4096, length: 512, cookie: 2n }));
      await client.readSimpleReply(() => 512);
      expect(got.find((r) => r.type === 'frame' && r.dir === 'in')).toMatchObject({ name: 'NBD_CMD_READ', fields: { cookie: '2', offset: 4096, length: 512 } });
      expect(got.find((r) => r.type === 'frame' && r.dir === 'out')).toMatchObject({ name: 'simpleReply', fields: { cookie: '2' }, payload: { length: 512 } });
      expect(got.some((r) => r.type === 'step' && r.actor === 'transmission')).toBe(true);

      tap.unsubscribe();
      const seen = got.length;
      client.send(requestBytes({ type: CMD.READ, offset: 0, length: 512, cookie: 3n }));
      await client.readSimpleReply(() => 512);
      expect(got.length).toBe(seen);
    } finally {
      client.destroy();
    }
  });
});
