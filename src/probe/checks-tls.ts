/**
 * The probe's questions about STARTTLS itself (docs/rules.md, the `tls.*`
 * rules): a second STARTTLS once TLS is up, what STARTTLS forgets, a failed
 * TLS handshake, and plaintext a client pipelined behind STARTTLS. The first
 * two need TLS to come up: with an `nbds` URI's certificates or key, else
 * without checking the server's certificate (what is checked is the
 * protocol), which a server asking for client credentials refuses. A server
 * that does not offer what a check needs gets NOT ADVERTISED.
 */
import { MAGIC, OPT } from '../protocol/constants.js';
import { optionBytes, type NbdConnection } from '../client/index.js';
import { fail, notAdvertised, pass, type Check, type Outcome } from './runner.js';
import { opened, tlsOptions, type ProbeContext } from './context.js';

type C = Check<ProbeContext>;

const last = (replies: ReadonlyArray<{ typeName: string }>): string => replies.at(-1)?.typeName ?? 'nothing';
/**
 * A connection with TLS up: through the URI's credentials for an nbds URI; for a plain URI, a STARTTLS
 * that checks no certificate (the probe checks the protocol, not the server's identity). A string when
 * TLS does not come up that way: the server does not offer it, or wants credentials.
 */
async function withTls(ctx: ProbeContext, signal: AbortSignal, before?: (c: NbdConnection) => Promise<string | null>): Promise<NbdConnection | string> {
  if (ctx.target.tls && !before) return opened(ctx, signal);
  const c = await plain(ctx, signal);
  try {
    const why = before ? await before(c) : null;
    if (why !== null) return (c.destroy(), why);
    const st = await c.starttls(ctx.target.tls ? tlsOptions(ctx.target) : { rejectUnauthorized: false });
    if (last(st) !== 'NBD_REP_ACK') {
      // With an nbds URI TLS came up for the survey: a refusal now is the server's fault.
      if (ctx.target.tls) throw new Error(`STARTTLS was answered ${last(st)}`);
      return (c.destroy(), `STARTTLS was answered ${last(st)}`);
    }
    // TLS 1.3: a server that wants a client certificate says so only after the client's side of the
    // handshake is done. One option over TLS shows the session really works.
    if (!ctx.target.tls) await c.info(ctx.target.exportName);
    return c;
  } catch (err) {
    c.destroy();
    if (ctx.target.tls) throw err;
    return `TLS did not come up without credentials (${(err as Error).message}): an nbds URI with them runs this check`;
  }
}

/** Run `body` on a connection of the check's own, destroyed afterwards. */
async function own(c: NbdConnection, body: (c: NbdConnection) => Promise<Outcome>): Promise<Outcome> {
  try {
    return await body(c);
  } finally {
    c.destroy();
  }
}

/** A plain connection (no STARTTLS even for an nbds URI), greeted, client flags sent. */
const plain = (ctx: ProbeContext, signal: AbortSignal): Promise<NbdConnection> => opened({ ...ctx, target: { ...ctx.target, tls: false } }, signal);

