import { defineConfig } from 'vitest/config';

// The chaos suite (`pnpm test:chaos`): real service processes, nats-server crashes, a 3-node
// cluster. One file at a time; generous hang guards (no test waits on wall time otherwise).
export default defineConfig({
  test: {
    include: ['test/chaos/**/*.chaos.ts'],
    testTimeout: 240_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 1,
    reporters: ['default'],
  },
});
