/**
 * The partition table parser (src/filters/partition-table.ts) on crafted
 * MBR and GPT disks: what it finds, and that every kind of damage is
 * refused with a message naming it.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { findPartition, GPT_ARRAY_LIMIT, PartitionTableError } from '../../../src/filters/partition-table.js';
import { gptDisk, mbrDisk, putTable } from './partition-images.js';

const reader = (disk: Buffer) => async (o: number, l: number) => {
  if (o < 0 || o + l > disk.length) throw new Error(`read outside the disk: ${o}+${l}`);
  return disk.subarray(o, o + l);
};

const find = (disk: Buffer, n: number, ss: 512 | 4096 = 512, gptArrayLimit = GPT_ARRAY_LIMIT) => findPartition(reader(disk), disk.length, n, { sectorSize: ss, gptArrayLimit });

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

  it('says so when the extended partition holds no logical partition, or only one', async () => {
    // putTable writes only the entries it is given: clear the EBR first.
    const none = mbrDisk().fill(0, 8192 * 512, 8193 * 512);
    putTable(none, 8192, []);
    await refused(find(none, 5), /partition 5 does not exist: the MBR has no logical partitions$/);
    const one = mbrDisk().fill(0, 8192 * 512, 8193 * 512);
    putTable(one, 8192, [{ type: 0x83, start: 2048, sectors: 1024 }]);
    await refused(find(one, 6), /partition 6 does not exist: the MBR has logical partition 5 only$/);
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

describe('damaged tables, generated', () => {
  const edits = fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 });
  const apply = (b: Buffer, region: readonly [number, number], list: Array<[number, number]>) => {
    for (const [at, v] of list) b[region[0] + (at % (region[1] - region[0]))] = v;
  };

  /** Either a location inside the disk, or a PartitionTableError: never another error, never a read outside the disk. */
  async function sound(disk: Buffer, n: number, ss: 512 | 4096 = 512): Promise<void> {
    try {
      const p = await find(disk, n, ss);
      expect(p.length).toBeGreaterThan(0);
      expect(p.offset).toBeGreaterThanOrEqual(ss);
      expect(p.offset + p.length).toBeLessThanOrEqual(disk.length);
    } catch (e) {
      expect(e).toBeInstanceOf(PartitionTableError);
    }
  }

  it('MBR and EBR sectors with random bytes changed', async () => {
    await fc.assert(
      fc.asyncProperty(edits, fc.constantFrom(0, 8192, 12288), fc.integer({ min: 1, max: 9 }), async (list, lba, n) => {
        const disk = mbrDisk();
        apply(disk, [lba * 512 + 446, lba * 512 + 512], list);
        await sound(disk, n);
      }),
      { numRuns: 300, seed: 15 },
    );
  });

  it('GPT headers and entry arrays with random bytes changed and valid checksums', async () => {
    await fc.assert(
      fc.asyncProperty(edits, fc.boolean(), fc.integer({ min: 1, max: 130 }), async (list, inHeader, n) => {
        const parts: Array<[number, number]> = [1, 2, 3, 4, 5, 6].map((i) => [64 * i, 64 * i + 63]);
        const disk = inHeader ? gptDisk({ parts, mutateHeader: (h) => apply(h, [8, 92], list) }) : gptDisk({ parts, mutateArray: (a) => apply(a, [0, 6 * 128], list) });
        await sound(disk, n);
      }),
      { numRuns: 300, seed: 15 },
    );
  });
});
