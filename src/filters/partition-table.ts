/**
 * Finding one partition in an MBR or GPT partition table, given a way to
 * read the disk: the parser behind the partition filter (partition.ts).
 *
 * Numbering is Linux's and nbdkit's: MBR primary partitions are 1–4 and
 * logical partitions (in the extended partition's chain of EBRs) 5 and up,
 * in chain order; GPT partitions are the entries' indexes, from 1.
 *
 * Only the wanted partition is located, so a crafted chain of EBRs costs at
 * most `partition - 4` reads; but the table it comes from is checked as a
 * whole where that is cheap (the four primary entries, every GPT entry), so
 * a damaged table is refused instead of serving a guess.
 */
import { crc32 } from 'node:zlib';

/** Read exactly `length` bytes at `offset` of the disk. */
export type ReadAt = (offset: number, length: number) => Promise<Buffer>;

export class PartitionTableError extends Error {}

export interface PartitionLocation {
  /** The partition's number, from 1. */
  readonly number: number;
  readonly scheme: 'mbr' | 'gpt';
  /** Byte offset on the disk. */
  readonly offset: number;
  /** Length in bytes. */
  readonly length: number;
  /** MBR type byte as two hex digits ("83"), or the GPT type GUID. */
  readonly type: string;
}

export interface PartitionTableOptions {
  /** Logical sector size the table's LBAs count in (512 or 4096). */
  readonly sectorSize: 512 | 4096;
  /** Largest GPT partition entry array read (numEntries × entrySize), in bytes. */
  readonly gptArrayLimit: number;
}

/** Default largest GPT entry array: 1 MiB, 64 times the usual 128 entries × 128 bytes. */
export const GPT_ARRAY_LIMIT = 1 << 20;

const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);
const GPT_PROTECTIVE = 0xee;

interface MbrEntry {
  readonly slot: number;
  readonly status: number;
  readonly type: number;
  readonly start: number;
  readonly sectors: number;
}

function fail(message: string): never {
  throw new PartitionTableError(message);
}

/** The four 16-byte entries of an MBR or EBR sector (at byte 446). */
function mbrEntries(sector: Buffer): MbrEntry[] {
  const out: MbrEntry[] = [];
  for (let slot = 0; slot < 4; slot++) {
    const e = 446 + 16 * slot;
    out.push({ slot: slot + 1, status: sector[e]!, type: sector[e + 4]!, start: sector.readUInt32LE(e + 8), sectors: sector.readUInt32LE(e + 12) });
  }
  return out;
}

function hasBootSignature(sector: Buffer): boolean {
  return sector[510] === 0x55 && sector[511] === 0xaa;
}

const used = (e: MbrEntry) => e.type !== 0 && e.sectors !== 0;
const hex2 = (n: number) => n.toString(16).padStart(2, '0');

/** Byte ranges [start, end) overlap. */
function overlaps(a: readonly [number, number], b: readonly [number, number]): boolean {
  return a[0] < b[1] && b[0] < a[1];
}

/**
 * Locate partition `partition` (from 1) on a disk of `diskSize` bytes:
 * a GPT when the MBR holds a protective (0xEE) entry, else the MBR's own
 * partitions. Throws PartitionTableError, naming what is wrong, for a
 * missing or damaged table and a partition that is absent or unused.
 */
export async function findPartition(read: ReadAt, diskSize: number, partition: number, options: PartitionTableOptions): Promise<PartitionLocation> {
  const ss = options.sectorSize;
  if (!Number.isSafeInteger(partition) || partition < 1) fail(`partition number must be an integer ≥ 1 (got ${partition})`);
  if (diskSize < ss) fail(`the disk (${diskSize} bytes) is smaller than one ${ss}-byte sector: no partition table`);
  const mbr = await read(0, ss);
  if (!hasBootSignature(mbr)) fail('no partition table: sector 0 lacks the 0x55AA boot signature');
  const entries = mbrEntries(mbr);
  // A status other than 0 or 0x80 means sector 0 is something else with the same signature (a FAT or NTFS boot sector).
  const badStatus = entries.find((e) => e.status !== 0 && e.status !== 0x80);
  if (badStatus) fail(`not an MBR: entry ${badStatus.slot} has boot indicator 0x${hex2(badStatus.status)} (only 0x00 or 0x80 are valid)`);
  if (entries.some((e) => e.type === GPT_PROTECTIVE)) return findGpt(read, diskSize, partition, options);
  return findMbr(read, diskSize, partition, entries, ss);
}

