/**
 * warmUp(): have V8 compile the connection code before the first real client.
 *
 * Node compiles a function only when it first runs, and optimises it only
 * after it ran for a while, so the first clients of a freshly started
 * server pay for compiling the handshake and connection machines, the
 * decoder, the session, the reply encoder and the request paths (nbdcopy's
 * first run out of a sparse file took 3× nbdkit's time, the third 1.5×:
 * bench/RESULTS.md, "First client after start"). warmUp() runs that code
 * once, before a server says it is ready: a throwaway server with a small
 * in-memory export and a small file export (a sparse file of its own, so
 * the file backend's calls are compiled too), on a UNIX socket in a private
 * temporary directory, and connections to it that negotiate and send
 * requests as nbdcopy, nbdinfo and qemu do — structured replies, extended headers, base:allocation,
 * pipelined READ / WRITE / WRITE_ZEROES / TRIM / FLUSH / CACHE /
 * BLOCK_STATUS — then many that only negotiate and disconnect, as `nbdinfo --size` and each of
 * nbdcopy's connections begin (the code that runs once per connection is optimized by V8 only after
 * hundreds of connections). The client side is blind: each connection writes its whole
 * script (options, requests, NBD_CMD_DISC or NBD_OPT_ABORT) at once and
 * reads until the server closes, so that no client code is compiled for
 * nothing; the server's close events say whether every script ran. Compiled code is shared by every server of the process, so
 * the real server's clients find it compiled; the throwaway server has
 * nothing of the real one (no exports, logger, trace, inspect hook,
 * connections$ or violations$), so no real observer sees it.
 *
 * It never fails: anything that goes wrong (no temporary directory, say)
 * only leaves the code less warm, and is reported in the result.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileBackend } from '../backends/file.js';
import { memoryBackend } from '../backends/memory.js';
import { clientFlagsBytes, infoGoData, metaContextData, optionBytes, requestHeaderBytes } from '../client/encode.js';
import { CLIENT_FLAGS, CMD, CMD_FLAG, INFO, OPT } from '../protocol/constants.js';
import type { Logger } from '../transport/logger.js';
import { privateSocketDir } from '../transport/listen.js';
import { createServer } from './server.js';

/** Passes over the connection scripts unless told otherwise: see WarmUpOptions.rounds. */
export const WARM_UP_ROUNDS = 3;
/**
 * Connections of one pass that negotiate and disconnect at once (GO, then DISC), four at a time. What
 * a connection costs the server falls as V8 optimizes the code that runs once per connection (xstate's
 * actor creation and transitions above all), and that takes hundreds of connections, not tens: with
 * these 120 more in the warm-up, a fresh server's CPU per `nbdinfo --size` fell from 6.8 to 4.7 ms
 * (nbdkit: 5.2) and its first clients got faster (bench/RESULTS.md, "Stop 29"), for ~0.5 s more start-up.
 */
const GO_THEN_DISC = 40;
/** Connections of one pass: extended, structured and simple transmission, 8 options-only, two on the file export, and GO_THEN_DISC. */
export const WARM_UP_CONNECTIONS_PER_ROUND = 13 + GO_THEN_DISC;

export interface WarmUpOptions {
  /**
   * Passes over the connection scripts (default 3). One pass gets the code compiled by V8's
   * baseline tiers, but V8's optimizing compiler then picks up xstate's transition functions
   * (getAllStateNodes took 30 ms to compile on this 2-vCPU host) during the first real clients'
   * sessions: with one pass, a file export's 4th `qemu-io write -z 512M` session ran 3.2-3.4x
   * nbdkit's time against 1.5x with three (bench/RESULTS.md, "Issue 15 ... warm-up rounds").
   * xstate's transition code runs per connection more than per request, so each pass also makes
   * eight negotiation-only connections: with them getAllStateNodes and
   * resolveAndExecuteActionsWithContext are optimized during the warm-up (`node --trace-opt`),
   * not in the first clients' sessions ("Issue 15: native FUA and a wider warm-up").
   */
  readonly rounds?: number;
  /** Where the private socket directory is made (default os.tmpdir()). */
  readonly tmpDir?: string;
  /** Milliseconds one warm-up connection may take before it is dropped and the warm-up given up (default 5000). */
  readonly timeoutMs?: number;
}

