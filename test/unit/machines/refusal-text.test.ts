/**
 * option.error-text: every option error reply carries a human-readable reason as its data
 * (the spec allows a UTF-8 message there; qemu prints it as "server
 * reported: …", libnbd logs it). Without one a client can only print
 * "Unknown error returned by server".
 *
 *  1. A walk over the handshake machine's option modes: every transition
 *     that sends an option error is triggered (a wildcard one with each
 *     option it catches), and its reply checked.
 *  2. The texts themselves for the common refusals, and client-supplied
 *     names echoed safely (quoted, capped, control characters escaped).
 *  3. A seeded property: random option sequences under random server
 *     settings; every error reply the machine emits has valid text.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { handshakeMachine, type HandshakeInput } from '../../../src/machines/handshake.js';
import { ERRORS, type OptionErrorCode } from '../../../src/protocol/errors.js';
import type { DecoderLimits } from '../../../src/protocol/decoder.js';
import type { HandshakeEvent } from '../../../src/machines/types.js';
import type { OptionFrame } from '../../../src/protocol/frames.js';
import { decodeOption, EXPORTS, infoGoData, isErr, metaData, O, opt, optEvent, parseOptionReply, R, startHandshake, type HandshakeDriver, type OptionReply } from './support.js';

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** The reply is an error whose data is non-empty, valid UTF-8, NUL-free and at most 4096 bytes; returns the text. */
function textOf(r: OptionReply): string {
  expect(isErr(r.type)).toBe(true);
  expect(r.data.length).toBeGreaterThan(0);
  expect(r.data.length).toBeLessThanOrEqual(4096);
  expect(r.data.includes(0)).toBe(false);
  const text = utf8.decode(r.data);
  expect(text.trim()).not.toBe('');
  return text;
}

// ── 1. the routing table ─────────────────────────────────────────────────

interface ErrorRoute {
  /** The mode (state under `options`) the transition belongs to. */
  mode: string;
  /** The concrete option event; a wildcard (`opt.*`) transition is walked once per option it catches. */
  event: string;
  /** The event descriptor as written in the machine (`opt.list`, or `opt.*`). */
  descriptor: string;
  guard: string | undefined;
  /** The error catalogue's entry the transition names, and its reply type. */
  code: OptionErrorCode;
  error: string;
}

/** Every transition of the options modes whose actions send an option error. */
function errorRoutes(): ErrorRoute[] {
  const options = (handshakeMachine.config.states as Record<string, { states?: Record<string, { on?: Record<string, unknown> }> }>).options!;
  const out: ErrorRoute[] = [];
  for (const [mode, node] of Object.entries(options.states ?? {})) {
    const on = node.on ?? {};
    for (const [descriptor, transitions] of Object.entries(on)) {
      // `opt.*` catches every option the mode does not list by name.
      const events = descriptor === 'opt.*' ? Object.keys(CODE).filter((e) => !(e in on)) : [descriptor];
      for (const t of [transitions].flat() as Array<{ guard?: string; actions?: unknown }>) {
        for (const a of [t.actions ?? []].flat()) {
          if (typeof a === 'object' && a !== null && (a as { type?: string }).type === 'replyError') {
            const { code } = (a as { params: { code: OptionErrorCode } }).params;
            for (const event of events) out.push({ mode, event, descriptor, guard: t.guard, code, error: ERRORS[code].wire });
          }
        }
      }
    }
  }
  return out;
}

const CODE: Record<string, number> = {
  'opt.list': O.LIST,
  'opt.starttls': O.STARTTLS,
  'opt.info': O.INFO,
  'opt.go': O.GO,
  'opt.structuredReply': O.STRUCTURED_REPLY,
  'opt.extendedHeaders': O.EXTENDED_HEADERS,
  'opt.listMetaContext': O.LIST_META_CONTEXT,
  'opt.setMetaContext': O.SET_META_CONTEXT,
  'opt.unknown': 42,
};

/** Well-formed data for an option, naming `name` where the option names an export. */
function dataFor(event: string, name = 'disk'): Buffer | undefined {
  if (event === 'opt.info' || event === 'opt.go') return infoGoData(name);
  if (event === 'opt.listMetaContext' || event === 'opt.setMetaContext') return metaData(name, ['base:allocation']);
  return undefined;
}

/**
 * How to reach each refusal: the server's settings, what to negotiate first,
 * and the option to send. A refusal added to the machine without a way to
 * reach it here fails the walk.
 */
