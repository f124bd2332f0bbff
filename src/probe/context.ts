/**
 * What every probe check starts from: the target (an NBD URI), fresh
 * connections to it (through STARTTLS when the URI says `nbds`), a
 * connection negotiated the way a check asks, and the facts a first survey
 * found (export size, transmission flags, block sizes, which optional
 * features the server offers), so each check knows what was advertised.
 */
import fs from 'node:fs';
import path from 'node:path';
import { NbdConnection, type StartTlsOptions } from '../client/index.js';
import { INFO } from '../protocol/constants.js';
import type { NbdTarget } from './uri.js';

export interface Facts {
  readonly greetingFlags: number;
  readonly size: bigint;
  readonly flags: number;
  readonly blockSize?: { readonly minimum: number; readonly preferred: number; readonly maximum: number };
  readonly structured: boolean;
  readonly extended: boolean;
  /** `base:allocation` could be selected. */
  readonly baseAllocation: boolean;
}

export interface ProbeContext {
  readonly target: NbdTarget;
  /** Per-step timeout for the client (each check also has the runner's overall timeout). */
  readonly timeoutMs: number;
  /** Where checks may write (announced before any write), or null: the probe writes nothing. */
  readonly scratch: { readonly offset: bigint; readonly length: number } | null;
  readonly facts: Facts;
  /** Seed of the generated option sequences (fast-check), so a run can be replayed. */
  readonly seed?: number;
}

export interface Negotiate {
  readonly structured?: boolean;
  readonly extended?: boolean;
  readonly metaContexts?: readonly string[];
}

/** STARTTLS credentials from the URI: a certificate directory (as libnbd: ca-cert.pem, client-cert.pem, client-key.pem) or a psktool key file. */
export function tlsOptions(t: NbdTarget): StartTlsOptions {
  if (t.tlsPskFile) {
    const lines = fs.readFileSync(t.tlsPskFile, 'utf8').split('\n').filter(Boolean);
    const wanted = t.tlsUsername;
    const line = lines.find((l) => wanted === undefined || l.startsWith(`${wanted}:`)) ?? '';
    const [identity, hex] = line.split(':');
    if (!identity || !hex) throw new Error(`no usable key for ${wanted ?? 'any user'} in ${t.tlsPskFile}`);
    return { psk: { identity, key: Buffer.from(hex, 'hex') }, rejectUnauthorized: false };
  }
  const dir = t.tlsCertificates;
  const read = (f: string) => (dir && fs.existsSync(path.join(dir, f)) ? fs.readFileSync(path.join(dir, f)) : undefined);
  return { ca: read('ca-cert.pem'), cert: read('client-cert.pem'), key: read('client-key.pem'), servername: t.transport === 'tcp' ? t.host : undefined };
}

/** A new connection, greeted, client flags sent, TLS up when the URI asks for it: ready for options. */
export async function opened(ctx: Pick<ProbeContext, 'target' | 'timeoutMs'>, signal?: AbortSignal, clientFlags?: number): Promise<NbdConnection> {
  const t = ctx.target;
  const c = await NbdConnection.connect(t.transport === 'unix' ? { path: t.path! } : { host: t.host!, port: t.port! }, { timeoutMs: ctx.timeoutMs });
  signal?.addEventListener('abort', () => c.destroy(), { once: true });
  try {
    const greeting = await c.greeting();
    // Nothing else can be asked of a peer that is not a newstyle NBD server: say so, not what options then did.
    const badMagic = greeting.deviations.find((d) => d.rule === 'peer.greeting-magic');
    if (badMagic) throw new Error(`not an NBD server: ${badMagic.message}`);
    if (greeting.oldstyle) throw new Error('the server sent an oldstyle greeting: it takes no options, and the probe checks newstyle servers');
    // Default: FIXED_NEWSTYLE, and NO_ZEROES when the server offered it.
    if (clientFlags === undefined) c.sendClientFlags();
    else c.sendClientFlags(clientFlags);
    if (t.tls) {
      const replies = await c.starttls(tlsOptions(t));
      if (replies.at(-1)?.typeName !== 'NBD_REP_ACK') throw new Error(`STARTTLS was answered ${replies.at(-1)?.typeName}`);
    }
    return c;
  } catch (err) {
    c.destroy();
    throw err;
  }
}

/** A connection in transmission: the options asked for, then GO for the URI's export. */
export async function negotiated(ctx: Pick<ProbeContext, 'target' | 'timeoutMs'>, n: Negotiate, signal?: AbortSignal): Promise<NbdConnection> {
  const c = await opened(ctx, signal);
  try {
    if (n.extended) {
      if (!(await c.extendedHeaders()).ok) throw new Error('EXTENDED_HEADERS was refused');
    } else if (n.structured) {
      if (!(await c.structuredReply()).ok) throw new Error('STRUCTURED_REPLY was refused');
    }
    if (n.metaContexts?.length) await c.setMetaContext(ctx.target.exportName, n.metaContexts);
    const go = await c.go(ctx.target.exportName, [INFO.NBD_INFO_BLOCK_SIZE]);
    if (!go.ok) throw new Error(`GO was answered ${go.replies.at(-1)?.typeName}`);
    return c;
  } catch (err) {
    c.destroy();
    throw err;
  }
}

/** The first look: what the server offers for the URI's export. Throws when it cannot even negotiate. */
export async function survey(ctx: Pick<ProbeContext, 'target' | 'timeoutMs'>): Promise<Facts> {
  const c = await opened(ctx);
  try {
    const greetingFlags = c.handshakeFlags;
    const extended = (await c.extendedHeaders()).ok;
    const structured = extended || (await c.structuredReply()).ok;
    let baseAllocation = false;
    if (structured) {
      const set = await c.setMetaContext(ctx.target.exportName, ['base:allocation']);
      baseAllocation = set.ok && set.contexts.length > 0;
    }
    const go = await c.go(ctx.target.exportName, [INFO.NBD_INFO_BLOCK_SIZE]);
    if (!go.ok || go.size === undefined || go.flags === undefined) throw new Error(`GO for export ${JSON.stringify(ctx.target.exportName)} was answered ${go.replies.at(-1)?.typeName}`);
    await c.disc();
    return { greetingFlags, size: go.size, flags: go.flags, blockSize: go.blockSize, structured, extended, baseAllocation };
  } finally {
    c.destroy();
  }
}
