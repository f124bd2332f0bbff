/**
 * A file or block device through a FileHandle. FLUSH and FUA by fdatasync;
 * WRITE_ZEROES emulated by writing zeroes (Node has no fallocate); read-only
 * when asked. Opened once, shared by every connection (multi-conn safe:
 * one page cache, fdatasync is global).
 */
import fs from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Backend } from '../api/backend.js';

export interface FileBackendOptions {
  readonly path: string;
  readonly readOnly?: boolean;
  /** Create the file with this size if it does not exist. */
  readonly createSize?: number;
}

export interface FileBackend extends Backend {
  readonly size: number;
  readonly path: string;
}

/** Size of a regular file or a block device (stat reports 0 for devices). */
function deviceSize(file: string, st: fs.Stats): number {
  if (!st.isBlockDevice()) return st.size;
  const real = fs.realpathSync(file);
  const sys = `/sys/class/block/${path.basename(real)}/size`;
  return Number(fs.readFileSync(sys, 'utf8').trim()) * 512;
}

export async function fileBackend(options: FileBackendOptions | string): Promise<FileBackend> {
  const opts = typeof options === 'string' ? { path: options } : options;
  if (opts.createSize !== undefined && !fs.existsSync(opts.path)) {
    const fh = await open(opts.path, 'w');
    await fh.truncate(opts.createSize);
    await fh.close();
  }
  const fh: FileHandle = await open(opts.path, opts.readOnly ? 'r' : 'r+');
  const st = await fh.stat();
  const size = deviceSize(opts.path, st);

  const read = async (offset: number, length: number): Promise<Buffer> => {
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) {
        // Past EOF of a file that shrank under us: zeroes, like a sparse tail.
        buf.fill(0, done);
        break;
      }
      done += bytesRead;
    }
    return buf;
  };

  const backend: FileBackend = {
    size,
    path: opts.path,
    read,
    flush: () => fh.datasync(),
    close: () => fh.close(),
    multiConn: true,
    readOnly: opts.readOnly,
  };
  if (!opts.readOnly) {
    (backend as { write?: Backend['write'] }).write = async (offset, data) => {
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await fh.write(data, done, data.length - done, offset + done);
        done += bytesWritten;
      }
    };
  }
  return backend;
}
