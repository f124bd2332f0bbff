/**
 * The probe's questions about the handshake, each on a connection of its
 * own. What the server must answer comes from docs/rules.md (the rule each
 * check names); what it may decline (LIST, STRUCTURED_REPLY, EXTENDED_HEADERS,
 * meta contexts, STARTTLS) is NOT ADVERTISED rather than a failure.
 */
import { CLIENT_FLAGS, HANDSHAKE_FLAGS, INFO, OPT, REP } from '../protocol/constants.js';
import { infoGoData, optionBytes, type NbdConnection } from '../client/index.js';
import type { OptionReply } from '../client/option-replies.js';
import { fail, notAdvertised, pass, type Check, type Outcome } from './runner.js';
import { opened, type ProbeContext } from './context.js';
import { inSync } from './checks-transmission.js';

type C = Check<ProbeContext>;

const hex = (b: Buffer): string => b.toString('hex');
const last = (replies: ReadonlyArray<{ typeName: string }>): string => replies.at(-1)?.typeName ?? 'nothing';

/** Run `body` on a fresh connection ready for options; it is destroyed afterwards. */
async function withOptions(ctx: ProbeContext, signal: AbortSignal, body: (c: NbdConnection) => Promise<Outcome>, clientFlags?: number): Promise<Outcome> {
  const c = await opened(ctx, signal, clientFlags);
  try {
    return await body(c);
  } finally {
    // Leave as a client should (a server may log a connection that just drops): ABORT while negotiating,
    // DISC once a GO or EXPORT_NAME put it in transmission (transmission flags always have HAS_FLAGS).
    if (!signal.aborted) await (c.transmissionFlags !== 0 ? c.disc() : c.abort()).catch(() => undefined);
    c.destroy();
  }
}

/**
 * A reply in `replies` that names another option than the one they answer: the server is out of step
 * (it is still answering an earlier option, say), whatever the reply's type.
 */
function outOfStep(replies: readonly OptionReply[]): string | null {
  const dev = replies.flatMap((r) => r.deviations).find((d) => d.rule === 'option.reply-header');
  return dev ? `${dev.message}: the server is answering an earlier option` : null;
}

/** The connection still answers options after `what`: a LIST (or anything final) comes back, naming the LIST. */
async function stillInSync(c: NbdConnection): Promise<string | null> {
  try {
    const replies = await c.option(OPT.NBD_OPT_LIST);
    const stale = outOfStep(replies);
    if (stale) return `a LIST afterwards: ${stale}`;
    return replies.at(-1)?.final ? null : 'no final reply to a LIST afterwards';
  } catch (err) {
    return `the connection did not answer a LIST afterwards: ${(err as Error).message}`;
  }
}

