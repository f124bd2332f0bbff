/** The exact-length reader lives with the client library; the tests' byte-level clients use the same one. */
export { ByteReader } from '../../src/client/byte-reader.js';
