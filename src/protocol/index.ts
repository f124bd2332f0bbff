export * from './constants.js';
export * from './frames.js';
export * from './decoder.js';
export * from './encoder.js';
export * from './replies.js';
export * from './errors.js';