export const HANDSHAKE_CHECKS: readonly C[] = [
  {
    rule: 'handshake.greeting-flags',
    title: 'newstyle greeting with known flags',
    async run(ctx) {
      const f = ctx.facts.greetingFlags;
      const known = HANDSHAKE_FLAGS.NBD_FLAG_FIXED_NEWSTYLE | HANDSHAKE_FLAGS.NBD_FLAG_NO_ZEROES;
      if (f & ~known) return fail(`greeting flags 0x${f.toString(16)} have bits the spec does not define`);
      if (!(f & HANDSHAKE_FLAGS.NBD_FLAG_FIXED_NEWSTYLE)) return fail(`greeting flags 0x${f.toString(16)} lack FIXED_NEWSTYLE`);
      return pass(`flags 0x${f.toString(16)}`);
    },
  },
  {
    rule: 'option.unknown-code',
    title: 'an unknown option gets NBD_REP_ERR_UNSUP, and options go on',
    run: (ctx, signal) =>
      withOptions(ctx, signal, async (c) => {
        const replies = await c.option(0x7a3c_0001, Buffer.from('probe data the server must skip'));
        if (last(replies) !== 'NBD_REP_ERR_UNSUP') return fail(`answered ${last(replies)}`, replies.map((r) => hex(r.header)).join(' '));
        const sync = await stillInSync(c);
        return sync ? fail(sync) : pass('NBD_REP_ERR_UNSUP, then LIST answered');
      }),
  },
  {
    rule: 'option.export-unknown',
    title: 'GO for an export that does not exist gets NBD_REP_ERR_UNKNOWN',
    run: (ctx, signal) =>
      withOptions(ctx, signal, async (c) => {
        const go = await c.go('nbd-engine-probe-no-such-export-7f3a', []);
        const type = last(go.replies);
        if (go.ok) return notAdvertised('the server serves any export name it is asked for');
        if (type !== 'NBD_REP_ERR_UNKNOWN') return fail(`answered ${type}`);
        const sync = await stillInSync(c);
        return sync ? fail(sync) : pass('NBD_REP_ERR_UNKNOWN, and options go on');
      }),
  },
  {
    rule: 'option.info-export',
    title: 'INFO answers NBD_INFO_EXPORT, then ACK, and stays in negotiation',
    run: (ctx, signal) =>
      withOptions(ctx, signal, async (c) => {
        // Negotiate as the survey did: the flags depend on it (SEND_DF only with structured replies).
        if (ctx.facts.extended) await c.extendedHeaders();
        else if (ctx.facts.structured) await c.structuredReply();
        const info = await c.info(ctx.target.exportName, [INFO.NBD_INFO_BLOCK_SIZE]);
        if (!info.ok) return last(info.replies) === 'NBD_REP_ERR_UNSUP' ? notAdvertised('INFO is not supported') : fail(`answered ${last(info.replies)}`);
        if (info.size === undefined) return fail('no NBD_INFO_EXPORT before the ACK');
        if (info.size !== ctx.facts.size || info.flags !== ctx.facts.flags) return fail(`INFO says size ${info.size} flags 0x${info.flags?.toString(16)}, GO said ${ctx.facts.size} / 0x${ctx.facts.flags.toString(16)}`);
        const sync = await stillInSync(c);
        return sync ? fail(sync) : pass(`size ${info.size}, flags 0x${info.flags!.toString(16)}, same as GO's`);
      }),
  },
  {
    rule: 'option.length-mismatch',
    title: 'GO whose name length runs past its data gets NBD_REP_ERR_INVALID',
    run: (ctx, signal) =>
      withOptions(ctx, signal, async (c) => {
        const data = infoGoData('x', []);
        data.writeUInt32BE(4000, 0); // the name "is" 4000 bytes long; the option has 7
        const replies = await c.option(OPT.NBD_OPT_GO, data);
        const type = last(replies);
        if (type !== 'NBD_REP_ERR_INVALID') return fail(`answered ${type}`, hex(optionBytes(OPT.NBD_OPT_GO, data)));
        const sync = await stillInSync(c);
        return sync ? fail(sync) : pass('NBD_REP_ERR_INVALID, and options go on');
      }),
  },
  {
    rule: 'option.unexpected-data',
    title: 'LIST carrying data gets NBD_REP_ERR_INVALID, its data skipped: INFO still answered after it',
    run: (ctx, signal) =>
      withOptions(ctx, signal, async (c) => {
        const replies = await c.option(OPT.NBD_OPT_LIST, Buffer.from([1, 2, 3, 4]));
        const type = last(replies);
        if (type !== 'NBD_REP_ERR_INVALID') return fail(`answered ${type}`, replies.map((r) => hex(r.header)).join(' '));
        // The 4 bytes must have been read and dropped: the next option is read from its own header.
        const info = await c.info(ctx.target.exportName, []).catch((err: Error) => err);
        if (info instanceof Error) return fail(`the next option (INFO) was not answered: ${info.message}`);
        const stale = outOfStep(info.replies);
        if (stale) return fail(`the next option (INFO): ${stale}`, info.replies.map((r) => hex(r.header)).join(' '));
        const t = last(info.replies);
        if (t !== 'NBD_REP_ACK' && t !== 'NBD_REP_ERR_UNSUP') return fail(`the next option (INFO) was answered ${t}: the LIST's data was read as part of it`);
        return pass(`NBD_REP_ERR_INVALID, then INFO answered ${t}`);
      }),
  },
  {
    rule: 'option.abort-ack',
    title: 'ABORT is acknowledged, then the server closes',
    run: (ctx, signal) =>
      withOptions(ctx, signal, async (c) => {
        const r = await c.abort();
        if (r === undefined) return pass('closed without an ACK (the spec allows a server to; clients must cope)');
        return r.type === REP.NBD_REP_ACK ? pass('NBD_REP_ACK') : fail(`answered ${r.typeName}`, hex(r.header));
      }),
  },
  {
    rule: 'option.structured-reply',
    title: 'STRUCTURED_REPLY is acknowledged (or declined with ERR_UNSUP)',
    async run(ctx) {
      return ctx.facts.structured ? pass('NBD_REP_ACK') : notAdvertised('structured replies are not offered');
    },
  },
  {
    rule: 'option.extended-headers',
    title: 'EXTENDED_HEADERS is acknowledged (or declined)',
    async run(ctx) {
      return ctx.facts.extended ? pass('NBD_REP_ACK') : notAdvertised('extended headers are not offered');
    },
  },
  {
    rule: 'option.meta-context-reply',
    title: 'SET_META_CONTEXT base:allocation names one context, then ACK',
    run: (ctx, signal) =>
      withOptions(ctx, signal, async (c) => {
        if (!ctx.facts.structured) return notAdvertised('needs structured replies');
        await c.structuredReply();
        const set = await c.setMetaContext(ctx.target.exportName, ['base:allocation']);
        if (!set.ok) return last(set.replies) === 'NBD_REP_ERR_UNSUP' ? notAdvertised('meta contexts are not supported') : fail(`answered ${last(set.replies)}`);
        if (set.contexts.length === 0) return notAdvertised('base:allocation is not offered');
        const bad = set.contexts.filter((m) => m.name !== 'base:allocation');
        if (bad.length > 0) return fail(`replied with contexts it was not asked for: ${bad.map((m) => m.name).join(', ')}`);
        const devs = set.replies.flatMap((r) => r.deviations);
        return devs.length ? fail(devs[0]!.message, devs[0]!.rule) : pass(`base:allocation as id ${set.contexts[0]!.id}`);
      }),
  },
  {
    rule: 'option.export-name-terminates',
    title: 'EXPORT_NAME answers size and flags, and transmission begins',
    run: (ctx, signal) =>
      withOptions(ctx, signal, async (c) => {
        const r = await c.exportName(ctx.target.exportName);
        if (r.size !== ctx.facts.size) return fail(`size ${r.size}, GO said ${ctx.facts.size}`, hex(r.bytes.subarray(0, 10)));
        const sync = await inSync(c, ctx);
        if (sync) return fail(`after EXPORT_NAME, ${sync}`);
        return pass(`size ${r.size}, flags 0x${r.flags.toString(16)}, then a READ answered`);
      }),
  },
  {
    rule: 'handshake.no-zeroes',
    title: 'EXPORT_NAME without NO_ZEROES: 124 zero bytes follow, then transmission',
    run: (ctx, signal) =>
      withOptions(
        ctx,
        signal,
        async (c) => {
          const r = await c.exportName(ctx.target.exportName, { noZeroes: false });
          const dev = c.deviations.find((d) => d.rule === 'handshake.no-zeroes');
          if (dev) return fail(dev.message, hex(dev.evidence.subarray(0, 32)));
          const sync = await inSync(c, ctx);
          if (sync) return fail(`a READ after the 124 bytes was not answered cleanly (the padding was not 124 bytes): ${sync}`);
          return pass(`${r.bytes.length} bytes (size, flags, 124 zeroes), then a READ answered`);
        },
        CLIENT_FLAGS.NBD_FLAG_C_FIXED_NEWSTYLE,
      ),
  },
  {
    rule: 'option.info-go-consistent',
    title: 'GO asking NAME, DESCRIPTION and BLOCK_SIZE: well-formed NBD_REP_INFO replies with NBD_INFO_EXPORT',
    run: (ctx, signal) =>
      withOptions(ctx, signal, async (c) => {
        const go = await c.go(ctx.target.exportName, [INFO.NBD_INFO_NAME, INFO.NBD_INFO_DESCRIPTION, INFO.NBD_INFO_BLOCK_SIZE]);
        if (!go.ok) return fail(`answered ${last(go.replies)}`);
        const devs = go.replies.flatMap((r) => r.deviations);
        if (devs.length) return fail(devs[0]!.message, devs[0]!.rule);
        if (go.size === undefined) return fail('no NBD_INFO_EXPORT before the ACK');
        const got = go.infos.map((i) => i.info).join(', ');
        return pass(`infos: ${got}`);
      }),
  },
  {
    rule: 'option.reply-header',
    title: 'LIST: well-formed NBD_REP_SERVER replies, then ACK (or declined)',
    run: (ctx, signal) =>
      withOptions(ctx, signal, async (c) => {
        const list = await c.list();
        const type = last(list.replies);
        if (!list.ok) return type === 'NBD_REP_ERR_UNSUP' || type === 'NBD_REP_ERR_POLICY' ? notAdvertised(`LIST declined (${type})`) : fail(`answered ${type}`);
        const devs = list.replies.flatMap((r) => r.deviations);
        if (devs.length) return fail(devs[0]!.message, devs[0]!.rule);
        return pass(`${list.exports.length} export(s): ${list.exports.map((e) => JSON.stringify(e.name)).join(', ')}`);
      }),
  },
  {
    rule: 'tls.mode-selectivetls',
    title: 'STARTTLS on a plain connection: ACK, or a refusal that leaves options going',
    run: (ctx, signal) =>
      withOptions({ ...ctx, target: { ...ctx.target, tls: false } }, signal, async (c) => {
        if (ctx.target.tls) return pass('the probe connects with TLS (nbds URI)');
        const replies = await c.option(OPT.NBD_OPT_STARTTLS);
        const type = last(replies);
        if (type === 'NBD_REP_ACK') return pass('NBD_REP_ACK: TLS is offered');
        if (type !== 'NBD_REP_ERR_UNSUP' && type !== 'NBD_REP_ERR_POLICY' && type !== 'NBD_REP_ERR_INVALID') return fail(`answered ${type}`);
        const sync = await stillInSync(c);
        return sync ? fail(sync) : notAdvertised(`TLS not offered (${type})`);
      }),
  },
];
