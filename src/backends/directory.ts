/**
 * A directory of disk images as exports made per connection, as nbdkit's
 * file plugin does with `dir=DIR`: NBD_OPT_LIST lists the regular files
 * (and block devices) directly in the directory, and a name is opened as
 * that file when a client asks for it (closed again when it stops using it:
 * src/api/dynamic-exports.ts). Names are file names: nothing outside the
 * directory can be named (no `/`, no `.` or `..`, no hidden files), and a
 * symbolic link is followed only to a regular file or block device.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { ExportHooks } from '../api/dynamic-exports.js';
import type { Filter } from '../api/filter.js';
import { fileBackend } from './file.js';

export interface DirectoryExportsOptions {
  /** The directory whose files are served. */
  readonly dir: string;
  /** Serve every file read-only (default false). */
  readonly readOnly?: boolean;
  /** Filters stacked over each opened file (filters[0] closest to the client). */
  readonly filters?: readonly Filter[];
}

/** A name that stays inside the directory: one path component, not hidden. */
function fileName(name: string): boolean {
  return name !== '' && !name.includes('/') && !name.startsWith('.');
}

/**
 * `listExports` and `openExport` hooks serving `dir`'s files (pass them to
 * createServer, with `exports: []`). The default export (the empty name)
 * is not served unless `defaultExport` names a file.
 */
export function directoryExports(options: DirectoryExportsOptions): Required<Pick<ExportHooks, 'listExports' | 'openExport'>> {
  const dir = path.resolve(options.dir);
  const servable = async (name: string): Promise<boolean> => {
    if (!fileName(name)) return false;
    try {
      const st = await fs.stat(path.join(dir, name));
      return st.isFile() || st.isBlockDevice();
    } catch {
      return false;
    }
  };
  return {
    listExports: async () => {
      const names = (await fs.readdir(dir)).sort();
      const out = [];
      for (const name of names) if (Buffer.byteLength(name) <= 4096 && (await servable(name))) out.push({ name });
      return out;
    },
    openExport: async (name) => {
      if (!(await servable(name))) return null;
      const backend = await fileBackend({ path: path.join(dir, name), readOnly: options.readOnly ?? false });
      return { name, backend, readOnly: options.readOnly, filters: options.filters };
    },
  };
}
