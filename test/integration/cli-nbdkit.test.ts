/**
 * nbdkit's command line for `nbd-engine serve` (docs/cli.md), through the
 * built CLI with real clients: `BACKEND [[KEY=]VALUE ...]`, -s on
 * stdin/stdout (python3-libnbd's connect_command and a socketpair), -U -,
 * --run's variables, -P, --exit-with-parent, -V, --print-uri,
 * --tls-certificates with certtool's certificates, and the usage errors.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, cliToEnd, nbdPython, requireTool, run, runToEnd, serverPerTest, silentLogger, spawnCli, tmpDir } from './harness.js';
import { layer, pluginExport, type PluginTables } from '../../src/index.js';
import { BACKENDS } from '../../src/plugins/registry.js';
import { CLIENT_FLAGS, clientFlagsBytes, MAGIC, OPT, optionBytes, REP } from '../../src/client/index.js';
import { makePki } from './tls-support.js';

const node = process.execPath;

/** Run the CLI to completion; never rejects (the exit code is the result). */
const cli = cliToEnd;

/** Whether a process has exited (gone, or a zombie nobody reaped yet). */
function gone(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

/** Wait (bounded by the test's timeout, never by a timed assertion) until `cond` holds. */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 50));
}

let work: string;
let disk: string;
const version = (JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

beforeAll(() => {
  requireTool('nbdinfo');
  requireTool('qemu-io');
  work = tmpDir();
  // A file with a recognisable pattern: 1 MiB of 0x5a, then 1 MiB of zeroes.
  disk = path.join(work, 'disk.img');
  fs.writeFileSync(disk, Buffer.concat([Buffer.alloc(1 << 20, 0x5a), Buffer.alloc(1 << 20)]));
});
afterAll(() => {
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

describe('BACKEND [[KEY=]VALUE ...]', () => {
  it('memory 1G and memory size=1G serve 1 GiB; memory 64k serves 64 KiB', async () => {
    for (const args of [['memory', '1G'], ['memory', 'size=1G'], ['memory', '64k']]) {
      const r = await cli(['serve', '-U', '-', ...args, '--run', 'nbdinfo --size "$uri"']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.trim(), args.join(' ')).toBe(String(args[1] === '64k' ? 65536 : 2 ** 30));
    }
  });

  it('file disk.img serves the file read-write; qemu-io sees its bytes and writes reach it', async () => {
    const copy = path.join(work, 'rw.img');
    fs.copyFileSync(disk, copy);
    const r = await cli(['serve', '-U', '-', 'file', copy, '--run', 'qemu-io -f raw -c "read -P 0x5a 0 1M" -c "read -P 0 1M 1M" -c "write -P 0x33 4k 4k" "$uri"']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/read 1048576\/1048576 bytes at offset 0\b/);
    expect(r.stdout).toMatch(/wrote 4096\/4096 bytes at offset 4096\b/);
    const data = fs.readFileSync(copy);
    expect(data.subarray(4096, 8192).every((b) => b === 0x33)).toBe(true);
    expect(data[0]).toBe(0x5a);
  });

  it('-r file file=disk.img is read-only: nbdinfo says so, a write fails, the file is unchanged', async () => {
    const before = fs.readFileSync(disk);
    const r = await cli(['serve', '-r', '-U', '-', 'file', `file=${disk}`, '--run', 'nbdinfo "$uri" && qemu-io -f raw -c "write -P 1 0 4k" "$uri"']);
    expect(r.stdout).toMatch(/is_read_only: true/);
    expect(r.stdout).toMatch(/export-size: 2097152\b/);
    expect(r.code).not.toBe(0);
    expect(fs.readFileSync(disk).equals(before)).toBe(true);
  });

  it("socket activation with nbdkit's syntax: nbdinfo -- [ nbd-engine serve -r memory 64M ]", async () => {
    const { stdout } = await run('nbdinfo', ['--json', '--', '[', node, CLI, 'serve', '-r', '-e', 'act', 'memory', '64M', ']']);
    const info = JSON.parse(stdout) as { exports: Array<{ 'export-name': string; 'export-size': number; is_read_only: boolean }> };
    expect(info.exports[0]).toMatchObject({ 'export-name': 'act', 'export-size': 64 * 2 ** 20, is_read_only: true });
  });

  it('under socket activation -s is refused (one stderr line, nothing on stdout), as nbdkit does; -v says which sockets it serves', async () => {
    const bad = await runToEnd('nbdinfo', ['--size', '--', '[', node, CLI, 'serve', '-s', 'memory', '1M', ']']);
    expect(bad.code).not.toBe(0);
    expect(bad.stdout).toBe('');
    expect(bad.stderr).toContain('nbd-engine: -s (--single) serves stdin/stdout: it cannot be used under socket activation (LISTEN_FDS is set)\n');
    const ok = await runToEnd('nbdinfo', ['--size', '--', '[', node, CLI, 'serve', '-v', 'memory', '1M', ']']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout.trim()).toBe('1048576');
    expect(ok.stderr).toContain('nbd-engine: info: serving on the socket passed by socket activation (fd 3)');
  });

  it('nbdkit option names: --readonly, --unix, -e / --exportname (the export name and $exportname), -f accepted', async () => {
    const sock = path.join(work, 'names.sock');
    const r = await cli(['serve', '-f', '--readonly', '--unix', sock, '--exportname', 'disk', 'memory', '1M', '--run', 'echo "e=$exportname u=$unixsocket"; nbdinfo --list "$uri"']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`e=disk u=${sock}`);
    expect(r.stdout).toMatch(/export="disk":/);
    expect(r.stdout).toMatch(/is_read_only: true/);
    const e = await cli(['serve', '-e', 'other', '-U', '-', 'memory', '1M', '--run', 'nbdinfo --list "$uri"']);
    expect(e.stdout).toMatch(/export="other":/);
  });
});

describe('-s: one connection on stdin/stdout', () => {
  it("python3-libnbd connect_command: I/O works and the handle's close returns once the server has exited", async () => {
    // libnbd's close waits for the command to exit: a server that lingers would hang this script.
    const out = await nbdPython(
      String.raw`
import json, sys, nbd
h = nbd.NBD()
h.connect_command(sys.argv[1:])
size = h.get_size()
h.pwrite(b'\xab' * 4096, 8192)
back = h.pread(4096, 8192)
ro = h.is_read_only()
h.shutdown()
del h  # nbd_close: waits for the command to exit
print(json.dumps({'size': size, 'ok': back == b'\xab' * 4096, 'ro': ro}))
`,
      [node, CLI, 'serve', '-s', '-v', 'memory', '1M'],
    );
    expect(JSON.parse(out)).toEqual({ size: 1048576, ok: true, ro: false });
  });

  it('over a socketpair: stdout carries the protocol only (logs on stderr with -v), exit status 0 when the client goes', async () => {
    const out = await nbdPython(
      String.raw`
import json, socket, subprocess, sys, nbd
ours, theirs = socket.socketpair()
p = subprocess.Popen(sys.argv[1:], stdin=theirs, stdout=theirs, stderr=subprocess.PIPE)
theirs.close()
h = nbd.NBD()
h.connect_socket(ours.fileno())
size = h.get_size()
h.shutdown()
err = p.stderr.read().decode()
print(json.dumps({'size': size, 'status': p.wait(), 'err': err}))
`,
      [node, CLI, 'serve', '--single', '-v', 'file', disk],
    );
    const r = JSON.parse(out) as { size: number; status: number; err: string };
    expect(r.size).toBe(2097152);
    expect(r.status, r.err).toBe(0);
    expect(r.err).toMatch(/^nbd-engine: info: connection 1: opened$/m);
    expect(r.err).toMatch(/connection closed: shutting down/);
  });

  it('over two pipes (not a socket): the greeting on stdout, an option answered, exit 0 when stdin closes', async () => {
    const child = spawn(node, [CLI, 'serve', '-s', 'memory', '1M'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = Buffer.alloc(0);
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const bytes = async (n: number) => {
      while (out.length < n) await new Promise((r) => child.stdout.once('data', (d: Buffer) => r((out = Buffer.concat([out, d])))));
      const b = out.subarray(0, n);
      out = out.subarray(n);
      return b;
    };
    const greeting = await bytes(18);
    expect(greeting.readBigUInt64BE(0)).toBe(MAGIC.NBDMAGIC);
    expect(greeting.readBigUInt64BE(8)).toBe(MAGIC.IHAVEOPT);
    child.stdin.write(clientFlagsBytes(CLIENT_FLAGS.NBD_FLAG_C_FIXED_NEWSTYLE | CLIENT_FLAGS.NBD_FLAG_C_NO_ZEROES));
    child.stdin.write(optionBytes(OPT.NBD_OPT_ABORT));
    const reply = await bytes(20);
    expect([reply.readUInt32BE(8), reply.readUInt32BE(12), reply.readUInt32BE(16)]).toEqual([OPT.NBD_OPT_ABORT, REP.NBD_REP_ACK, 0]);
    child.stdin.end();
    expect(await exited, stderr).toBe(0);
  });
});

describe('-U -, --run variables, --print-uri', () => {
  it('-U - is a private socket in a temporary directory, removed at exit', async () => {
    const r = await cli(['serve', '-U', '-', 'memory', '1M', '--run', 'echo "sock=$unixsocket"; nbdinfo "$uri"']);
    expect(r.code, r.stderr).toBe(0);
    const sock = /sock=(.*)/.exec(r.stdout)![1]!;
    expect(path.basename(sock)).toBe('nbd.sock');
    expect(path.basename(path.dirname(sock))).toMatch(/^nbd-engine-/);
    expect(r.stdout).toMatch(/export-size: 1048576\b/);
    expect(fs.existsSync(path.dirname(sock))).toBe(false);
  });

  it('$port is the TCP port (-p 0 -i 127.0.0.1: the one chosen) and $nbd = $uri; $tls unset without TLS', async () => {
    const r = await cli(['serve', '-p', '0', '-i', '127.0.0.1', 'memory', '3M', '--run', 'echo "port=$port uri=$uri nbd=$nbd tls=${tls-unset} sock=[$unixsocket]"; nbdinfo --size "nbd://127.0.0.1:$port"']);
    expect(r.code, r.stderr).toBe(0);
    const m = /port=(\d+) uri=(\S+) nbd=(\S+) tls=(\S+) sock=\[\]/.exec(r.stdout)!;
    expect(m, r.stdout).not.toBeNull();
    expect(Number(m[1])).toBeGreaterThan(0);
    expect(m[2]).toBe(`nbd://127.0.0.1:${m[1]}/`);
    expect(m[3]).toBe(m[2]);
    expect(m[4]).toBe('unset');
    expect(r.stdout).toMatch(/^3145728$/m);
  });

  it('--print-uri prints the URI before --run starts (and not without it)', async () => {
    const r = await cli(['serve', '--print-uri', '-U', '-', 'memory', '1M', '--run', 'echo "run=$uri"']);
    expect(r.code, r.stderr).toBe(0);
    const [printed, fromRun] = r.stdout.trim().split('\n');
    expect(printed).toMatch(/^nbd\+unix:\/\/\/\?socket=.*nbd\.sock$/);
    expect(fromRun).toBe(`run=${printed}`);
    const plain = await cli(['serve', '-U', '-', 'memory', '1M', '--run', 'echo "run=$uri"']);
    expect(plain.stdout.trim().split('\n')).toHaveLength(1);
  });
});

describe('-P, --exit-with-parent, -V', () => {
  it('-P FILE holds the pid once the URIs are printed', async () => {
    const pidfile = path.join(work, 'server.pid');
    const sock = path.join(work, 'pid.sock');
    const { child, uris } = await spawnCli(['serve', '-P', pidfile, '-U', sock, 'memory', '1M']);
    try {
      expect(uris).toEqual([`nbd+unix:///?socket=${sock}`]);
      expect(fs.readFileSync(pidfile, 'utf8')).toBe(`${child.pid}\n`);
    } finally {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
  });

  it('--exit-with-parent: the server exits (cleanly: its socket removed) when its parent is killed with SIGKILL; one without it stays', async () => {
    const mk = (name: string, extra: string[]) => ({ pidfile: path.join(work, `${name}.pid`), sock: path.join(work, `${name}.sock`), extra });
    const withFlag = mk('ewp', ['--exit-with-parent']);
    const without = mk('stay', []);
    // A parent that starts both servers, then waits for ever.
    const script = `
      const { spawn } = require('node:child_process');
      for (const s of ${JSON.stringify([withFlag, without])}) {
        spawn(process.execPath, [${JSON.stringify(CLI)}, 'serve', ...s.extra, '-P', s.pidfile, '-U', s.sock, 'memory', '1M'], { stdio: 'ignore' });
      }
      setInterval(() => {}, 1000);`;
    const parent = spawn(node, ['-e', script], { stdio: 'ignore' });
    let stayPid: number | undefined;
    try {
      await until(() => fs.existsSync(withFlag.pidfile) && fs.existsSync(without.pidfile) && fs.readFileSync(without.pidfile, 'utf8').endsWith('\n') && fs.readFileSync(withFlag.pidfile, 'utf8').endsWith('\n'));
      const ewpPid = Number(fs.readFileSync(withFlag.pidfile, 'utf8'));
      stayPid = Number(fs.readFileSync(without.pidfile, 'utf8'));
      expect(gone(ewpPid)).toBe(false);
      const killed = new Promise((r) => parent.once('exit', r));
      parent.kill('SIGKILL');
      await killed;
      await until(() => gone(ewpPid));
      expect(fs.existsSync(withFlag.sock)).toBe(false);
      // The other one is still serving.
      const { stdout } = await run('nbdinfo', ['--size', `nbd+unix:///?socket=${without.sock}`]);
      expect(stdout.trim()).toBe('1048576');
      expect(gone(stayPid)).toBe(false);
    } finally {
      if (parent.exitCode === null && parent.signalCode === null) parent.kill('SIGKILL');
      if (stayPid !== undefined && !gone(stayPid)) process.kill(stayPid, 'SIGTERM');
    }
  });

  it('--exit-with-parent: a parent that exits while the server is still starting (warm-up, backend) counts too', async () => {
    const pidfile = path.join(work, 'early.pid');
    const sock = path.join(work, 'early.sock');
    // The parent starts the server and exits as soon as the server's start-up warm-up has begun (its
    // private directory appears in the server's TMPDIR): the server's code is running, it is not ready.
    // (A parent gone before Node runs any of the server's code cannot be told from a parent that is init:
    // a fixed 0.2 s was that on a loaded host.) If the warm-up were over before the parent saw it, the
    // parent leaves once the server is ready instead.
    const tmp = path.join(work, 'early-tmp');
    fs.mkdirSync(tmp, { recursive: true });
    const script = `TMPDIR="${tmp}" "${node}" "${CLI}" serve --exit-with-parent -P "${pidfile}" -U "${sock}" memory 1M >/dev/null 2>&1 &
      until ls "${tmp}" | grep -q nbd-engine-warm || [ -s "${pidfile}" ]; do sleep 0.01; done; exit 0`;
    const parent = spawn('/bin/sh', ['-c', script], { stdio: 'ignore' });
    await new Promise((r) => parent.once('exit', r));
    await until(() => fs.existsSync(pidfile) && fs.readFileSync(pidfile, 'utf8').endsWith('\n'));
    const pid = Number(fs.readFileSync(pidfile, 'utf8'));
    try {
      await until(() => gone(pid));
      expect(fs.existsSync(sock)).toBe(false);
    } finally {
      if (!gone(pid)) process.kill(pid, 'SIGKILL');
    }
  });

  it('SIGHUP and SIGQUIT end the server as cleanly as SIGTERM: exit 0, its socket removed', async () => {
    for (const signal of ['SIGHUP', 'SIGQUIT'] as const) {
      const sock = path.join(work, `${signal}.sock`);
      const { child } = await spawnCli(['serve', '-U', sock, 'memory', '1M']);
      const exited = new Promise<[number | null, string | null]>((r) => child.once('exit', (code, sig) => r([code, sig])));
      child.kill(signal);
      expect(await exited, signal).toEqual([0, null]);
      expect(fs.existsSync(sock), signal).toBe(false);
    }
  });

  it('--run: a SIGTERM to the server reaches the command and the processes it started, none is left running', async () => {
    const pidfile = path.join(work, 'run-child.pid');
    const child = spawn(node, [CLI, 'serve', '-U', '-', 'memory', '1M', '--run', `sleep 300 & echo $! > "${pidfile}"; wait; echo done`], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    await until(() => fs.existsSync(pidfile) && fs.readFileSync(pidfile, 'utf8').endsWith('\n'));
    const sleeper = Number(fs.readFileSync(pidfile, 'utf8'));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    // The command died of the SIGTERM passed on: the server's status says so (128 + 15).
    expect(await exited).toBe(143);
    try {
      // Before, only the shell got the signal and the sleep ran on under init for its 300 s.
      await until(() => gone(sleeper));
    } finally {
      if (!gone(sleeper)) process.kill(sleeper, 'SIGKILL');
    }
    expect(out).not.toContain('done');
  });

  it('a restart on the same -U path: the draining old server does not remove the new one\'s socket; --shutdown-timeout lets a slow WRITE finish', async () => {
    const sock = path.join(work, 'restart.sock');
    // A 6 s WRITE: it outlives the default 5 s drain, not a --shutdown-timeout of 10 s.
    const old = await spawnCli(['serve', '-U', sock, '--shutdown-timeout', '10', '--filter=delay', 'memory', '1M', 'delay-write=6']);
    const oldExit = new Promise<number | null>((r) => old.child.once('exit', (code) => r(code)));
    const writer = nbdPython(`
import nbd, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
c = h.aio_pwrite(b'x' * 512, 0)
print('sent', flush=True)
while not h.aio_command_completed(c):
    h.poll(1)
print('written')
`, [`nbd+unix:///?socket=${sock}`]);
    await new Promise((r) => setTimeout(r, 500));
    old.child.kill('SIGTERM');
    await until(() => !fs.existsSync(sock)); // the old listener is closed; its WRITE still runs
    const next = await spawnCli(['serve', '-U', sock, 'memory', '2M']);
    try {
      expect((await writer).trim().split('\n')).toEqual(['sent', 'written']);
      expect(await oldExit).toBe(0);
      // The old one has exited: the new one's socket is still there and serving.
      const { stdout } = await run('nbdinfo', ['--size', `nbd+unix:///?socket=${sock}`]);
      expect(stdout.trim()).toBe('2097152');
    } finally {
      next.child.kill('SIGTERM');
      await new Promise((r) => next.child.once('exit', r));
    }
  });

  it('-V / --version print the package version, also after serve', async () => {
    for (const args of [['-V'], ['--version'], ['serve', '-V'], ['serve', '--version', 'memory', '1G']]) {
      const r = await cli(args);
      expect(r.code, args.join(' ')).toBe(0);
      expect(r.stdout).toBe(`nbd-engine ${version}\n`);
    }
  });
});

describe('--tls-certificates DIR (certtool certificates, nbdkit file names)', () => {
  let pki: string;
  beforeAll(() => {
    pki = makePki(path.join(work, 'pki'));
  });

  it('--tls=require: $tls is 2, $uri is nbds+unix, nbdinfo connects with the same directory', async () => {
    const r = await cli(['serve', '--tls=require', '--tls-certificates', pki, '-U', '-', 'memory', '1M', '--run', `echo "tls=$tls uri=$uri"; nbdinfo --json "$uri&tls-certificates=${pki}"`]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^tls=2 uri=nbds\+unix:\/\/\/\?socket=\S+$/m);
    const info = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { exports: Array<{ 'export-size': number; 'tls?'?: boolean }> };
    expect(info.exports[0]!['export-size']).toBe(1048576);
  });

  it('--tls=on: $tls is 1 and both plaintext and TLS clients are served', async () => {
    const r = await cli(['serve', '--tls=on', '--tls-certificates', pki, '-p', '0', '-i', '127.0.0.1', 'memory', '2M', '--run', `echo "tls=$tls"; nbdinfo --size "nbd://127.0.0.1:$port" && nbdinfo --size "nbds://127.0.0.1:$port/?tls-certificates=${pki}"`]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n')).toEqual(['tls=1', '2097152', '2097152']);
  });

  it('a directory without the server files: one line naming the file, exit 1', async () => {
    const empty = path.join(work, 'no-certs');
    fs.mkdirSync(empty, { recursive: true });
    const r = await cli(['serve', '--tls=on', '--tls-certificates', empty, '-U', '-', 'memory', '1M', '--run', 'true']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^nbd-engine: .*server-(cert|key)\.pem.*\n$/);
  });
});

describe('pluginExport: the same words from the library', () => {
  const servers = serverPerTest();

  it("['memory', '1G'] and ['file', disk] with readOnly serve what nbdinfo reports", async () => {
    const mem = await servers.serve({ exports: [await pluginExport(['memory', '1G'], { name: 'm', logger: silentLogger })] });
    expect((await run('nbdinfo', ['--size', mem.uri('m')])).stdout.trim()).toBe(String(2 ** 30));
    const file = await servers.serve({ exports: [await pluginExport(['file', `file=${disk}`], { readOnly: true, logger: silentLogger })] });
    const { stdout } = await run('nbdinfo', [file.uri()]);
    expect(stdout).toMatch(/export-size: 2097152\b/);
    expect(stdout).toMatch(/is_read_only: true/);
  });

  it('--filter words build the filters in order, each given its own keys (tables injected: a size-capping filter)', async () => {
    // A filter that serves only the first `cap` bytes, declared here: the built-in registry has none yet.
    const tables: PluginTables = {
      backends: BACKENDS,
      filters: {
        cap: async () => ({
          name: 'cap',
          summary: 'serve the first cap bytes',
          params: [{ name: 'cap', kind: 'size', summary: 'bytes', required: true }],
          create: async (p) => ({ name: 'cap', scope: 'shared', wrap: (next) => layer(next, { size: Math.min(next.size ?? 0, p.cap as number) }) }),
        }),
      },
    };
    const exp = await pluginExport(['--filter=cap', 'memory', '1G', 'cap=64k'], { logger: silentLogger, tables });
    const s = await servers.serve({ exports: [exp] });
    expect((await run('nbdinfo', ['--size', s.uri()])).stdout.trim()).toBe('65536');
    await expect(pluginExport(['--filter', 'cap', 'memory', '1G'], { tables })).rejects.toThrow(/^filter cap: cap=… is required$/);
    await expect(pluginExport(['memory', '1G', 'cap=1'], { tables })).rejects.toThrow(/^unknown parameter "cap"/);
    await expect(pluginExport(['-r', 'memory', '1G'])).rejects.toThrow(/^"-r": only --filter=NAME/);
  });
});

describe('usage errors: one line, exit 2', () => {
  const cases: Array<[string, string[], RegExp]> = [
    ['unknown backend', ['serve', 'nosuch', 'x=1'], /^nbd-engine: unknown backend "nosuch" \(known: [^)]*\bmemory\b/],
    ['unknown filter', ['serve', '--filter=nosuch', 'memory', '1G'], /^nbd-engine: unknown filter "nosuch" \(known: /],
    ['unknown key', ['serve', 'memory', '1G', 'bogus=1'], /^nbd-engine: unknown parameter "bogus" in "bogus=1" \(known keys — backend memory: [^)]*\bsize\b/],
    ['bad value', ['serve', 'memory', 'size=lots'], /^nbd-engine: memory: size=lots: cannot parse size/],
    ['missing required key', ['serve', 'file'], /^nbd-engine: file: file=… is required\n$/],
    ['key before the backend', ['serve', 'size=1G'], /^nbd-engine: "size=1G": expected a backend name first/],
    ['-s with -U', ['serve', '-s', '-U', '-', 'memory', '1G'], /^nbd-engine: -s \(--single\) serves stdin\/stdout: it cannot be used with --socket\n$/],
    ['--tls-certificates with --tls=off', ['serve', '--tls=off', '--tls-certificates', '/tmp', 'memory', '1G'], /^nbd-engine: --tls-certificates given but --tls=off/],
  ];
  for (const [what, args, message] of cases) {
    it(what, async () => {
      const r = await cli(args);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(1);
      expect(r.stdout).toBe('');
    });
  }

  it('--help lists the backends with their keys, and the filters', async () => {
    const r = await cli(['serve', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^ {2}memory +a sparse RAM disk/m);
    expect(r.stdout).toMatch(/^ {6}file=PATH +the file or device to serve/m);
    expect(r.stdout).toMatch(/^Filters \(--filter=NAME/m);
  });
});
