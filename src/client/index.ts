/**
 * `nbd-engine/client`: an NBD client for talking to any server step by step,
 * on purpose legal or not, with every reply parsed strictly and every
 * deviation from the spec kept. See docs/client.md.
 */
export { NbdConnection, type ExportDetails, type OptionAnswer, type RequestFlags, type RequestInput } from './client.js';
export { MAX_DEVIATIONS, NbdConnectionBase, type ConnectOptions, type ConnectTarget, type Greeting, type StartTlsOptions } from './connection.js';
export { NbdClientError, type Deviation } from './deviations.js';
export { parseOptionReply, type InfoDetail, type OptionReply, type RepDetail } from './option-replies.js';
export type { Chunk, ChunkContent, Extent } from './chunks.js';
export type { Reply, ReplyMode, SentRequest } from './reply.js';
export { clientFlagsBytes, infoGoData, metaContextData, optionBytes, requestHeaderBytes, type RequestHeader } from './encode.js';
export { CLIENT_FLAGS, CMD, CMD_FLAG, ERRNO, FLAG, HANDSHAKE_FLAGS, INFO, MAGIC, OPT, REP, REPLY_FLAG, REPLY_TYPE, STATE } from '../protocol/constants.js';
