/**
 * TLS test support: a throwaway PKI made with certtool (gnutls-bin), PSK
 * files made with psktool, and a raw NBD client that can do STARTTLS with
 * node:tls (for the option replies real clients never show).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { requireTool } from './harness.js';

export const REP_MAGIC = 0x0003e889045565a9n;
export const IHAVEOPT = 0x49484156454f5054n;
export const NBDMAGIC = 0x4e42444d41474943n;

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

// ── raw client ───────────────────────────────────────────────────────────

export function optionBytes(code: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(code >>> 0, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

export function infoGoData(name: string, infos: readonly number[] = []): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((x, i) => b.writeUInt16BE(x, 6 + n.length + 2 * i));
  return b;
}

export function metaData(name: string, queries: readonly string[]): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.from(name);
  const h = Buffer.alloc(4);
  h.writeUInt32BE(n.length);
  parts.push(h, n);
  const c = Buffer.alloc(4);
  c.writeUInt32BE(queries.length);
  parts.push(c);
  for (const q of queries) {
    const qb = Buffer.from(q);
    const l = Buffer.alloc(4);
    l.writeUInt32BE(qb.length);
    parts.push(l, qb);
  }
  return Buffer.concat(parts);
}

export function readRequest(cookie: bigint, offset: number, length: number): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609513, 0);
  h.writeUInt16BE(0, 4);
  h.writeUInt16BE(0 /* READ */, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length, 24);
  return h;
}

export interface RawReply {
  option: number;
  type: number;
  data: Buffer;
}

/**
 * A byte-level NBD client over a UNIX socket. Reads are exact
 * (`read(n)`), `closed()` resolves when the server drops us, and
 * `startTls()` wraps the same socket with node:tls after STARTTLS's ACK.
 */
export class RawClient {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  private ended = false;
  private stream: Duplex;
  private readonly closedP: Promise<void>;
  private markClosed!: () => void;

  private constructor(readonly socket: net.Socket) {
    this.stream = socket;
    this.closedP = new Promise((r) => (this.markClosed = r));
    this.attach(socket);
  }

  static connect(socketPath: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(socketPath, () => {
        s.off('error', reject);
        resolve(new RawClient(s));
      });
      s.once('error', reject);
    });
  }

  private readonly onData = (d: Buffer) => {
    this.buf = Buffer.concat([this.buf, d]);
    this.wake();
  };
  private readonly onEnd = () => {
    this.ended = true;
    this.markClosed();
    this.wake();
  };

  private attach(s: Duplex): void {
    s.on('data', this.onData);
    s.on('end', this.onEnd);
    s.on('close', this.onEnd);
    s.on('error', () => this.onEnd());
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Resolves with exactly n bytes; rejects on EOF or after `timeout` ms. */
  async read(n: number, timeout = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeout;
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`connection closed after ${this.buf.length}/${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes (have ${this.buf.length})`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return Buffer.from(out);
  }

  /** Bytes received but not yet read. */
  get pending(): number {
    return this.buf.length;
  }

  write(b: Buffer): void {
    this.stream.write(b);
  }

  /** Greeting (18 bytes) and client flags (FIXED_NEWSTYLE | NO_ZEROES). */
  async handshake(clientFlags = 3): Promise<number> {
    const g = await this.read(18);
    if (g.readBigUInt64BE(0) !== NBDMAGIC || g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('bad greeting');
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags);
    this.write(f);
    return g.readUInt16BE(16);
  }

  async reply(timeout?: number): Promise<RawReply> {
    const h = await this.read(20, timeout);
    if (h.readBigUInt64BE(0) !== REP_MAGIC) throw new Error(`bad option reply magic ${h.toString('hex')}`);
    const len = h.readUInt32BE(16);
    const data = len ? await this.read(len, timeout) : Buffer.alloc(0);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }

  /** All replies up to and including the final one (ACK or an error). */
  async replies(timeout?: number): Promise<RawReply[]> {
    const out: RawReply[] = [];
    for (;;) {
      const r = await this.reply(timeout);
      out.push(r);
      if (r.type === 1 || r.type >= 0x80000000) return out;
    }
  }

  /** Send one option and collect its replies. */
  async option(code: number, data?: Buffer): Promise<RawReply[]> {
    this.write(optionBytes(code, data));
    return this.replies();
  }

  /** Wrap the socket with TLS (call after STARTTLS's ACK). */
  startTls(options: tls.ConnectionOptions): Promise<tls.TLSSocket> {
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    return new Promise((resolve, reject) => {
      const secure = tls.connect({ ...options, socket: this.socket }, () => {
        secure.off('error', reject);
        this.stream = secure;
        this.attach(secure);
        resolve(secure);
      });
      secure.once('error', reject);
    });
  }

  /** Resolves true when the server closes the connection within `timeout` ms. */
  async closed(timeout = 5000): Promise<boolean> {
    let t: NodeJS.Timeout | undefined;
    const r = await Promise.race([this.closedP.then(() => true), new Promise<boolean>((res) => (t = setTimeout(() => res(false), timeout)))]);
    clearTimeout(t);
    return r;
  }

  destroy(): void {
    this.stream.destroy();
    this.socket.destroy();
  }
}

/** Poll until `pred` holds (or fail after `timeout` ms). */
export async function until(pred: () => boolean, timeout = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
