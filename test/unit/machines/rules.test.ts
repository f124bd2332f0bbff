/**
 * One test (or a few) per server rule of docs/rules.md. Test names start
 * with the IDs of the rules they check.
 *
 * Handshake rules drive the real handshake machine with option frames that
 * came out of the real decoder, and decode the emitted `send` frames with a
 * test-local parser (support.ts). Transmission rules drive the transmission
 * machine (accept vs refuse + errno); reply-form rules use src/protocol/replies.ts.
 *
 * Parts of rules that do not apply to this server, or that live outside the
 * machines and codec (checked where they are implemented, e.g. the transport):
 *   - handshake.greeting-flags, oldstyle half: we never speak oldstyle (no
 *     oldstyle greeting is ever produced; the handshake machine only has the
 *     newstyle greeting).
 *   - handshake.no-zeroes, oldstyle: same reason.
 *   - reply.simple-read, "post-header read failure ⇒ hard disconnect": the
 *     failure happens in the transport after it wrote a header; no machine or
 *     codec decision.
 *   - transmission.payload-consumed, "or hard-disconnect": we always consume
 *     (decoder), never drop.
 *   - transmission.fua-durable, transmission.flush-durable,
 *     transmission.write-zeroes-no-hole (durability, FLUSH ordering, zeroes
 *     reading back): these are backend/transport obligations; here we test only
 *     the machine's part (the requests reach the application and are not refused).
 *   - transmission.disc-drains, "shut down TLS, close the socket": the transport
 *     carries out the machine's `close` effect; we test that the machine asks for it.
 *   - reply.negotiated-mode, EH "never simple replies": tested for the reply
 *     builders; the experimental extended-header transmission path has no other
 *     machine part.
 */
import { describe, expect, it } from 'vitest';
import { createActor, initialTransition, transition } from 'xstate';
import { CMD, CMD_FLAG, ERRNO, FLAG, hostErrnoToNbd, REPLY_FLAG, REPLY_TYPE } from '../../../src/protocol/constants.js';
import { FrameDecoder } from '../../../src/protocol/decoder.js';
import { encodeOptionError } from '../../../src/protocol/encoder.js';
import { replyBlockStatus, replyError, replyModeOf, replyOk, replyRead, needsStructured } from '../../../src/protocol/replies.js';
import { advertisedFlags, handshakeMachine, BASE_ALLOCATION_ID } from '../../../src/machines/handshake.js';
import { REFUSALS, transmissionMachine, transmissionContext } from '../../../src/machines/transmission.js';
import type { ExportDescriptor, HandshakeOutcome } from '../../../src/machines/types.js';
import {
  DEFAULT_INPUT,
  EXPORTS,
  KiB,
  O,
  R,
  SIMPLE_MAGIC,
  STRUCTURED_MAGIC,
  EXTENDED_MAGIC,
  decodeOption,
  infoGoData,
  infoOf,
  isFinal,
  metaData,
  negotiatedFor,
  opt,
  optEvent,
  optionBytes,
  parseChunks,
  parseOptionReply,
  parseSimple,
  request,
  requestBytes,
  startHandshake,
  startTransmission,
  u32,
  type OptionReply,
} from './support.js';

const disk = EXPORTS[0]!;
const ro = EXPORTS[1]!;

function outcome(d: ReturnType<typeof startHandshake>): HandshakeOutcome {
  return d.actor.getSnapshot().output as HandshakeOutcome;
}

function types(replies: readonly OptionReply[]): number[] {
  return replies.map((r) => r.type);
}

/** The one final reply of an option, checking the option.reply-header framing on the way. */
function finalOf(replies: readonly OptionReply[], code: number): OptionReply {
  expect(replies.length).toBeGreaterThan(0);
  for (const r of replies) expect(r.option).toBe(code);
  expect(replies.filter((r) => isFinal(r.type))).toHaveLength(1);
  return replies[replies.length - 1]!;
}

function closes(emitted: readonly { type: string }[]) {
  return emitted.filter((e) => e.type === 'close') as { type: 'close'; hard: boolean; reason: string }[];
}

/** SR + SET_META_CONTEXT(base:allocation) on `disk`. */
function withBaseAllocation(d: ReturnType<typeof startHandshake>) {
  expect(types(d.option(opt(O.STRUCTURED_REPLY)))).toEqual([R.ACK]);
  expect(types(d.option(opt(O.SET_META_CONTEXT, metaData('disk', ['base:allocation']))))).toEqual([R.META_CONTEXT, R.ACK]);
}

// ═══ Handshake ═══════════════════════════════════════════════════════════

