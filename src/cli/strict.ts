/**
 * `serve --strict --run CMD`: the client's protocol violations, counted per
 * rule, summed up on stderr when CMD exits.
 */
import type { Violation } from '../api/violations.js';

/** Examples shown per rule. */
const EXAMPLES = 3;

/** The summary: one line per rule with its count, then its first few examples; empty when there were none. */
export function violationSummary(violations: readonly Violation[]): string {
  if (violations.length === 0) return '';
  const byRule = new Map<string, Violation[]>();
  for (const v of violations) {
    const list = byRule.get(v.rule);
    if (list) list.push(v);
    else byRule.set(v.rule, [v]);
  }
  const lines = [`nbd-engine: strict: ${violations.length} client protocol violation${violations.length === 1 ? '' : 's'} (docs/rules.md):`];
  for (const [rule, list] of byRule) {
    lines.push(`  ${rule}: ${list.length}`);
    for (const v of list.slice(0, EXAMPLES)) {
      lines.push(`    ${v.connection.peer}: ${v.frame.name} ${JSON.stringify(v.frame.fields)}: ${v.message}${v.code && v.code !== rule ? ` [${v.code}]` : ''}`);
    }
    if (list.length > EXAMPLES) lines.push(`    … ${list.length - EXAMPLES} more`);
  }
  return `${lines.join('\n')}\n`;
}

/** The exit status of `serve --strict --run CMD` when a client broke a rule (CMD's own status otherwise). */
export const STRICT_EXIT_STATUS = 3;