export interface WarmUpResult {
  /** Milliseconds it took. */
  readonly ms: number;
  /** Connections that ran their whole script and ended as planned. */
  readonly connections: number;
  /** Requests sent (options not counted). */
  readonly requests: number;
  /** What went wrong, if anything did (the server works regardless, only less warm). */
  readonly error?: string;
}

/** The throwaway export: small, sparse, in memory. */
const SIZE = 1024 * 1024;
/** Batches of pipelined requests per connection (each batch one write). */
const BATCHES = 4;
const BASE_ALLOCATION = 'base:allocation';
/** Negotiation-only connections per pass. */
const OPTIONS_ONLY = 8;
/** Requests of the one-request-per-write script. */
const SERIAL_REQUESTS = 32;
/** The throwaway server's file export. */
const FILE_EXPORT = 'file';
const TIMEOUT_MS = 5000;
type Mode = 'extended' | 'structured' | 'simple';

/**
 * Run a throwaway server and blind clients in this process so that the
 * connection code is compiled before real clients arrive. Takes some tens
 * of milliseconds (bench/RESULTS.md, "Issue 15: the first client after start").
 */
export async function warmUp(options: WarmUpOptions = {}): Promise<WarmUpResult> {
  const t0 = performance.now();
  const rounds = options.rounds ?? WARM_UP_ROUNDS;
  let requests = 0;
  let connections = 0;
  const problems: string[] = [];
  const note = (m: string) => {
    if (problems.length < 3) problems.push(m);
  };
  // The throwaway server's own logger: what it would warn about is a warm-up failure, reported in the
  // result; but not the refusals of the requests the scripts make fail on purpose (a READ past the end).
  const logger: Logger = { warn: (m) => (m.includes(': refused: ') ? undefined : note(m)), error: note };
  let dir: string | undefined;
  let server: ReturnType<typeof createServer> | undefined;
  let file: Awaited<ReturnType<typeof fileBackend>> | undefined;
  try {
    dir = options.tmpDir !== undefined ? fs.mkdtempSync(path.join(options.tmpDir, 'nbd-engine-warm-')) : privateSocketDir('nbd-engine-warm-', 's');
    // Two exports: memory, and a file export on a small sparse file of our own, so that the file
    // backend's calls (native or not) are compiled too — the first WRITE_ZEROES with FUA on a
    // file export cost its client ~4 ms more than the next ones without this.
    file = await fileBackend({ path: path.join(dir, 'f'), createSize: SIZE });
    const exports = [
      { name: '', backend: memoryBackend({ size: SIZE, spareBlocks: 0 }) },
      { name: FILE_EXPORT, backend: file },
    ];
    server = createServer({ exports, logger });
    await serveScripts(server, path.join(dir, 's'));
  } catch (err) {
    note(String(err));
  } finally {
    // The server closes its exports' backends; without a server the file is closed here.
    if (server) await server.close({ timeout: 1000 });
    else await file?.close?.();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  }
  const ms = performance.now() - t0;
  return problems.length > 0 ? { ms, connections, requests, error: problems.join('; ') } : { ms, connections, requests };

  async function serveScripts(server: ReturnType<typeof createServer>, socket: string): Promise<void> {
    server.connections$.subscribe((e) => {
      if (e.type !== 'closed') return;
      const planned = (e.outcome === 'negotiated' && e.code === 'transmission.disc-drains') || (e.outcome === 'aborted' && e.code === 'option.abort-ack');
      if (planned) connections++;
      else note(`a warm-up connection ended ${e.outcome}: ${e.code} ${e.reason}`);
    });
    await server.listen({ path: socket });
    const t = options.timeoutMs ?? TIMEOUT_MS;
    // The same scripts every pass: made once.
    const extended = transmission('extended');
    const structured = transmission('structured');
    const simple = transmission('simple');
    const negotiationOnly = optionsOnly();
    const goThenDisc = [
      negotiateThenDisc('structured', false),
      negotiateThenDisc('structured', true),
      negotiateThenDisc('extended', false),
      negotiateThenDisc('extended', true),
    ];
    // One batch on the file export: its FUA and FLUSH requests are fdatasyncs of TMPDIR's disk.
    const onFile = transmission('extended', FILE_EXPORT, 1);
    const oneByOne = serial(FILE_EXPORT);
    for (let r = 0; r < rounds; r++) {
      // As libnbd (nbdcopy, nbdinfo) negotiates: extended headers, else structured replies;
      // as the oldest clients: simple replies; and as `nbdinfo --size` / `--list`: options only.
      // Two at once, as nbdcopy's multi-conn connections; then the file export as qemu-io / nbdcopy use it.
      const scripts = await Promise.all([run(socket, extended, t), run(socket, structured, t)]);
      scripts.push(await run(socket, simple, t));
      // Negotiation-only connections, several at once: xstate's transition code runs per connection
      // more than per request, and V8 optimizes it only after enough connections (without these,
      // its 10-16 ms compiles landed in the first real clients' sessions).
      scripts.push(...(await Promise.all(Array.from({ length: OPTIONS_ONLY }, () => run(socket, negotiationOnly, t)))));
      scripts.push(await run(socket, onFile, t), await run(socket, oneByOne, t));
      // Then the per-connection code, many times over: negotiate and leave, four at a time.
      for (let i = 0; i < GO_THEN_DISC; i += goThenDisc.length) scripts.push(...(await Promise.all(goThenDisc.map((sc) => run(socket, sc, t)))));
      requests += scripts.reduce((n, s) => n + s, 0);
    }
  }
}

