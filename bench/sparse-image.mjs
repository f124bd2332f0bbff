// The sparse image the file-backend benches serve: `size` bytes, 4 KiB of 0x5a at 256 MiB, the rest a
// hole. Made afresh (removed first) at DIR/sparse.img; returns its path.
import fs from 'node:fs';
import path from 'node:path';

export function freshImage(dir, size) {
  const img = path.join(dir, 'sparse.img');
  fs.rmSync(img, { force: true });
  const fd = fs.openSync(img, 'w');
  fs.ftruncateSync(fd, size);
  fs.writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, 256 << 20);
  fs.closeSync(fd);
  return img;
}
