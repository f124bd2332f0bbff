/**
 * NBD URIs, as the NBD project's URI specification (doc/uri.md) and libnbd
 * read them: `nbd://host[:port]/export`, `nbds://…` (STARTTLS required),
 * `nbd+unix:///export?socket=PATH`, `nbds+unix:///export?socket=PATH`, with
 * `tls-certificates=DIR` or `tls-psk-file=FILE` as query parameters.
 */

export interface NbdTarget {
  readonly transport: 'tcp' | 'unix';
  readonly host?: string;
  readonly port?: number;
  readonly path?: string;
  /** The export name (the URI path without its leading slash, percent-decoded). */
  readonly exportName: string;
  /** `nbds`: the client must negotiate TLS. */
  readonly tls: boolean;
  readonly tlsCertificates?: string;
  readonly tlsPskFile?: string;
  readonly tlsUsername?: string;
}

/** The IANA-assigned NBD port. */
export const NBD_PORT = 10809;

/** Parse an NBD URI; throws an Error naming what is wrong. */
export function parseNbdUri(text: string): NbdTarget {
  // Not WHATWG URL: it refuses `nbds+unix://user@/…` (a user with an empty host), which libnbd reads.
  const m = /^([a-z][a-z0-9+.-]*):\/\/(?:([^@/?#]*)@)?(\[[^\]]*\]|[^/?#:]*)(?::(\d*))?(\/[^?#]*)?(?:\?([^#]*))?(?:#.*)?$/i.exec(text);
  if (!m) throw new Error(`not a URI: ${JSON.stringify(text)}`);
  const [, scheme, user, hostPart, portText, pathPart, query] = m;
  const s = /^nbd(s)?(\+unix|\+tcp)?$/.exec(scheme!.toLowerCase());
  if (!s) throw new Error(`unsupported scheme ${JSON.stringify(scheme)} (nbd, nbds, nbd+unix, nbds+unix)`);
  const tls = s[1] === 's';
  const q = new URLSearchParams(query ?? '');
  let exportName: string;
  try {
    exportName = decodeURIComponent((pathPart ?? '').replace(/^\//, ''));
  } catch {
    throw new Error(`bad percent-encoding in the export name of ${JSON.stringify(text)}`);
  }
  const common = {
    exportName,
    tls,
    tlsCertificates: q.get('tls-certificates') ?? undefined,
    tlsPskFile: q.get('tls-psk-file') ?? undefined,
    tlsUsername: user ? decodeURIComponent(user) : (q.get('tls-username') ?? undefined),
  };
  if (s[2] === '+unix') {
    const socket = q.get('socket');
    if (!socket) throw new Error('nbd+unix URIs need ?socket=PATH');
    if (hostPart !== '' || portText !== undefined) throw new Error('nbd+unix URIs have no host or port');
    return { transport: 'unix', path: socket, ...common };
  }
  if (!hostPart) throw new Error('nbd URIs need a host');
  const port = portText === undefined || portText === '' ? NBD_PORT : Number(portText);
  if (!(port >= 1 && port <= 65535)) throw new Error(`bad port ${JSON.stringify(portText)}`);
  return { transport: 'tcp', host: hostPart.replace(/^\[(.*)\]$/, '$1'), port, ...common };
}
