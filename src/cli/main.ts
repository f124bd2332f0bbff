/**
 * The `nbd-engine` command (docs/design.md, "The command line").
 *
 *   nbd-engine serve [options] [--filter=NAME ...] [BACKEND [[KEY=]VALUE ...]]
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
 * after a summary on stderr). nbdkit's option names and its `BACKEND
 * key=value` / `--filter=NAME` syntax work too (docs/cli.md); `-s` serves one
 * connection on stdin/stdout. A malformed option is one line on stderr
 * naming it, and exit status 2.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createServer, type ExportConfig, type NbdServer } from '../api/server.js';
import { prepareExports } from '../api/export-entry.js';
import { consoleLogger } from '../transport/logger.js';
import { privateSocketDir, socketActivation, type ListenTarget } from '../transport/listen.js';
import { USAGE } from './usage.js';
import { SUBCOMMANDS } from './commands.js';
import { parseServeArgs, UsageError, type ServeArgs } from './serve-args.js';
import { backendOptionsToPairs } from './backend-options.js';
import { createPlugins, pluginHelp, resolvePlugins, type PluginTables, type ResolvedPlugins } from './nbdkit-args.js';
import { packageVersion, runEnvironment, signalTree, stdioStream, watchParent, writePidfile } from './serve-process.js';
import { traceFile } from '../inspect/trace-file.js';
import type { LiveInspector } from '../inspect/live.js';
import { STRICT_EXIT_STATUS, violationSummary } from './strict.js';
import type { Violation } from '../api/violations.js';

export { parseServeArgs, UsageError, type ServeArgs } from './serve-args.js';
export { recordStartParent } from './serve-process.js';

/** Whether `file` is still the file `was` (device and inode). */
function sameFile(file: string, was: { dev: number; ino: number }): boolean {
  try {
    const st = fs.lstatSync(file);
    return st.dev === was.dev && st.ino === was.ino;
  } catch {
    return false;
  }
}

/** Usage plus every backend and filter with its parameters. */
async function helpText(tables?: PluginTables): Promise<string> {
  return USAGE + (await pluginHelp(tables));
}

