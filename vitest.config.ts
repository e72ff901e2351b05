import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: [
      'packages/*/test/**/*.test.ts',
      'services/*/test/**/*.test.ts',
      'examples/*/test/**/*.test.ts',
      'test/**/*.test.ts',
    ],
    // Integration tests start real nats-servers and processes; 2-core CI machines.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    maxWorkers: 2,
    // The JSON report feeds the closing summary line of `./dev test`.
    reporters: ['default', ['json', { outputFile: '.reins/test-results.json' }]],
  },
});
