/**
 * Crafted partition tables for the unit tests: MBR/EBR sectors and GPT
 * disks (protective MBR, header and entry array with their CRC32s), with
 * hooks to damage them.
 */
import { crc32 } from 'node:zlib';

export interface Entry {
  type: number;
  start: number;
  sectors: number;
  status?: number;
}

/** Write a 4-entry MBR/EBR table (and the 0x55AA signature) into the sector at `lba`. */
export function putTable(disk: Buffer, lba: number, entries: Entry[], ss = 512): void {
  const s = lba * ss;
  entries.forEach((e, i) => {
    const at = s + 446 + 16 * i;
    disk[at] = e.status ?? 0;
    disk[at + 4] = e.type;
    disk.writeUInt32LE(e.start, at + 8);
    disk.writeUInt32LE(e.sectors, at + 12);
  });
  disk[s + 510] = 0x55;
  disk[s + 511] = 0xaa;
}

/** A 10 MiB MBR disk: 1 and 2 primary, 3 extended with logicals 5 (at 8192) and 6 (at 12288). */
export function mbrDisk(): Buffer {
  const disk = Buffer.alloc(20480 * 512);
  putTable(disk, 0, [
    { type: 0x83, start: 2048, sectors: 2048, status: 0x80 },
    { type: 0x07, start: 4096, sectors: 2048 },
    { type: 0x05, start: 8192, sectors: 8192 },
  ]);
  putTable(disk, 8192, [{ type: 0x83, start: 2048, sectors: 1024 }, { type: 0x05, start: 4096, sectors: 2048 }]);
  putTable(disk, 12288, [{ type: 0x82, start: 2048, sectors: 512 }]);
  return disk;
}

const LINUX = Buffer.from('af3dc60f838472478e793d69d8477de4', 'hex'); // 0FC63DAF-8483-4772-8E79-3D69D8477DE4 on disk

export interface GptOptions {
  ss?: 512 | 4096;
  count?: number;
  entrySize?: number;
  parts?: Array<[first: number, last: number] | null>;
  mutateHeader?: (h: Buffer) => void;
  /** Change the entry array before its checksum is computed. */
  mutateArray?: (a: Buffer) => void;
  /** Corrupt after the checksums are computed. */
  damage?: (disk: Buffer) => void;
}

/** A GPT disk of 4096 sectors: protective MBR, header at LBA 1, entry array at LBA 2. */
export function gptDisk(o: GptOptions = {}): Buffer {
  const ss = o.ss ?? 512;
  const sectors = 4096;
  const count = o.count ?? 128;
  const entrySize = o.entrySize ?? 128;
  const disk = Buffer.alloc(sectors * ss);
  putTable(disk, 0, [{ type: 0xee, start: 1, sectors: sectors - 1 }], ss);
  const array = Buffer.alloc(count * entrySize);
  (o.parts ?? [[64, 127], [128, 255]]).forEach((p, i) => {
    if (!p) return;
    LINUX.copy(array, i * entrySize);
    array.writeBigUInt64LE(BigInt(p[0]), i * entrySize + 32);
    array.writeBigUInt64LE(BigInt(p[1]), i * entrySize + 40);
  });
  o.mutateArray?.(array);
  array.copy(disk, 2 * ss);
  const h = Buffer.alloc(92);
  h.write('EFI PART', 0, 'latin1');
  h.writeUInt32LE(0x00010000, 8);
  h.writeUInt32LE(92, 12);
  h.writeBigUInt64LE(1n, 24);
  h.writeBigUInt64LE(BigInt(sectors - 1), 32);
  h.writeBigUInt64LE(34n, 40);
  h.writeBigUInt64LE(BigInt(sectors - 34), 48);
  h.writeBigUInt64LE(2n, 72);
  h.writeUInt32LE(count, 80);
  h.writeUInt32LE(entrySize, 84);
  h.writeUInt32LE(crc32(array) >>> 0, 88);
  o.mutateHeader?.(h);
  h.writeUInt32LE(crc32(h) >>> 0, 16);
  h.copy(disk, ss);
  o.damage?.(disk);
  return disk;
}

