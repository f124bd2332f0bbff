/**
 * Option error replies carry a human-readable reason, and real clients
 * show it: qemu prints "server reported: <text>", libnbd (1.14) logs
 * "server error message: <text>" in its debug output (its error string
 * names only the errno, e.g. ENOENT for NBD_REP_ERR_UNKNOWN). Before, the
 * replies had no data and clients could say no more than the error code.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memoryBackend, type ServerOptions } from '../../src/index.js';
import { nbdPython, run, serverPerTest, tmpDir } from './harness.js';
import { makePki, rawClient } from './tls-support.js';
import { OPT, REP, encodeInfoGoData } from '../helpers/wire.js';

const { serve } = serverPerTest();


let dir: string;
let pki: string;
beforeAll(() => {
  dir = tmpDir('nbd-engine-option-text-');
  pki = makePki(path.join(dir, 'pki'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function exportsWithSecret(): ServerOptions['exports'] {
  return [
    { name: 'disk', backend: memoryBackend({ size: 1 << 20 }) },
    { name: 'secret', backend: memoryBackend({ size: 1 << 20 }), tlsOnly: true },
  ];
}
const x509 = () => ({ cert: path.join(pki, 'server-cert.pem'), key: path.join(pki, 'server-key.pem') });

/** Run a tool that must fail; its stderr. */
async function failing(tool: string, args: string[], env?: NodeJS.ProcessEnv): Promise<string> {
  const result = await run(tool, args, { env }).then(
    () => null,
    (e: { stderr?: string }) => e,
  );
  expect(result, `${tool} ${args.join(' ')} succeeded`).not.toBeNull();
  return String(result!.stderr ?? '');
}

describe('an unknown export', () => {
  it('qemu-img prints the server\'s reason', async () => {
    const r = await serve({ exports: exportsWithSecret() });
    const stderr = await failing('qemu-img', ['info', r.uri('nope')]);
    expect(stderr).toContain('Requested export not available');
    expect(stderr).toContain('server reported: export "nope" not present');
  });

  it('nbdinfo: libnbd receives the reason (its debug log shows it; the error names ENOENT)', async () => {
    const r = await serve({ exports: exportsWithSecret() });
    const stderr = await failing('nbdinfo', [r.uri('nope')], { LIBNBD_DEBUG: '1' });
    expect(stderr).toContain('nbd_opt_go: handshake: server error message: export "nope" not present');
    expect(stderr).toContain('server replied with error to opt_go request: No such file or directory');
  });

  it('python3-libnbd: ENOENT, and the server\'s text reaches the handle', async () => {
    const r = await serve({ exports: exportsWithSecret() });
    const out = JSON.parse(
      await nbdPython(
        String.raw`
import errno, json, sys
import nbd
messages = []
h = nbd.NBD()
h.set_debug(True)
h.set_debug_callback(lambda context, msg: messages.append(msg))
result = {}
try:
    h.connect_uri(sys.argv[1])
except nbd.Error as e:
    # The binding gives the errno's name (or its number).
    result['errno'] = errno.errorcode.get(e.errno, e.errno)
    result['error'] = e.string
result['server'] = [m for m in messages if 'server error message' in m]
print(json.dumps(result))
`,
        [r.uri('nope')],
      ),
    ) as { errno: string; error: string; server: string[] };
    expect(out.errno).toBe('ENOENT');
    expect(out.server.length).toBeGreaterThan(0);
    for (const m of out.server) expect(m).toMatch(/server error message: export "nope" not present$/);
  });

  it('the empty name without a default export says so', async () => {
    const r = await serve({ exports: exportsWithSecret(), defaultExport: null });
    const stderr = await failing('qemu-img', ['info', r.uri('')]);
    expect(stderr).toContain('server reported: export "" not present (this server has no default export)');
  });
});

describe('TLS refusals', () => {
  it('SELECTIVETLS: a TLS-only export asked for in plaintext', async () => {
    const r = await serve({ exports: exportsWithSecret(), tls: { mode: 'on', ...x509() } });
    const stderr = await failing('qemu-img', ['info', r.uri('secret')]);
    expect(stderr).toContain('server reported: export "secret" requires TLS');
  });

  it('FORCEDTLS: an option before STARTTLS', async () => {
    const r = await serve({ exports: exportsWithSecret(), tls: { mode: 'require', ...x509() } });
    const stderr = await failing('qemu-img', ['info', r.uri('disk')]);
    expect(stderr).toContain('server reported: TLS is required: send NBD_OPT_STARTTLS before NBD_OPT_GO');
  });
});

describe('over a raw socket', () => {
  it('an unknown option and a hostile export name get their reasons, escaped and capped', async () => {
    const r = await serve({ exports: exportsWithSecret() });
    const c = await rawClient(r.socket);
    try {
      await c.greet();
      const unsup = await c.option(42, Buffer.from('data'));
      expect(unsup.map((x) => [x.type, x.data.toString()])).toEqual([[REP.ERR_UNSUP, 'option 42 is not supported']]);
      const hostile = `\x1b]0;pwned\x07${'x'.repeat(300)}`;
      const unknown = await c.option(OPT.GO, encodeInfoGoData(hostile));
      expect(unknown).toHaveLength(1);
      expect(unknown[0]!.type).toBe(REP.ERR_UNKNOWN);
      expect(unknown[0]!.data.toString()).toBe(`export "\\u001b]0;pwned\\u0007${'x'.repeat(128 - 10)}…" not present`);
      // The connection is still negotiating.
      expect((await c.option(OPT.LIST)).at(-1)!.type).toBe(1);
    } finally {
      c.destroy();
    }
  });
});