export const TLS_CHECKS: readonly C[] = [
  {
    rule: 'tls.starttls-repeat',
    title: 'STARTTLS once TLS is up gets NBD_REP_ERR_INVALID, and options go on',
    async run(ctx, signal) {
      const t = await withTls(ctx, signal);
      if (typeof t === 'string') return notAdvertised(t);
      return own(t, async (c) => {
        const again = await c.option(OPT.NBD_OPT_STARTTLS);
        if (last(again) !== 'NBD_REP_ERR_INVALID') return fail(`a second STARTTLS was answered ${last(again)}`);
        // Still inside TLS: the next option is answered over it.
        const list = await c.option(OPT.NBD_OPT_LIST);
        if (!list.at(-1)?.final) return fail('no final reply to a LIST after the refused STARTTLS');
        if (list.some((r) => r.typeName === 'NBD_REP_ERR_TLS_REQD')) return fail('NBD_REP_ERR_TLS_REQD after TLS came up');
        return pass(`NBD_REP_ERR_INVALID, then LIST answered ${last(list)}`);
      });
    },
  },
  {
    rule: 'tls.starttls-resets',
    title: 'STRUCTURED_REPLY before STARTTLS is forgotten: after TLS and GO, a READ gets a simple reply',
    async run(ctx, signal) {
      // A server that requires TLS refuses every option before it (tls.mode-forcedtls): nothing to forget.
      const t = await withTls(ctx, signal, async (c) => {
        const sr = await c.structuredReply();
        return sr.ok ? null : `STRUCTURED_REPLY before TLS was answered ${last(sr.replies)}: nothing negotiated to forget`;
      });
      if (typeof t === 'string') return notAdvertised(t);
      return own(t, async (c) => {
        // The client forgot too (c.mode is simple again): GO without asking for structured replies.
        const go = await c.go(ctx.target.exportName, []);
        if (!go.ok) return fail(`GO over TLS was answered ${last(go.replies)}`);
        const r = await c.read(0, 512);
        if (r.form !== 'simple') return fail(`a READ over TLS was answered with ${r.form} replies, negotiated before STARTTLS`, r.deviations[0]?.message);
        if (r.error !== 0) return fail(`a READ over TLS failed with error ${r.error}`);
        return pass('STRUCTURED_REPLY acknowledged before TLS; after it, simple replies');
      });
    },
  },
  {
    rule: 'tls.handshake-failed',
    title: 'a TLS handshake that fails after the STARTTLS ACK ends the session',
    async run(ctx, signal) {
      return own(await plain(ctx, signal), async (c) => {
        const replies = await c.option(OPT.NBD_OPT_STARTTLS);
        if (last(replies) !== 'NBD_REP_ACK') return notAdvertised(`STARTTLS was answered ${last(replies)}`);
        // Not a TLS record ('N' is no record type): every TLS stack gives up at once. An NBD option follows,
        // which a server that went on in plaintext would answer.
        c.raw(Buffer.concat([Buffer.from('NOT A TLS CLIENT HELLO\n'), optionBytes(OPT.NBD_OPT_LIST)]));
        const wait = Math.min(ctx.timeoutMs / 4, 2000); // its waits end well inside the check's own timeout
        const seen: Buffer[] = [];
        for (;;) {
          const b = await c.readRaw(1, wait).catch(() => null);
          if (b === null) break;
          seen.push(b);
          const all = Buffer.concat(seen);
          if (all.length >= 8 && all.indexOf(Buffer.from('0003e889045565a9', 'hex')) >= 0) return fail('the server answered in plaintext after the failed TLS handshake', all.toString('hex'));
          if (all.length > 4096) break;
        }
        if (!(await c.closedWithin(wait))) return fail(`the session went on: still open ${wait} ms after the failed TLS handshake`);
        return pass(seen.length ? `the connection closed (after ${seen.length} bytes${seen[0]![0] === 0x15 ? ': a TLS alert' : ''})` : 'the connection closed');
      });
    },
  },
  {
    rule: 'tls.plaintext-after-starttls',
    title: 'a LIST pipelined in plaintext behind STARTTLS is never answered in plaintext',
    async run(ctx, signal) {
      return own(await plain(ctx, signal), async (c) => {
        // Both options in one write, as a client that does not wait for STARTTLS's answer.
        c.raw(Buffer.concat([optionBytes(OPT.NBD_OPT_STARTTLS), optionBytes(OPT.NBD_OPT_LIST)]));
        const reply = await c.optionReply(OPT.NBD_OPT_STARTTLS).catch((err: Error) => err);
        // A server may see the plaintext behind STARTTLS at once and end the session without answering.
        if (reply instanceof Error) return (await c.closedWithin(Math.min(ctx.timeoutMs / 4, 2000))) ? pass('the connection closed without an answer (plaintext behind STARTTLS refused)') : fail(`no answer to STARTTLS: ${reply.message}`);
        // TLS not offered: the LIST behind it is an ordinary option and may be answered.
        if (reply.typeName !== 'NBD_REP_ACK') return notAdvertised(`STARTTLS was answered ${reply.typeName}`);
        // After the ACK only TLS may follow: an option reply's magic here means the LIST was read as an option.
        const wait = Math.min(ctx.timeoutMs / 4, 2000); // its waits end well inside the check's own timeout
        const first = await c.readRaw(1, wait).catch(() => null);
        if (first === null) return pass('NBD_REP_ACK, then nothing in plaintext (closed or waiting for TLS)');
        if (first[0] === 0x00) {
          const rest = await c.readRaw(7, wait).catch(() => null);
          const head = rest ? Buffer.concat([first, rest]) : first;
          if (rest && head.readBigUInt64BE(0) === MAGIC.NBD_REP_MAGIC) return fail('the LIST behind STARTTLS was answered in plaintext', head.toString('hex'));
        }
        const closed = await c.closedWithin(wait);
        // 0x15: a TLS alert record (the server's TLS stack read the LIST as a broken ClientHello).
        return pass(`NBD_REP_ACK, then ${first[0] === 0x15 ? 'a TLS alert' : `a non-NBD byte 0x${first[0]!.toString(16)}`}${closed ? ', and the connection closed' : ''}`);
      });
    },
  },
];
