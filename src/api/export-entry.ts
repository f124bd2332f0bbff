/**
 * One export as the server holds it: its configuration (ExportConfig),
 * checked and described once when the server is created (describeExport),
 * and the zero-copy WRITE placement built from its backend for each
 * connection that negotiates it (writePlacement).
 */
import type { ExportDescriptor } from '../machines/types.js';
import { CMD_FLAG } from '../protocol/constants.js';
import type { SessionHandlers } from '../transport/session-options.js';
import { backendCapabilities, flagCapabilities, transmissionFlags, type Backend, type Capabilities, type ExportFlags } from './backend.js';
import { NbdError } from './errors.js';
import type { ExportRef } from './request.js';

export interface ExportConfig {
  readonly name: string;
  readonly description?: string;
  /** Size in bytes; defaults to the backend's `size`. */
  readonly size?: number;
  /** Serve from this backend; without one, requests go to `requests$`. */
  readonly backend?: Backend;
  /** For request-stream exports: what to advertise. */
  readonly flags?: ExportFlags;
  readonly readOnly?: boolean;
  readonly blockSizes?: { readonly minimum?: number; readonly preferred?: number; readonly maximum?: number };
  /** Only served over TLS (SELECTIVETLS, with `tls.mode: 'on'`). */
  readonly tlsOnly?: boolean;
  /** Advertise NBD_FLAG_SEND_CACHE (default true; CACHE is a no-op without `backend.cache`). */
  readonly cache?: boolean;
}

export interface ExportEntry {
  readonly config: ExportConfig;
  readonly descriptor: ExportDescriptor;
  readonly caps: Capabilities;
  readonly ref: ExportRef;
}

const DEFAULT_BLOCK = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };

function isPowerOf2(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** Validate and describe one export (sizes ≤ 2^53, block sizes per option.block-size-constraints). */
export function describeExport(cfg: ExportConfig, maxPayload: number): ExportEntry {
  if (typeof cfg.name !== 'string' || Buffer.byteLength(cfg.name) > 4096 || cfg.name.includes('\0')) {
    throw new NbdError('NBD_ERR_CONFIG', `export name ${JSON.stringify(cfg.name)} is not a valid NBD string`);
  }
  const size = cfg.size ?? cfg.backend?.size;
  if (size === undefined || !Number.isSafeInteger(size) || size < 0) {
    throw new NbdError('NBD_ERR_CONFIG', `export "${cfg.name}": size must be an integer between 0 and 2^53 (got ${size})`);
  }
  const bs = { ...DEFAULT_BLOCK, ...cfg.backend?.blockSizes, ...cfg.blockSizes };
  bs.maximum = Math.min(bs.maximum, maxPayload);
  if (!isPowerOf2(bs.minimum) || bs.minimum > 65536) throw new NbdError('NBD_ERR_CONFIG', `export "${cfg.name}": minimum block size must be a power of 2 ≤ 64 KiB`);
  if (!isPowerOf2(bs.preferred) || bs.preferred < Math.max(bs.minimum, 512)) {
    throw new NbdError('NBD_ERR_CONFIG', `export "${cfg.name}": preferred block size must be a power of 2 ≥ max(minimum, 512)`);
  }
  if (bs.maximum < bs.preferred && bs.maximum !== 0xffffffff) {
    throw new NbdError('NBD_ERR_CONFIG', `export "${cfg.name}": maximum payload must be ≥ the preferred block size`);
  }
  const caps = cfg.backend ? backendCapabilities(cfg.backend, cfg.readOnly) : flagCapabilities(cfg.flags, cfg.readOnly);
  const descriptor: ExportDescriptor = {
    name: cfg.name,
    description: cfg.description,
    size,
    flags: transmissionFlags(caps, { cache: cfg.cache ?? true }),
    blockSizes: bs,
    tlsOnly: cfg.tlsOnly,
  };
  return { config: cfg, descriptor, caps, ref: { name: cfg.name, size } };
}

/**
 * Zero-copy WRITEs for a writable backend that exposes its storage
 * (Backend.writeTargets): the session's `placeWrite` handler for a connection
 * that negotiated this export, or undefined when its WRITEs are buffered.
 */
export function writePlacement(entry: ExportEntry): SessionHandlers['placeWrite'] {
  const b = entry.config.backend;
  if (!b?.writeTargets || !entry.caps.write) return undefined;
  // FUA only where the backend takes it natively (honoured by a flush once the payload is in).
  const placeable = entry.caps.fua === 'native' ? CMD_FLAG.NBD_CMD_FLAG_FUA : 0;
  return (_s, frame) => {
    if ((frame.flags & ~placeable) !== 0) return null;
    const p = b.writeTargets!(frame.offset, frame.length);
    if (p === null) return null;
    if (typeof p !== 'object' || !Array.isArray(p.targets) || typeof p.commit !== 'function') {
      throw new TypeError('writeTargets must return { targets, commit } or null');
    }
    // The views go to the decoder; the finished (complete) request carries commit, called before its reply.
    return Object.assign([...p.targets], { commit: () => p.commit() });
  };
}
