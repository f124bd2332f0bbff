import { defineConfig } from 'vitest/config';

export default defineConfig({
  resolve: {
    // Examples import the package by name; tests run them against the sources.
    alias: { 'nbd-engine': new URL('./src/index.ts', import.meta.url).pathname },
  },
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/integration/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    // Integration tests start servers and real clients: keep parallelism modest on 2 cores.
    maxWorkers: 2,
    coverage: {
      provider: 'v8',
      include: ['src/**/*.ts'],
      reporter: ['text-summary', 'text', 'json-summary'],
      reportsDirectory: 'coverage',
      // Issue "Protocol core": ≥ 90 % of lines in the sans-IO codec and the machines.
      thresholds: {
        'src/protocol/**': { lines: 90 },
        'src/machines/**': { lines: 90 },
      },
    },
  },
});
