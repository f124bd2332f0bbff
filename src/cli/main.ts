/**
 * The `nbd-engine` command (docs/design.md, "The command line").
 *
 *   nbd-engine serve [--memory SIZE | --file PATH] [--socket PATH] [--port N] [--host H]
 *                    [--export NAME] [--description TEXT] [--read-only] [--run CMD] [--strict]
 *                    [--tls off|on|require --tls-cert F --tls-key F --tls-ca F --tls-verify-peer --tls-psk F]
 *                    [--max-in-flight N --max-in-flight-bytes SIZE --max-payload SIZE --max-options N
 *                     --max-connections N --handshake-timeout S --idle-timeout S] [--verbose]
 *
 * With no options: a 1 GiB sparse in-memory export on a UNIX socket and on
 * TCP localhost:10809. Under systemd socket activation (LISTEN_FDS) it
 * serves the inherited sockets only, so `nbdinfo -- [ nbd-engine serve ]`
 * works (also through launchers that keep fd 3 open; not through npx, which
 * closes it: then it says so and exits 1 rather than leave the client
 * waiting). `--run CMD` serves, runs CMD with $uri / $unixsocket set, and
 * exits with its status (with --strict: 3 if a client broke a protocol rule,
 * after a summary on stderr). A malformed option is one line on stderr naming
 * it, and exit status 2.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createServer, type ExportConfig, type NbdServer } from '../api/server.js';
import { memoryBackend } from '../backends/memory.js';
import { fileBackend } from '../backends/file.js';
import { consoleLogger } from '../transport/logger.js';
import { socketActivation, type ListenTarget } from '../transport/listen.js';
import { USAGE } from './usage.js';
import { SUBCOMMANDS } from './commands.js';
import { parseServeArgs, UsageError, type ServeArgs } from './serve-args.js';
import { traceFile } from '../inspect/trace-file.js';
import type { LiveInspector } from '../inspect/live.js';
import { STRICT_EXIT_STATUS, violationSummary } from './strict.js';
import type { Violation } from '../api/violations.js';

export { parseServeArgs, UsageError, type ServeArgs } from './serve-args.js';

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  const sub = command === undefined ? undefined : SUBCOMMANDS[command];
  if (sub) return sub(rest);
  if (command !== undefined && command !== 'serve') {
    const names = ['serve', ...Object.keys(SUBCOMMANDS)].map((n) => `"${n}"`).join(', ');
    process.stderr.write(`nbd-engine: unknown command ${JSON.stringify(command)}: the commands are ${names} (nbd-engine --help)\n`);
    return 2;
  }
  let parsed: ServeArgs;
  try {
    parsed = parseServeArgs(rest);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`nbd-engine: ${err.message}\n`);
    return 2;
  }
  if (parsed.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const { values, memorySize, limits, tlsMode } = parsed;
  const logger = consoleLogger(!!values.verbose);
  const readOnly = !!values['read-only'];
  let exp: ExportConfig;
  try {
    const name = values.export ?? '';
    if (values.file) {
      const backend = await fileBackend({ path: values.file, readOnly, logger });
      exp = { name, description: values.description, backend, readOnly };
    } else {
      exp = { name, description: values.description, backend: memoryBackend({ size: memorySize }), readOnly };
    }
  } catch (err) {
    process.stderr.write(`nbd-engine: ${(err as Error).message}\n`);
    return 1;
  }
  if (parsed.trace) {
    // A file that cannot be written is an error at start (later write errors stop recording, not serving).
    try {
      fs.closeSync(fs.openSync(parsed.trace.path, 'a'));
    } catch (err) {
      process.stderr.write(`nbd-engine: --trace: ${(err as Error).message}\n`);
      return 1;
    }
  }
  const trace = parsed.trace ? traceFile(parsed.trace.path, { ...parsed.trace, logger }) : undefined;
  let server: NbdServer;
  try {
    server = createServer({
      exports: [exp],
      logger,
      trace,
      strict: !!values.strict,
      limits: Object.keys(limits).length > 0 ? limits : undefined,
      tls:
        tlsMode === 'off'
          ? undefined
          : {
              mode: tlsMode,
              cert: values['tls-cert'],
              key: values['tls-key'],
              ca: values['tls-ca'],
              verifyPeer: !!values['tls-verify-peer'],
              psk: values['tls-psk'],
            },
    });
  } catch (err) {
    process.stderr.write(`nbd-engine: ${(err as Error).message}\n`);
    return 1;
  }

  // Where to listen. Socket activation's variables are for this process
  // only: children (--run) must not take them as theirs.
  const activation = socketActivation(process.env);
  for (const v of ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES']) delete process.env[v];
  if (activation.lost) {
    // The activating program waits on sockets that never arrived: listening elsewhere would leave it hanging.
    process.stderr.write(`nbd-engine: cannot listen: socket activation: ${activation.ignored}\n`);
    await server.close({ timeout: 0 });
    return 1;
  }
  if (activation.ignored) logger.warn(`socket activation ignored: ${activation.ignored}`);
  const activated = activation.fds.length > 0;
  const targets: ListenTarget[] = [];
  let privateDir: string | undefined;
  let unixSocket: string | undefined;
  if (activated) {
    targets.push(...activation.fds.map((fd) => ({ fd })));
  } else {
    if (values.socket !== undefined) {
      unixSocket = path.resolve(values.socket);
      targets.push({ path: unixSocket });
    }
    if (parsed.port !== undefined || values.host !== undefined) {
      targets.push({ port: parsed.port ?? 10809, host: values.host || 'localhost' });
    }
    if (targets.length === 0) {
      if (values.run) {
        // --run without a listener: a private UNIX socket, as nbdkit does.
        privateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-engine-'));
        unixSocket = path.join(privateDir, 'nbd.sock');
        targets.push({ path: unixSocket });
      } else {
        unixSocket = path.join(process.env.XDG_RUNTIME_DIR ?? os.tmpdir(), 'nbd-engine.sock');
        targets.push({ path: unixSocket }, { port: 10809, host: 'localhost' });
      }
    }
  }
  const uris: string[] = [];
  try {
    for (const t of targets) for (const r of await server.listen(t)) uris.push(...r.uris);
  } catch (err) {
    process.stderr.write(`nbd-engine: cannot listen: ${(err as Error).message}\n`);
    await server.close({ timeout: 0 });
    return 1;
  }

  let live: LiveInspector | undefined;
  if (parsed.inspectPort !== undefined) {
    try {
      // Loaded only for --inspect: a plain serve does not load the live view (ws, the viewer).
      const { startLiveInspector } = await import('../inspect/live.js');
      live = await startLiveInspector(server, { port: parsed.inspectPort, logger });
      process.stderr.write(`nbd-engine: live view at ${live.url}\n`);
    } catch (err) {
      process.stderr.write(`nbd-engine: --inspect: cannot listen: ${(err as Error).message}\n`);
      await server.close({ timeout: 0 });
      return 1;
    }
  }

  const cleanup = async () => {
    await live?.close();
    await server.close({ timeout: 5000 });
    await trace?.close();
    if (unixSocket) fs.rmSync(unixSocket, { force: true });
    if (privateDir) fs.rmSync(privateDir, { recursive: true, force: true });
  };

  if (values.run) {
    const uri = uris.find((u) => u.includes('+unix')) ?? uris[0] ?? '';
    const violations: Violation[] = [];
    if (values.strict) server.violations$.subscribe((v) => violations.push(v));
    const child = spawn('/bin/sh', ['-c', values.run], {
      stdio: 'inherit',
      env: { ...process.env, uri, nbd: uri, unixsocket: unixSocket ?? '', exportname: exp.name },
    });
    const status = await new Promise<number>((resolve) => {
      child.on('error', (err) => {
        process.stderr.write(`nbd-engine: --run: ${err.message}\n`);
        resolve(1);
      });
      child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 + (os.constants.signals[signal] ?? 0) : 1)));
    });
    await cleanup();
    if (violations.length === 0) return status;
    process.stderr.write(violationSummary(violations));
    return STRICT_EXIT_STATUS;
  }

  if (!activated) for (const u of uris) process.stdout.write(`${u}\n`);
  else logger.info?.(`serving ${uris.join(' ')}`);

  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      logger.info?.(`${signal}: shutting down`);
      resolve();
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
    if (activated) {
      // The program that activated the server stops it by signalling its child. When
      // that child is a launcher which dies of the signal instead of passing it on (a
      // plain `sh -c`), this process is orphaned and nobody would ever stop it.
      const parent = process.ppid;
      setInterval(() => {
        if (process.ppid !== parent) stop(`parent process ${parent} exited`);
      }, 1000).unref();
    }
  });
  await cleanup();
  return 0;
}