/** The `warmUp` server option: warmUp(), then one debug line on the server's logger saying how it went. */
export async function warmUpLogged(option: true | WarmUpOptions, logger: Logger): Promise<void> {
  const r = await warmUp(option === true ? {} : option);
  logger.debug?.(`warm-up: ${r.connections} connections, ${r.requests} requests in ${r.ms.toFixed(0)} ms${r.error ? ` (${r.error})` : ''}`);
}

/** A connection's script: the writes to make, one after the other, and how many requests they hold. */
interface Script {
  readonly writes: Buffer[];
  readonly requests: number;
}

/** Connect, write the script, read until the server closes. Resolves with the script's request count. */
function run(socket: string, script: Script, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socket);
    // A server that never closes must not keep the real one from starting.
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`a warm-up connection took longer than ${timeoutMs} ms`));
    }, timeoutMs);
    s.on('error', reject);
    s.on('data', () => {}); // replies are not looked at: the server's close events judge the run
    s.on('close', () => {
      clearTimeout(timer);
      resolve(script.requests);
    });
    let i = 0;
    const next = (): void => {
      if (i < script.writes.length) s.write(script.writes[i++]!, () => setImmediate(next));
    };
    s.once('connect', next);
  });
}

/** Negotiation, then batches of pipelined requests as nbdcopy sends them, then NBD_CMD_DISC. */
function transmission(mode: Mode, name = '', batches = BATCHES): Script {
  const opts: Buffer[] = [clientFlagsBytes(CLIENT_FLAGS.NBD_FLAG_C_FIXED_NEWSTYLE | CLIENT_FLAGS.NBD_FLAG_C_NO_ZEROES)];
  if (mode === 'extended') opts.push(optionBytes(OPT.NBD_OPT_EXTENDED_HEADERS));
  if (mode === 'structured') opts.push(optionBytes(OPT.NBD_OPT_STRUCTURED_REPLY));
  if (mode !== 'simple') opts.push(optionBytes(OPT.NBD_OPT_SET_META_CONTEXT, metaContextData(name, [BASE_ALLOCATION])));
  opts.push(optionBytes(OPT.NBD_OPT_GO, infoGoData(name, [INFO.NBD_INFO_NAME, INFO.NBD_INFO_DESCRIPTION, INFO.NBD_INFO_BLOCK_SIZE])));
  const extended = mode === 'extended';
  let cookie = 1n;
  let requests = 0;
  const req = (type: number, offset: number, length: number, payload?: Buffer, flags = 0): Buffer[] => {
    requests++;
    const h = requestHeaderBytes({ type, flags, cookie: cookie++, offset: BigInt(offset), length: BigInt(length), extended });
    return payload ? [h, payload] : [h];
  };
  // Small payloads: what is being warmed is code, not memory (big buffers would only cost GC time).
  const data = Buffer.alloc(4096, 0x5a);
  const writes = [Buffer.concat(opts)];
  for (let batch = 0; batch < batches; batch++) {
    const at = batch * 64 * 1024;
    // nbdcopy's pattern: map the export, read what holds data (and holes), write, zero, flush.
    writes.push(
      Buffer.concat([
        ...(mode !== 'simple' ? [...req(CMD.NBD_CMD_BLOCK_STATUS, 0, SIZE), ...req(CMD.NBD_CMD_BLOCK_STATUS, at, 64 * 1024)] : []),
        ...req(CMD.NBD_CMD_WRITE, at, data.length, data),
        ...req(CMD.NBD_CMD_WRITE, at + 8192, 512, data.subarray(0, 512)),
        ...req(CMD.NBD_CMD_READ, at, 16 * 1024),
        ...req(CMD.NBD_CMD_READ, at + 512 * 1024, 8192),
        ...req(CMD.NBD_CMD_READ, at + 4096, 512),
        ...req(CMD.NBD_CMD_WRITE_ZEROES, at + 16 * 1024, 16 * 1024),
        ...req(CMD.NBD_CMD_TRIM, at + 32 * 1024, 8192),
        // With flags, as qemu sends them (`write -z` in writethrough mode: FUA | NO_HOLE).
        ...req(CMD.NBD_CMD_WRITE, at + 40 * 1024, data.length, data, CMD_FLAG.NBD_CMD_FLAG_FUA),
        ...req(CMD.NBD_CMD_WRITE_ZEROES, at + 48 * 1024, 8192, undefined, CMD_FLAG.NBD_CMD_FLAG_FUA | CMD_FLAG.NBD_CMD_FLAG_NO_HOLE),
        ...req(CMD.NBD_CMD_TRIM, at + 56 * 1024, 4096, undefined, CMD_FLAG.NBD_CMD_FLAG_FUA),
        ...req(CMD.NBD_CMD_CACHE, at, 4096),
        ...req(CMD.NBD_CMD_FLUSH, 0, 0),
        // An error reply too: a READ past the end.
        ...req(CMD.NBD_CMD_READ, SIZE, 4096),
      ]),
    );
  }
  writes.push(Buffer.concat(req(CMD.NBD_CMD_DISC, 0, 0)));
  return { writes, requests };
}