async function findMbr(read: ReadAt, diskSize: number, partition: number, entries: MbrEntry[], ss: number): Promise<PartitionLocation> {
  const ranges = entries.filter(used).map((e) => ({ e, r: [e.start * ss, (e.start + e.sectors) * ss] as const }));
  for (const { e, r } of ranges) {
    if (e.start === 0) fail(`MBR entry ${e.slot} starts at sector 0, over the partition table itself`);
    if (r[1] > diskSize) fail(`MBR entry ${e.slot} ends at byte ${r[1]}, beyond the end of the disk (${diskSize} bytes)`);
  }
  for (let i = 0; i < ranges.length; i++) {
    for (let j = i + 1; j < ranges.length; j++) {
      if (overlaps(ranges[i]!.r, ranges[j]!.r)) fail(`MBR entries ${ranges[i]!.e.slot} and ${ranges[j]!.e.slot} overlap`);
    }
  }
  const extended = entries.filter((e) => used(e) && EXTENDED_TYPES.has(e.type));
  if (extended.length > 1) fail(`the MBR has ${extended.length} extended partitions (at most one is valid)`);
  if (partition <= 4) {
    const e = entries[partition - 1]!;
    if (!used(e)) fail(`partition ${partition} is unused in the MBR`);
    if (EXTENDED_TYPES.has(e.type)) fail(`partition ${partition} is the extended partition (a container: its logical partitions are numbered from 5)`);
    return { number: partition, scheme: 'mbr', offset: e.start * ss, length: e.sectors * ss, type: hex2(e.type) };
  }
  const ext = extended[0];
  if (!ext) fail(`partition ${partition} does not exist: the MBR has no extended partition, so no logical partitions (5 and up)`);
  return findLogical(read, partition, ext, ss);
}

/** Walk the extended partition's chain of EBRs up to logical partition `partition`. */
async function findLogical(read: ReadAt, partition: number, ext: MbrEntry, ss: number): Promise<PartitionLocation> {
  const extStart = ext.start;
  const extEnd = ext.start + ext.sectors;
  let ebr = extStart;
  let number = 4;
  for (;;) {
    const sector = await read(ebr * ss, ss);
    if (!hasBootSignature(sector)) fail(`the EBR at sector ${ebr} (logical partition ${number + 1}) lacks the 0x55AA signature`);
    const [data, link] = mbrEntries(sector) as [MbrEntry, MbrEntry];
    if (used(data)) {
      number++;
      // The data entry counts from its own EBR; it must lie after it, inside the extended partition.
      const start = ebr + data.start;
      if (data.start === 0 || start + data.sectors > extEnd) fail(`logical partition ${number} (EBR at sector ${ebr}) lies outside the extended partition`);
      if (number === partition) return { number, scheme: 'mbr', offset: start * ss, length: data.sectors * ss, type: hex2(data.type) };
    }
    if (!used(link) || !EXTENDED_TYPES.has(link.type)) {
      // An extended partition may hold no logical partition at all ("5 to 4" would be nonsense).
      const range = number === 4 ? 'no logical partitions' : number === 5 ? 'logical partition 5 only' : `logical partitions 5 to ${number}`;
      fail(`partition ${partition} does not exist: the MBR has ${range}`);
    }
    // The link counts from the extended partition's start. Moving strictly forward is what makes the walk end.
    const next = extStart + link.start;
    if (next <= ebr || next >= extEnd) fail(`the EBR at sector ${ebr} links to sector ${next}, not forward inside the extended partition (sectors ${extStart}–${extEnd - 1})`);
    ebr = next;
  }
}

