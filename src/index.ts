/**
 * nbd-engine: a Network Block Device server library with the protocol as
 * explicit xstate machines. See README.md.
 */
export { createServer, NbdServer } from './api/server.js';
export type { ServerOptions, ExportConfig, ServerLimits, ConnectionEvent, ConnectionInfo, ListenResult } from './api/server.js';
export { NbdRequest } from './api/request.js';
export type { RequestType, RequestFlags, ExportRef, ConnectionRef, ReplySink } from './api/request.js';
export { serveBackend, serveRequests, handleWithBackend, type RequestHandler, type ServeRequestsOptions } from './api/serve.js';
export { backendCapabilities, flagCapabilities, transmissionFlags, normalizeExtents } from './api/backend.js';
export type { Backend, WritePlacement, ExportFlags, Capabilities, WriteOptions, ZeroOptions, ExtentsOptions, MaybePromise, Extent, ReadSegment } from './api/backend.js';
export { layer, applyFilters } from './api/filter.js';
export type { Filter, FilterContext } from './api/filter.js';
export { NbdError, NbdRequestError } from './api/errors.js';
export type { NbdErrorCode } from './api/errors.js';
export { memoryBackend } from './backends/memory.js';
export type { MemoryBackend, MemoryBackendOptions } from './backends/memory.js';
export { fileBackend } from './backends/file.js';
export type { FileBackend, FileBackendOptions } from './backends/file.js';
export { consoleLogger, silentLogger } from './transport/logger.js';
export type { Logger } from './transport/logger.js';
export type { TlsConfig } from './transport/tls.js';
export type { ListenTarget, BoundAddress } from './transport/listen.js';
export { parseSize } from './cli/size.js';
export * as protocol from './protocol/index.js';
export * as machines from './machines/index.js';
export { traceFile, TRACE_MAX_BYTES } from './inspect/trace-file.js';
export { startLiveInspector, INSPECT_PORT, type LiveInspector, type LiveOptions, type LiveMessage } from './inspect/live.js';
export type { TraceFile, TraceFileOptions } from './inspect/trace-file.js';
export type { TraceRecord, TraceSink } from './inspect/trace-format.js';
export { CLIENT_VIOLATIONS, violatedRule, type Violation } from './api/violations.js';
export type { ExportHooks } from './api/dynamic-exports.js';
export type { ListedExport, ResolveRequest, ResolveEvent } from './machines/types.js';
export { directoryExports, type DirectoryExportsOptions } from './backends/directory.js';
