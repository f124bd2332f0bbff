/**
 * The error catalogue (src/protocol/errors.ts):
 *   - codes are well formed (a defined rule ID, `rule/situation`, or NBD_ERR_* / NBD_CLOSED_*),
 *     and no two entries say the same thing the same way;
 *   - every wire status is a spec value (errnos of the spec's set, option reply errors);
 *   - every entry is used: each refusal is in the transmission table, each close
 *     code is reached by driving the machines (or the decoder) and arrives on the
 *     `close` effect, each NbdError code is thrown somewhere in src/ (the option
 *     error replies are walked and reached in test/unit/machines/refusal-text.test.ts);
 *   - docs/design.md lists exactly this catalogue.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ERRNO, REP, isRepError } from '../../../src/protocol/constants.js';
import { FrameDecoder, type DecodeFailure, type DecodeFailureCode } from '../../../src/protocol/decoder.js';
import {
  ERRORS,
  isErrorCode,
  messageOf,
  ruleOf,
  textOf,
  wireValue,
  type ApiErrorCode,
  type CloseCode,
  type TransportCloseCode,
  type ErrorCode,
  type WireStatus,
} from '../../../src/protocol/errors.js';
import { REFUSALS } from '../../../src/machines/transmission.js';
import { ERRNO_SPEC } from '../../helpers/wire.js';
import type { HandshakeEmitted, TransmissionEmitted } from '../../../src/machines/types.js';
import { EXPORTS, negotiatedFor, O, opt, optionBytes, request, startHandshake, startTransmission, u32 } from '../machines/support.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const read = (file: string) => readFileSync(path.resolve(ROOT, file), 'utf8');
const CODES = Object.keys(ERRORS) as ErrorCode[];
const wireOf = (code: ErrorCode): WireStatus => ERRORS[code].wire;

/** Rule IDs defined in docs/rules.md. */
const RULES = new Set([...read('docs/rules.md').matchAll(/^### `([^`\n]+)`[ \t]*$/gm)].map((m) => m[1]!));

/** A message with its template's details shown as `<name>` (what docs/design.md lists). */
function shown(code: ErrorCode): string {
  const m = ERRORS[code].message as string | ((d: unknown) => string);
  if (typeof m === 'string') return m;
  return m(new Proxy({}, { get: (_t, key) => `<${String(key)}>` }));
}

describe('codes', () => {
  it('each is a rule ID of docs/rules.md, a rule ID and a situation, or an NBD_ERR_ / NBD_CLOSED_ name', () => {
    const bad = CODES.filter((code) => {
      if (code.startsWith('NBD_')) return !/^NBD_(ERR|CLOSED)_[A-Z]+(_[A-Z]+)*$/.test(code) || ruleOf(code) !== undefined;
      const rule = ruleOf(code)!;
      const situation = code.slice(rule.length);
      return !RULES.has(rule) || !(situation === '' || /^\/[a-z]+(-[a-z]+)*$/.test(situation));
    });
    expect(bad).toEqual([]);
    expect(CODES.length).toBeGreaterThan(50);
  });

  it('a rule enforced in several situations has a coded entry per situation, never also a bare one', () => {
    const split = new Set(CODES.filter((c) => c.includes('/')).map((c) => ruleOf(c)));
    expect(CODES.filter((c) => split.has(c))).toEqual([]);
    // …and a rule with only one situation does not need one.
    const perRule = new Map<string, number>();
    for (const c of CODES.filter((c) => c.includes('/'))) perRule.set(ruleOf(c)!, (perRule.get(ruleOf(c)!) ?? 0) + 1);
    expect([...perRule].filter(([, n]) => n < 2)).toEqual([]);
  });

  it('no two entries have the same wire status and the same message', () => {
    const seen = new Map<string, ErrorCode>();
    const twins: string[] = [];
    for (const code of CODES) {
      const key = `${wireOf(code)} ${shown(code)}`;
      if (seen.has(key)) twins.push(`${seen.get(key)} = ${code}`);
      seen.set(key, code);
    }
    expect(twins).toEqual([]);
  });

  it('isErrorCode knows exactly the catalogue', () => {
    for (const code of CODES) expect(isErrorCode(code)).toBe(true);
    expect(isErrorCode('transmission.write-read-only/x')).toBe(false);
    expect(isErrorCode('NBD_ERR_STOPPED')).toBe(false);
  });
});

describe('wire statuses are spec values', () => {
  // The spec's error values, as the test wire codec writes them out from the spec.
  const SPEC_ERRNOS: Record<string, number> = ERRNO_SPEC;

  it.each(CODES.map((c) => [c, wireOf(c)] as const))('%s: %s', (code, wire) => {
    if (wire.startsWith('NBD_REP_ERR_')) {
      expect(wire in REP).toBe(true);
      expect(wireValue(code)).toBe(REP[wire as keyof typeof REP]);
      expect(isRepError(wireValue(code)!)).toBe(true);
    } else if (wire.startsWith('NBD_E')) {
      expect(SPEC_ERRNOS[wire]).toBeDefined();
      expect(wireValue(code)).toBe(SPEC_ERRNOS[wire]);
      expect(ERRNO[wire as keyof typeof ERRNO]).toBe(SPEC_ERRNOS[wire]);
    } else {
      expect(['disconnect', 'close', 'thrown']).toContain(wire);
      expect(wireValue(code)).toBeUndefined();
    }
  });

  it('EOVERFLOW only refuses a DF read, ENOTSUP never a request (transmission.error-values: only for DF reads and FAST_ZERO)', () => {
    expect(CODES.filter((c) => wireOf(c) === 'NBD_EOVERFLOW' || wireOf(c) === 'NBD_ENOTSUP')).toEqual(['reply.df-one-chunk']);
  });
});

// ── every entry is used ──────────────────────────────────────────────────

const codesWith = (pred: (w: WireStatus) => boolean) => CODES.filter((c) => pred(wireOf(c))).sort();

describe('every refusal entry is a refusal of the transmission machine', () => {
  it('the refusal table holds every errno entry but the shutdown one, with the catalogue errno and text', () => {
    const inTable = new Set(REFUSALS.map((r) => r.code));
    expect([...inTable, 'transmission.shutdown-drains'].sort()).toEqual(codesWith((w) => w.startsWith('NBD_E')));
    for (const r of REFUSALS) {
      expect(r.errno).toBe(wireValue(r.code));
      expect(r.message.startsWith(`${r.code}: `)).toBe(true);
    }
    expect(REFUSALS.map((r) => r.message)).toContain(textOf('transmission.flag-not-advertised', { flag: 'FAST_ZERO' }));
  });

  it('transmission.shutdown-drains: a request while draining gets the catalogue errno and text', () => {
    const t = startTransmission({ negotiated: negotiatedFor(EXPORTS[0]!) });
    t.send({ type: 'server.shutdown' });
    const [e] = t.request({ type: 0, cookie: 2n, length: 512 });
    expect(e).toMatchObject({ type: 'refuse', code: 'transmission.shutdown-drains', errno: 108, message: 'transmission.shutdown-drains: server is shutting down' });
  });
});

/** Bytes that make the decoder give up, with the limits that make it so. */
const DECODER_FAILURES: Record<DecodeFailureCode, () => DecodeFailure> = {
  NBD_ERR_BAD_OPTION_MAGIC: () => fail({}, Buffer.alloc(16, 0x41)),
  NBD_ERR_OPTION_TOO_LONG: () => fail({ maxOptionSkip: 100 }, optionBytes(O.LIST, Buffer.alloc(101)).subarray(0, 16)),
  NBD_ERR_BAD_REQUEST_MAGIC: () => fail({}, Buffer.alloc(28, 0x41), true),
  NBD_ERR_PAYLOAD_TOO_LONG: () => {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(1, 6); // WRITE
    h.writeUInt32BE(2000, 24);
    return fail({ maxPayload: 100, maxPayloadSkip: 1000 }, h, true);
  },
  NBD_ERR_BUFFER_LIMIT: () => fail({ maxBufferedBytes: 10 }, Buffer.alloc(11), true),
};

function fail(limits: ConstructorParameters<typeof FrameDecoder>[0], bytes: Buffer, requests = false): DecodeFailure {
  const d = new FrameDecoder(limits);
  d.push(u32(3));
  d.next();
  if (requests) d.startTransmission(false);
  d.push(bytes);
  const f = d.next();
  if (f === null || f.kind !== 'fatal') throw new Error(`no failure: ${JSON.stringify(f)}`);
  return f;
}

type Close = Extract<HandshakeEmitted | TransmissionEmitted, { type: 'close' }>;
const closeIn = (emitted: ReadonlyArray<HandshakeEmitted | TransmissionEmitted>): Close => {
  const closes = emitted.filter((e): e is Close => e.type === 'close');
  expect(closes).toHaveLength(1);
  return closes[0]!;
};

const handshake = (input: Parameters<typeof startHandshake>[0] = {}, flags: number | null = 3) => startHandshake(input, flags);
const transmission = () => startTransmission({ negotiated: negotiatedFor(EXPORTS[0]!) });

/**
 * How each way a connection ends is reached: the `close` effect the machine
 * emits (or, where none is emitted, the machine's output). A Record, so a close
 * code added to the catalogue without a way here does not compile.
 */
const CLOSES: Record<Exclude<CloseCode, DecodeFailureCode | TransportCloseCode>, () => { code: string; reason: string }> = {
  'handshake.client-flags-unknown': () => closeIn(handshake({}, null).send({ type: 'wire.clientFlags', flags: 1 << 5 })),
  'option.too-many-options': () => {
    const d = handshake({ maxOptions: 1 });
    d.send(opt(O.LIST));
    return closeIn(d.send(opt(O.LIST)));
  },
  'option.export-name-terminates/malformed': () => closeIn(handshake().send(opt(O.EXPORT_NAME, Buffer.from('a\0b')))),
  'option.export-name-terminates/too-long': () => closeIn(handshake().send(opt(O.EXPORT_NAME, Buffer.alloc(600, 0x61), { maxOptionLength: 512 }))),
  'option.export-name-terminates/unknown-export': () => closeIn(handshake().send(opt(O.EXPORT_NAME, Buffer.from('nope')))),
  'option.export-name-terminates/tls-only': () => closeIn(handshake({ tls: 'optional' }).send(opt(O.EXPORT_NAME, Buffer.from('secret')))),
  'option.export-name-terminates/shutting-down': () => {
    const d = handshake();
    d.send({ type: 'server.shutdown' });
    return closeIn(d.send(opt(O.EXPORT_NAME, Buffer.from('disk'))));
  },
  'option.export-name-terminates/open-failed': () => {
    const d = handshake({ resolveExports: true });
    expect(d.send(opt(O.EXPORT_NAME, Buffer.from('dyn')))).toEqual([{ type: 'resolve', request: { kind: 'export', name: 'dyn' } }]);
    return closeIn(d.send({ type: 'resolve.failed', message: 'openExport threw' }));
  },
  'tls.mode-forcedtls/export-name': () => closeIn(handshake({ tls: 'required' }).send(opt(O.EXPORT_NAME, Buffer.from('disk')))),
  'option.extended-headers/export-name': () => {
    const d = handshake();
    d.send(opt(O.EXTENDED_HEADERS));
    return closeIn(d.send(opt(O.EXPORT_NAME, Buffer.from('disk'))));
  },
  'tls.handshake-failed': () => {
    const d = handshake({ tls: 'optional' });
    d.send(opt(O.STARTTLS));
    expect(d.value()).toBe('upgradingTls');
    return closeIn(d.send({ type: 'tls.failed', message: 'bad certificate' }));
  },
  NBD_ERR_HANDSHAKE_TIMEOUT: () => closeIn(handshake().send({ type: 'timer.handshake', ms: 5 })),
  NBD_ERR_PROTOCOL: () => {
    const h = closeIn(handshake().send({ type: 'wire.fatal', message: 'bad magic' }));
    const t = closeIn(transmission().send({ type: 'wire.fatal', message: 'bad magic' }));
    expect(t.code).toBe(h.code);
    return h;
  },
  'option.abort-ack': () => closeIn(handshake().send(opt(O.ABORT))),
  'transmission.disc-drains': () => {
    const t = transmission();
    t.request({ type: 2 });
    return closeIn(t.send({ type: 'inflight.idle' }));
  },
  NBD_CLOSED_BY_CLIENT: () => {
    const t = transmission();
    t.send({ type: 'client.eof' });
    return closeIn(t.send({ type: 'inflight.idle' }));
  },
  NBD_CLOSED_SHUTDOWN: () => {
    const t = transmission();
    t.send({ type: 'server.shutdown' });
    return closeIn(t.send({ type: 'inflight.idle' }));
  },
  NBD_CLOSED_IDLE_TIMEOUT: () => {
    const t = transmission();
    t.send({ type: 'timer.idle', ms: 5 });
    return closeIn(t.send({ type: 'inflight.idle' }));
  },
  // The socket went away: the machine stops without a close effect; its output says why.
  NBD_CLOSED_SOCKET: () => {
    const t = transmission();
    expect(t.send({ type: 'socket.closed' })).toEqual([]);
    return t.actor.getSnapshot().output as { code: string; reason: string };
  },
};

describe('every close entry is reached, and the close carries its code', () => {
  it('the scenarios cover every disconnect and close entry', () => {
    // The transport's own drops are reached in test/unit/transport/session.test.ts.
    const transport: TransportCloseCode[] = ['tls.plaintext-after-starttls', 'NBD_ERR_TLS_NOT_CONFIGURED', 'NBD_ERR_INTERNAL'];
    expect([...Object.keys(CLOSES), ...Object.keys(DECODER_FAILURES), ...transport].sort()).toEqual(codesWith((w) => w === 'disconnect' || w === 'close'));
  });

  it.each(Object.entries(CLOSES))('%s', (code, reach) => {
    const c = reach();
    expect(c.code).toBe(code);
    const fixed = code as Exclude<CloseCode, DecodeFailureCode | TransportCloseCode>;
    // Hard closes carry the text (rule ID first), orderly ones the bare message.
    expect(c.reason.startsWith(wireOf(fixed) === 'disconnect' ? textOf(fixed) : messageOf(fixed))).toBe(true);
  });

  it('a rejected handshake keeps the code in its outcome', () => {
    const d = handshake();
    d.send(opt(O.EXPORT_NAME, Buffer.from('nope')));
    expect(d.actor.getSnapshot().output).toEqual({
      outcome: 'rejected',
      code: 'option.export-name-terminates/unknown-export',
      reason: 'option.export-name-terminates: EXPORT_NAME for an unknown export (opt.exportName)',
    });
  });

  it.each(Object.entries(DECODER_FAILURES))('%s: the decoder gives it up with the catalogue message, and both machines close with that code', (code, make) => {
    const f = make();
    expect(f.code).toBe(code);
    const template = shown(f.code).split(/<[a-z]+>/);
    expect(template.every((part) => f.message.includes(part))).toBe(true);
    const event = { type: 'wire.fatal' as const, code: f.code, message: `${f.code}: ${f.message}` };
    const h = closeIn(handshake().send(event));
    expect(h).toEqual({ type: 'close', hard: true, code, reason: `protocol violation: ${f.code}: ${f.message}` });
    const t = closeIn(transmission().send(event));
    expect(t).toEqual({ type: 'close', hard: true, code, reason: `${f.code}: ${f.message}` });
  });
});

describe('every NbdError code is thrown somewhere', () => {
  const sources = (dir: string): string[] =>
    readdirSync(path.resolve(ROOT, dir), { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? sources(`${dir}/${e.name}`) : e.name.endsWith('.ts') ? [`${dir}/${e.name}`] : [],
    );
  const thrown = new Set(sources('src').flatMap((f) => [...read(f).matchAll(/new NbdError\(\s*'([A-Z_]+)'/g)].map((m) => m[1]!)));

  it('each thrown entry is raised in src/, and nothing else is raised', () => {
    const api: ApiErrorCode[] = codesWith((w) => w === 'thrown') as ApiErrorCode[];
    expect([...thrown].sort()).toEqual(api);
  });
});

// ── the catalogue in docs/design.md ──────────────────────────────────────

const START = '<!-- error-catalogue:start -->';
const END = '<!-- error-catalogue:end -->';

/** The table docs/design.md must hold between the markers. */
function table(): string {
  // Messages as code (a `<detail>` would read as HTML); what a thrown error means in italics.
  const rows = CODES.map((code) => `| \`${code}\` | ${wireOf(code)} | ${wireOf(code) === 'thrown' ? `*${shown(code)}*` : `\`${shown(code)}\``} |`);
  return ['| Code | Wire | Message |', '| --- | --- | --- |', ...rows].join('\n');
}

describe('docs/design.md', () => {
  it('lists the catalogue as it is (regenerate the table from this test on a mismatch)', () => {
    const doc = read('docs/design.md');
    const at = doc.indexOf(START);
    const end = doc.indexOf(END);
    expect(at, `docs/design.md has no ${START} marker`).toBeGreaterThan(0);
    const listed = doc.slice(at + START.length, end).trim();
    expect(listed, `docs/design.md's error catalogue is out of date; it should read:\n${table()}`).toBe(table());
  });
});
