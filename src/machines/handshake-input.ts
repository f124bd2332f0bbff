/**
 * What a handshake starts from: the server's exports and policies
 * (HandshakeInput, given to each connection's machine) and the handshake
 * machine's initial context built from them (handshakeContext).
 */
import type { ExportDescriptor, TlsPolicy } from './types.js';
import type { HandshakeContext } from './handshake-options.js';
import { DEFAULTS } from '../defaults.js';

export interface HandshakeInput {
  readonly exports: readonly ExportDescriptor[];
  /** Name of the export served for the empty name; undefined ⇒ no default export. */
  readonly defaultExport?: string;
  /** TLS policy (the spec's TLS modes): off = NOTLS, optional = SELECTIVETLS, required = FORCEDTLS. */
  readonly tls?: TlsPolicy;
  /** DoS guard: options accepted before a hard disconnect (nbdkit: 32). */
  readonly maxOptions?: number;
  /** Offer NBD_OPT_EXTENDED_HEADERS (experimental). */
  readonly extendedHeaders?: boolean;
  /** Offer NBD_OPT_STRUCTURED_REPLY. */
  readonly structuredReplies?: boolean;
  /**
   * Names the server does not hold (and "" without a static default) are
   * resolved per connection (the server's openExport / computed default): the
   * machine emits `resolve` and waits in `resolving`.
   */
  readonly resolveExports?: boolean;
  /** NBD_OPT_LIST is answered from a list made per connection (the server's listExports). */
  readonly resolveList?: boolean;
  /** The connection is already TLS (e.g. a TLS listener), rarely used. */
  readonly tlsActive?: boolean;
}

/** The context a handshake starts with: the input, with its defaults, and nothing negotiated yet. */
export function handshakeContext(input: HandshakeInput): HandshakeContext {
  return {
    server: {
      exports: input.exports,
      defaultExport: input.defaultExport,
      tlsPolicy: input.tls ?? 'off',
      maxOptions: input.maxOptions ?? DEFAULTS.maxOptions,
      offerExtendedHeaders: input.extendedHeaders ?? true,
      offerStructuredReplies: input.structuredReplies ?? true,
      resolveExports: input.resolveExports ?? false,
      resolveList: input.resolveList ?? false,
    },
    lookup: null,
    listing: null,
    pending: null,
    clientFlags: 0,
    fixedNewstyle: false,
    noZeroes: false,
    tls: input.tlsActive ?? false,
    structuredReplies: false,
    extendedHeaders: false,
    metaContexts: null,
    optionCount: 0,
    shuttingDown: false,
    outcome: null,
  };
}
