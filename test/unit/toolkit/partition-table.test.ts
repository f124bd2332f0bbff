/**
 * The partition table parser (src/filters/partition-table.ts) on crafted
 * MBR and GPT disks: what it finds, and that every kind of damage is
 * refused with a message naming it.
 */
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { findPartition, GPT_ARRAY_LIMIT, PartitionTableError } from '../../../src/filters/partition-table.js';

interface Entry {
  type: number;
  start: number;
  sectors: number;
  status?: number;
}

/** Write a 4-entry MBR/EBR table (and the 0x55AA signature) into the sector at `lba`. */
function putTable(disk: Buffer, lba: number, entries: Entry[], ss = 512): void {
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

const reader = (disk: Buffer) => async (o: number, l: number) => {
  if (o < 0 || o + l > disk.length) throw new Error(`read outside the disk: ${o}+${l}`);
  return disk.subarray(o, o + l);
};

const find = (disk: Buffer, n: number, ss: 512 | 4096 = 512, gptArrayLimit = GPT_ARRAY_LIMIT) => findPartition(reader(disk), disk.length, n, { sectorSize: ss, gptArrayLimit });

/** A 64 MiB-sector-count MBR disk: 1 and 2 primary, 3 extended with logicals 5 (at 8192) and 6 (at 12288). */
function mbrDisk(): Buffer {
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

interface GptOptions {
  ss?: 512 | 4096;
  count?: number;
  entrySize?: number;
  parts?: Array<[first: number, last: number] | null>;
  mutateHeader?: (h: Buffer) => void;
  /** Corrupt after the checksums are computed. */
  damage?: (disk: Buffer) => void;
}

/** A GPT disk of 4096 sectors: protective MBR, header at LBA 1, entry array at LBA 2. */
function gptDisk(o: GptOptions = {}): Buffer {
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

async function refused(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PartitionTableError);
  expect((err as Error).message).toMatch(pattern);
}

describe('MBR', () => {
  it('finds primary partitions with their offset, length and type', async () => {
    const disk = mbrDisk();
    expect(await find(disk, 1)).toEqual({ number: 1, scheme: 'mbr', offset: 2048 * 512, length: 2048 * 512, type: '83' });
    expect(await find(disk, 2)).toEqual({ number: 2, scheme: 'mbr', offset: 4096 * 512, length: 2048 * 512, type: '07' });
  });

  it('finds logical partitions by walking the EBR chain (5, 6), and says how many there are', async () => {
    const disk = mbrDisk();
    expect(await find(disk, 5)).toEqual({ number: 5, scheme: 'mbr', offset: (8192 + 2048) * 512, length: 1024 * 512, type: '83' });
    expect(await find(disk, 6)).toEqual({ number: 6, scheme: 'mbr', offset: (12288 + 2048) * 512, length: 512 * 512, type: '82' });
    await refused(find(disk, 7), /partition 7 does not exist: the MBR has logical partitions 5 to 6/);
  });

  it('refuses the extended container, unused entries and logicals without an extended partition', async () => {
    const disk = mbrDisk();
    await refused(find(disk, 3), /extended partition/);
    await refused(find(disk, 4), /partition 4 is unused/);
    const plain = Buffer.alloc(4096 * 512);
    putTable(plain, 0, [{ type: 0x83, start: 2048, sectors: 1024 }]);
    await refused(find(plain, 5), /no extended partition/);
  });

  it('refuses a disk without the boot signature, or whose sector 0 is not an MBR', async () => {
    await refused(find(Buffer.alloc(4096 * 512), 1), /0x55AA/);
    const vbr = mbrDisk();
    vbr[446] = 0xeb; // a FAT boot sector's code where entry 1's boot indicator would be
    await refused(find(vbr, 1), /boot indicator 0xeb/);
  });

  it('refuses overlapping entries, entries beyond the disk, two extended partitions', async () => {
    const overlap = Buffer.alloc(4096 * 512);
    putTable(overlap, 0, [{ type: 0x83, start: 2048, sectors: 1024 }, { type: 0x83, start: 3000, sectors: 100 }]);
    await refused(find(overlap, 1), /entries 1 and 2 overlap/);
    const beyond = Buffer.alloc(4096 * 512);
    putTable(beyond, 0, [{ type: 0x83, start: 2048, sectors: 4096 }]);
    await refused(find(beyond, 1), /beyond the end of the disk/);
    const twoExt = Buffer.alloc(8192 * 512);
    putTable(twoExt, 0, [{ type: 0x05, start: 2048, sectors: 1024 }, { type: 0x0f, start: 4096, sectors: 1024 }]);
    await refused(find(twoExt, 5), /2 extended partitions/);
  });

  it('refuses an EBR chain that loops back, and a logical partition outside the extended one', async () => {
    const loop = mbrDisk();
    putTable(loop, 12288, [{ type: 0x82, start: 2048, sectors: 512 }, { type: 0x05, start: 0, sectors: 2048 }]);
    await refused(find(loop, 9), /links to sector 8192, not forward/);
    const outside = mbrDisk();
    putTable(outside, 12288, [{ type: 0x82, start: 2048, sectors: 4096 }]);
    await refused(find(outside, 6), /logical partition 6 .* outside the extended partition/);
  });

  it('refuses partition numbers below 1', async () => {
    await refused(find(mbrDisk(), 0), /≥ 1/);
  });
});

describe('GPT', () => {
  it('is recognised by the protective MBR; finds entries past 4 with their type GUID', async () => {
    const parts: Array<[number, number]> = [1, 2, 3, 4, 5, 6].map((i) => [64 * i, 64 * i + 63]);
    const disk = gptDisk({ parts });
    expect(await find(disk, 5)).toEqual({ number: 5, scheme: 'gpt', offset: 320 * 512, length: 64 * 512, type: '0fc63daf-8483-4772-8e79-3d69d8477de4' });
    expect((await find(disk, 1)).offset).toBe(64 * 512);
  });

  it('refuses unused entries and numbers past the entry count', async () => {
    const disk = gptDisk();
    await refused(find(disk, 3), /partition 3 is unused in the GPT/);
    await refused(find(disk, 129), /the GPT has 128 entries/);
    await refused(find(gptDisk({ count: 0, parts: [] }), 1), /the GPT has 0 entries/);
  });

  it('refuses a damaged header: signature, checksum, revision, header size, entry size', async () => {
    await refused(find(gptDisk({ damage: (d) => d.write('EFI PORT', 512, 'latin1') }), 1), /"EFI PART" signature missing/);
    await refused(find(gptDisk({ damage: (d) => (d[512 + 40] ^= 1) }), 1), /header checksum/);
    await refused(find(gptDisk({ mutateHeader: (h) => h.writeUInt32LE(0x00020000, 8) }), 1), /revision 0x20000/);
    await refused(find(gptDisk({ mutateHeader: (h) => h.writeUInt32LE(600, 12) }), 1), /header size 600/);
    await refused(find(gptDisk({ entrySize: 96 }), 1), /entry size 96/);
  });

  it('refuses a damaged entry array (checksum), overlapping entries, entries outside the usable area', async () => {
    await refused(find(gptDisk({ damage: (d) => (d[2 * 512 + 200] ^= 0xff) }), 1), /entry array checksum/);
    await refused(find(gptDisk({ parts: [[64, 200], [128, 255]] }), 2), /GPT partitions 2 and 1 overlap/);
    await refused(find(gptDisk({ parts: [[10, 20]] }), 1), /outside the usable area/);
    await refused(find(gptDisk({ parts: [[200, 100]] }), 1), /ends \(LBA 100\) before it starts/);
  });

  it('refuses an entry array over the limit', async () => {
    await refused(find(gptDisk(), 1, 512, 8192), /exceeds the limit of 8192 bytes/);
  });

  it('counts LBAs in the sector size given: a 4096-byte-sector GPT', async () => {
    const disk = gptDisk({ ss: 4096 });
    expect(await find(disk, 2, 4096)).toMatchObject({ offset: 128 * 4096, length: 128 * 4096 });
    await refused(find(disk, 2, 512), /no GPT header/);
  });
});
