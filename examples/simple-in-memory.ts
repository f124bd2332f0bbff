/**
 * The seed library's example, with the request-stream API: a 100 MB
 * in-memory export named `test`. Every validated request arrives on
 * `server.requests$` and is answered once, with `reply()` or `fail()`.
 *
 *   npm run example:memory            # serves on /tmp/nbd-engine-example.sock and localhost:10810
 *   nbdinfo nbd://localhost:10810/test
 */
import { mergeMap } from 'rxjs';
import { createServer, type NbdServer } from 'nbd-engine';

export const SIZE = 100 * 1000 * 1000;

export function start(): NbdServer {
  const bytes = Buffer.alloc(SIZE);
  const server = createServer({
    exports: [{ name: 'test', description: '100 MB in memory', size: SIZE, flags: { flush: true, trim: true, zero: true, fua: true } }],
  });
  server.requests$
    .pipe(
      // The request carries what the seed's callback received — type, flags,
      // handle (cookie), offset, length — plus its export and connection.
      mergeMap(async (req) => {
        switch (req.type) {
          case 'read':
            return req.reply(bytes.subarray(req.offset, req.offset + req.length));
          case 'write':
            req.data!.copy(bytes, req.offset);
            return req.reply();
          case 'trim':
          case 'writeZeroes':
            bytes.fill(0, req.offset, req.offset + req.length);
            return req.reply();
          case 'flush':
          case 'cache':
            return req.reply();
          default:
            return req.fail('EINVAL');
        }
      }, 32),
    )
    .subscribe({ error: (err) => console.error('request stream failed:', err) });
  return server;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const server = start();
  const results = [
    ...(await server.listen({ path: process.env.NBD_SOCKET ?? '/tmp/nbd-engine-example.sock' })),
    ...(await server.listen({ port: Number(process.env.NBD_PORT ?? 10810), host: 'localhost' })),
  ];
  for (const r of results) for (const uri of r.uris) console.log(uri);
  process.once('SIGINT', () => void server.close().then(() => process.exit(0)));
  process.once('SIGTERM', () => void server.close().then(() => process.exit(0)));
}
