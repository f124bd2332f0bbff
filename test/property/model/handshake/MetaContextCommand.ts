import type fc from 'fast-check';
import { expect } from 'vitest';
import { O, R, metaData } from '../../../unit/machines/support.js';
import { canonical, clearInfo, damage, exportOf, finalType, prelude, sendOption, tlsBlocked, type Damage, type HsModel, type HsReal, type Name } from './model.js';

/** Contexts a query list selects: only base:allocation exists; `base:` is a LIST wildcard (option.meta-context-query). */
function matches(queries: readonly string[], set: boolean): string[] {
  if (queries.length === 0) return set ? [] : ['base:allocation'];
  return queries.some((q) => q === 'base:allocation' || (!set && q === 'base:')) ? ['base:allocation'] : [];
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT. */
export class MetaContextCommand implements fc.Command<HsModel, HsReal> {
  constructor(
    readonly set: boolean,
    readonly name: Name,
    readonly queries: readonly string[],
    readonly dmg: Damage,
  ) {}
  check = (m: Readonly<HsModel>) => !m.done;
  run(m: HsModel, r: HsReal): void {
    const code = this.set ? O.SET_META_CONTEXT : O.LIST_META_CONTEXT;
    const replies = sendOption(m, r, code, damage(metaData(this.name, this.queries), this.dmg));
    const want =
      prelude(m, this.dmg === 'tooBig') ??
      (this.dmg !== 'none'
        ? R.ERR_INVALID
        : this.set && !(m.sr || m.eh)
          ? R.ERR_INVALID // option.meta-context-needs-structured
          : !exportOf(this.name)
            ? R.ERR_UNKNOWN
            : tlsBlocked(m, this.name)
              ? R.ERR_TLS_REQD
              : R.ACK);
    expect(finalType(replies)).toBe(want);
    if (want === R.ACK) {
      const names = matches(this.queries, this.set);
      const got = replies.filter((x) => x.type === R.META_CONTEXT);
      expect(got.map((x) => x.data.subarray(4).toString())).toEqual(names);
      const ids = got.map((x) => x.data.readUInt32BE(0));
      if (this.set) expect(new Set(ids).size).toBe(ids.length);
      else for (const id of ids) expect(id).toBe(0);
      if (this.set) m.meta = { exportName: canonical(this.name), names };
    } else {
      expect(replies).toHaveLength(1);
      if (this.set) m.meta = null; // option.meta-context-replace: SET replaces the selection even when it fails
    }
    clearInfo(m);
  }
  toString = () =>
    `${this.set ? 'SET' : 'LIST'}_META_CONTEXT(${JSON.stringify(this.name)}, ${JSON.stringify(this.queries)}${this.dmg === 'none' ? '' : `, ${this.dmg}`})`;
}
