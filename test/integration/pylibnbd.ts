/**
 * Run python3-libnbd scripts against our server: a shared prelude (connect
 * helpers, errno capture) and a JSON result the test asserts on in
 * TypeScript.
 */
import { nbdPython } from './harness.js';

export const PRELUDE = String.raw`
import errno, json, sys
import nbd

URI = sys.argv[1]
ARGS = sys.argv[2:]
out = {}

def connect(uri=URI, sr=True, meta=True, strict_off=0):
    h = nbd.NBD()
    if not sr:
        h.set_request_structured_replies(False)
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    # Let requests that libnbd would refuse client-side reach the server.
    h.set_strict_mode(h.get_strict_mode() & ~strict_off)
    h.connect_uri(uri)
    return h

def err(fn, *a, **kw):
    """Run fn; return None on success, else the errno name (or the message)."""
    try:
        fn(*a, **kw)
        return None
    except nbd.Error as e:
        if e.errno is not None:
            return errno.errorcode.get(e.errno, str(e.errno))
        return 'no-errno: ' + str(e)

def extents(h, count, offset, flags=0):
    """block_status as a list of [length, flags] pairs for base:allocation."""
    got = []
    def cb(ctx, off, entries, error):
        if ctx == nbd.CONTEXT_BASE_ALLOCATION:
            got.append([off] + list(entries))
        return 0
    h.block_status(count, offset, cb, flags)
    assert len(got) == 1, got
    start, *flat = got[0]
    return {'offset': start, 'extents': [flat[i:i + 2] for i in range(0, len(flat), 2)]}

def pattern(n, seed):
    """The test pattern; nbdsh.test.ts builds the same bytes in TypeScript."""
    return bytes(((i * 31 + seed * 7 + (i >> 8)) & 0xff) for i in range(n))

def aio_writes(h, pieces, depth, done=None):
    """aio_pwrite each (key, offset, data) with at most depth in flight, then wait for all;
    done(key, err) is called as each completes (err.value: 0 or the errno)."""
    for key, offset, data in pieces:
        while h.aio_in_flight() >= depth:
            h.poll(-1)
        if done is None:
            h.aio_pwrite(data, offset)
        else:
            h.aio_pwrite(data, offset, completion=lambda err, key=key: done(key, err))
    while h.aio_in_flight() > 0:
        h.poll(-1)

def interleaved(k, count):
    """Writer k's pieces of two interleaved writers: 700 bytes at 1400*i + 700*k, never aligned."""
    return ((i, 1400 * i + 700 * k, bytes([k + 1 + (i % 100)]) * 700) for i in range(count))

def flags(h):
    return {
        'size': h.get_size(),
        'read_only': h.is_read_only(),
        'flush': h.can_flush(), 'fua': h.can_fua(), 'trim': h.can_trim(),
        'zero': h.can_zero(), 'fast_zero': h.can_fast_zero(), 'cache': h.can_cache(),
        'multi_conn': h.can_multi_conn(), 'rotational': h.is_rotational(), 'df': h.can_df(),
        'block_size': [h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED), h.get_block_size(nbd.SIZE_MAXIMUM)],
    }
`;

/** Run `body` after the prelude with `sys.argv[1] = uri`; parse the printed `out` JSON. */
export async function py<T = Record<string, unknown>>(uri: string, body: string, args: string[] = []): Promise<T> {
  const script = `${PRELUDE}\n${dedent(body)}\nprint(json.dumps(out))\n`;
  const stdout = await nbdPython(script, [uri, ...args]);
  const lines = stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as T;
}

/**
 * Strip the indentation of a template literal's first line from every line
 * (Python cares). Interpolated snippets may be indented less: their lines
 * lose what leading spaces they have, up to that amount.
 */
function dedent(text: string): string {
  const lines = text.replace(/^\n/, '').split('\n');
  const indent = lines.find((l) => l.trim())?.match(/^ */)![0].length ?? 0;
  const strip = new RegExp(`^ {0,${indent}}`);
  return lines.map((l) => l.replace(strip, '')).join('\n');
}

/** What two writers of `interleaved` (the prelude) leave in the first 1400 * `count` bytes. */
export function interleavedBytes(count: number): Buffer {
  const want = Buffer.alloc(1400 * count);
  for (let i = 0; i < count; i++) for (let k = 0; k < 2; k++) want.fill(k + 1 + (i % 100), 1400 * i + 700 * k, 1400 * i + 700 * (k + 1));
  return want;
}