function scenario(route: ErrorRoute): { d: HandshakeDriver; event: HandshakeEvent } | undefined {
  const code = CODE[route.event];
  if (code === undefined) return undefined;
  const start = (input: Partial<HandshakeInput> = {}, flags = 3) => startHandshake(input, flags);
  const valid = (name?: string, limits?: Partial<DecoderLimits>) => opt(code, dataFor(route.event, name), limits);
  const withStructuredReplies = (d: HandshakeDriver) => {
    if (route.event === 'opt.setMetaContext') expect(d.option(opt(O.STRUCTURED_REPLY)).map((r) => r.type)).toEqual([R.ACK]);
    return d;
  };
  // The restricting modes: the server's state decides, whatever the option.
  switch (route.mode) {
    case 'shuttingDown': {
      const d = start();
      d.send({ type: 'server.shutdown' });
      return { d, event: valid() };
    }
    case 'unfixed':
      return { d: start({}, 0), event: valid() };
    case 'awaitingTls':
      return { d: start({ tls: 'required' }), event: route.guard === 'optionHasData' ? opt(code, Buffer.from('x')) : valid() };
    case 'open':
      break;
    default:
      return undefined;
  }
  switch (route.guard) {
    case 'optionTooBig': {
      const decoded = decodeOption(code, Buffer.alloc(600, 0x61), { maxOptionLength: 512 });
      // The decoder flags only the options whose data it parses (it skips
      // the others' data unread); the machine's rule covers every option.
      const frame: OptionFrame = decoded.problem ? decoded : { ...decoded, problem: { reply: 'NBD_REP_ERR_TOO_BIG', message: 'option data of 600 bytes exceeds 512' } };
      return { d: start(), event: optEvent(frame) };
    }
    case 'optionHasData':
      return { d: start({ tls: 'optional' }), event: opt(code, Buffer.from('x')) };
    case 'tlsActive':
      return { d: start({ tls: 'optional', tlsActive: true }), event: valid() };
    case 'tlsPolicyOff':
      return { d: start({ tls: 'off' }), event: valid() };
    case 'optionMalformed':
      return { d: start(), event: opt(code, Buffer.alloc(3)) };
    case 'exportUnknown':
      return { d: withStructuredReplies(start()), event: valid('nope') };
    case 'exportTlsOnly':
      return { d: withStructuredReplies(start({ tls: 'optional' })), event: valid('secret') };
    // The server's hook fails while the option waits in `resolving`: the answer raises the option again.
    case 'exportOpenFailed':
    case 'listFailed': {
      const d = withStructuredReplies(start(route.guard === 'listFailed' ? { resolveList: true } : { resolveExports: true }));
      const failing: HandshakeDriver = {
        ...d,
        option: (e) => {
          expect(d.option(e)).toEqual([]);
          expect(d.value()).toBe('resolving');
          return d.option({ type: 'resolve.failed', message: 'the hook threw' });
        },
      };
      return { d: failing, event: valid('dyn') };
    }
    case 'structuredRepliesNotOffered':
      return { d: start({ structuredReplies: false }), event: valid() };
    case 'extendedHeadersNotOffered':
      return { d: start({ extendedHeaders: false }), event: valid() };
    case 'structuredRepliesOn': {
      const d = start();
      expect(d.option(opt(O.STRUCTURED_REPLY)).map((r) => r.type)).toEqual([R.ACK]);
      return { d, event: valid() };
    }
    case 'extendedHeadersOn': {
      const d = start();
      expect(d.option(opt(O.EXTENDED_HEADERS)).map((r) => r.type)).toEqual([R.ACK]);
      return { d, event: valid() };
    }
    case 'structuredRepliesOff':
      return { d: start(), event: valid() };
    case undefined:
      return { d: start(), event: valid() };
    default:
      return undefined;
  }
}

describe('every option error in the routing table carries a reason', () => {
  const routes = errorRoutes();

  it('the walk finds the routing table', () => {
    // Each option's own refusals plus the modes' wildcards (once per option
    // caught); a much smaller number would mean the walk no longer sees them.
    expect(routes.length).toBeGreaterThanOrEqual(30);
    expect(new Set(routes.map((r) => r.error))).toEqual(
      new Set([
        'NBD_REP_ERR_SHUTDOWN',
        'NBD_REP_ERR_INVALID',
        'NBD_REP_ERR_TLS_REQD',
        'NBD_REP_ERR_TOO_BIG',
        'NBD_REP_ERR_POLICY',
        'NBD_REP_ERR_UNKNOWN',
        'NBD_REP_ERR_PLATFORM',
        'NBD_REP_ERR_UNSUP',
        'NBD_REP_ERR_EXT_HEADER_REQD',
      ]),
    );
  });

  it('the routing table names every option error of the error catalogue (so each is reached below)', () => {
    const catalogued = Object.entries(ERRORS).filter(([, e]) => e.wire.startsWith('NBD_REP_ERR_')).map(([code]) => code);
    expect([...new Set(routes.map((r) => r.code))].sort()).toEqual(catalogued.sort());
  });

  it.each(
    routes.map((r) => [`${r.mode}: ${r.descriptor === r.event ? r.event : `${r.descriptor} (${r.event})`} [${r.guard ?? 'otherwise'}] → ${r.error} (${r.code})`, r] as const),
  )('%s', (_label, route) => {
    const s = scenario(route);
    expect(s, `no scenario reaches ${route.mode} ${route.event} [${route.guard}]`).toBeDefined();
    const replies = s!.d.option(s!.event);
    expect(replies).toHaveLength(1);
    const [r] = replies;
    expect(r!.option).toBe(CODE[route.event]);
    expect(r!.type).toBe(R[route.error.replace('NBD_REP_', '') as keyof typeof R]);
    textOf(r!);
    expect(s!.d.errors).toEqual([]);
  });
});

