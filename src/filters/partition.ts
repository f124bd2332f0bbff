/**
 * The partition filter (nbdkit's `--filter=partition partition=N`): serve
 * one partition of an MBR or GPT disk as the whole export.
 *
 * The export's size is the partition's, and the server fixes every
 * export's size when it is created, synchronously; reading the table is
 * asynchronous. So the table is read by the filter's `prepare` step (see
 * "Preparation" in src/api/filter.ts), which `prepareExports(exports)`
 * awaits before `createServer`; `wrap` then only adds the partition's
 * offset. Every request stays inside the partition by construction: the
 * server refuses requests past the export's size before they reach here.
 */
import type { Backend } from '../api/backend.js';
import type { Filter, FilterContext } from '../api/filter.js';
import { windowOf } from './offset.js';
import { NbdError } from '../api/errors.js';
import { ParamError } from '../plugins/params.js';
import { readBuffer } from '../plugins/common.js';
import type { FilterPlugin } from '../plugins/registry.js';
import { findPartition, GPT_ARRAY_LIMIT, type PartitionLocation, type ReadAt } from './partition-table.js';

export interface PartitionFilterOptions {
  /** The partition to serve, from 1 (MBR: 1–4 primary, 5 and up logical; GPT: the entry's index). */
  readonly partition: number;
  /** The sector size the table's LBAs count in; default: the backend's minimum block size when it is 512 or 4096, else 512 (as nbdkit). */
  readonly sectorSize?: 512 | 4096;
  /** Largest GPT entry array read, in bytes (default 1 MiB). */
  readonly gptArrayLimit?: number;
}

export interface PartitionFilter extends Filter {
  prepare(next: Backend, context?: FilterContext): Promise<void>;
  /** Where the partition is, once prepared. */
  readonly location: PartitionLocation | undefined;
}

/** A read from the backend below as one buffer (holes become zeroes). */
function reader(next: Backend): ReadAt {
  return async (offset, length) => {
    const got = await next.read(offset, length);
    const returned = Buffer.isBuffer(got) ? got.length : got.reduce((n, s) => n + ('data' in s ? s.data.length : s.hole), 0);
    if (returned !== length) throw new Error(`the backend returned ${returned} bytes for a ${length}-byte read at ${offset}`);
    return readBuffer(got, length);
  };
}

/** A filter for one export (it keeps the location it read in `prepare`): make one per export. */
export function partitionFilter(options: PartitionFilterOptions): PartitionFilter {
  const { partition, sectorSize, gptArrayLimit = GPT_ARRAY_LIMIT } = options;
  if (!Number.isSafeInteger(partition) || partition < 1) throw new RangeError(`partition=${partition}: must be an integer ≥ 1`);
  if (sectorSize !== undefined && sectorSize !== 512 && sectorSize !== 4096) throw new RangeError(`partition-sectorsize=${sectorSize}: must be 512 or 4096`);
  if (!Number.isSafeInteger(gptArrayLimit) || gptArrayLimit < 16384) throw new RangeError(`partition-gpt-array-limit=${gptArrayLimit}: must be an integer ≥ 16384 (the smallest array the UEFI specification allows)`);
  let location: PartitionLocation | undefined;

  return {
    name: 'partition',
    // One table for the export: the partition is where it is whatever the connection.
    scope: 'shared',
    get location() {
      return location;
    },
    async prepare(next, context) {
      if (next.size === undefined) throw new Error('partition filter: the backend below has no size');
      const minimum = next.blockSizes?.minimum;
      const ss = sectorSize ?? (minimum === 512 || minimum === 4096 ? minimum : 512);
      const found = await findPartition(reader(next), next.size, partition, { sectorSize: ss, gptArrayLimit });
      // A partition that is not aligned to the backend's minimum block would make aligned requests unaligned below.
      if (minimum !== undefined && minimum > 1 && (found.offset % minimum !== 0 || found.length % minimum !== 0)) {
        throw new Error(`partition filter: partition ${partition} (bytes ${found.offset}+${found.length}) is not aligned to the backend's minimum block size ${minimum}`);
      }
      location = found;
      context?.logger.info?.(`export "${context.export}": partition filter: ${found.scheme.toUpperCase()} partition ${partition} (type ${found.type}), bytes ${found.offset}–${found.offset + found.length} (${ss}-byte sectors)`);
    },
    wrap(next) {
      if (!location) throw new NbdError('NBD_ERR_CONFIG', 'partition filter: the partition table has not been read: await prepareExports(exports) before createServer');
      const at = location.offset;
      if (next.size !== undefined && next.size < at + location.length) {
        throw new Error(`partition filter: partition ${partition} ends at byte ${at + location.length}, beyond the backend below (${next.size} bytes)`);
      }
      return windowOf(next, at, location.length);
    },
  };
}

export const partitionPlugin: FilterPlugin = {
  name: 'partition',
  summary: 'serve one partition of an MBR or GPT disk (nbdkit partition filter)',
  params: [
    { name: 'partition', kind: 'integer', required: true, summary: 'the partition to serve, from 1 (MBR logical partitions from 5)' },
    { name: 'partition-sectorsize', kind: 'integer', summary: '512 or 4096 (default: the backend\'s minimum block size if 512 or 4096, else 512)' },
    { name: 'partition-gpt-array-limit', kind: 'size', summary: 'largest GPT entry array read (default 1M)' },
  ],
  create: async (p) => {
    try {
      return partitionFilter({
        partition: p.partition as number,
        sectorSize: p['partition-sectorsize'] as 512 | 4096 | undefined,
        gptArrayLimit: p['partition-gpt-array-limit'] as number | undefined,
      });
    } catch (e) {
      throw new ParamError(`partition: ${(e as Error).message}`);
    }
  },
};
