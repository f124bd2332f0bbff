/**
 * The probe's questions about lengths and payloads on the wire: a refused
 * WRITE's payload must be read off the wire (or the server must hang up),
 * and with extended headers a 64-bit length must be read as one — a server
 * that keeps only the low 32 bits of 4 GiB + 512 sees 512.
 */
import { CMD, FLAG, errnoName } from '../protocol/constants.js';
import { requestHeaderBytes, type NbdClientError } from '../client/index.js';
import { fail, notAdvertised, pass, type Check } from './runner.js';
import type { ProbeContext } from './context.js';
import { inSync, withExport } from './checks-transmission.js';

type C = Check<ProbeContext>;

/** 4 GiB + 512: a length only extended headers can carry, whose low 32 bits say 512. */
const BIG_LENGTH = (1n << 32n) + 512n;
/** The cookie of the READ request hidden in transmission.payload-consumed's WRITE payload. */
const PAYLOAD_COOKIE = 0x5041_594c_4f41_4421n;

export const LENGTH_CHECKS: readonly C[] = [
  {
    rule: 'transmission.payload-consumed',
    title: 'a refused WRITE (past the end) has its payload skipped: the READ request inside it is never answered',
    run: (ctx, signal) =>
      withExport(ctx, signal, async (c) => {
        // The payload is a READ request with a cookie of its own, then zeroes: a server that refuses the
        // WRITE without reading its payload off the wire answers that READ (or chokes on the zeroes).
        const inner = requestHeaderBytes({ type: CMD.NBD_CMD_READ, flags: 0, cookie: PAYLOAD_COOKIE, offset: 0n, length: 512n, extended: c.mode === 'extended' });
        const payload = Buffer.concat([inner, Buffer.alloc(4096 - inner.length)]);
        const w = await c.write(ctx.facts.size, payload).catch((err: Error) => err);
        // The rule's other way out: a hard disconnect instead of reading the payload. Only the server closing
        // counts (the client also closes when the stream stops making sense: that is a desync, a FAIL).
        const DISCONNECTED = 'the server disconnected instead of reading the payload (the rule allows a hard disconnect)';
        const serverClosed = (err: Error) => !signal.aborted && (err as NbdClientError).code === 'closed';
        // An answer to the READ hidden in the payload fails the check whatever happens next (a server
        // that answers it and then chokes on the padding also hangs up: that is no "instead").
        const answeredInner = () => {
          const stray = c.deviations.find((d) => d.message.includes(`cookie ${PAYLOAD_COOKIE}`));
          return stray ? fail("the READ inside the refused WRITE's payload was answered: the payload was parsed as requests", stray.message) : null;
        };
        if (w instanceof Error) return answeredInner() ?? (serverClosed(w) ? pass(DISCONNECTED) : fail(`no answer to the WRITE: ${w.message}`));
        if (w.error === 0) return fail('a WRITE past the end of the export succeeded');
        const after = await inSync(c, ctx).catch((err: Error) => err);
        const innerAnswered = answeredInner();
        if (innerAnswered) return innerAnswered;
        if (after instanceof Error) return serverClosed(after) ? pass(`${errnoName(w.error)}, then ${DISCONNECTED}`) : fail(`a plain READ afterwards: ${after.message}`);
        return after ? fail(after) : pass(`${errnoName(w.error)}, the payload skipped, then a READ answered`);
      }),
  },
  // 64-bit lengths (extended headers): a server that keeps only the low 32 bits would see 512.
  {
    rule: 'transmission.read-too-large',
    title: 'with extended headers, a READ of 4 GiB + 512 bytes (a 64-bit length) is refused, not read as 512 bytes',
    run: (ctx, signal) => {
      if (!ctx.facts.extended) return Promise.resolve(notAdvertised('extended headers are not offered'));
      return withExport(
        ctx,
        signal,
        async (c) => {
          const r = await c.request({ type: CMD.NBD_CMD_READ, offset: 0, length: BIG_LENGTH }).catch((err: Error) => err);
          if (r instanceof Error) return fail(`no answer: ${r.message}`);
          if (r.error === 0) return fail('succeeded: the length was read as 512 (or the server served 4 GiB + 512 bytes)', r.deviations[0]?.message);
          const sync = await inSync(c, ctx);
          return sync ? fail(sync) : pass(`${errnoName(r.error)}, then a READ answered`);
        },
        { extended: true },
      );
    },
  },
  {
    rule: 'transmission.out-of-bounds',
    title: 'with extended headers, WRITE_ZEROES of 4 GiB + 512 bytes from the scratch region (past the end) is refused, nothing zeroed',
    writes: true,
    run: (ctx, signal) => {
      if (!ctx.facts.extended) return Promise.resolve(notAdvertised('extended headers are not offered'));
      if (!(ctx.facts.flags & FLAG.NBD_FLAG_SEND_WRITE_ZEROES)) return Promise.resolve(notAdvertised('SEND_WRITE_ZEROES is not advertised'));
      const s = ctx.scratch!;
      // Only where the request really is past the end: on a bigger export it would zero outside the scratch region.
      if (s.offset + BIG_LENGTH <= ctx.facts.size) return Promise.resolve(notAdvertised('the export is too large for this request to be out of bounds'));
      return withExport(
        ctx,
        signal,
        async (c) => {
          const n = Math.min(512, s.length);
          const mark = Buffer.alloc(n, 0xa5);
          const w = await c.write(s.offset, mark);
          if (w.error !== 0) return ctx.facts.flags & FLAG.NBD_FLAG_READ_ONLY ? notAdvertised('the export is read-only') : fail(`a WRITE in the scratch region failed with ${errnoName(w.error)}`);
          const z = await c.request({ type: CMD.NBD_CMD_WRITE_ZEROES, offset: s.offset, length: BIG_LENGTH }).catch((err: Error) => err);
          if (z instanceof Error) return fail(`no answer: ${z.message}`);
          if (z.error === 0) return fail('WRITE_ZEROES past the end succeeded');
          const back = await c.read(s.offset, n);
          if (back.error !== 0 || !back.data?.equals(mark)) return fail(`refused with ${errnoName(z.error)}, but the scratch bytes changed: read as 512 bytes`);
          return pass(`${errnoName(z.error)}; the scratch bytes unchanged`);
        },
        { extended: true },
      );
    },
  },
];