/**
 * One request per write, as qemu-io and `nbdsh` send them (each its own frame, its own
 * machine event), the writes of qemu's `write -z` (WRITE_ZEROES with FUA | NO_HOLE) among them.
 */
function serial(name: string): Script {
  const opts = [
    clientFlagsBytes(CLIENT_FLAGS.NBD_FLAG_C_FIXED_NEWSTYLE | CLIENT_FLAGS.NBD_FLAG_C_NO_ZEROES),
    optionBytes(OPT.NBD_OPT_STRUCTURED_REPLY),
    optionBytes(OPT.NBD_OPT_SET_META_CONTEXT, metaContextData(name, [BASE_ALLOCATION])),
    optionBytes(OPT.NBD_OPT_GO, infoGoData(name, [INFO.NBD_INFO_BLOCK_SIZE])),
  ];
  const writes: Buffer[] = [Buffer.concat(opts)];
  let cookie = 1n;
  const req = (type: number, offset: number, length: number, flags = 0): Buffer =>
    requestHeaderBytes({ type, flags, cookie: cookie++, offset: BigInt(offset), length: BigInt(length), extended: false });
  for (let i = 0; i < SERIAL_REQUESTS; i++) {
    const at = (i * 64 * 1024) % SIZE;
    // FUA on one in eight: the code path is the same, and each FUA is an fdatasync of TMPDIR's disk.
    const zero = req(CMD.NBD_CMD_WRITE_ZEROES, at, 64 * 1024, CMD_FLAG.NBD_CMD_FLAG_NO_HOLE | (i % 8 === 0 ? CMD_FLAG.NBD_CMD_FLAG_FUA : 0));
    writes.push(i % 4 === 3 ? req(CMD.NBD_CMD_BLOCK_STATUS, at, 64 * 1024) : i % 4 === 2 ? req(CMD.NBD_CMD_READ, at, 4096) : zero);
  }
  writes.push(req(CMD.NBD_CMD_FLUSH, 0, 0), req(CMD.NBD_CMD_DISC, 0, 0));
  return { writes, requests: SERIAL_REQUESTS + 2 };
}

