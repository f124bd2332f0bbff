/**
 * The probe's questions about the transmission phase, each on a connection
 * negotiated for it (structured replies when offered). Checks that write
 * only touch the scratch region the probe announced, and are SKIPPED when
 * it has none (`--read-only`). A server's refusal must leave the stream in
 * sync: most checks end by seeing that a plain READ still gets its answer.
 */
import { CMD, CMD_FLAG, ERRNO, FLAG, errnoName } from '../protocol/constants.js';
import type { NbdConnection, Reply } from '../client/index.js';
import { fail, notAdvertised, pass, type Check, type Outcome } from './runner.js';
import { negotiated, type Negotiate, type ProbeContext } from './context.js';

type C = Check<ProbeContext>;

/** Run `body` on a fresh negotiated connection (structured replies when offered); destroyed afterwards. */
export async function withExport(ctx: ProbeContext, signal: AbortSignal, body: (c: NbdConnection) => Promise<Outcome>, n: Negotiate = { structured: ctx.facts.structured }): Promise<Outcome> {
  const c = await negotiated(ctx, n, signal);
  try {
    return await body(c);
  } finally {
    // Leave as a client should (DISC), then make sure the connection is gone.
    if (!signal.aborted) await c.disc().catch(() => false);
    c.destroy();
  }
}

export const smallRead = (ctx: ProbeContext): number => Math.min(ctx.facts.blockSize?.preferred ?? 4096, 4096, Number(ctx.facts.size));

/**
 * A plain READ still gets its answer with no deviation: the stream is in sync. On an empty export no READ
 * can succeed, so a 1-byte READ there must get its error reply instead (it still shows the stream in step).
 */
export async function inSync(c: NbdConnection, ctx: ProbeContext): Promise<string | null> {
  if (ctx.facts.size === 0n) {
    const r = await c.read(0, 1);
    if (r.error === 0) return 'a 1-byte READ of the empty export afterwards succeeded';
    return r.deviations.length ? `a READ afterwards: ${r.deviations[0]!.message}` : null;
  }
  const r = await c.read(0, smallRead(ctx));
  if (r.error !== 0) return `a plain READ afterwards failed with ${errnoName(r.error)}`;
  return r.deviations.length ? `a plain READ afterwards: ${r.deviations[0]!.message}` : null;
}

/** How long the cookie checks wait for a reply: a little less than the check's own time. */
const replyWait = (ctx: ProbeContext): number => Math.max(1, Math.floor(ctx.timeoutMs * 0.8));

/**
 * A request that got no usable reply on a connection where a reply came back for a cookie never
 * sent: that is the fault to report (a wrong cookie leaves a READ's data unclaimed, which then
 * reads as garbage headers), not what followed from it. Otherwise the error is rethrown.
 */
function strayCookie(c: NbdConnection, err: Error): Outcome {
  const stray = c.deviations.find((d) => d.rule === 'peer.unknown-cookie');
  if (!stray) throw err;
  return fail(`a reply came back with a cookie that was not sent: ${stray.message} (then: ${err.message})`, `peer.unknown-cookie: ${stray.evidence.toString('hex').slice(0, 64)}`);
}

const firstDeviation = (r: Reply): Outcome | null => (r.deviations.length ? fail(r.deviations[0]!.message, `${r.deviations[0]!.rule}: ${r.deviations[0]!.evidence.toString('hex').slice(0, 64)}`) : null);

/**
 * A check that sends one request the server must refuse — with one of
 * `errnos`, or with any error when none are named — and then sees a plain
 * READ answered: a refusal must leave the stream in sync.
 */
function refused(rule: string, title: string, what: string, send: (c: NbdConnection, ctx: ProbeContext) => Promise<Reply>, errnos?: readonly number[]): C {
  return {
    rule,
    title,
    run: (ctx, signal) =>
      withExport(ctx, signal, async (c) => {
        const r = await send(c, ctx).catch((err: Error) => err);
        if (r instanceof Error) return fail(`no answer: ${r.message}`);
        if (r.error === 0) return fail(`${what} succeeded`);
        if (errnos && !errnos.includes(r.error)) return fail(`errno ${errnoName(r.error)}, not ${errnos.map(errnoName).join(' or ')}`);
        const sync = await inSync(c, ctx);
        return sync ? fail(sync) : pass(`${errnoName(r.error)}, then a READ answered`);
      }),
  };
}