// ── 2. the texts ─────────────────────────────────────────────────────────

describe('what the client is told', () => {
  const one = (d: HandshakeDriver, event: HandshakeEvent) => {
    const replies = d.option(event);
    expect(replies).toHaveLength(1);
    return textOf(replies[0]!);
  };

  it.each([
    ['GO for an unknown export', () => one(startHandshake(), opt(O.GO, infoGoData('nope'))), 'export "nope" not present'],
    ['INFO for an unknown export', () => one(startHandshake(), opt(O.INFO, infoGoData('nope'))), 'export "nope" not present'],
    [
      'the empty name without a default export',
      () => one(startHandshake({ defaultExport: undefined }), opt(O.GO, infoGoData(''))),
      'export "" not present (this server has no default export)',
    ],
    ['a TLS-only export before TLS', () => one(startHandshake({ tls: 'optional' }), opt(O.GO, infoGoData('secret'))), 'export "secret" requires TLS'],
    ['FORCEDTLS before STARTTLS', () => one(startHandshake({ tls: 'required' }), opt(O.LIST)), 'TLS is required: send NBD_OPT_STARTTLS before NBD_OPT_LIST'],
    ['STARTTLS with TLS off', () => one(startHandshake({ tls: 'off' }), opt(O.STARTTLS)), 'TLS is not enabled on this server'],
    ['a second STARTTLS', () => one(startHandshake({ tls: 'optional', tlsActive: true }), opt(O.STARTTLS)), 'TLS is already active'],
    ['an unknown option', () => one(startHandshake(), opt(42, Buffer.from('whatever'))), 'option 42 is not supported'],
    ['a known option we do not implement', () => one(startHandshake(), opt(O.PEEK_EXPORT)), 'NBD_OPT_PEEK_EXPORT is not supported'],
    [
      'while shutting down',
      () => {
        const d = startHandshake();
        d.send({ type: 'server.shutdown' });
        return one(d, opt(O.LIST));
      },
      'server is shutting down',
    ],
    ['LIST with data', () => one(startHandshake(), opt(O.LIST, Buffer.from('abc'))), 'NBD_OPT_LIST takes no data (got 3 bytes)'],
    ['malformed GO data', () => one(startHandshake(), opt(O.GO, Buffer.alloc(5))), 'NBD_OPT_GO: GO data of 5 bytes is shorter than 6'],
    [
      'an option over the length limit',
      () => one(startHandshake(), opt(O.INFO, Buffer.alloc(600), { maxOptionLength: 512 })),
      'NBD_OPT_INFO: option data of 600 bytes exceeds 512',
    ],
    [
      'SET_META_CONTEXT before structured replies',
      () => one(startHandshake(), opt(O.SET_META_CONTEXT, metaData('disk', ['base:allocation']))),
      'NBD_OPT_SET_META_CONTEXT needs structured replies (or extended headers) negotiated first',
    ],
    [
      'STRUCTURED_REPLY after EXTENDED_HEADERS',
      () => {
        const d = startHandshake();
        d.option(opt(O.EXTENDED_HEADERS));
        return one(d, opt(O.STRUCTURED_REPLY));
      },
      'extended headers are already negotiated, and they include structured replies',
    ],
    ['options without fixed newstyle', () => one(startHandshake({}, 0), opt(O.LIST)), 'NBD_OPT_LIST needs the fixed newstyle handshake (the client did not set NBD_FLAG_C_FIXED_NEWSTYLE)'],
  ])('%s', (_what, text, expected) => {
    expect(text()).toBe(expected);
  });

  it('a client-supplied export name is quoted with quotes, backslashes, control and bidi characters escaped', () => {
    const name = 'a"b\\c\x1b[31m\nred\u202e\u0085';
    expect(one(startHandshake(), opt(O.GO, infoGoData(name)))).toBe('export "a\\"b\\\\c\\u001b[31m\\u000ared\\u202e\\u0085" not present');
  });

  it('a long export name is cut at 128 characters, on a character boundary (4096-byte names of 2- and 4-byte characters)', () => {
    for (const ch of ['é', '😀']) {
      const name = ch.repeat(4096 / Buffer.byteLength(ch));
      expect(Buffer.byteLength(name)).toBe(4096);
      const text = one(startHandshake(), opt(O.GO, infoGoData(name)));
      expect(text).toBe(`export "${ch.repeat(128)}…" not present`);
    }
  });
});

