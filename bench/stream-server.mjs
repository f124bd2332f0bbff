#!/usr/bin/env node
// nbd-engine served the way README's "3. The request stream" snippet does it:
// an export without a backend, every request taken from `server.requests$`
// and answered in rxjs `mergeMap(async (req) => …, 64)` over one flat
// in-memory Buffer. `bench/run.mjs` measures it beside the memory backend
// (`serve --memory`), whose requests never go through rxjs.
//
//   node bench/stream-server.mjs SOCKET_PATH [SIZE_BYTES] [--serve mergeMap|serveRequests|serveRequests-sync]
//
// --serve serveRequests answers with the same async handler through the
// library's serveRequests operator instead of mergeMap; serveRequests-sync
// with the same switch as a plain (non-async) function, which serveRequests
// calls without a promise (bench/run.mjs's extra rows).
// SIZE_BYTES defaults to 1 GiB (the flat Buffer is allocated whole, as in the snippet).
import { mergeMap } from 'rxjs';
import * as lib from '../dist/index.js';

const argv = process.argv.slice(2);
const serveIdx = argv.indexOf('--serve');
const how = serveIdx >= 0 ? argv[serveIdx + 1] : 'mergeMap';
const [socketPath, sizeArg] = serveIdx >= 0 ? argv.filter((_, i) => i !== serveIdx && i !== serveIdx + 1) : argv;
if (!socketPath || !['mergeMap', 'serveRequests', 'serveRequests-sync'].includes(how)) {
  process.stderr.write('usage: node bench/stream-server.mjs SOCKET_PATH [SIZE_BYTES] [--serve mergeMap|serveRequests|serveRequests-sync]\n');
  process.exit(2);
}
const CONCURRENCY = 64;

const bytes = Buffer.alloc(Number(sizeArg ?? 1024 ** 3));
const server = lib.createServer({ exports: [{ name: '', size: bytes.length, flags: { flush: true } }] });

// The snippet's handler, unchanged but for the concurrency.
const handle = async (req) => {
  switch (req.type) {
    case 'read':  return req.reply(bytes.subarray(req.offset, req.offset + req.length));
    case 'write': req.data.copy(bytes, req.offset); return req.reply();
    case 'flush': return req.reply();
    default:      return req.fail('EINVAL');
  }
};
// The same, not async: serveRequests then makes no promise per request.
const handleSync = (req) => {
  switch (req.type) {
    case 'read':  return req.reply(bytes.subarray(req.offset, req.offset + req.length));
    case 'write': req.data.copy(bytes, req.offset); return req.reply();
    case 'flush': return req.reply();
    default:      return req.fail('EINVAL');
  }
};

if (how === 'mergeMap') {
  server.requests$.pipe(mergeMap(handle, CONCURRENCY)).subscribe();
} else {
  if (typeof lib.serveRequests !== 'function') {
    process.stderr.write('stream-server: this build of nbd-engine has no serveRequests operator\n');
    process.exit(2);
  }
  server.requests$.pipe(lib.serveRequests(how === 'serveRequests' ? handle : handleSync, { concurrency: CONCURRENCY })).subscribe();
}

const [bound] = await server.listen({ path: socketPath });
process.stdout.write(`nbd-engine (requests$ + ${how}) listening: ${bound.uris.join(' ')}\n`);
const stop = () => server.close({ timeout: 1000 }).then(() => process.exit(0));
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
