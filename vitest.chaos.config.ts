import { defineConfig } from 'vitest/config';

// The chaos suite (`pnpm test:chaos`, part of `pnpm run check` and so of `./dev test` and CI):
// real service processes, nats-server crashes, a 3-node cluster (about 2 minutes on 2 cores). One file at a time; generous hang guards (no test waits on wall time otherwise).
export default defineConfig({
  test: {
    include: ['test/chaos/**/*.chaos.ts'],
    testTimeout: 240_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 1,
    // Added to the closing summary line of `./dev test` (beside .reins/test-results.json).
    reporters: ['default', ['json', { outputFile: '.reins/chaos-results.json' }]],
  },
});
