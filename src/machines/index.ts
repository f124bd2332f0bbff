export * from './types.js';
export * from './handshake.js';
export * from './transmission.js';
export * from './connection.js';
