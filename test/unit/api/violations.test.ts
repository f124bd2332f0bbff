/**
 * The strict-mode table (src/api/violations.ts) and the --run summary
 * (src/cli/strict.ts): every catalogue code is classified, the classes
 * follow the catalogue's wire status where they must, and the summary
 * counts per rule with at most three examples each.
 */
import { describe, expect, it } from 'vitest';
import { CLIENT_VIOLATIONS, violatedRule, type Violation } from '../../../src/api/violations.js';
import { ERRORS, ruleOf, type ErrorCode } from '../../../src/protocol/errors.js';
import { violationSummary } from '../../../src/cli/strict.js';

const codes = Object.keys(ERRORS) as ErrorCode[];

describe('CLIENT_VIOLATIONS', () => {
  it('classifies exactly the catalogue codes', () => {
    expect(Object.keys(CLIENT_VIOLATIONS).sort()).toEqual([...codes].sort());
  });

  it('errors thrown to the application and orderly closes are never a client violation', () => {
    for (const c of codes) if (ERRORS[c].wire === 'thrown' || ERRORS[c].wire === 'close') expect(violatedRule(c), c).toBeUndefined();
  });

  it('a rule-coded entry is reported under its own rule; NBD_* codes only under a named rule', () => {
    for (const c of codes) {
      const v = CLIENT_VIOLATIONS[c];
      if (v === true) expect(ruleOf(c), c).toBeDefined();
      if (v === true) expect(violatedRule(c)).toBe(ruleOf(c));
      if (typeof v === 'string') expect(violatedRule(c)).toBe(v);
    }
  });

  it('server conditions, policy and probes are not violations', () => {
    for (const c of ['transmission.shutdown-drains', 'option.shutting-down', 'tls.mode-forcedtls/option', 'tls.mode-notls', 'option.export-unknown', 'option.unknown-code', 'option.too-many-options', 'NBD_ERR_BUFFER_LIMIT', 'NBD_ERR_HANDSHAKE_TIMEOUT'] as const) {
      expect(violatedRule(c), c).toBeUndefined();
    }
    expect(violatedRule('transmission.out-of-bounds')).toBe('transmission.out-of-bounds');
    expect(violatedRule('option.structured-reply/repeat')).toBe('option.structured-reply');
    expect(violatedRule('NBD_ERR_BAD_REQUEST_MAGIC')).toBe('transmission.request-magic');
  });
});

describe('violationSummary', () => {
  const v = (rule: string, id: number, code?: ErrorCode): Violation => ({
    rule,
    ...(code ? { code } : {}),
    connection: { id, peer: `connection ${id}`, tls: false },
    frame: { name: 'NBD_CMD_READ', fields: { offset: id } },
    message: `m${id}`,
    t: 0,
  });

  it('is empty without violations', () => {
    expect(violationSummary([])).toBe('');
  });

  it('counts per rule in first-seen order, three examples each, the code when it differs from the rule', () => {
    const list = [1, 2, 3, 4, 5].map((i) => v('transmission.out-of-bounds', i, 'transmission.out-of-bounds'));
    list.splice(1, 0, v('option.structured-reply', 9, 'option.structured-reply/repeat'));
    expect(violationSummary(list).split('\n')).toEqual([
      'nbd-engine: strict: 6 client protocol violations (docs/rules.md):',
      '  transmission.out-of-bounds: 5',
      '    connection 1: NBD_CMD_READ {"offset":1}: m1',
      '    connection 2: NBD_CMD_READ {"offset":2}: m2',
      '    connection 3: NBD_CMD_READ {"offset":3}: m3',
      '    … 2 more',
      '  option.structured-reply: 1',
      '    connection 9: NBD_CMD_READ {"offset":9}: m9 [option.structured-reply/repeat]',
      '',
    ]);
  });
});
