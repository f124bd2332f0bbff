/**
 * TLS test support: a throwaway PKI made with certtool (gnutls-bin), PSK
 * files made with psktool, and the raw client (raw-client.ts) as the TLS
 * tests open it.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool } from './harness.js';
import { RawClient } from './raw-client.js';

function certtool(args: string[]): void {
  execFileSync(requireTool('certtool'), args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function template(file: string, lines: string[]): string {
  fs.writeFileSync(file, lines.join('\n') + '\n');
  return file;
}

/**
 * A CA plus a server and a client certificate, in the layout libnbd's
 * tls-certificates=DIR and qemu's tls-creds-x509 dir= expect:
 * ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem.
 * The server certificate names localhost, 127.0.0.1 and ::1.
 */
export function makePki(dir: string, opts: { caName?: string; clientCn?: string } = {}): string {
  fs.mkdirSync(dir, { recursive: true });
  const p = (f: string) => path.join(dir, f);
  certtool(['--generate-privkey', '--outfile', p('ca-key.pem')]);
  const caInfo = template(p('ca.info'), [`cn = ${opts.caName ?? 'nbd-engine test CA'}`, 'ca', 'cert_signing_key', 'expiration_days = 30']);
  certtool(['--generate-self-signed', '--load-privkey', p('ca-key.pem'), '--template', caInfo, '--outfile', p('ca-cert.pem')]);
  certtool(['--generate-privkey', '--outfile', p('server-key.pem')]);
  const serverInfo = template(p('server.info'), [
    'organization = nbd-engine test',
    'cn = localhost',
    'dns_name = localhost',
    'ip_address = 127.0.0.1',
    'ip_address = ::1',
    'tls_www_server',
    'encryption_key',
    'signing_key',
    'expiration_days = 30',
  ]);
  certtool(['--generate-certificate', '--load-ca-certificate', p('ca-cert.pem'), '--load-ca-privkey', p('ca-key.pem'), '--load-privkey', p('server-key.pem'), '--template', serverInfo, '--outfile', p('server-cert.pem')]);
  certtool(['--generate-privkey', '--outfile', p('client-key.pem')]);
  const clientInfo = template(p('client.info'), [
    'organization = nbd-engine test',
    `cn = ${opts.clientCn ?? 'alice'}`,
    'tls_www_client',
    'encryption_key',
    'signing_key',
    'expiration_days = 30',
  ]);
  certtool(['--generate-certificate', '--load-ca-certificate', p('ca-cert.pem'), '--load-ca-privkey', p('ca-key.pem'), '--load-privkey', p('client-key.pem'), '--template', clientInfo, '--outfile', p('client-cert.pem')]);
  for (const f of ['ca-key.pem', 'server-key.pem', 'client-key.pem']) fs.chmodSync(p(f), 0o600);
  return dir;
}

/**
 * A self-signed client certificate (a client certificate that is its own
 * CA): self-cert.pem and self-key.pem in `dir`.
 */
export function makeSelfSignedClient(dir: string, cn: string): { cert: string; key: string } {
  fs.mkdirSync(dir, { recursive: true });
  const p = (f: string) => path.join(dir, f);
  certtool(['--generate-privkey', '--outfile', p('self-key.pem')]);
  const info = template(p('self.info'), [`cn = ${cn}`, 'tls_www_client', 'encryption_key', 'signing_key', 'expiration_days = 30']);
  certtool(['--generate-self-signed', '--load-privkey', p('self-key.pem'), '--template', info, '--outfile', p('self-cert.pem')]);
  fs.chmodSync(p('self-key.pem'), 0o600);
  return { cert: p('self-cert.pem'), key: p('self-key.pem') };
}

/** A psktool key file with one random key per user; returns the file's path. */
export function makePsk(file: string, users: readonly string[]): string {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  for (const u of users) execFileSync(requireTool('psktool'), ['-u', u, '-p', file], { stdio: 'ignore' });
  return file;
}

/** The key of `user` in a psktool file. */
export function pskKey(file: string, user: string): Buffer {
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const i = line.lastIndexOf(':');
    if (i > 0 && line.slice(0, i) === user) return Buffer.from(line.slice(i + 1).trim(), 'hex');
  }
  throw new Error(`no key for ${user} in ${file}`);
}

// ── the raw client the TLS tests drive ──────────────────────────────────

/** A RawClient on the UNIX socket `socketPath`, every read capped at 5 s (a hang detector). */
export function rawClient(socketPath: string): Promise<RawClient> {
  return RawClient.connect({ path: socketPath }, { readTimeout: 5000 });
}

/** Poll until `pred` holds (or fail after `timeout` ms). */
export async function until(pred: () => boolean, timeout = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