// ── 3. random sessions ───────────────────────────────────────────────────

const SEED = 0x6e6264; // fixed: a failure names the path fast-check took, replayable with this seed
const names = fc.constantFrom('disk', 'ro', 'secret', 'nope', '', 'x"\n\u202e', 'dyn');
const anyOption = fc.oneof(
  fc.record({ code: fc.constantFrom(O.INFO, O.GO), data: names.map((n) => infoGoData(n)) }),
  fc.record({ code: fc.constantFrom(O.LIST_META_CONTEXT, O.SET_META_CONTEXT), data: fc.tuple(names, fc.array(fc.constantFrom('base:allocation', 'base:', 'x:y'), { maxLength: 2 })).map(([n, q]) => metaData(n, q)) }),
  fc.record({ code: fc.constantFrom(O.LIST, O.STARTTLS, O.STRUCTURED_REPLY, O.EXTENDED_HEADERS, O.PEEK_EXPORT, 12, 42, 0x4242), data: fc.constant(undefined) }),
  fc.record({ code: fc.integer({ min: 3, max: 12 }), data: fc.uint8Array({ maxLength: 80 }).map((a) => Buffer.from(a)) }),
);
const step = fc.oneof(
  { weight: 8, arbitrary: anyOption.map((o) => ({ kind: 'option' as const, ...o })) },
  { weight: 1, arbitrary: fc.constant({ kind: 'shutdown' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'tls' as const }) },
  // The server's answer while the machine is resolving (settings.resolve): an export, none, a list, a failure.
  {
    weight: 3,
    arbitrary: fc
      .constantFrom<HandshakeEvent>(
        { type: 'resolve.export', export: { ...EXPORTS[0]!, name: 'dyn' } },
        { type: 'resolve.export', export: { ...EXPORTS[2]!, name: 'dyn' } },
        { type: 'resolve.export', export: null },
        { type: 'resolve.list', exports: [{ name: 'dyn', description: 'x"\n' }] },
        { type: 'resolve.failed', message: 'the hook threw' },
      )
      .map((event) => ({ kind: 'answer' as const, event })),
  },
);
const settings = fc.record({
  tls: fc.constantFrom('off' as const, 'optional' as const, 'required' as const),
  structuredReplies: fc.boolean(),
  extendedHeaders: fc.boolean(),
  defaultExport: fc.constantFrom('disk', undefined),
  clientFlags: fc.constantFrom(0, 1, 3),
  resolve: fc.boolean(),
});

describe('random option sequences', () => {
  it('every option error reply the machine emits carries text (seeded)', () => {
    let errors = 0;
    const property = fc.property(settings, fc.array(step, { minLength: 1, maxLength: 12 }), (s, steps) => {
      const input = { tls: s.tls, structuredReplies: s.structuredReplies, extendedHeaders: s.extendedHeaders, defaultExport: s.defaultExport, maxOptions: 1000 };
      const d = startHandshake({ ...input, resolveExports: s.resolve, resolveList: s.resolve }, s.clientFlags);
      for (const st of steps) {
        if (d.actor.getSnapshot().status === 'done') break;
        if (st.kind === 'shutdown') d.send({ type: 'server.shutdown' });
        else if (st.kind === 'answer') {
          if (d.value() !== 'resolving') continue;
          for (const e of d.send(st.event)) {
            if (e.type !== 'send') continue;
            const r = parseOptionReply(e.frame);
            if (!isErr(r.type)) continue;
            errors++;
            textOf(r);
          }
        }
        else if (st.kind === 'tls') {
          if (d.value() === 'upgradingTls') d.send({ type: 'tls.established' });
        } else if (d.value() === 'options') {
          for (const r of d.option(opt(st.code, st.data, { maxOptionLength: 64 }))) {
            if (!isErr(r.type)) continue;
            errors++;
            textOf(r);
          }
        }
      }
      expect(d.errors).toEqual([]);
    });
    const details = fc.check(property, { seed: SEED, numRuns: 400, interruptAfterTimeLimit: 8000 });
    if (details.failed) throw new Error(`${fc.defaultReportMessage(details) ?? 'property failed'}\n${String(details.errorInstance)}`);
    console.log(`option error texts: ${details.numRuns} runs, ${errors} error replies, seed ${details.seed}`);
    expect(details.numRuns).toBeGreaterThanOrEqual(50);
    expect(errors).toBeGreaterThan(100);
  });
});
