/**
 * Serve a file (or block device) with the ready-made file backend:
 * FLUSH and FUA by fdatasync, optionally read-only.
 *
 *   npm run example:file -- disk.img [--read-only]
 *   qemu-img info nbd+unix:///disk?socket=/tmp/nbd-engine-file.sock
 */
import { createServer, fileBackend, type NbdServer } from 'nbd-engine';

export async function start(path: string, options: { readOnly?: boolean; name?: string } = {}): Promise<NbdServer> {
  const backend = await fileBackend({ path, readOnly: options.readOnly });
  return createServer({
    exports: [{ name: options.name ?? 'disk', description: `file ${path}`, backend, readOnly: options.readOnly }],
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [file, ...flags] = process.argv.slice(2);
  if (!file) {
    console.error('usage: file-server FILE [--read-only]');
    process.exit(2);
  }
  const server = await start(file, { readOnly: flags.includes('--read-only') });
  for (const r of await server.listen({ path: process.env.NBD_SOCKET ?? '/tmp/nbd-engine-file.sock' })) for (const uri of r.uris) console.log(uri);
  process.once('SIGINT', () => void server.close().then(() => process.exit(0)));
  process.once('SIGTERM', () => void server.close().then(() => process.exit(0)));
}