export async function main(argv: string[], tables?: PluginTables): Promise<number> {
  const [command, ...rest] = argv;
  if (command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(await helpText(tables));
    return 0;
  }
  if (command === '-V' || command === '--version') {
    process.stdout.write(`nbd-engine ${packageVersion()}\n`);
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
  let plugins: ResolvedPlugins;
  try {
    parsed = parseServeArgs(await backendOptionsToPairs(rest, tables));
    if (parsed.help) {
      process.stdout.write(await helpText(tables));
      return 0;
    }
    if (parsed.version) {
      process.stdout.write(`nbd-engine ${packageVersion()}\n`);
      return 0;
    }
    const { values: v } = parsed;
    plugins = await resolvePlugins({ positionals: parsed.positionals, filters: parsed.filters, file: v.file, memory: v.memory !== undefined, memorySize: parsed.memorySize }, tables);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`nbd-engine: ${err.message}\n`);
    return 2;
  }
  const { values, limits, tlsMode } = parsed;
  const logger = consoleLogger(!!values.verbose);
  const readOnly = !!values['read-only'];
  let exp: ExportConfig;
  try {
    const { backend, filters } = await createPlugins(plugins, { logger, readOnly });
    exp = { name: values.export ?? '', description: values.description, backend, readOnly, filters: filters.length > 0 ? filters : undefined };
    // Filters that read from the backend before it is served (partition's table) do so now.
    await prepareExports([exp], logger);
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
  const activation = socketActivation(process.env);
  if (values.single && (activation.fds.length > 0 || activation.lost)) {
    // As nbdkit: the sockets passed and stdin/stdout cannot both be the one connection.
    process.stderr.write('nbd-engine: -s (--single) serves stdin/stdout: it cannot be used under socket activation (LISTEN_FDS is set)\n');
    return 2;
  }
  let server: NbdServer;
  try {
    server = createServer({
      exports: [exp],
      logger,
      trace,
      strict: !!values.strict,
      // Compile the connection code before listening, so the first client does not wait for it
      // (src/api/warm-up.ts). Not for -s or socket activation: their one client is already waiting.
      warmUp: !values['no-warm-up'] && !values.single && activation.fds.length === 0,
      limits: Object.keys(limits).length > 0 ? limits : undefined,
      tls:
        tlsMode === 'off'
          ? undefined
          : {
              mode: tlsMode,
              cert: parsed.tlsFiles?.cert ?? values['tls-cert'],
              key: parsed.tlsFiles?.key ?? values['tls-key'],
              ca: parsed.tlsFiles?.ca ?? values['tls-ca'],
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
  for (const v of ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES']) delete process.env[v];
  const single = !!values.single;
  if (activation.lost && !single) {
    // The activating program waits on sockets that never arrived: listening elsewhere would leave it hanging.
    process.stderr.write(`nbd-engine: cannot listen: socket activation: ${activation.ignored}\n`);
    await server.close({ timeout: 0 });
    return 1;
  }
  if (activation.ignored && !single) logger.warn(`socket activation ignored: ${activation.ignored}`);
  const activated = !single && activation.fds.length > 0;
  const targets: ListenTarget[] = [];
  let privateDir: string | undefined;
  let unixSocket: string | undefined;
  const privateSocket = () => {
    // nbdkit's `-U -` (and --run without a listener): a socket only this user can reach, removed at exit.
    privateDir = privateSocketDir('nbd-engine-', 'nbd.sock');
    unixSocket = path.join(privateDir, 'nbd.sock');
    targets.push({ path: unixSocket });
  };
  if (activated) {
    targets.push(...activation.fds.map((fd) => ({ fd })));
  } else if (!single) {
    if (values.socket === '-') privateSocket();
    else if (values.socket !== undefined) {
      unixSocket = path.resolve(values.socket);
      targets.push({ path: unixSocket });
    }
    if (parsed.port !== undefined || values.host !== undefined) {
      targets.push({ port: parsed.port ?? 10809, host: values.host || 'localhost' });
    }
    if (targets.length === 0) {
      if (values.run) privateSocket();
      else {
        unixSocket = path.join(process.env.XDG_RUNTIME_DIR ?? os.tmpdir(), 'nbd-engine.sock');
        targets.push({ path: unixSocket }, { port: 10809, host: 'localhost' });
      }
    }
  }
  const uris: string[] = [];
  /** The socket file this server made (device and inode): removed at exit only if it is still that one. */
  let ownSocket: { dev: number; ino: number } | undefined;
  try {
    for (const t of targets) for (const r of await server.listen(t)) uris.push(...r.uris);
    if (unixSocket) ownSocket = fs.lstatSync(unixSocket);
  } catch (err) {
    process.stderr.write(`nbd-engine: cannot listen: ${(err as Error).message}\n`);
    await server.close({ timeout: 0 });
    if (privateDir) fs.rmSync(privateDir, { recursive: true, force: true });
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

  const removeSockets = () => {
    // Not a socket another server made at this path while this one was draining (a restart).
    if (unixSocket && ownSocket && sameFile(unixSocket, ownSocket)) fs.rmSync(unixSocket, { force: true });
    if (privateDir) fs.rmSync(privateDir, { recursive: true, force: true });
  };
  const cleanup = async () => {
    await live?.close();
    await server.close({ timeout: parsed.shutdownTimeoutMs });
    await trace?.close();
    removeSockets();
  };
  /** The --run command, once started: a second signal kills what is left of it. */
  let runPid: number | undefined;

  // What ends the server: a signal, or (--exit-with-parent) the parent's exit.
  let stopNow: (why: string) => void = () => {};
  const stopped = new Promise<string>((resolve) => (stopNow = resolve));
  // As nbdkit: SIGHUP (a closed terminal) and SIGQUIT end the server as cleanly as SIGINT and SIGTERM
  // (sockets removed, exports flushed, the --run command stopped), not by Node's default exit.
  // Any second one of the four (a double Ctrl-C, `systemctl stop` then `kill`) stops waiting for
  // the clients: one line, the sockets removed, the --run command killed, exit at once.
  let stopping = false;
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'] as const) {
    process.on(signal, () => {
      if (!stopping) {
        stopping = true;
        stopNow(signal);
        return;
      }
      logger.warn(`${signal} during shutdown: exiting now (open connections dropped, exports not flushed${runPid !== undefined ? ', the --run command killed' : ''})`);
      if (runPid !== undefined) signalTree(runPid, 'SIGKILL');
      removeSockets();
      process.exit(128 + os.constants.signals[signal]);
    });
  }
  if (values['exit-with-parent'] || activated) {
    // With activation too: the program that activated the server stops it by signalling its
    // child; when that child is a launcher that dies of the signal instead of passing it on
    // (a plain `sh -c`), this process is orphaned and nobody would ever stop it.
    watchParent((parent) => {
      stopping = true;
      stopNow(`parent process ${parent} exited`);
    });
  }

  if (values.pidfile !== undefined) {
    try {
      writePidfile(values.pidfile);
    } catch (err) {
      process.stderr.write(`nbd-engine: --pidfile: ${(err as Error).message}\n`);
      await cleanup();
      return 1;
    }
  }

  if (single) {
    // stdout carries the protocol from here on: every message goes to stderr.
    const done = new Promise<string>((resolve) => {
      server.connections$.subscribe((e) => {
        if (e.type === 'closed') resolve('connection closed');
      });
    });
    server.accept(stdioStream());
    const why = await Promise.race([done, stopped]);
    logger.info?.(`${why}: shutting down`);
    await cleanup();
    return 0;
  }

  if (values['print-uri'] || (!activated && !values.run)) {
    // The URIs are information: a stdout that cannot take them (a full disk, a reader that exited)
    // is one line on stderr, and the server, already listening, goes on serving.
    process.stdout.on('error', () => {});
    process.stdout.write(uris.map((u) => `${u}\n`).join(''), (err) => {
      if (err) logger.warn(`cannot print the URIs on stdout: ${err.message}; serving on ${uris.join(' ')}`);
    });
  } else if (activated) {
    const fds = `fd ${activation.fds.join(', ')}`;
    logger.info?.(`serving on ${activation.fds.length === 1 ? 'the socket' : `${activation.fds.length} sockets`} passed by socket activation (${fds})${uris.length ? `: ${uris.join(' ')}` : ''}`);
  }

  if (values.run) {
    const uri = uris.find((u) => u.includes('+unix')) ?? uris[0] ?? '';
    const violations: Violation[] = [];
    if (values.strict) server.violations$.subscribe((v) => violations.push(v));
    // Under socket activation, the inherited UNIX socket's path when known (not removed at exit: not this server's).
    const runSocket = unixSocket ?? server.addresses.find((a) => a.kind === 'fd' && a.path)?.path;
    const env = runEnvironment(process.env, { uri, addresses: server.addresses, unixSocket: runSocket, exportName: exp.name, tlsMode });
    const child = spawn('/bin/sh', ['-c', values.run], { stdio: 'inherit', env });
    runPid = child.pid;
    // The command is the one that ends the run; a signal or the parent's exit is passed on to it.
    void stopped.then((why) => {
      logger.info?.(`${why}: stopping the --run command`);
      if (child.pid !== undefined) signalTree(child.pid, 'SIGTERM');
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

  // Not inside logger.info?.(…): without --verbose, optional chaining would skip the await.
  const why = await stopped;
  logger.info?.(`${why}: shutting down`);
  await cleanup();
  return 0;
}
