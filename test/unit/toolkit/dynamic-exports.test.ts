/**
 * The handshake machine's `resolving` state on its own: which options make
 * it ask the server (`resolve`), what it records from the answer, and how
 * the waiting option is then answered by the mode it came from.
 */
import { describe, expect, it } from 'vitest';
import type { ExportDescriptor, HandshakeEmitted } from '../../../src/machines/types.js';
import { EXPORTS, O, R, infoGoData, infoOf, metaData, opt, startHandshake } from '../machines/support.js';

const DYN: ExportDescriptor = { ...EXPORTS[1]!, name: 'dyn', description: 'opened for this connection' };
const resolves = (emitted: HandshakeEmitted[]) => emitted.filter((e) => e.type === 'resolve').map((e) => (e as Extract<HandshakeEmitted, { type: 'resolve' }>).request);

describe('handshake machine: exports resolved per connection', () => {
  it('a name it does not hold is asked for; the option waits, then is answered; INFO then GO ask once', () => {
    const d = startHandshake({ resolveExports: true });
    const asked = d.send(opt(O.INFO, infoGoData('dyn', [1])));
    expect(resolves(asked)).toEqual([{ kind: 'export', name: 'dyn' }]);
    expect(asked.filter((e) => e.type === 'send')).toEqual([]);
    expect(d.value()).toBe('resolving');
    const info = d.option({ type: 'resolve.export', export: DYN });
    expect(info.map((r) => r.type)).toEqual([R.INFO, R.INFO, R.ACK]);
    expect(infoOf(info[1]!).payload.toString()).toBe('dyn');
    expect(d.actor.getSnapshot().context.optionCount).toBe(1);
    // GO for the same name: answered from the lookup, no second ask.
    const go = d.send(opt(O.GO, infoGoData('dyn')));
    expect(resolves(go)).toEqual([]);
    expect(d.actor.getSnapshot().status).toBe('done');
    expect(d.actor.getSnapshot().output).toMatchObject({ outcome: 'negotiated', negotiated: { export: DYN } });
  });

  it('static names never ask; "" asks only without a static default; another name asks again', () => {
    const d = startHandshake({ resolveExports: true, defaultExport: undefined });
    expect(resolves(d.send(opt(O.INFO, infoGoData('disk'))))).toEqual([]);
    expect(resolves(d.send(opt(O.INFO, infoGoData(''))))).toEqual([{ kind: 'export', name: '' }]);
    expect(d.option({ type: 'resolve.export', export: null }).map((r) => r.type)).toEqual([R.ERR_UNKNOWN]);
    expect(resolves(d.send(opt(O.INFO, infoGoData('other'))))).toEqual([{ kind: 'export', name: 'other' }]);
    const withDefault = startHandshake({ resolveExports: true });
    expect(resolves(withDefault.send(opt(O.INFO, infoGoData(''))))).toEqual([]);
  });

  it('a failure is answered once with NBD_REP_ERR_UNKNOWN and forgotten; an answer of the wrong kind is a failure', () => {
    const d = startHandshake({ resolveExports: true });
    d.send(opt(O.GO, infoGoData('dyn')));
    const failed = d.option({ type: 'resolve.failed', message: 'boom' });
    expect(failed.map((r) => r.type)).toEqual([R.ERR_UNKNOWN]);
    expect(failed[0]!.data.toString()).toBe(`export "dyn" could not be opened (see the server's log)`);
    expect(resolves(d.send(opt(O.GO, infoGoData('dyn'))))).toEqual([{ kind: 'export', name: 'dyn' }]);
    expect(d.option({ type: 'resolve.list', exports: [] }).map((r) => r.type)).toEqual([R.ERR_UNKNOWN]);
    expect(d.value()).toBe('options');
  });

  it('LIST with a per-connection list: the static exports, then the listed ones not already named; asked at every LIST', () => {
    const d = startHandshake({ resolveList: true, tls: 'optional' });
    expect(resolves(d.send(opt(O.LIST)))).toEqual([{ kind: 'list' }]);
    const list = d.option({ type: 'resolve.list', exports: [{ name: 'disk' }, { name: 'dyn', description: 'mine' }] });
    const names = list.filter((r) => r.type === R.SERVER).map((r) => r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString());
    // "secret" is TLS-only and hidden before TLS (SELECTIVETLS).
    expect(names).toEqual(['disk', 'ro', 'dyn']);
    expect(list.at(-1)!.type).toBe(R.ACK);
    expect(resolves(d.send(opt(O.LIST)))).toEqual([{ kind: 'list' }]);
    expect(d.option({ type: 'resolve.failed', message: 'x' }).map((r) => r.type)).toEqual([R.ERR_PLATFORM]);
  });

  it('malformed options are refused before anything is asked', () => {
    const d = startHandshake({ resolveExports: true, resolveList: true });
    expect(resolves(d.send(opt(O.INFO, Buffer.alloc(3))))).toEqual([]);
    expect(resolves(d.send(opt(O.LIST, Buffer.from('x'))))).toEqual([]);
    expect(resolves(d.send(opt(O.SET_META_CONTEXT, metaData('dyn', ['base:allocation']))))).toEqual([]); // needs structured replies first
    expect(d.value()).toBe('options');
  });

  it('a shutdown while resolving: the option gets ERR_SHUTDOWN (EXPORT_NAME: dropped); the client leaving or the timeout end it', () => {
    const d = startHandshake({ resolveExports: true });
    d.send(opt(O.INFO, infoGoData('dyn')));
    d.send({ type: 'server.shutdown' });
    expect(d.option({ type: 'resolve.export', export: DYN }).map((r) => r.type)).toEqual([R.ERR_SHUTDOWN]);
    const unfixed = startHandshake({ resolveExports: true }, 0);
    expect(resolves(unfixed.send(opt(O.EXPORT_NAME, Buffer.from('dyn'))))).toEqual([{ kind: 'export', name: 'dyn' }]);
    const reply = unfixed.send({ type: 'resolve.export', export: DYN });
    expect(reply.map((e) => e.type)).toEqual(['send']);
    expect(unfixed.actor.getSnapshot().output).toMatchObject({ outcome: 'negotiated', negotiated: { export: DYN, viaExportName: true } });
    const gone = startHandshake({ resolveExports: true });
    gone.send(opt(O.GO, infoGoData('dyn')));
    gone.send({ type: 'socket.closed' });
    expect(gone.actor.getSnapshot().output).toEqual({ outcome: 'disconnected' });
    const late = startHandshake({ resolveExports: true });
    late.send(opt(O.GO, infoGoData('dyn')));
    late.send({ type: 'timer.handshake', ms: 10 });
    expect(late.actor.getSnapshot().output).toMatchObject({ outcome: 'rejected', code: 'NBD_ERR_HANDSHAKE_TIMEOUT' });
  });

  it('an opened export marked tlsOnly is refused before TLS (SELECTIVETLS), as a static one', () => {
    const d = startHandshake({ resolveExports: true, tls: 'optional' });
    d.send(opt(O.INFO, infoGoData('dyn')));
    expect(d.option({ type: 'resolve.export', export: { ...DYN, tlsOnly: true } }).map((r) => r.type)).toEqual([R.ERR_TLS_REQD]);
    // Answered from the lookup the second time: no new ask.
    expect(resolves(d.send(opt(O.GO, infoGoData('dyn'))))).toEqual([]);
  });
});
