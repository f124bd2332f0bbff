/**
 * A BLOCK_STATUS of length 0 (transmission.block-status-zero-length): every
 * extent of a reply has a length of at least 1 and, with REQ_ONE, none is
 * longer than the request, so no reply fits; the server answers EINVAL, as
 * nbdkit does. Before, it described one byte (past the end of the export at
 * offset = size). Sent by python3-libnbd with its client-side zero-size check
 * off, on the memory and file backends.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { fileBackend, memoryBackend } from '../../src/index.js';
import { py } from './pylibnbd.js';
import { serverPerTest, tmpDir } from './harness.js';

const { serve } = serverPerTest();
const SIZE = 1 << 20;

describe('BLOCK_STATUS of length 0', () => {
  it('is refused with EINVAL (with and without REQ_ONE, at 0, inside and at the end), and the connection stays in sync', async () => {
    const img = path.join(tmpDir(), 'disk.img');
    fs.writeFileSync(img, Buffer.alloc(SIZE, 9));
    const srv = await serve({
      exports: [
        { name: 'mem', backend: memoryBackend({ size: SIZE }) },
        { name: 'file', backend: await fileBackend({ path: img }) },
      ],
    });
    for (const name of ['mem', 'file']) {
      const out = await py(srv.uri(name), `
        h = connect(strict_off=nbd.STRICT_ZERO_SIZE)
        out['plain'] = [err(extents, h, 0, off) for off in (0, 4096, ${SIZE})]
        out['req_one'] = [err(extents, h, 0, off, nbd.CMD_FLAG_REQ_ONE) for off in (0, ${SIZE})]
        out['after'] = extents(h, 4096, 0)['extents']
      `);
      expect(out, name).toEqual({ plain: ['EINVAL', 'EINVAL', 'EINVAL'], req_one: ['EINVAL', 'EINVAL'], after: [[4096, name === 'mem' ? 3 : 0]] });
    }
  });
});