/** A GUID as text: its first three fields are little-endian on disk. */
function guidText(b: Buffer): string {
  const h = b.toString('hex');
  const le = (s: string) => s.match(/../g)!.reverse().join('');
  return `${le(h.slice(0, 8))}-${le(h.slice(8, 12))}-${le(h.slice(12, 16))}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A 64-bit LBA as a number of bytes, refused when it cannot be one. */
function lbaBytes(v: bigint, ss: number, what: string): number {
  const bytes = v * BigInt(ss);
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) fail(`${what} (LBA ${v}) is beyond 2^53 bytes`);
  return Number(bytes);
}

async function findGpt(read: ReadAt, diskSize: number, partition: number, options: PartitionTableOptions): Promise<PartitionLocation> {
  const ss = options.sectorSize;
  if (diskSize < 2 * ss) fail('the MBR is protective (GPT) but the disk has no room for a GPT header');
  const hdr = await read(ss, ss);
  if (hdr.toString('latin1', 0, 8) !== 'EFI PART') fail(`the MBR is protective but sector 1 has no GPT header ("EFI PART" signature missing; is the sector size ${ss} right?)`);
  const revision = hdr.readUInt32LE(8);
  if (revision >>> 16 !== 1) fail(`GPT header revision 0x${revision.toString(16)} is not 1.x`);
  const headerSize = hdr.readUInt32LE(12);
  if (headerSize < 92 || headerSize > ss) fail(`GPT header size ${headerSize} is outside 92–${ss}`);
  const stored = hdr.readUInt32LE(16);
  const copy = Buffer.from(hdr.subarray(0, headerSize));
  copy.writeUInt32LE(0, 16);
  if (crc32(copy) >>> 0 !== stored) fail('GPT header checksum (CRC32) does not match: the header is damaged');
  if (hdr.readBigUInt64LE(24) !== 1n) fail(`GPT header says it is at LBA ${hdr.readBigUInt64LE(24)}, not 1`);
  const firstUsable = lbaBytes(hdr.readBigUInt64LE(40), ss, 'first usable LBA');
  const lastUsableEnd = lbaBytes(hdr.readBigUInt64LE(48) + 1n, ss, 'last usable LBA');
  if (firstUsable > lastUsableEnd || lastUsableEnd > diskSize) fail(`GPT usable area (bytes ${firstUsable}–${lastUsableEnd}) does not fit the disk (${diskSize} bytes)`);
  const arrayStart = lbaBytes(hdr.readBigUInt64LE(72), ss, 'partition entry array');
  const count = hdr.readUInt32LE(80);
  const entrySize = hdr.readUInt32LE(84);
  // The UEFI specification: 128 × 2^n bytes.
  if (entrySize < 128 || entrySize % 128 !== 0 || ((entrySize / 128) & (entrySize / 128 - 1)) !== 0) fail(`GPT entry size ${entrySize} is not 128 × 2^n`);
  const arrayBytes = count * entrySize;
  if (arrayBytes > options.gptArrayLimit) fail(`GPT entry array (${count} × ${entrySize} bytes) exceeds the limit of ${options.gptArrayLimit} bytes (partition-gpt-array-limit)`);
  if (arrayStart < 2 * ss || arrayStart + arrayBytes > diskSize) fail(`GPT entry array (bytes ${arrayStart}–${arrayStart + arrayBytes}) does not fit the disk`);
  if (partition > count) fail(`partition ${partition} does not exist: the GPT has ${count} entries`);
  const array = await read(arrayStart, arrayBytes);
  if (crc32(array) >>> 0 !== hdr.readUInt32LE(88)) fail('GPT entry array checksum (CRC32) does not match: the table is damaged');
  const entry = (i: number) => array.subarray(i * entrySize, i * entrySize + 128);
  const isUsed = (e: Buffer) => e.subarray(0, 16).some((b) => b !== 0);
  const range = (e: Buffer, n: number): [number, number] => {
    const first = e.readBigUInt64LE(32);
    const last = e.readBigUInt64LE(40);
    if (last < first) fail(`GPT partition ${n} ends (LBA ${last}) before it starts (LBA ${first})`);
    return [lbaBytes(first, ss, `GPT partition ${n}'s start`), lbaBytes(last + 1n, ss, `GPT partition ${n}'s end`)];
  };
  const want = entry(partition - 1);
  if (!isUsed(want)) fail(`partition ${partition} is unused in the GPT`);
  const r = range(want, partition);
  if (r[0] < firstUsable || r[1] > lastUsableEnd) fail(`GPT partition ${partition} (bytes ${r[0]}–${r[1]}) lies outside the usable area (bytes ${firstUsable}–${lastUsableEnd})`);
  for (let i = 0; i < count; i++) {
    if (i === partition - 1 || !isUsed(entry(i))) continue;
    if (overlaps(r, range(entry(i), i + 1))) fail(`GPT partitions ${partition} and ${i + 1} overlap`);
  }
  return { number: partition, scheme: 'gpt', offset: r[0], length: r[1] - r[0], type: guidText(want.subarray(0, 16)) };
}
