/**
 * The `nbd-engine` command (design.md §5).
 *
 *   nbd-engine serve [--memory SIZE | --file PATH] [--socket PATH] [--port N] [--host H]
 *                    [--export NAME] [--description TEXT] [--read-only] [--run CMD]
 *                    [--tls off|on|require --tls-cert F --tls-key F --tls-ca F --tls-verify-peer --tls-psk F]
 *                    [--verbose]
 *
 * With no options: a 1 GiB sparse in-memory export on a UNIX socket and on
 * TCP localhost:10809. Under systemd socket activation (LISTEN_FDS) it
 * serves the inherited sockets only, so `nbdinfo -- [ nbd-engine serve ]`
 * works. `--run CMD` serves, runs CMD with $uri / $unixsocket set, and
 * exits with its status.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createServer, type ExportConfig } from '../api/server.js';
import { memoryBackend } from '../backends/memory.js';
import { fileBackend } from '../backends/file.js';
import { consoleLogger } from '../transport/logger.js';
import { activationFds, type ListenTarget } from '../transport/listen.js';
import { parseSize } from './size.js';

const USAGE = `usage: nbd-engine serve [options]

Exports (one of; default --memory 1G):
  --memory SIZE          sparse in-memory export (sizes: 1048576, 512M, 1G, 16T)
  --file PATH            a file or block device
  --export NAME          export name (default: "" — the default export)
  --description TEXT     export description (NBD_INFO_DESCRIPTION, LIST)
  -r, --read-only        refuse writes

Listening (default: UNIX socket and TCP localhost:10809):
  --socket PATH          UNIX socket
  --port N               TCP port
  --host HOST            TCP host (default localhost; use :: for all)
  (systemd socket activation via LISTEN_FDS/LISTEN_PID is detected automatically)

TLS:
  --tls off|on|require   NOTLS, SELECTIVETLS or FORCEDTLS (default off)
  --tls-cert FILE        PEM certificate        --tls-key FILE   PEM private key
  --tls-ca FILE          CA for client certs     --tls-verify-peer  require client certs
  --tls-psk FILE         psktool key file (username:hexkey lines)

Other:
  --run CMD              run CMD with $uri, $unixsocket set; exit with its status
  --max-in-flight N      requests in flight per connection (default 64)
  -v, --verbose          log connections and protocol decisions
  -h, --help
`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  if (command !== undefined && command !== 'serve') {
    process.stderr.write(`nbd-engine: unknown command "${command}"\n${USAGE}`);
    return 2;
  }
  let values;
  try {
    ({ values } = parseArgs({
      args: rest,
      options: {
        memory: { type: 'string' },
        file: { type: 'string' },
        export: { type: 'string' },
        description: { type: 'string' },
        'read-only': { type: 'boolean', short: 'r' },
        socket: { type: 'string' },
        port: { type: 'string' },
        host: { type: 'string' },
        run: { type: 'string' },
        tls: { type: 'string' },
        'tls-cert': { type: 'string' },
        'tls-key': { type: 'string' },
        'tls-ca': { type: 'string' },
        'tls-verify-peer': { type: 'boolean' },
        'tls-psk': { type: 'string' },
        'max-in-flight': { type: 'string' },
        verbose: { type: 'boolean', short: 'v' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: false,
    }));
  } catch (err) {
    process.stderr.write(`nbd-engine: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const logger = consoleLogger(!!values.verbose);
  if (values.memory && values.file) {
    process.stderr.write('nbd-engine: --memory and --file are exclusive\n');
    return 2;
  }
  const readOnly = !!values['read-only'];
  let memorySize = 0;
  if (!values.file) {
    // A malformed size is a usage error (exit 2), like any other bad argument.
    try {
      memorySize = parseSize(values.memory ?? '1G');
    } catch (err) {
      process.stderr.write(`nbd-engine: --memory: ${(err as Error).message}\n`);
      return 2;
    }
  }
  let exp: ExportConfig;
  try {
    const name = values.export ?? '';
    if (values.file) {
      const backend = await fileBackend({ path: values.file, readOnly });
      exp = { name, description: values.description, backend, readOnly };
    } else {
      exp = { name, description: values.description, backend: memoryBackend({ size: memorySize }), readOnly };
    }
  } catch (err) {
    process.stderr.write(`nbd-engine: ${(err as Error).message}\n`);
    return 1;
  }
  const tlsMode = (values.tls ?? 'off') as 'off' | 'on' | 'require';
  if (!['off', 'on', 'require'].includes(tlsMode)) {
    process.stderr.write(`nbd-engine: --tls must be off, on or require\n`);
    return 2;
  }
  const tlsFlags = ['tls-cert', 'tls-key', 'tls-ca', 'tls-verify-peer', 'tls-psk'] as const;
  const given = tlsFlags.filter((f) => values[f] !== undefined && values[f] !== false);
  if (tlsMode === 'off' && given.length > 0) {
    // Serving plaintext when credentials were given is never what was meant.
    process.stderr.write(`nbd-engine: ${given.map((f) => `--${f}`).join(', ')} given but TLS is off: add --tls=on or --tls=require\n`);
    return 2;
  }
  let server;
  try {
    server = createServer({
      exports: [exp],
      logger,
      limits: values['max-in-flight'] ? { maxInFlight: Number(values['max-in-flight']) } : undefined,
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

  // Where to listen.
  const targets: Array<ListenTarget | 'activation'> = [];
  let privateDir: string | undefined;
  let unixSocket: string | undefined;
  if (activationFds().length > 0) {
    targets.push('activation');
  } else {
    if (values.socket) {
      unixSocket = path.resolve(values.socket);
      targets.push({ path: unixSocket });
    }
    if (values.port || values.host) {
      const port = Number(values.port ?? '10809');
      if (!Number.isInteger(port) || port < 0 || port > 65535) {
        process.stderr.write(`nbd-engine: bad --port "${values.port}"\n`);
        return 2;
      }
      targets.push({ port, host: values.host ?? 'localhost' });
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

  const cleanup = async () => {
    await server.close({ timeout: 5000 });
    if (unixSocket) fs.rmSync(unixSocket, { force: true });
    if (privateDir) fs.rmSync(privateDir, { recursive: true, force: true });
  };

  if (values.run) {
    const uri = uris.find((u) => u.includes('+unix')) ?? uris[0] ?? '';
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
    return status;
  }

  if (!targets.includes('activation')) for (const u of uris) process.stdout.write(`${u}\n`);
  else logger.info?.(`serving ${uris.join(' ')}`);

  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      logger.info?.(`${signal}: shutting down`);
      resolve();
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
  await cleanup();
  return 0;
}