describe('handshake rules (handshake machine)', () => {
  it('handshake.greeting-flags: greeting is NBDMAGIC · IHAVEOPT · handshake flags with only bits 0–1 (FIXED_NEWSTYLE set)', () => {
    const d = startHandshake({}, null);
    expect(d.emitted).toHaveLength(1);
    const g = d.emitted[0]!;
    expect(g.type).toBe('send');
    const b = Buffer.concat((g as { frame: Buffer[] }).frame);
    expect(b).toHaveLength(18);
    expect(b.subarray(0, 8).toString('latin1')).toBe('NBDMAGIC');
    expect(b.subarray(8, 16).toString('latin1')).toBe('IHAVEOPT');
    const flags = b.readUInt16BE(16);
    expect(flags & ~0x3).toBe(0);
    expect(flags & 0x1).toBe(1); // MUST be set by a server supporting fixed newstyle
    expect(d.value()).toBe('awaitingClientFlags');
  });

  it('handshake.client-flags-unknown: client flags with an unknown bit drop the connection (every bit 2–31)', () => {
    for (let bit = 2; bit < 32; bit++) {
      const d = startHandshake({}, null);
      const out = d.send({ type: 'wire.clientFlags', flags: (1 << bit) >>> 0 | 1 });
      expect(d.value(), `bit ${bit}`).toBe('rejected');
      expect(closes(out)).toEqual([expect.objectContaining({ hard: true, reason: 'handshake.client-flags-unknown: unknown client flags' })]);
      expect(out.filter((e) => e.type === 'send')).toHaveLength(0);
      expect(outcome(d).outcome).toBe('rejected');
    }
  });

  it('handshake.client-flags-unknown: the advertised client flags (0–3) are accepted', () => {
    for (const flags of [0, 1, 2, 3]) {
      const d = startHandshake({}, flags);
      expect(d.value()).toBe('options');
    }
  });

  it('handshake.no-zeroes: EXPORT_NAME reply is 134 bytes, or 10 when both sides set NO_ZEROES', () => {
    for (const [flags, len] of [
      [1, 134],
      [3, 10],
    ] as const) {
      const d = startHandshake({}, flags);
      const out = d.send(opt(O.EXPORT_NAME, Buffer.from('disk')));
      const sends = out.filter((e) => e.type === 'send') as { frame: Buffer[] }[];
      expect(sends).toHaveLength(1);
      const b = Buffer.concat(sends[0]!.frame);
      expect(b).toHaveLength(len);
      expect(Number(b.readBigUInt64BE(0))).toBe(disk.size);
      expect(b.readUInt16BE(8) & 1).toBe(1);
      expect(b.subarray(10).every((x) => x === 0)).toBe(true);
      expect(d.value()).toBe('negotiated');
    }
  });

  it('handshake.no-zeroes, option.info-export: no padding after the GO ACK, and NBD_INFO_EXPORT is exactly 12 bytes (even without NO_ZEROES)', () => {
    const d = startHandshake({}, 1);
    const out = d.send(opt(O.GO, infoGoData('disk')));
    const frames = out.filter((e) => e.type === 'send').map((e) => Buffer.concat((e as { frame: Buffer[] }).frame));
    const last = frames[frames.length - 1]!;
    expect(last).toHaveLength(20); // ACK header and nothing after it
    const replies = frames.map((f) => parseOptionReply([f]));
    const exp = replies.find((r) => r.type === R.INFO && infoOf(r).info === 0)!;
    expect(exp.data).toHaveLength(12);
  });

  it('option.reply-header: every fixed-newstyle option but EXPORT_NAME gets 20-byte-header replies echoing its code', () => {
    const cases: Array<[number, Buffer | undefined]> = [
      [O.LIST, undefined],
      [O.PEEK_EXPORT, undefined],
      [O.STARTTLS, undefined],
      [O.INFO, infoGoData('disk', [1, 2, 3])],
      [O.STRUCTURED_REPLY, undefined],
      [O.LIST_META_CONTEXT, metaData('disk', [])],
      [O.SET_META_CONTEXT, metaData('disk', ['base:allocation'])],
      [O.EXTENDED_HEADERS, undefined],
      [12, Buffer.from('xyz')],
      [0x7fffffff, undefined],
      [0xffffffff, undefined],
      [O.GO, infoGoData('disk')],
    ];
    const d = startHandshake();
    for (const [code, data] of cases) {
      const replies = d.option(opt(code, data));
      finalOf(replies, code);
    }
    // ABORT too (fresh connection: GO ended the option phase above).
    const a = startHandshake();
    finalOf(a.option(opt(O.ABORT)), O.ABORT);
  });

  it('option.unknown-code: unknown option gets ERR_UNSUP and the next option still parses', () => {
    const dec = new FrameDecoder();
    dec.push(u32(3));
    expect(dec.next()).toMatchObject({ kind: 'clientFlags', flags: 3 });
    // Unknown option with 100 bytes of data, then LIST, in one chunk.
    dec.push(Buffer.concat([optionBytes(0x1234, Buffer.alloc(100, 0xab)), optionBytes(O.LIST)]));
    const d = startHandshake();
    const f1 = dec.next();
    expect(f1).toMatchObject({ kind: 'option', opt: 'unknown', code: 0x1234 });
    const r1 = d.option(optEvent(f1 as never));
    expect(types(r1)).toEqual([R.ERR_UNSUP]);
    expect(r1[0]!.option).toBe(0x1234);
    const f2 = dec.next();
    expect(f2).toMatchObject({ kind: 'option', opt: 'list', code: O.LIST, hasData: false });
    const r2 = d.option(optEvent(f2 as never));
    expect(types(r2)).toEqual([R.SERVER, R.SERVER, R.SERVER, R.ACK]); // policy off: all three exports listed
    expect(d.value()).toBe('options');
  });

  it('option.unknown-code: withdrawn PEEK_EXPORT (4) is treated as unknown', () => {
    const d = startHandshake();
    expect(types(d.option(opt(O.PEEK_EXPORT, Buffer.from('disk'))))).toEqual([R.ERR_UNSUP]);
  });

  it('option.export-name-terminates: EXPORT_NAME for an unknown export terminates without any reply', () => {
    const d = startHandshake();
    const out = d.send(opt(O.EXPORT_NAME, Buffer.from('nope')));
    expect(out.filter((e) => e.type === 'send')).toHaveLength(0);
    // The reason (logged when the connection drops) names the rule.
    expect(closes(out)).toEqual([
      expect.objectContaining({ hard: true, reason: 'option.export-name-terminates: EXPORT_NAME for an unknown export (opt.exportName)' }),
    ]);
    expect(outcome(d)).toMatchObject({ outcome: 'rejected' });
  });

  it('option.export-name-terminates, general.string-limits: an over-long EXPORT_NAME terminates, and the reason says why', () => {
    const d = startHandshake();
    const out = d.send(opt(O.EXPORT_NAME, Buffer.alloc(5000, 0x61)));
    expect(out.filter((e) => e.type === 'send')).toHaveLength(0);
    // Not just "malformed": the log line names the limit the name broke.
    expect(closes(out)).toEqual([
      expect.objectContaining({ hard: true, reason: 'option.export-name-terminates: malformed EXPORT_NAME: string of 5000 bytes exceeds 4096 (opt.exportName)' }),
    ]);
  });

  it('option.export-name-terminates: EXPORT_NAME "" without a default export terminates', () => {
    const d = startHandshake({ defaultExport: undefined });
    const out = d.send(opt(O.EXPORT_NAME));
    expect(closes(out)).toEqual([expect.objectContaining({ hard: true })]);
    expect(d.value()).toBe('rejected');
  });

  it('option.export-name-terminates, tls.mode-selectivetls: EXPORT_NAME for a TLS-only export without TLS terminates (SELECTIVETLS)', () => {
    const d = startHandshake({ tls: 'optional' });
    const out = d.send(opt(O.EXPORT_NAME, Buffer.from('secret')));
    expect(out.filter((e) => e.type === 'send')).toHaveLength(0);
    expect(d.value()).toBe('rejected');
  });

  it('option.export-name-terminates: EXPORT_NAME "" resolves to the default export', () => {
    const d = startHandshake();
    d.send(opt(O.EXPORT_NAME));
    expect(outcome(d)).toMatchObject({ outcome: 'negotiated', negotiated: { export: { name: 'disk' }, viaExportName: true } });
  });

  it('option.abort-ack: ABORT is answered with ACK, then a soft close', () => {
    const d = startHandshake();
    const out = d.send(opt(O.ABORT));
    const replies = out.filter((e) => e.type === 'send').map((e) => parseOptionReply((e as { frame: Buffer[] }).frame));
    expect(replies).toEqual([{ option: O.ABORT, type: R.ACK, data: Buffer.alloc(0) }]);
    expect(closes(out)).toEqual([expect.objectContaining({ hard: false })]);
    expect(outcome(d)).toEqual({ outcome: 'aborted' });
  });

  it('option.abort-ack: ABORT with data is still ACKed (server SHOULD ignore the data)', () => {
    const d = startHandshake();
    expect(types(d.option(opt(O.ABORT, Buffer.from('junk'))))).toEqual([R.ACK]);
    expect(d.value()).toBe('aborted');
  });

  it('option.abort-ack: the client closing before (or instead of) reading the ACK is tolerated', () => {
    const d = startHandshake();
    d.send(opt(O.ABORT));
    d.send({ type: 'socket.closed' }); // after the machine is done: ignored, no throw
    expect(d.errors).toEqual([]);
    expect(outcome(d)).toEqual({ outcome: 'aborted' });
    const e = startHandshake();
    e.send({ type: 'socket.closed' });
    expect(e.errors).toEqual([]);
    expect(outcome(e)).toEqual({ outcome: 'disconnected' });
  });

  it('option.info-export: INFO success sends NBD_INFO_EXPORT (12 bytes) before the ACK even when not requested', () => {
    const d = startHandshake();
    const replies = d.option(opt(O.INFO, infoGoData('disk')));
    expect(types(replies)).toEqual([R.INFO, R.ACK]);
    const { info, payload } = infoOf(replies[0]!);
    expect(info).toBe(0);
    expect(replies[0]!.data).toHaveLength(12);
    expect(Number(payload.readBigUInt64BE(0))).toBe(disk.size);
    expect(payload.readUInt16BE(8)).toBe(advertisedFlags(disk, false));
    expect(d.value()).toBe('options');
  });

  it('option.info-unknown-ignored: unknown info requests are ignored; known ones are answered', () => {
    const d = startHandshake();
    const replies = d.option(opt(O.INFO, infoGoData('disk', [0x7777, 1, 2, 3, 0xffff])));
    expect(types(replies)).toEqual([R.INFO, R.INFO, R.INFO, R.INFO, R.ACK]);
    const infos = replies.slice(0, -1).map((r) => infoOf(r));
    expect(infos.map((i) => i.info).sort()).toEqual([0, 1, 2, 3]);
    expect(infos.find((i) => i.info === 1)!.payload.toString()).toBe('disk');
    expect(infos.find((i) => i.info === 2)!.payload.toString()).toBe('the main disk');
  });

  it('option.length-mismatch: namelen > optlen − 6 and a length that is not 6 + N + 2K get ERR_INVALID', () => {
    const d = startHandshake();
    const good = infoGoData('disk', [1]);
    const tooLongName = Buffer.from(good);
    tooLongName.writeUInt32BE(good.length - 5, 0); // N > optlen − 6
    const extra = Buffer.concat([good, Buffer.from([0])]);
    const short = good.subarray(0, good.length - 1);
    for (const code of [O.INFO, O.GO]) {
      for (const data of [tooLongName, extra, short, Buffer.alloc(5), Buffer.alloc(0)]) {
        const replies = d.option(opt(code, data));
        expect(types(replies)).toEqual([R.ERR_INVALID]);
        expect(replies[0]!.option).toBe(code);
      }
    }
    expect(d.value()).toBe('options');
  });

  it('option.export-unknown: INFO/GO for an unknown export get ERR_UNKNOWN and no INFO replies', () => {
    const d = startHandshake();
    expect(types(d.option(opt(O.INFO, infoGoData('nope', [0]))))).toEqual([R.ERR_UNKNOWN]);
    expect(types(d.option(opt(O.GO, infoGoData('nope'))))).toEqual([R.ERR_UNKNOWN]);
    expect(d.value()).toBe('options'); // the client may retry
    expect(types(d.option(opt(O.GO, infoGoData('disk'))))).toEqual([R.INFO, R.ACK]);
  });

  it('option.go-starts-transmission: GO ACK switches to transmission; a request pipelined behind GO is decoded as a request', () => {
    const dec = new FrameDecoder();
    dec.push(u32(3));
    dec.next();
    dec.push(Buffer.concat([optionBytes(O.GO, infoGoData('disk')), requestBytes(CMD.NBD_CMD_READ, 42n, 0, 512)]));
    const go = dec.next();
    const d = startHandshake();
    const replies = d.option(optEvent(go as never));
    expect(types(replies)).toEqual([R.INFO, R.ACK]);
    expect(d.value()).toBe('negotiated');
    const o = outcome(d);
    expect(o.outcome).toBe('negotiated');
    dec.startTransmission(false);
    expect(dec.next()).toMatchObject({ kind: 'request', type: CMD.NBD_CMD_READ, cookie: 42n, offset: 0, length: 512 });
    // …and the transmission machine accepts it with the negotiated outcome.
    const t = startTransmission({ negotiated: (o as Extract<HandshakeOutcome, { outcome: 'negotiated' }>).negotiated });
    expect(t.request({ type: CMD.NBD_CMD_READ, cookie: 42n, length: 512 })).toEqual([
      expect.objectContaining({ type: 'request', frame: expect.objectContaining({ cookie: 42n }) }),
    ]);
  });

  it('option.block-size-not-required: ERR_BLOCK_SIZE_REQD is never sent when the client requested NBD_INFO_BLOCK_SIZE (nor otherwise)', () => {
    const d = startHandshake();
    for (const requests of [[3], [], [1, 2]]) {
      for (const code of [O.INFO]) {
        const replies = d.option(opt(code, infoGoData('ro', requests)));
        expect(types(replies)).not.toContain(R.ERR_BLOCK_SIZE_REQD);
        expect(replies[replies.length - 1]!.type).toBe(R.ACK);
        if (requests.includes(3)) {
          const bs = replies.map(infoOfSafe).find((i) => i?.info === 3)!;
          expect(bs.payload).toHaveLength(12);
          expect([bs.payload.readUInt32BE(0), bs.payload.readUInt32BE(4), bs.payload.readUInt32BE(8)]).toEqual([512, 4096, 1024 * KiB]);
        }
      }
    }
    const g = d.option(opt(O.GO, infoGoData('ro', [3])));
    expect(types(g)).not.toContain(R.ERR_BLOCK_SIZE_REQD);
  });

  it('option.info-go-consistent: INFO then an identical GO report identical information', () => {
    for (const sr of [false, true]) {
      const d = startHandshake();
      if (sr) d.option(opt(O.STRUCTURED_REPLY));
      const data = infoGoData('disk', [3, 1, 2]);
      const info = d.option(opt(O.INFO, data)).filter((r) => r.type === R.INFO);
      const go = d.option(opt(O.GO, data)).filter((r) => r.type === R.INFO);
      const key = (rs: OptionReply[]) => rs.map((r) => r.data.toString('hex')).sort();
      expect(key(go)).toEqual(key(info));
      const flags = infoOf(go.find((r) => infoOf(r).info === 0)!).payload.readUInt16BE(8);
      expect(flags & FLAG.NBD_FLAG_SEND_DF).toBe(sr ? FLAG.NBD_FLAG_SEND_DF : 0);
    }
  });

  it('option.unexpected-data: LIST / STARTTLS / STRUCTURED_REPLY / EXTENDED_HEADERS with data get ERR_INVALID', () => {
    const d = startHandshake({ tls: 'optional' });
    for (const code of [O.LIST, O.STARTTLS, O.STRUCTURED_REPLY, O.EXTENDED_HEADERS]) {
      const replies = d.option(opt(code, Buffer.from([0])));
      expect(replies).toEqual([expect.objectContaining({ option: code, type: R.ERR_INVALID })]);
    }
    // Nothing was enabled by the rejected options.
    expect(types(d.option(opt(O.SET_META_CONTEXT, metaData('disk', ['base:allocation']))))).toEqual([R.ERR_INVALID]);
    expect(d.value()).toBe('options');
  });

  it('option.length-mismatch: malformed META_CONTEXT lengths get ERR_INVALID (MUST)', () => {
    const d = startHandshake();
    d.option(opt(O.STRUCTURED_REPLY));
    const good = metaData('disk', ['base:allocation']);
    const badQueryLen = Buffer.from(good);
    badQueryLen.writeUInt32BE(1000, 4 + 4 + 4); // query length runs past the option
    const badCount = Buffer.from(good);
    badCount.writeUInt32BE(5, 8); // 5 queries announced, 1 present
    const badName = Buffer.from(good);
    badName.writeUInt32BE(good.length, 0);
    for (const code of [O.LIST_META_CONTEXT, O.SET_META_CONTEXT]) {
      for (const data of [badQueryLen, badCount, badName, Buffer.alloc(7), Buffer.concat([good, Buffer.from([1])])]) {
        expect(d.option(opt(code, data))).toEqual([expect.objectContaining({ option: code, type: R.ERR_INVALID })]);
      }
    }
  });

  function metaNames(replies: readonly OptionReply[]) {
    return replies.filter((r) => r.type === R.META_CONTEXT).map((r) => ({ id: r.data.readUInt32BE(0), name: r.data.subarray(4).toString() }));
  }

  it('option.meta-context-query, option.meta-context-reply: LIST — unknown namespaces and unknown base: leaves are ignored; base: is a wildcard; Q = 0 lists all', () => {
    const d = startHandshake();
    d.option(opt(O.STRUCTURED_REPLY));
    const list = (qs: string[]) => d.option(opt(O.LIST_META_CONTEXT, metaData('disk', qs)));
    expect(metaNames(list(['qemu:dirty-bitmap:x', 'x-foo:bar', 'base:nonesuch']))).toEqual([]);
    expect(types(list(['qemu:dirty-bitmap:x']))).toEqual([R.ACK]); // no match ⇒ just ACK
    expect(metaNames(list(['base:']))).toEqual([{ id: 0, name: 'base:allocation' }]);
    expect(metaNames(list([]))).toEqual([{ id: 0, name: 'base:allocation' }]);
    expect(metaNames(list(['x:y', 'base:allocation']))).toEqual([{ id: 0, name: 'base:allocation' }]);
  });

  it('option.meta-context-query: LIST before structured replies is allowed (server MAY refuse; we answer)', () => {
    const d = startHandshake();
    expect(types(d.option(opt(O.LIST_META_CONTEXT, metaData('disk', []))))).toEqual([R.META_CONTEXT, R.ACK]);
  });

  it('option.meta-context-query, option.meta-context-reply: SET — base: alone and unknown namespaces/leaves are ignored; base:allocation gets a unique id; ACK last', () => {
    const d = startHandshake();
    d.option(opt(O.STRUCTURED_REPLY));
    const set = (qs: string[]) => d.option(opt(O.SET_META_CONTEXT, metaData('disk', qs)));
    expect(types(set(['base:', 'foo:bar', 'base:nonesuch']))).toEqual([R.ACK]);
    expect(types(set([]))).toEqual([R.ACK]);
    const r = set(['base:allocation', 'base:allocation', 'x:y']);
    expect(types(r)).toEqual([R.META_CONTEXT, R.ACK]);
    const ids = metaNames(r).map((m) => m.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(metaNames(r)).toEqual([{ id: BASE_ALLOCATION_ID, name: 'base:allocation' }]);
  });

  it('option.meta-context-replace: SET replaces the previous selection, even when the new SET fails', () => {
    const negotiate = (second: Buffer | undefined) => {
      const d = startHandshake();
      withBaseAllocation(d);
      if (second) d.option(opt(O.SET_META_CONTEXT, second));
      d.option(opt(O.GO, infoGoData('disk')));
      return (outcome(d) as Extract<HandshakeOutcome, { outcome: 'negotiated' }>).negotiated.metaContexts;
    };
    expect(negotiate(undefined)).toEqual([{ id: BASE_ALLOCATION_ID, name: 'base:allocation' }]);
    expect(negotiate(metaData('disk', []))).toEqual([]); // replaced by an empty selection
    expect(negotiate(metaData('nope', ['base:allocation']))).toEqual([]); // failed (ERR_UNKNOWN): still replaced
    expect(negotiate(Buffer.alloc(3))).toEqual([]); // failed (ERR_INVALID): still replaced
  });

  it('option.meta-context-export: a selection only applies to the export it was made for', () => {
    const d = startHandshake();
    withBaseAllocation(d);
    d.option(opt(O.GO, infoGoData('ro')));
    expect(outcome(d)).toMatchObject({ outcome: 'negotiated', negotiated: { export: { name: 'ro' }, metaContexts: [] } });
  });

  it('option.meta-context-needs-structured: SET_META_CONTEXT before structured replies gets ERR_INVALID', () => {
    const d = startHandshake({ extendedHeaders: false });
    expect(types(d.option(opt(O.SET_META_CONTEXT, metaData('disk', ['base:allocation']))))).toEqual([R.ERR_INVALID]);
    // …and after SR it works.
    d.option(opt(O.STRUCTURED_REPLY));
    expect(types(d.option(opt(O.SET_META_CONTEXT, metaData('disk', ['base:allocation']))))).toEqual([R.META_CONTEXT, R.ACK]);
  });

  it('tls.starttls-resets: STARTTLS success forgets structured replies, extended headers and meta contexts', () => {
    const d = startHandshake({ tls: 'optional' });
    withBaseAllocation(d);
    expect(types(d.option(opt(O.EXTENDED_HEADERS)))).toEqual([R.ACK]);
    const out = d.send(opt(O.STARTTLS));
    expect(out.map((e) => e.type)).toEqual(['send', 'startTls']);
    expect(d.value()).toBe('upgradingTls');
    d.send({ type: 'tls.established' });
    expect(d.value()).toBe('options');
    // SR is gone: SET needs it again (option.meta-context-needs-structured), and SR can be negotiated afresh (not a repeat).
    expect(types(d.option(opt(O.SET_META_CONTEXT, metaData('disk', ['base:allocation']))))).toEqual([R.ERR_INVALID]);
    d.option(opt(O.GO, infoGoData('disk')));
    expect(outcome(d)).toMatchObject({
      outcome: 'negotiated',
      negotiated: { structuredReplies: false, extendedHeaders: false, metaContexts: [], tls: true },
    });
    const n = (outcome(d) as Extract<HandshakeOutcome, { outcome: 'negotiated' }>).negotiated;
    expect(n.flags & FLAG.NBD_FLAG_SEND_DF).toBe(0);
  });

  it('option.structured-reply: ACK switches replies to structured; a repeat gets ERR_INVALID; disabled ⇒ ERR_UNSUP', () => {
    const d = startHandshake();
    expect(types(d.option(opt(O.STRUCTURED_REPLY)))).toEqual([R.ACK]);
    expect(types(d.option(opt(O.STRUCTURED_REPLY)))).toEqual([R.ERR_INVALID]);
    d.option(opt(O.GO, infoGoData('disk')));
    expect(outcome(d)).toMatchObject({ outcome: 'negotiated', negotiated: { structuredReplies: true, extendedHeaders: false } });
    expect(types(startHandshake({ structuredReplies: false }).option(opt(O.STRUCTURED_REPLY)))).toEqual([R.ERR_UNSUP]);
  });

  it('option.extended-headers: ACK implies structured replies; a repeat gets ERR_INVALID, STRUCTURED_REPLY ERR_EXT_HEADER_REQD; EXPORT_NAME afterwards terminates', () => {
    const d = startHandshake();
    expect(types(d.option(opt(O.EXTENDED_HEADERS)))).toEqual([R.ACK]);
    expect(types(d.option(opt(O.EXTENDED_HEADERS)))).toEqual([R.ERR_INVALID]);
    expect(types(d.option(opt(O.STRUCTURED_REPLY)))).toEqual([R.ERR_EXT_HEADER_REQD]);
    const out = d.send(opt(O.EXPORT_NAME, Buffer.from('disk')));
    expect(out.filter((e) => e.type === 'send')).toEqual([]);
    expect(closes(out)).toEqual([expect.objectContaining({ hard: true, reason: expect.stringMatching(/^option\.extended-headers: /) })]);
    expect(d.value()).toBe('rejected');
    const g = startHandshake();
    g.option(opt(O.EXTENDED_HEADERS));
    g.option(opt(O.GO, infoGoData('disk')));
    expect(outcome(g)).toMatchObject({ outcome: 'negotiated', negotiated: { structuredReplies: true, extendedHeaders: true } });
    expect(types(startHandshake({ extendedHeaders: false }).option(opt(O.EXTENDED_HEADERS)))).toEqual([R.ERR_UNSUP]);
  });

  it('tls.starttls-resets, option.structured-reply: after STARTTLS, STRUCTURED_REPLY is accepted again (not treated as a repeat)', () => {
    const d = startHandshake({ tls: 'optional' });
    d.option(opt(O.STRUCTURED_REPLY));
    d.send(opt(O.STARTTLS));
    d.send({ type: 'tls.established' });
    expect(types(d.option(opt(O.STRUCTURED_REPLY)))).toEqual([R.ACK]);
  });

  describe('tls.mode-notls, tls.mode-forcedtls, tls.mode-selectivetls: the TLS modes', () => {
    const allOptions = (): Array<[number, Buffer | undefined]> => [
      [O.LIST, undefined],
      [O.INFO, infoGoData('disk')],
      [O.INFO, infoGoData('secret')],
      [O.INFO, infoGoData('nope')],
      [O.STRUCTURED_REPLY, undefined],
      [O.EXTENDED_HEADERS, undefined],
      [O.LIST_META_CONTEXT, metaData('disk', [])],
      [O.SET_META_CONTEXT, metaData('disk', [])],
      [O.PEEK_EXPORT, undefined],
      [99, Buffer.from('x')],
      [O.GO, infoGoData('disk')],
    ];

    it('tls.mode-notls: NOTLS — STARTTLS gets ERR_POLICY and no option ever gets ERR_TLS_REQD', () => {
      const d = startHandshake({ tls: 'off' });
      expect(types(d.option(opt(O.STARTTLS)))).toEqual([R.ERR_POLICY]);
      for (const [code, data] of allOptions()) {
        const replies = d.option(opt(code, data));
        expect(types(replies)).not.toContain(R.ERR_TLS_REQD);
      }
      expect(d.value()).toBe('negotiated');
    });

    it('tls.mode-notls: NOTLS — a TLS-only export is served without ERR_TLS_REQD', () => {
      const d = startHandshake({ tls: 'off' });
      expect(types(d.option(opt(O.INFO, infoGoData('secret'))))).toEqual([R.INFO, R.ACK]);
    });

    it('tls.mode-forcedtls: FORCEDTLS — every option but STARTTLS/ABORT gets ERR_TLS_REQD before TLS', () => {
      const d = startHandshake({ tls: 'required' });
      for (const [code, data] of allOptions()) {
        expect(d.option(opt(code, data)), `option ${code}`).toEqual([expect.objectContaining({ option: code, type: R.ERR_TLS_REQD })]);
      }
      expect(d.value()).toBe('options');
    });

    it('tls.mode-forcedtls: FORCEDTLS — an oversized option before TLS still gets ERR_TLS_REQD', () => {
      const d = startHandshake({ tls: 'required' });
      const big = opt(O.GO, infoGoData('x'.repeat(200)), { maxOptionLength: 64 });
      expect((big as { frame: { problem?: { reply: string } } }).frame.problem?.reply).toBe('NBD_REP_ERR_TOO_BIG');
      expect(types(d.option(big))).toEqual([R.ERR_TLS_REQD]);
    });

    it('tls.mode-forcedtls: FORCEDTLS — EXPORT_NAME before TLS terminates', () => {
      const d = startHandshake({ tls: 'required' });
      const out = d.send(opt(O.EXPORT_NAME, Buffer.from('disk')));
      expect(closes(out)).toEqual([expect.objectContaining({ hard: true, reason: expect.stringMatching(/^tls\.mode-forcedtls: EXPORT_NAME before TLS/) })]);
      expect(d.value()).toBe('rejected');
    });

    it('tls.mode-forcedtls, option.abort-ack: FORCEDTLS — ABORT before TLS is ACKed', () => {
      const d = startHandshake({ tls: 'required' });
      expect(types(d.option(opt(O.ABORT)))).toEqual([R.ACK]);
    });

    it('tls.mode-forcedtls, tls.starttls-repeat: FORCEDTLS — STARTTLS is ACKed, after TLS no ERR_TLS_REQD and a second STARTTLS gets ERR_INVALID', () => {
      const d = startHandshake({ tls: 'required' });
      expect(types(d.option(opt(O.STARTTLS)))).toEqual([R.ACK]);
      d.send({ type: 'tls.established' });
      expect(types(d.option(opt(O.STARTTLS)))).toEqual([R.ERR_INVALID]);
      for (const [code, data] of allOptions()) {
        expect(types(d.option(opt(code, data)))).not.toContain(R.ERR_TLS_REQD);
      }
      expect(outcome(d)).toMatchObject({ outcome: 'negotiated', negotiated: { tls: true } });
    });

    it('tls.handshake-failed: a failed TLS handshake terminates', () => {
      const d = startHandshake({ tls: 'required' });
      d.send(opt(O.STARTTLS));
      const out = d.send({ type: 'tls.failed', message: 'bad cert' });
      expect(closes(out)).toEqual([expect.objectContaining({ hard: true })]);
      expect(outcome(d).outcome).toBe('rejected');
    });

    it('tls.mode-selectivetls: SELECTIVETLS — only INFO/GO for a TLS-only export get ERR_TLS_REQD; LIST hides it', () => {
      const d = startHandshake({ tls: 'optional' });
      expect(types(d.option(opt(O.INFO, infoGoData('secret'))))).toEqual([R.ERR_TLS_REQD]);
      expect(types(d.option(opt(O.GO, infoGoData('secret'))))).toEqual([R.ERR_TLS_REQD]);
      const list = d.option(opt(O.LIST));
      const names = list.filter((r) => r.type === R.SERVER).map((r) => r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString());
      expect(names).toEqual(['disk', 'ro']);
      for (const [code, data] of allOptions()) {
        if (code === O.INFO || code === O.GO || code === O.LIST_META_CONTEXT || code === O.SET_META_CONTEXT) continue;
        expect(types(d.option(opt(code, data)))).not.toContain(R.ERR_TLS_REQD);
      }
    });

    it('tls.mode-selectivetls: SELECTIVETLS — after TLS the TLS-only export is served and listed', () => {
      const d = startHandshake({ tls: 'optional' });
      d.send(opt(O.STARTTLS));
      d.send({ type: 'tls.established' });
      expect(types(d.option(opt(O.LIST)))).toEqual([R.SERVER, R.SERVER, R.SERVER, R.ACK]);
      expect(types(d.option(opt(O.GO, infoGoData('secret'))))).toEqual([R.INFO, R.ACK]);
    });
  });

  it('general.string-limits, option.export-name-terminates: EXPORT_NAME with a NUL byte, invalid UTF-8 or over 4096 bytes terminates', () => {
    for (const name of [Buffer.from('di\0sk'), Buffer.from([0xc3, 0x28]), Buffer.alloc(4097, 0x61)]) {
      const d = startHandshake();
      d.send(opt(O.EXPORT_NAME, name));
      expect(d.value()).toBe('rejected');
    }
  });

  it('general.string-limits: INFO/GO/META_CONTEXT names and queries with NUL, bad UTF-8 or > 4096 bytes get ERR_INVALID', () => {
    const d = startHandshake();
    d.option(opt(O.STRUCTURED_REPLY));
    const bad = ['a\0b', 'x'.repeat(4097)];
    for (const s of bad) {
      expect(types(d.option(opt(O.INFO, infoGoData(s))))).toEqual([R.ERR_INVALID]);
      expect(types(d.option(opt(O.LIST_META_CONTEXT, metaData('disk', [s]))))).toEqual([R.ERR_INVALID]);
      expect(types(d.option(opt(O.SET_META_CONTEXT, metaData(s, []))))).toEqual([R.ERR_INVALID]);
    }
    const badUtf8 = Buffer.concat([u32(2), Buffer.from([0xff, 0xfe]), Buffer.from([0, 0])]);
    expect(types(d.option(opt(O.GO, badUtf8)))).toEqual([R.ERR_INVALID]);
  });

  it('general.string-limits, option.error-text: error messages we emit are ≤ 4096 bytes and contain no NUL', () => {
    const long = encodeOptionError(7, 'NBD_REP_ERR_INVALID', `x\0${'é'.repeat(5000)}`);
    const r = parseOptionReply(long);
    expect(r.data.length).toBeLessThanOrEqual(4096);
    expect(r.data.includes(0)).toBe(false);
    // And the machine's own messages (from decoder problems) are within the limit.
    const d = startHandshake();
    for (const e of d.option(opt(O.GO, Buffer.alloc(5)))) expect(e.data.length).toBeLessThanOrEqual(4096);
  });

  it('option.errors-not-disconnects: bad options are answered with errors, never a hard disconnect', () => {
    const d = startHandshake({ tls: 'off' });
    const bad: Array<[number, Buffer | undefined]> = [
      [O.INFO, Buffer.alloc(3)],
      [O.GO, infoGoData('nope')],
      [O.LIST, Buffer.from('x')],
      [O.SET_META_CONTEXT, metaData('disk', [])],
      [O.STARTTLS, undefined],
      [1234, Buffer.alloc(10)],
      [O.STRUCTURED_REPLY, Buffer.from('y')],
    ];
    for (let round = 0; round < 3; round++) {
      for (const [code, data] of bad) {
        const out = d.send(opt(code, data));
        expect(closes(out)).toEqual([]);
        expect(finalOf(out.map((e) => parseOptionReply((e as { frame: Buffer[] }).frame)), code).type & 0x80000000).not.toBe(0);
      }
    }
    expect(d.value()).toBe('options');
  });

  it('option.shutting-down: while shutting down every option but ABORT gets ERR_SHUTDOWN', () => {
    const d = startHandshake({ tls: 'required' });
    d.send({ type: 'server.shutdown' });
    for (const code of [O.LIST, O.INFO, O.GO, O.STARTTLS, O.STRUCTURED_REPLY, O.EXTENDED_HEADERS, O.LIST_META_CONTEXT, O.SET_META_CONTEXT, 77]) {
      const data = code === O.INFO || code === O.GO ? infoGoData('disk') : code === O.LIST_META_CONTEXT || code === O.SET_META_CONTEXT ? metaData('disk', []) : undefined;
      expect(types(d.option(opt(code, data)))).toEqual([R.ERR_SHUTDOWN]);
    }
    expect(types(d.option(opt(O.ABORT)))).toEqual([R.ACK]);
  });

  it('option.too-many-options, option.errors-not-disconnects: the DoS guard (too many options) is the only option-phase hard disconnect', () => {
    const d = startHandshake({ maxOptions: 4 });
    for (let i = 0; i < 4; i++) expect(types(d.option(opt(O.LIST)))).toContain(R.ACK);
    const out = d.send(opt(O.LIST));
    expect(closes(out)).toEqual([expect.objectContaining({ hard: true })]);
    expect(d.value()).toBe('rejected');
  });

  it('handshake.fixed-newstyle-required, option.errors-not-disconnects: without fixed newstyle, non-EXPORT_NAME options are errored (not dropped) and EXPORT_NAME works', () => {
    const d = startHandshake({}, 0);
    expect(types(d.option(opt(O.LIST)))).toEqual([R.ERR_INVALID]);
    expect(types(d.option(opt(O.GO, infoGoData('disk'))))).toEqual([R.ERR_INVALID]);
    d.send(opt(O.EXPORT_NAME, Buffer.from('disk')));
    expect(d.value()).toBe('negotiated');
  });
});

// ═══ Transmission ════════════════════════════════════════════════════════

const ALL_FLAGS =
  FLAG.NBD_FLAG_SEND_FLUSH |
  FLAG.NBD_FLAG_SEND_FUA |
  FLAG.NBD_FLAG_SEND_TRIM |
  FLAG.NBD_FLAG_SEND_WRITE_ZEROES |
  FLAG.NBD_FLAG_SEND_CACHE |
  FLAG.NBD_FLAG_SEND_FAST_ZERO;

function exportOf(over: Partial<ExportDescriptor> = {}): ExportDescriptor {
  return { name: 'e', size: 1 << 20, flags: ALL_FLAGS, blockSizes: { minimum: 1, preferred: 4096, maximum: 1 << 25 }, ...over };
}

/** A transmission driver for an export negotiated the way the handshake would. */
function tx(over: Partial<ExportDescriptor> = {}, opts: { sr?: boolean; eh?: boolean; contexts?: boolean } = {}) {
  const exp = exportOf(over);
  const sr = !!opts.sr || !!opts.eh;
  return startTransmission({
    negotiated: negotiatedFor(exp, {
      flags: advertisedFlags(exp, sr),
      structuredReplies: sr,
      extendedHeaders: !!opts.eh,
      metaContexts: opts.contexts ? [{ id: BASE_ALLOCATION_ID, name: 'base:allocation' }] : [],
    }),
  });
}

function accepted(out: readonly { type: string }[], cookie?: bigint) {
  expect(out).toHaveLength(1);
  expect(out[0]!.type).toBe('request');
  if (cookie !== undefined) expect((out[0] as unknown as { frame: { cookie: bigint } }).frame.cookie).toBe(cookie);
}

function refused(out: readonly { type: string }[], errno: number, cookie?: bigint) {
  expect(out).toHaveLength(1);
  expect(out[0]).toMatchObject({ type: 'refuse', errno });
  if (cookie !== undefined) expect((out[0] as unknown as { frame: { cookie: bigint } }).frame.cookie).toBe(cookie);
}

describe('transmission rules (transmission machine, replies)', () => {
  it('transmission.flags-advertised: HAS_FLAGS always; SEND_DF only with SR; FAST_ZERO only with WRITE_ZEROES; never BLOCK_STATUS_PAYLOAD/RESIZE', () => {
    for (let flags = 0; flags < 1 << 13; flags += 7) {
      for (const sr of [false, true]) {
        const f = advertisedFlags(exportOf({ flags }), sr);
        expect(f & FLAG.NBD_FLAG_HAS_FLAGS).toBe(1);
        expect((f & FLAG.NBD_FLAG_SEND_DF) !== 0).toBe(sr);
        if (!(f & FLAG.NBD_FLAG_SEND_WRITE_ZEROES)) expect(f & FLAG.NBD_FLAG_SEND_FAST_ZERO).toBe(0);
        expect(f & (FLAG.NBD_FLAG_BLOCK_STATUS_PAYLOAD | FLAG.NBD_FLAG_SEND_RESIZE)).toBe(0);
      }
    }
  });

  it('transmission.flags-advertised, option.info-export: the flags in NBD_INFO_EXPORT come from the same rule', () => {
    const d = startHandshake({ exports: [exportOf({ name: 'disk', flags: FLAG.NBD_FLAG_SEND_FAST_ZERO | FLAG.NBD_FLAG_SEND_DF | FLAG.NBD_FLAG_BLOCK_STATUS_PAYLOAD })] });
    const r = d.option(opt(O.INFO, infoGoData('disk')));
    expect(infoOf(r[0]!).payload.readUInt16BE(8)).toBe(FLAG.NBD_FLAG_HAS_FLAGS);
  });

  it('transmission.command-not-advertised: commands whose flag was not advertised are refused (EINVAL)', () => {
    const t = tx({ flags: 0 });
    for (const type of [CMD.NBD_CMD_FLUSH, CMD.NBD_CMD_TRIM, CMD.NBD_CMD_WRITE_ZEROES, CMD.NBD_CMD_CACHE]) {
      refused(t.request({ type, cookie: BigInt(type) }), ERRNO.NBD_EINVAL, BigInt(type));
    }
  });

  it('reply.cookie-echo: accepted and refused requests carry their cookie; replies echo it byte for byte', () => {
    const t = tx();
    const cookies = [0n, 1n, 0xffffffffffffffffn, 0x0123456789abcdefn];
    for (const cookie of cookies) {
      accepted(t.request({ type: CMD.NBD_CMD_READ, cookie, length: 1 }), cookie);
      refused(t.request({ type: 99, cookie }), ERRNO.NBD_EINVAL, cookie);
      expect(parseSimple(replyOk('simple', cookie, 0)).cookie).toBe(cookie);
      expect(parseSimple(replyError('simple', cookie, 0, 5, undefined, 0)).cookie).toBe(cookie);
      for (const mode of ['structured', 'extended'] as const) {
        const chunks = [
          ...parseChunks(replyRead(mode, cookie, 0, [{ data: Buffer.alloc(3) }, { hole: 5 }])),
          ...parseChunks(replyError(mode, cookie, 0, 5, 'x', 0)),
          ...parseChunks(replyBlockStatus(mode, cookie, 0, [{ id: 1, extents: [{ length: 4, flags: 0 }] }])),
        ];
        for (const c of chunks) expect(c.cookie).toBe(cookie);
      }
    }
  });

  it('reply.negotiated-mode: simple replies without SR; READ (even its errors) structured with SR; never simple with EH', () => {
    expect(replyModeOf(false, false)).toBe('simple');
    expect(replyModeOf(true, false)).toBe('structured');
    expect(replyModeOf(true, true)).toBe('extended');
    expect(replyModeOf(false, true)).toBe('extended');
    // simple: every reply begins with the simple magic
    expect(parseSimple(replyOk('simple', 1n, 0)).magic).toBe(SIMPLE_MAGIC);
    expect(parseSimple(replyError('simple', 1n, CMD.NBD_CMD_READ, 5, 'm', 0)).magic).toBe(SIMPLE_MAGIC);
    expect(parseSimple(replyRead('simple', 1n, 0, [{ data: Buffer.alloc(4) }])).magic).toBe(SIMPLE_MAGIC);
    // structured: READ data and READ errors are chunks
    expect(parseChunks(replyRead('structured', 1n, 0, [{ data: Buffer.alloc(4) }]))[0]!.magic).toBe(STRUCTURED_MAGIC);
    expect(parseChunks(replyError('structured', 1n, CMD.NBD_CMD_READ, 5, undefined, 0))[0]!.magic).toBe(STRUCTURED_MAGIC);
    expect(needsStructured('structured', CMD.NBD_CMD_READ)).toBe(true);
    expect(needsStructured('simple', CMD.NBD_CMD_READ)).toBe(false);
    // extended: nothing is simple
    for (const frame of [
      replyOk('extended', 1n, 8),
      replyError('extended', 1n, CMD.NBD_CMD_WRITE, 5, undefined, 8),
      replyRead('extended', 1n, 8, [{ data: Buffer.alloc(4) }]),
      replyRead('extended', 1n, 8, []),
      replyBlockStatus('extended', 1n, 8, [{ id: 1, extents: [{ length: 4, flags: 0 }] }]),
    ]) {
      const chunks = parseChunks(frame);
      for (const c of chunks) {
        expect(c.magic).toBe(EXTENDED_MAGIC);
        expect(c.requestOffset).toBe(8n); // MUST equal the request's offset
      }
    }
  });

  it('reply.simple-read: simple READ reply carries exactly `length` bytes after a zero error, none after an error', () => {
    const data = Buffer.from('abcdef');
    const r = parseSimple(replyRead('simple', 7n, 100, [{ data: data.subarray(0, 2) }, { hole: 3 }, { data: data.subarray(2) }]));
    expect(r.error).toBe(0);
    expect(r.data).toEqual(Buffer.concat([Buffer.from('ab'), Buffer.alloc(3), Buffer.from('cdef')]));
    const e = parseSimple(replyError('simple', 7n, CMD.NBD_CMD_READ, ERRNO.NBD_EIO, 'boom', 100));
    expect(e.error).toBe(ERRNO.NBD_EIO);
    expect(e.data).toHaveLength(0);
  });

  it('reply.structured-chunks: structured replies end with exactly one DONE chunk; NONE only with DONE and length 0; READ chunks tile the range', () => {
    const segs = [{ data: Buffer.alloc(512, 1) }, { hole: 1024 }, { data: Buffer.alloc(0) }, { data: Buffer.alloc(7, 2) }];
    const chunks = parseChunks(replyRead('structured', 9n, 4096, segs));
    expect(chunks.map((c) => c.flags & REPLY_FLAG.NBD_REPLY_FLAG_DONE)).toEqual([0, 0, 1]);
    let at = 4096;
    for (const c of chunks) {
      expect(Number(c.payload.readBigUInt64BE(0))).toBe(at);
      const len = c.type === REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_DATA ? c.payload.length - 8 : c.payload.readUInt32BE(8);
      expect(len).toBeGreaterThan(0);
      at += len;
    }
    expect(at).toBe(4096 + 512 + 1024 + 7);
    const none = parseChunks(replyRead('structured', 9n, 0, []));
    expect(none).toEqual([expect.objectContaining({ type: REPLY_TYPE.NBD_REPLY_TYPE_NONE, flags: REPLY_FLAG.NBD_REPLY_FLAG_DONE })]);
    expect(none[0]!.payload).toHaveLength(0);
    const err = parseChunks(replyError('structured', 9n, CMD.NBD_CMD_READ, ERRNO.NBD_EIO, 'disk on fire', 0));
    expect(err).toHaveLength(1);
    expect(err[0]).toMatchObject({ type: REPLY_TYPE.NBD_REPLY_TYPE_ERROR, flags: REPLY_FLAG.NBD_REPLY_FLAG_DONE });
    expect(err[0]!.payload.readUInt32BE(0)).toBe(ERRNO.NBD_EIO);
    const ml = err[0]!.payload.readUInt16BE(4);
    expect(err[0]!.payload.subarray(6, 6 + ml).toString()).toBe('disk on fire');
  });

  it('transmission.payload-consumed, transmission.payload-too-large: a refused WRITE has its payload consumed, and the next request still parses', () => {
    const dec = new FrameDecoder({ maxPayload: 1024 });
    dec.push(u32(3));
    dec.next();
    dec.startTransmission(false);
    const payload = Buffer.alloc(512, 0x5a);
    const big = Buffer.alloc(4096, 0x66); // over maxPayload: skipped, never buffered
    dec.push(
      Buffer.concat([
        requestBytes(CMD.NBD_CMD_WRITE, 1n, 0, 512, 0, payload),
        requestBytes(CMD.NBD_CMD_WRITE, 2n, 0, big.length, 0, big),
        requestBytes(CMD.NBD_CMD_READ, 3n, 0, 512),
      ]),
    );
    const w = dec.next();
    expect(w).toMatchObject({ kind: 'request', cookie: 1n, payloadDiscarded: false });
    expect((w as { payload: Buffer }).payload).toEqual(payload);
    const b = dec.next();
    expect(b).toMatchObject({ kind: 'request', cookie: 2n, payloadDiscarded: true, payload: undefined });
    expect(dec.next()).toMatchObject({ kind: 'request', cookie: 3n, type: CMD.NBD_CMD_READ });
    expect(dec.bufferedBytes).toBe(0);
    // The machine refuses both WRITEs on a read-only export / the oversized one anywhere.
    const t = tx({ flags: FLAG.NBD_FLAG_READ_ONLY });
    refused(t.send({ type: 'request', frame: w as never }), ERRNO.NBD_EPERM, 1n);
    const t2 = tx();
    refused(t2.send({ type: 'request', frame: b as never }), ERRNO.NBD_EINVAL, 2n);
  });

  it('transmission.write-read-only: read-only export refuses WRITE / TRIM / WRITE_ZEROES with EPERM, serves READ', () => {
    const t = tx({ flags: FLAG.NBD_FLAG_READ_ONLY | ALL_FLAGS });
    refused(t.request({ type: CMD.NBD_CMD_WRITE, length: 4, payload: Buffer.alloc(4) }), ERRNO.NBD_EPERM);
    refused(t.request({ type: CMD.NBD_CMD_TRIM, length: 4 }), ERRNO.NBD_EPERM);
    refused(t.request({ type: CMD.NBD_CMD_WRITE_ZEROES, length: 4 }), ERRNO.NBD_EPERM);
    // EPERM wins over every other reason (nbdkit checks read-only first).
    refused(t.request({ type: CMD.NBD_CMD_WRITE, offset: 1 << 30, length: 4, payloadDiscarded: true, flags: 0x8000 }), ERRNO.NBD_EPERM);
    accepted(t.request({ type: CMD.NBD_CMD_READ, length: 4 }));
    accepted(t.request({ type: CMD.NBD_CMD_FLUSH }));
    // The refusal's message (sent in a structured error chunk, and logged) starts with the rule's ID.
    expect(t.request({ type: CMD.NBD_CMD_TRIM, length: 4 })).toEqual([
      expect.objectContaining({ type: 'refuse', errno: ERRNO.NBD_EPERM, message: 'transmission.write-read-only: write to a read-only export' }),
    ]);
  });

  it('transmission.out-of-bounds, transmission.write-out-of-bounds: past the end — READ/TRIM/CACHE/BLOCK_STATUS get EINVAL, WRITE/WRITE_ZEROES get ENOSPC', () => {
    const t = tx({ size: 4096 }, { sr: true, contexts: true });
    for (const type of [CMD.NBD_CMD_READ, CMD.NBD_CMD_TRIM, CMD.NBD_CMD_CACHE, CMD.NBD_CMD_BLOCK_STATUS]) {
      refused(t.request({ type, offset: 4000, length: 97 }), ERRNO.NBD_EINVAL);
      refused(t.request({ type, offset: 4097, length: 0 }), ERRNO.NBD_EINVAL);
      refused(t.request({ type, offset: Number.MAX_SAFE_INTEGER, length: 1, huge: true }), ERRNO.NBD_EINVAL);
      accepted(t.request({ type, offset: 4000, length: 96 }));
    }
    for (const type of [CMD.NBD_CMD_WRITE, CMD.NBD_CMD_WRITE_ZEROES]) {
      refused(t.request({ type, offset: 4000, length: 97 }), ERRNO.NBD_ENOSPC);
      refused(t.request({ type, offset: Number.MAX_SAFE_INTEGER, length: 1, huge: true }), ERRNO.NBD_ENOSPC);
      // ENOSPC wins over EINVAL reasons (e.g. FUA not advertised), as in nbdkit.
      refused(tx({ size: 4096, flags: FLAG.NBD_FLAG_SEND_WRITE_ZEROES }).request({ type, offset: 4096, length: 1, flags: CMD_FLAG.NBD_CMD_FLAG_FUA }), ERRNO.NBD_ENOSPC);
      accepted(t.request({ type, offset: 4000, length: 96 }));
    }
  });

  it('transmission.misaligned-request: offsets/lengths not multiples of the advertised minimum block get EINVAL', () => {
    const t = tx({ blockSizes: { minimum: 512, preferred: 4096, maximum: 1 << 20 } });
    refused(t.request({ type: CMD.NBD_CMD_READ, offset: 1, length: 512 }), ERRNO.NBD_EINVAL);
    refused(t.request({ type: CMD.NBD_CMD_READ, offset: 512, length: 511 }), ERRNO.NBD_EINVAL);
    refused(t.request({ type: CMD.NBD_CMD_TRIM, offset: 100, length: 512 }), ERRNO.NBD_EINVAL);
    accepted(t.request({ type: CMD.NBD_CMD_READ, offset: 1024, length: 4096 }));
    accepted(t.request({ type: CMD.NBD_CMD_FLUSH })); // not ranged
  });

  it('transmission.unknown-command: unknown commands (incl. experimental RESIZE) get EINVAL', () => {
    const t = tx();
    for (const type of [CMD.NBD_CMD_RESIZE, 9, 100, 0xffff]) refused(t.request({ type }), ERRNO.NBD_EINVAL);
  });

  it('transmission.unknown-flag, transmission.flag-not-for-command: unknown flag bits and flags not valid for the command get EINVAL', () => {
    const t = tx({}, { sr: true, contexts: true });
    for (let bit = 5; bit < 16; bit++) refused(t.request({ type: CMD.NBD_CMD_READ, flags: 1 << bit }), ERRNO.NBD_EINVAL);
    refused(t.request({ type: CMD.NBD_CMD_WRITE, flags: CMD_FLAG.NBD_CMD_FLAG_NO_HOLE }), ERRNO.NBD_EINVAL);
    refused(t.request({ type: CMD.NBD_CMD_TRIM, flags: CMD_FLAG.NBD_CMD_FLAG_FAST_ZERO }), ERRNO.NBD_EINVAL);
    refused(t.request({ type: CMD.NBD_CMD_WRITE, flags: CMD_FLAG.NBD_CMD_FLAG_DF }), ERRNO.NBD_EINVAL);
    refused(t.request({ type: CMD.NBD_CMD_READ, flags: CMD_FLAG.NBD_CMD_FLAG_REQ_ONE }), ERRNO.NBD_EINVAL);
    accepted(t.request({ type: CMD.NBD_CMD_WRITE_ZEROES, length: 8, flags: CMD_FLAG.NBD_CMD_FLAG_NO_HOLE }));
    accepted(t.request({ type: CMD.NBD_CMD_READ, length: 8, flags: CMD_FLAG.NBD_CMD_FLAG_DF }));
    accepted(t.request({ type: CMD.NBD_CMD_BLOCK_STATUS, length: 8, flags: CMD_FLAG.NBD_CMD_FLAG_REQ_ONE }));
  });

  it('transmission.flush-with-range: FLUSH with a non-zero offset or length gets EINVAL', () => {
    const t = tx();
    refused(t.request({ type: CMD.NBD_CMD_FLUSH, offset: 512 }), ERRNO.NBD_EINVAL);
    refused(t.request({ type: CMD.NBD_CMD_FLUSH, length: 1 }), ERRNO.NBD_EINVAL);
    accepted(t.request({ type: CMD.NBD_CMD_FLUSH }));
  });

  it('transmission.fua-durable, transmission.flag-not-advertised: FUA is accepted on every command once SEND_FUA is advertised, refused without it', () => {
    const t = tx({}, { sr: true, contexts: true });
    const fua = CMD_FLAG.NBD_CMD_FLAG_FUA;
    for (const type of [CMD.NBD_CMD_READ, CMD.NBD_CMD_WRITE, CMD.NBD_CMD_FLUSH, CMD.NBD_CMD_TRIM, CMD.NBD_CMD_CACHE, CMD.NBD_CMD_WRITE_ZEROES, CMD.NBD_CMD_BLOCK_STATUS]) {
      accepted(t.request({ type, flags: fua, length: type === CMD.NBD_CMD_FLUSH ? 0 : 8 }));
    }
    const n = tx({ flags: ALL_FLAGS & ~FLAG.NBD_FLAG_SEND_FUA });
    refused(n.request({ type: CMD.NBD_CMD_WRITE, flags: fua, length: 8 }), ERRNO.NBD_EINVAL);
  });

  it('transmission.flush-durable: FLUSH reaches the application (which owns durability) when advertised', () => {
    const t = tx();
    const out = t.request({ type: CMD.NBD_CMD_FLUSH, cookie: 5n });
    accepted(out, 5n);
    expect((out[0] as { frame: { type: number } }).frame.type).toBe(CMD.NBD_CMD_FLUSH);
  });

  it('transmission.write-zeroes-no-hole: NO_HOLE is accepted on WRITE_ZEROES whenever SEND_WRITE_ZEROES is advertised', () => {
    const t = tx({ flags: FLAG.NBD_FLAG_SEND_WRITE_ZEROES });
    accepted(t.request({ type: CMD.NBD_CMD_WRITE_ZEROES, flags: CMD_FLAG.NBD_CMD_FLAG_NO_HOLE, length: 4096 }));
  });

  it('transmission.fast-zero, transmission.flag-not-advertised: FAST_ZERO accepted with SEND_FAST_ZERO, EINVAL without; ENOTSUP only for FAST_ZERO', () => {
    const fz = CMD_FLAG.NBD_CMD_FLAG_FAST_ZERO;
    accepted(tx().request({ type: CMD.NBD_CMD_WRITE_ZEROES, flags: fz, length: 8 }));
    refused(tx({ flags: FLAG.NBD_FLAG_SEND_WRITE_ZEROES }).request({ type: CMD.NBD_CMD_WRITE_ZEROES, flags: fz, length: 8 }), ERRNO.NBD_EINVAL);
    expect(REFUSALS.map((r) => r.errno)).not.toContain(ERRNO.NBD_ENOTSUP);
    expect(hostErrnoToNbd('ENOTSUP')).toBe(ERRNO.NBD_EINVAL);
    expect(hostErrnoToNbd('EOPNOTSUPP', { fastZero: true })).toBe(ERRNO.NBD_ENOTSUP);
  });

  it('reply.df-one-chunk, transmission.flag-not-advertised: DF reads ≤ 64 KiB are served and answered with one content chunk; DF needs SEND_DF', () => {
    const t = tx({}, { sr: true });
    accepted(t.request({ type: CMD.NBD_CMD_READ, flags: CMD_FLAG.NBD_CMD_FLAG_DF, length: 65536 }));
    refused(tx().request({ type: CMD.NBD_CMD_READ, flags: CMD_FLAG.NBD_CMD_FLAG_DF, length: 8 }), ERRNO.NBD_EINVAL);
    const chunks = parseChunks(replyRead('structured', 1n, 0, [{ data: Buffer.alloc(100, 1) }, { hole: 65536 - 200 }, { data: Buffer.alloc(100, 2) }], true));
    expect(chunks).toHaveLength(1);
    expect(chunks[0]).toMatchObject({ type: REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_DATA, flags: REPLY_FLAG.NBD_REPLY_FLAG_DONE });
    expect(chunks[0]!.payload.length - 8).toBe(65536);
  });

  it('reply.df-one-chunk: a DF read longer than one chunk may carry (the advertised maximum, but never below 64 KiB) is refused with EOVERFLOW', () => {
    const df = CMD_FLAG.NBD_CMD_FLAG_DF;
    // Maximum 256 KiB, reads served up to maxPayload (64 MiB by default): without DF they are split, with DF refused.
    const t = tx({ blockSizes: { minimum: 1, preferred: 4096, maximum: 256 * 1024 } }, { sr: true });
    accepted(t.request({ type: CMD.NBD_CMD_READ, flags: df, length: 256 * 1024 }));
    refused(t.request({ type: CMD.NBD_CMD_READ, flags: df, length: 256 * 1024 + 1 }), ERRNO.NBD_EOVERFLOW);
    expect(t.request({ type: CMD.NBD_CMD_READ, flags: df, length: 256 * 1024 + 1 })[0]).toMatchObject({ code: 'reply.df-one-chunk' });
    accepted(t.request({ type: CMD.NBD_CMD_READ, length: 512 * 1024 }));
    // A maximum below 64 KiB: DF reads up to 64 KiB must still work (the spec's MUST), one chunk.
    const small = tx({ blockSizes: { minimum: 1, preferred: 4096, maximum: 4096 } }, { eh: true });
    accepted(small.request({ type: CMD.NBD_CMD_READ, flags: df, length: 65536 }));
    refused(small.request({ type: CMD.NBD_CMD_READ, flags: df, length: 65537 }), ERRNO.NBD_EOVERFLOW);
  });

  it('transmission.block-status-needs-context, reply.block-status-chunks: BLOCK_STATUS only with SR and a selected context; one chunk per context, DONE on the last', () => {
    refused(tx().request({ type: CMD.NBD_CMD_BLOCK_STATUS, length: 8 }), ERRNO.NBD_EINVAL);
    refused(tx({}, { sr: true }).request({ type: CMD.NBD_CMD_BLOCK_STATUS, length: 8 }), ERRNO.NBD_EINVAL);
    accepted(tx({}, { sr: true, contexts: true }).request({ type: CMD.NBD_CMD_BLOCK_STATUS, length: 8 }));
    const chunks = parseChunks(
      replyBlockStatus('structured', 3n, 0, [
        { id: 1, extents: [{ length: 4096, flags: 0 }, { length: 512, flags: 3 }] },
        { id: 2, extents: [{ length: 8, flags: 1 }] },
      ]),
    );
    expect(chunks.map((c) => [c.type, c.flags, c.payload.readUInt32BE(0)])).toEqual([
      [REPLY_TYPE.NBD_REPLY_TYPE_BLOCK_STATUS, 0, 1],
      [REPLY_TYPE.NBD_REPLY_TYPE_BLOCK_STATUS, 1, 2],
    ]);
    expect(chunks[0]!.payload).toHaveLength(4 + 2 * 8);
  });

  it('transmission.cache-hint: CACHE, when advertised, rejects unknown and inapplicable flags', () => {
    const t = tx();
    accepted(t.request({ type: CMD.NBD_CMD_CACHE, length: 4096 }));
    for (const flags of [1 << 6, 1 << 15, CMD_FLAG.NBD_CMD_FLAG_NO_HOLE, CMD_FLAG.NBD_CMD_FLAG_DF, CMD_FLAG.NBD_CMD_FLAG_REQ_ONE]) {
      refused(t.request({ type: CMD.NBD_CMD_CACHE, length: 4096, flags }), ERRNO.NBD_EINVAL);
    }
  });

  it('transmission.disc-drains: DISC gets no reply; the machine drains, then asks for a soft close; later requests get ESHUTDOWN', () => {
    const t = tx();
    accepted(t.request({ type: CMD.NBD_CMD_READ, cookie: 1n, length: 8 }));
    const out = t.request({ type: CMD.NBD_CMD_DISC, cookie: 2n });
    expect(out).toEqual([{ type: 'draining', reason: 'disc' }]);
    expect(t.actor.getSnapshot().value).toBe('draining');
    expect(t.request({ type: CMD.NBD_CMD_DISC, cookie: 3n })).toEqual([]); // a second DISC: nothing
    refused(t.request({ type: CMD.NBD_CMD_READ, cookie: 4n, length: 8 }), ERRNO.NBD_ESHUTDOWN, 4n);
    expect(t.send({ type: 'inflight.idle' })).toEqual([{ type: 'close', hard: false, code: 'transmission.disc-drains', reason: 'NBD_CMD_DISC' }]);
    expect(t.actor.getSnapshot().status).toBe('done');
  });

  it('transmission.disc-drains: the decoder stops reading after DISC (bytes after it are ignored)', () => {
    const dec = new FrameDecoder();
    dec.push(u32(3));
    dec.next();
    dec.startTransmission(false);
    dec.push(Buffer.concat([requestBytes(CMD.NBD_CMD_DISC, 9n, 0, 0), requestBytes(CMD.NBD_CMD_READ, 10n, 0, 8), Buffer.from('garbage')]));
    expect(dec.next()).toMatchObject({ type: CMD.NBD_CMD_DISC, cookie: 9n });
    expect(dec.stop()).toBe(28 + 7);
    expect(dec.next()).toBeNull();
    expect(dec.push(Buffer.from('more'))).toBe(true);
    expect(dec.next()).toBeNull();
    expect(dec.bufferedBytes).toBe(0);
  });

  it('transmission.zero-length: zero-length READ/WRITE/TRIM/WRITE_ZEROES/BLOCK_STATUS never disconnect', () => {
    const t = tx({}, { sr: true, contexts: true });
    for (const type of [CMD.NBD_CMD_READ, CMD.NBD_CMD_WRITE, CMD.NBD_CMD_TRIM, CMD.NBD_CMD_WRITE_ZEROES, CMD.NBD_CMD_BLOCK_STATUS]) {
      const out = t.request({ type, length: 0, offset: 512 });
      expect(out.map((e) => e.type)).not.toContain('close');
      expect(out).toHaveLength(1);
    }
    expect(t.actor.getSnapshot().value).toBe('open');
  });

  it('transmission.shutdown-drains: on shutdown the machine drains in-flight work and answers new requests with ESHUTDOWN', () => {
    const t = tx();
    accepted(t.request({ type: CMD.NBD_CMD_WRITE, cookie: 1n, length: 4, payload: Buffer.alloc(4) }));
    expect(t.send({ type: 'server.shutdown' })).toEqual([{ type: 'draining', reason: 'shutdown' }]);
    for (const type of [CMD.NBD_CMD_READ, CMD.NBD_CMD_WRITE, CMD.NBD_CMD_FLUSH, 99]) refused(t.request({ type, cookie: 8n }), ERRNO.NBD_ESHUTDOWN, 8n);
    expect(t.request({ type: CMD.NBD_CMD_READ, cookie: 9n })).toEqual([
      expect.objectContaining({ type: 'refuse', errno: ERRNO.NBD_ESHUTDOWN, message: 'transmission.shutdown-drains: server is shutting down' }),
    ]);
    expect(t.send({ type: 'inflight.idle' })).toEqual([expect.objectContaining({ type: 'close', hard: false })]);
  });

  it('transmission.error-values: every errno the machine or the errno mapper can produce is in the error set of the spec', () => {
    const allowed = new Set([1, 5, 12, 22, 28, 75, 95, 108]);
    for (const r of REFUSALS) expect(allowed.has(r.errno)).toBe(true);
    // ENOTSUP is not used for refusals at all (only FAST_ZERO may use it); EOVERFLOW only for a DF read (reply.df-one-chunk).
    expect(REFUSALS.filter((r) => r.errno === 75 || r.errno === 95).map((r) => r.code)).toEqual(['reply.df-one-chunk']);
    for (const code of ['EROFS', 'EPERM', 'EACCES', 'EIO', 'ENOMEM', 'EDQUOT', 'EFBIG', 'ENOSPC', 'ESHUTDOWN', 'ENOTSUP', 'EOPNOTSUPP', 'EOVERFLOW', 'EINVAL', 'EBADF', undefined]) {
      for (const opts of [{}, { df: true }, { fastZero: true }]) expect(allowed.has(hostErrnoToNbd(code, opts))).toBe(true);
    }
    expect(hostErrnoToNbd('EOVERFLOW')).toBe(ERRNO.NBD_EINVAL);
    expect(hostErrnoToNbd('EOVERFLOW', { df: true })).toBe(ERRNO.NBD_EOVERFLOW);
  });

  it('transmission.error-values: the context\'s compiled check agrees with the machine for a sample of requests', () => {
    const exp = exportOf({ size: 8192, blockSizes: { minimum: 512, preferred: 4096, maximum: 1 << 20 } });
    const negotiated = negotiatedFor(exp, { flags: advertisedFlags(exp, false) });
    const ctx = transmissionContext({ negotiated });
    const t = startTransmission({ negotiated });
    for (const type of [0, 1, 3, 4, 5, 6, 7, 8]) {
      for (const flags of [0, 1, 2, 4, 8, 16, 64]) {
        for (const [offset, length] of [
          [0, 512],
          [100, 512],
          [8192, 512],
        ] as const) {
          const r = request({ type, flags, offset, length });
          const v = ctx.check(r);
          const out = t.send({ type: 'request', frame: r });
          if (v === null) accepted(out);
          else refused(out, v.errno);
        }
      }
    }
  });
});

// ═══ Purity: transition() / initialTransition() return actions, never run them ══

describe('machine purity (xstate transition / initialTransition)', () => {
  it('initialTransition returns the greeting as an emit action without emitting or running it', () => {
    let ran = 0;
    const m = handshakeMachine.provide({ actions: { sendGreeting: () => void ran++ } });
    const [snapshot, actions] = initialTransition(m, DEFAULT_INPUT);
    expect(snapshot.value).toBe('awaitingClientFlags');
    expect(ran).toBe(0);
    expect(actions.map((a) => a.type)).toContain('sendGreeting');
    // The unmodified machine returns an xstate.emit action carrying the frame.
    const [, plain] = initialTransition(handshakeMachine, DEFAULT_INPUT);
    const emit = (plain as readonly AnyAction[]).find((a) => a.type === 'xstate.emit') as { params: { event: { type: string; label: string } } } | undefined;
    expect(emit?.params.event).toMatchObject({ type: 'send', label: 'greeting' });
  });

  it('transition on opt.list returns the SERVER/ACK emits and leaves the input snapshot unchanged', () => {
    const [s0] = initialTransition(handshakeMachine, DEFAULT_INPUT);
    const [s1] = transition(handshakeMachine, s0, { type: 'wire.clientFlags', flags: 3 });
    const before = JSON.stringify(s1.context);
    const [s2, actions] = transition(handshakeMachine, s1, opt(O.LIST));
    expect(JSON.stringify(s1.context)).toBe(before);
    // Fixed newstyle, no TLS required: options in its open mode.
    expect(s1.value).toEqual({ options: 'open' });
    expect(s2.context.optionCount).toBe(s1.context.optionCount + 1);
    const sent = (actions as readonly AnyAction[])
      .filter((a) => a.type === 'xstate.emit')
      .map((a) => parseOptionReply((a.params as { event: { frame: Buffer[] } }).event.frame));
    expect(sent.map((r) => r.type)).toEqual([R.SERVER, R.SERVER, R.SERVER, R.ACK]);
  });

  it('transition on a refused request returns a refuse emit; on an accepted one a request emit; nothing runs', () => {
    const input = { negotiated: negotiatedFor(exportOf({ size: 4096 })) };
    let validated = 0;
    const m = transmissionMachine.provide({ actions: { validate: () => void validated++ } });
    const [s0] = initialTransition(m, input);
    // Single requests and bursts are decided by the same named action.
    const [, one] = transition(m, s0, { type: 'request', frame: request({ type: CMD.NBD_CMD_READ, length: 8 }) });
    expect(one.map((a) => a.type)).toEqual(['validate']);
    const [, burst] = transition(m, s0, { type: 'requests', frames: [request({ type: CMD.NBD_CMD_READ, length: 8 }), request({ type: 99 })] });
    expect(burst.map((a) => a.type)).toEqual(['validate']);
    expect(validated).toBe(0);
    const [, ok] = transition(transmissionMachine, initialTransition(transmissionMachine, input)[0], { type: 'request', frame: request({ type: CMD.NBD_CMD_READ, length: 8 }) });
    const delivered = (ok as readonly AnyAction[]).find((a) => a.type === 'xstate.emit') as unknown as { params: { event: { type: string } } };
    expect(delivered.params.event).toMatchObject({ type: 'request' });
    const [, bad] = transition(transmissionMachine, initialTransition(transmissionMachine, input)[0], { type: 'request', frame: request({ type: CMD.NBD_CMD_WRITE, offset: 4096, length: 8 }) });
    const refuse = (bad as readonly AnyAction[]).find((a) => a.type === 'xstate.emit') as unknown as { params: { event: { type: string; errno: number } } };
    expect(refuse.params.event).toMatchObject({ type: 'refuse', code: 'transmission.write-out-of-bounds', errno: ERRNO.NBD_ENOSPC });
  });

  it('a provided action replaces the named effect on a live actor (effects are swappable)', () => {
    const seen: string[] = [];
    const m = handshakeMachine.provide({ actions: { requestTlsUpgrade: () => void seen.push('tls') } });
    const a = createActor(m, { input: { ...DEFAULT_INPUT, tls: 'optional' } });
    a.start();
    a.send({ type: 'wire.clientFlags', flags: 3 });
    a.send(opt(O.STARTTLS));
    expect(seen).toEqual(['tls']);
    expect(a.getSnapshot().value).toBe('upgradingTls');
  });
});

/** Executable actions as returned by transition(), without the machine's literal type union. */
type AnyAction = { type: string; params?: unknown };

function infoOfSafe(r: OptionReply) {
  return r.type === R.INFO ? infoOf(r) : undefined;
}

// Keep `decodeOption` exercised for a TOO_BIG problem frame (decoder limit: option.too-big).
describe('decoder problem frames reach the machine as errors', () => {
  it('option.too-big, option.errors-not-disconnects: an INFO over the option length limit gets ERR_TOO_BIG, and the connection continues', () => {
    const f = decodeOption(O.INFO, infoGoData('x'.repeat(100)), { maxOptionLength: 32 });
    expect(f.problem?.reply).toBe('NBD_REP_ERR_TOO_BIG');
    const d = startHandshake();
    expect(types(d.option(optEvent(f)))).toEqual([R.ERR_TOO_BIG]);
    expect(d.value()).toBe('options');
  });
});
