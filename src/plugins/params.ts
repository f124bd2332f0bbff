/**
 * `key=value` parameters of backends and filters named on the command line
 * (nbdkit's `PLUGIN key=value` and `--filter=NAME key=value`): each plugin
 * declares its keys, and `readParams` checks a command line's pairs against
 * them, converting each value. Every mistake is a ParamError whose message
 * names the plugin and the key.
 */
import { parseSize } from '../cli/size.js';

export class ParamError extends Error {}

export type ParamKind = 'string' | 'size' | 'integer' | 'number' | 'boolean' | 'path';

export interface ParamSpec {
  readonly name: string;
  readonly kind: ParamKind;
  /** One line for `--help`. */
  readonly summary: string;
  readonly required?: boolean;
  /** Allowed values (for kind 'string'). */
  readonly choices?: readonly string[];
  /** A key that may be given more than once (its value is then an array). */
  readonly repeat?: boolean;
}

export type ParamValue = string | number | boolean | ReadonlyArray<string | number | boolean>;
export type Params = Readonly<Record<string, ParamValue>>;

const TRUE = new Set(['1', 'true', 'on', 'yes']);
const FALSE = new Set(['0', 'false', 'off', 'no']);

function convert(plugin: string, spec: ParamSpec, text: string): string | number | boolean {
  const bad = (why: string) => new ParamError(`${plugin}: ${spec.name}=${text}: ${why}`);
  switch (spec.kind) {
    case 'size':
      try {
        return parseSize(text);
      } catch (e) {
        throw bad((e as Error).message);
      }
    case 'integer': {
      if (!/^-?\d+$/.test(text.trim()) || !Number.isSafeInteger(Number(text))) throw bad('not an integer');
      return Number(text);
    }
    case 'number': {
      const n = Number(text);
      if (text.trim() === '' || !Number.isFinite(n)) throw bad('not a number');
      return n;
    }
    case 'boolean': {
      const t = text.toLowerCase();
      if (TRUE.has(t)) return true;
      if (FALSE.has(t)) return false;
      throw bad('expected true/false, on/off, yes/no or 1/0');
    }
    case 'path':
      if (text === '') throw bad('empty path');
      return text;
    case 'string':
      if (spec.choices && !spec.choices.includes(text)) throw bad(`expected one of ${spec.choices.join(', ')}`);
      return text;
  }
}

/** Split `key=value` (the value may contain `=`). */
export function splitPair(arg: string): [string, string] | null {
  const at = arg.indexOf('=');
  if (at <= 0) return null;
  return [arg.slice(0, at), arg.slice(at + 1)];
}

/**
 * Check `pairs` against `specs` and convert them. `magic` is the key a bare
 * value (no `=`) stands for, as nbdkit's "magic config key" (`file
 * disk.img` means `file=disk.img`, `memory 1G` means `size=1G`).
 */
export function readParams(plugin: string, specs: readonly ParamSpec[], args: readonly string[], magic?: string): Params {
  const out: Record<string, ParamValue> = {};
  for (const arg of args) {
    let pair = splitPair(arg);
    if (!pair) {
      if (!magic) throw new ParamError(`${plugin}: "${arg}" is not key=value`);
      pair = [magic, arg];
    }
    const [key, text] = pair;
    const spec = specs.find((s) => s.name === key);
    if (!spec) {
      const known = specs.map((s) => s.name).join(', ') || 'none';
      throw new ParamError(`${plugin}: unknown parameter "${key}" (known: ${known})`);
    }
    const value = convert(plugin, spec, text);
    if (spec.repeat) out[key] = [...((out[key] as ReadonlyArray<string | number | boolean> | undefined) ?? []), value];
    else if (key in out) throw new ParamError(`${plugin}: ${key} given twice`);
    else out[key] = value;
  }
  for (const spec of specs) if (spec.required && !(spec.name in out)) throw new ParamError(`${plugin}: ${spec.name}=… is required`);
  return out;
}