/**
 * Negotiate and leave at once, as `nbdinfo --size`, `qemu-img info` and each of nbdcopy's connections
 * before its requests do: client flags, STRUCTURED_REPLY or EXTENDED_HEADERS, base:allocation or not,
 * GO, and NBD_CMD_DISC in a write of its own once the server had GO (as a client sends it after the reply).
 */
function negotiateThenDisc(mode: 'structured' | 'extended', meta: boolean): Script {
  const opts: Buffer[] = [clientFlagsBytes(CLIENT_FLAGS.NBD_FLAG_C_FIXED_NEWSTYLE | CLIENT_FLAGS.NBD_FLAG_C_NO_ZEROES)];
  opts.push(optionBytes(mode === 'extended' ? OPT.NBD_OPT_EXTENDED_HEADERS : OPT.NBD_OPT_STRUCTURED_REPLY));
  if (meta) opts.push(optionBytes(OPT.NBD_OPT_SET_META_CONTEXT, metaContextData('', [BASE_ALLOCATION])));
  opts.push(optionBytes(OPT.NBD_OPT_GO, infoGoData('', [INFO.NBD_INFO_BLOCK_SIZE])));
  const disc = requestHeaderBytes({ type: CMD.NBD_CMD_DISC, flags: 0, cookie: 1n, offset: 0n, length: 0n, extended: mode === 'extended' });
  return { writes: [Buffer.concat(opts), disc], requests: 1 };
}

/** A connection that only negotiates, as `nbdinfo --size` / `--list`: LIST, LIST_META_CONTEXT, INFO, ABORT. */
function optionsOnly(): Script {
  const b = Buffer.concat([
    clientFlagsBytes(CLIENT_FLAGS.NBD_FLAG_C_FIXED_NEWSTYLE | CLIENT_FLAGS.NBD_FLAG_C_NO_ZEROES),
    optionBytes(OPT.NBD_OPT_STRUCTURED_REPLY),
    optionBytes(OPT.NBD_OPT_LIST),
    optionBytes(OPT.NBD_OPT_LIST_META_CONTEXT, metaContextData('', [BASE_ALLOCATION])),
    optionBytes(OPT.NBD_OPT_INFO, infoGoData('', [INFO.NBD_INFO_NAME, INFO.NBD_INFO_BLOCK_SIZE])),
    optionBytes(OPT.NBD_OPT_ABORT),
  ]);
  return { writes: [b], requests: 0 };
}