/** Run `body` on a connection with base:allocation selected; NOT ADVERTISED when the server does not offer it. */
async function withBaseAllocation(ctx: ProbeContext, signal: AbortSignal, body: (c: NbdConnection, length: number) => Promise<Outcome>): Promise<Outcome> {
  if (!ctx.facts.baseAllocation) return notAdvertised('base:allocation is not offered');
  return withExport(ctx, signal, (c) => body(c, Math.min(1 << 20, Number(ctx.facts.size))), { structured: true, metaContexts: ['base:allocation'] });
}

export const TRANSMISSION_CHECKS: readonly C[] = [
  {
    rule: 'transmission.flags-advertised',
    title: 'transmission flags have HAS_FLAGS',
    async run(ctx) {
      return ctx.facts.flags & FLAG.NBD_FLAG_HAS_FLAGS ? pass(`flags 0x${ctx.facts.flags.toString(16)}`) : fail(`flags 0x${ctx.facts.flags.toString(16)} lack HAS_FLAGS`);
    },
  },
  {
    rule: 'reply.cookie-echo',
    title: 'a 64-bit cookie comes back byte for byte',
    needsData: true,
    run: (ctx, signal) =>
      withExport(ctx, signal, async (c) => {
        const cookie = 0xfedc_ba98_7654_3210n;
        // Its own timeout ends before the check's, so that a reply under a wrong cookie is what gets reported.
        const r = await c.request({ type: CMD.NBD_CMD_READ, cookie, offset: 0, length: smallRead(ctx), timeoutMs: replyWait(ctx) }).catch((err: Error) => strayCookie(c, err));
        if (!('cookie' in r)) return r;
        if (r.cookie !== cookie) return fail(`reply cookie 0x${r.cookie.toString(16)}`);
        return firstDeviation(r) ?? pass(`cookie 0x${cookie.toString(16)} echoed (${r.form} reply)`);
      }),
  },
  {
    rule: 'reply.structured-chunks',
    title: 'a READ is answered by well-formed chunks covering exactly what was asked',
    needsData: true,
    run: (ctx, signal) =>
      withExport(ctx, signal, async (c) => {
        if (!ctx.facts.structured) return notAdvertised('structured replies are not offered');
        const length = Math.min(64 * 1024, Number(ctx.facts.size));
        const r = await c.read(0, length);
        if (r.error !== 0) return fail(`READ failed with ${errnoName(r.error)}`);
        if (r.form === 'simple') return fail('a simple reply although structured replies were negotiated');
        return firstDeviation(r) ?? pass(`${r.chunks.length} chunk(s) for ${length} bytes`);
      }),
  },
  {
    rule: 'reply.df-one-chunk',
    title: 'a READ with DF is one data chunk',
    needsData: true,
    run: (ctx, signal) =>
      withExport(ctx, signal, async (c) => {
        if (!ctx.facts.structured || !(ctx.facts.flags & FLAG.NBD_FLAG_SEND_DF)) return notAdvertised('SEND_DF is not advertised');
        const length = Math.min(64 * 1024, Number(ctx.facts.size));
        const r = await c.read(0, length, { flags: CMD_FLAG.NBD_CMD_FLAG_DF });
        if (r.error !== 0) return fail(`READ with DF failed with ${errnoName(r.error)}`);
        const data = r.chunks.filter((k) => k.typeName !== 'NBD_REPLY_TYPE_NONE');
        if (data.length !== 1) return fail(`${data.length} chunks: ${data.map((k) => k.typeName).join(', ')}`);
        return firstDeviation(r) ?? pass(`one ${data[0]!.typeName} chunk`);
      }),
  },
  refused('transmission.out-of-bounds', 'a READ past the end gets EINVAL, and the stream stays in sync', 'a READ past the end', (c, ctx) => c.read(ctx.facts.size, 512), [ERRNO.NBD_EINVAL]),
  refused('transmission.unknown-command', 'an unknown command gets EINVAL, and the stream stays in sync', 'an unknown command (0x42)', (c) => c.request({ type: 0x42, offset: 0, length: 0 }), [ERRNO.NBD_EINVAL]),
  {
    rule: 'transmission.flag-not-for-command',
    title: 'a flag the command does not take (NO_HOLE on READ): EINVAL or ignored, in sync',
    run: (ctx, signal) =>
      withExport(ctx, signal, async (c) => {
        // NO_HOLE is defined for WRITE_ZEROES only: on a READ the server should refuse it (EINVAL) or ignore it.
        const r = await c.read(0, smallRead(ctx), { flags: CMD_FLAG.NBD_CMD_FLAG_NO_HOLE });
        if (r.error !== 0 && r.error !== ERRNO.NBD_EINVAL) return fail(`errno ${errnoName(r.error)}`);
        const sync = await inSync(c, ctx);
        return sync ? fail(sync) : pass(r.error ? 'NBD_EINVAL, then a READ answered' : 'ignored, then a READ answered');
      }),
  },
  {
    rule: 'transmission.disc-drains',
    title: 'DISC after pipelined READs: every READ answered, then the server closes',
    needsData: true,
    run: (ctx, signal) =>
      withExport(ctx, signal, async (c) => {
        const n = 16;
        const reads = Array.from({ length: n }, (_, i) => c.read(BigInt((i * 4096) % Math.max(1, Number(ctx.facts.size) - 4096)), smallRead(ctx)));
        // DISC right behind them, the socket left open (no half-close): the server alone decides when it ends.
        c.send({ type: CMD.NBD_CMD_DISC });
        const replies = await Promise.allSettled(reads);
        // Every request before DISC must be answered. An error answer is still an answer: a server may fail
        // what it had not started (nbdkit answers some ESHUTDOWN, racing DISC); the detail counts them.
        const lost = replies.flatMap((p, i) => (p.status === 'rejected' ? [`#${i}: ${(p.reason as Error).message}`] : []));
        if (lost.length > 0) return fail(`${lost.length} of ${n} READs sent before DISC got no answer`, lost.slice(0, 3).join('; '));
        const errors = replies.filter((p) => p.status === 'fulfilled' && p.value.error !== 0).length;
        if (!(await c.closedWithin())) return fail('the server did not close after DISC');
        return pass(`${n} READs answered${errors ? ` (${errors} with an error)` : ''}, then closed`);
      }),
  },
  {
    rule: 'reply.cookie-echo',
    title: '64 pipelined READs: every cookie answered once (in any order)',
    needsData: true,
    run: (ctx, signal) =>
      withExport(ctx, signal, async (c) => {
        const n = 64;
        const length = Math.min(512, Number(ctx.facts.size));
        const cookies = Array.from({ length: n }, (_, i) => 0x1000_0000_0000_0000n + BigInt(i) * 0x10001n);
        let replies: Reply[];
        try {
          replies = await Promise.all(cookies.map((cookie, i) => c.request({ type: CMD.NBD_CMD_READ, cookie, offset: BigInt((i * 512) % Math.max(1, Number(ctx.facts.size) - length + 1)), length, timeoutMs: replyWait(ctx) })));
        } catch (err) {
          return strayCookie(c, err as Error);
        }
        const wrong = replies.filter((r, i) => r.cookie !== cookies[i] || r.error !== 0);
        if (wrong.length) return fail(`${wrong.length} of ${n} replies wrong (cookie or error)`);
        const dev = replies.find((r) => r.deviations.length);
        return dev ? firstDeviation(dev)! : pass(`${n} replies matched${c.deviations.length ? `; ${c.deviations.length} deviations` : ''}`);
      }),
  },
  {
    rule: 'transmission.flush-durable',
    title: 'WRITE in the scratch region, FLUSH, and the data reads back',
    writes: true,
    run: (ctx, signal) =>
      withExport(ctx, signal, async (c) => {
        const s = ctx.scratch!;
        if (ctx.facts.flags & FLAG.NBD_FLAG_READ_ONLY) return notAdvertised('the export is read-only');
        const data = Buffer.alloc(Math.min(4096, s.length));
        for (let i = 0; i < data.length; i++) data[i] = (i * 31 + 7) & 0xff;
        const w = await c.write(s.offset, data);
        if (w.error !== 0) return fail(`WRITE failed with ${errnoName(w.error)}`);
        if (ctx.facts.flags & FLAG.NBD_FLAG_SEND_FLUSH) {
          const f = await c.flush();
          if (f.error !== 0) return fail(`FLUSH failed with ${errnoName(f.error)}`);
        }
        const r = await c.read(s.offset, data.length);
        if (r.error !== 0 || !r.data?.equals(data)) return fail('what was written did not read back');
        return pass(`${data.length} bytes at ${s.offset} written and read back`);
      }),
  },
  {
    rule: 'transmission.fua-durable',
    title: 'WRITE with FUA in the scratch region succeeds and reads back',
    writes: true,
    run: (ctx, signal) =>
      withExport(ctx, signal, async (c) => {
        if (!(ctx.facts.flags & FLAG.NBD_FLAG_SEND_FUA)) return notAdvertised('SEND_FUA is not advertised');
        if (ctx.facts.flags & FLAG.NBD_FLAG_READ_ONLY) return notAdvertised('the export is read-only');
        const s = ctx.scratch!;
        const data = Buffer.alloc(Math.min(4096, s.length), 0xa5);
        const w = await c.write(s.offset, data, { flags: CMD_FLAG.NBD_CMD_FLAG_FUA });
        if (w.error !== 0) return fail(`WRITE with FUA failed with ${errnoName(w.error)}`);
        const r = await c.read(s.offset, data.length);
        return r.error === 0 && r.data?.equals(data) ? pass(`${data.length} bytes written with FUA, read back`) : fail('what was written with FUA did not read back');
      }),
  },
  {
    rule: 'reply.block-status-chunks',
    title: 'BLOCK_STATUS with REQ_ONE: one extent, not past the request',
    needsData: true,
    run: (ctx, signal) =>
      withBaseAllocation(ctx, signal, async (c, length) => {
        const r = await c.blockStatus(0, length, { flags: CMD_FLAG.NBD_CMD_FLAG_REQ_ONE });
        if (r.error !== 0) return fail(`BLOCK_STATUS failed with ${errnoName(r.error)}`);
        const counts = r.blockStatus.map((b) => b.extents.length);
        if (counts.length === 0 || counts.some((n) => n !== 1)) return fail(`extents per context: ${counts.join(', ') || 'none'}`);
        return firstDeviation(r) ?? pass('one extent');
      }),
  },
  {
    rule: 'transmission.write-zeroes-no-hole',
    title: 'WRITE_ZEROES (and with NO_HOLE) in the scratch region reads back as zeroes',
    writes: true,
    run: (ctx, signal) =>
      withExport(ctx, signal, async (c) => {
        if (!(ctx.facts.flags & FLAG.NBD_FLAG_SEND_WRITE_ZEROES)) return notAdvertised('SEND_WRITE_ZEROES is not advertised');
        if (ctx.facts.flags & FLAG.NBD_FLAG_READ_ONLY) return notAdvertised('the export is read-only');
        const s = ctx.scratch!;
        const n = Math.min(8192, s.length);
        for (const flags of [0, CMD_FLAG.NBD_CMD_FLAG_NO_HOLE]) {
          const w = await c.write(s.offset, Buffer.alloc(n, 0x5a));
          if (w.error !== 0) return fail(`WRITE before zeroing failed with ${errnoName(w.error)}`);
          const z = await c.writeZeroes(s.offset, n, { flags });
          if (z.error !== 0) return fail(`WRITE_ZEROES${flags ? ' with NO_HOLE' : ''} failed with ${errnoName(z.error)}`);
          const r = await c.read(s.offset, n);
          if (r.error !== 0 || !r.data || r.data.some((b) => b !== 0)) return fail(`after WRITE_ZEROES${flags ? ' with NO_HOLE' : ''} the range does not read back as zeroes`);
        }
        return pass(`${n} bytes zeroed, with and without NO_HOLE`);
      }),
  },
  {
    rule: 'transmission.cache-hint',
    title: 'TRIM and CACHE, where advertised, succeed and leave the stream in sync',
    writes: true,
    run: (ctx, signal) =>
      withExport(ctx, signal, async (c) => {
        const s = ctx.scratch!;
        const done: string[] = [];
        if (ctx.facts.flags & FLAG.NBD_FLAG_SEND_TRIM && !(ctx.facts.flags & FLAG.NBD_FLAG_READ_ONLY)) {
          const t = await c.trim(s.offset, Math.min(4096, s.length));
          if (t.error !== 0) return fail(`TRIM failed with ${errnoName(t.error)}`);
          done.push('TRIM');
        }
        if (ctx.facts.flags & FLAG.NBD_FLAG_SEND_CACHE) {
          const k = await c.cache(0, Math.min(65536, Number(ctx.facts.size)));
          if (k.error !== 0) return fail(`CACHE failed with ${errnoName(k.error)}`);
          done.push('CACHE');
        }
        if (done.length === 0) return notAdvertised('neither SEND_TRIM nor SEND_CACHE is advertised');
        const sync = await inSync(c, ctx);
        return sync ? fail(sync) : pass(`${done.join(' and ')} answered, then a READ`);
      }),
  },
  {
    rule: 'transmission.read-too-large',
    title: 'a READ longer than the advertised maximum: refused (EINVAL or EOVERFLOW) or served, in sync',
    run: (ctx, signal) =>
      withExport(ctx, signal, async (c) => {
        const max = ctx.facts.blockSize?.maximum;
        if (max === undefined || max >= 0x7fff_ffff || BigInt(max) + 1n > ctx.facts.size) return notAdvertised('no maximum block size below the export size is advertised');
        const r = await c.read(0, max + 1);
        if (r.error !== 0 && r.error !== ERRNO.NBD_EINVAL && r.error !== ERRNO.NBD_EOVERFLOW) return fail(`errno ${errnoName(r.error)}`);
        const sync = await inSync(c, ctx);
        return sync ? fail(sync) : pass(`${r.error ? errnoName(r.error) : 'served'} for ${max + 1} bytes, then a READ answered`);
      }),
  },
  {
    rule: 'transmission.fast-zero',
    title: 'WRITE_ZEROES with FAST_ZERO: success (and zeroes) or NBD_ENOTSUP, nothing else',
    writes: true,
    run: (ctx, signal) =>
      withExport(ctx, signal, async (c) => {
        if (!(ctx.facts.flags & FLAG.NBD_FLAG_SEND_FAST_ZERO)) return notAdvertised('SEND_FAST_ZERO is not advertised');
        if (ctx.facts.flags & FLAG.NBD_FLAG_READ_ONLY) return notAdvertised('the export is read-only');
        const s = ctx.scratch!;
        const n = Math.min(8192, s.length);
        const z = await c.writeZeroes(s.offset, n, { flags: CMD_FLAG.NBD_CMD_FLAG_FAST_ZERO });
        if (z.error === ERRNO.NBD_ENOTSUP) {
          const sync = await inSync(c, ctx);
          return sync ? fail(sync) : pass('NBD_ENOTSUP (zeroing would not be fast), then a READ answered');
        }
        if (z.error !== 0) return fail(`errno ${errnoName(z.error)}: only success or NBD_ENOTSUP may answer FAST_ZERO`);
        const r = await c.read(s.offset, n);
        return r.error === 0 && r.data?.every((b) => b === 0) ? pass(`${n} bytes zeroed fast`) : fail('FAST_ZERO succeeded but the range does not read back as zeroes');
      }),
  },
  {
    rule: 'transmission.zero-length',
    title: 'a zero-length READ is answered (success or an error), never a disconnect',
    run: (ctx, signal) =>
      withExport(ctx, signal, async (c) => {
        const r = await c.read(0, 0).catch((err: Error) => err);
        if (r instanceof Error) return fail(`no answer: ${r.message}`);
        const sync = await inSync(c, ctx);
        if (sync) return fail(sync);
        return r.error === 0 ? (firstDeviation(r) ?? pass('answered successfully, then a READ')) : pass(`answered ${errnoName(r.error)}, then a READ`);
      }),
  },
  // offset + length overflows 64 bits: a server adding them without care would read at offset 0.
  refused('transmission.out-of-bounds', 'a READ at an offset near 2^64 (wrapping past the end) gets an error, in sync', 'a READ at offset 2^64 - 512 of 1024 bytes', (c) => c.request({ type: CMD.NBD_CMD_READ, offset: 0xffff_ffff_ffff_fe00n, length: 1024 })),
  refused('transmission.read-too-large', 'a READ of 4 GiB − 1 bytes (the largest compact length) is refused, in sync', 'a READ of 4 GiB − 1 bytes', (c) => c.read(0, 0xffff_ffff)),
  {
    rule: 'transmission.block-status-needs-context',
    title: 'BLOCK_STATUS with base:allocation: extents within the request, for the selected context',
    needsData: true,
    run: (ctx, signal) =>
      withBaseAllocation(ctx, signal, async (c, length) => {
        const r = await c.blockStatus(0, length);
        if (r.error !== 0) return fail(`BLOCK_STATUS failed with ${errnoName(r.error)}`);
        if (r.blockStatus.length === 0) return fail('no BLOCK_STATUS chunk');
        const ids = new Set(c.contexts.keys());
        const stray = r.blockStatus.find((b) => !ids.has(b.contextId));
        if (stray) return fail(`extents for context id ${stray.contextId}, which was not selected`);
        return firstDeviation(r) ?? pass(`${r.blockStatus[0]!.extents.length} extent(s)`);
      }),
  },
  {
    rule: 'reply.extended-offset-echo',
    title: 'with extended headers, a READ gets extended replies',
    needsData: true,
    async run(ctx, signal) {
      if (!ctx.facts.extended) return notAdvertised('extended headers are not offered');
      return withExport(
        ctx,
        signal,
        async (c) => {
          const r = await c.read(0, smallRead(ctx));
          if (r.error !== 0) return fail(`READ failed with ${errnoName(r.error)}`);
          if (r.form !== 'extended') return fail(`a ${r.form} reply although extended headers were negotiated`);
          return firstDeviation(r) ?? pass('extended reply');
        },
        { extended: true },
      );
    },
  },
];
