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
export { nullBackend, zeroBackend, patternBackend, fillPattern, type NullBackendOptions, type PatternBackendOptions } from './backends/synthetic.js';
export { dataBackend, dataImage, type DataBackendOptions } from './backends/data.js';
export { parseData, DataFormatError, type DataImage, type DataPiece, type DataParseLimits } from './backends/data-format.js';
export { sparseRandomBackend, SPARSE_BLOCK, type SparseRandomOptions, type SparseRandomBackend } from './backends/sparse-random.js';
export { cowFilter, type CowOptions } from './filters/cow.js';
export { cacheFilter, type CacheOptions, type CacheFilter, type CacheStats } from './filters/cache.js';
export { readaheadFilter, type ReadaheadOptions } from './filters/readahead.js';
export { blocksizeFilter, type BlocksizeOptions } from './filters/blocksize.js';
export { delayFilter, type DelayOptions } from './filters/delay.js';
export { errorFilter, ErrorInjector, type ErrorFilter, type ErrorOptions, type ErrorRule } from './filters/error.js';
export { logFilter, LogWriter, type LogFilter, type LogOptions } from './filters/log.js';
export { statsFilter, StatsCollector, type StatsFilter, type StatsOptions, type StatsSnapshot, type OpStats } from './filters/stats.js';
export { rateFilter, TokenBucket, type RateOptions } from './filters/rate.js';
export { retryFilter, type RetryOptions, type Reopen, type ReopenableBackend } from './filters/retry.js';
export { delayRequests, injectErrors, logRequests, collectStats } from './filters/operators.js';
export { prepareExports } from './api/export-entry.js';
export { partitionFilter, partitionPlugin, type PartitionFilter, type PartitionFilterOptions } from './filters/partition.js';
export { findPartition, PartitionTableError, GPT_ARRAY_LIMIT, type PartitionLocation, type PartitionTableOptions, type ReadAt } from './filters/partition-table.js';
