import { defineConfig } from 'vitest/config';

/** Where tests live; `.int.test.ts` files need nats-server (or spawn processes), the rest do not. */
const dirs = ['packages/*/test', 'services/*/test', 'examples/*/test', 'test'];

// Two projects, both run by `pnpm test`: `unit` (`pnpm test --project unit`, seconds) and `int`.
// Inline projects inherit the options below (vitest 5: `extends` defaults to true).
export default defineConfig({
  test: {
    // Integration tests start real nats-servers and processes; 2-core CI machines.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    maxWorkers: 2,
    // The JSON report feeds the closing summary line of `./dev test`.
    reporters: ['default', ['json', { outputFile: '.reins/test-results.json' }]],
    projects: [
      {
        test: {
          name: 'unit',
          include: dirs.map((d) => `${d}/**/*.test.ts`),
          exclude: ['**/node_modules/**', '**/*.int.test.ts'],
          // Pure functions and in-process fakes: one module graph for all files saves the
          // import time that dominates this project.
          isolate: false,
        },
      },
      {
        test: {
          name: 'int',
          include: dirs.map((d) => `${d}/**/*.int.test.ts`),
        },
      },
    ],
  },
});
