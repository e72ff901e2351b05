// The quick chaos subset of the default test command; the full suite is `pnpm test:chaos`.
import { describe, it } from 'vitest';
import { supervisorKillScenario } from './chaos/support.js';

describe('chaos (quick)', () => {
  it('two supervisors, kill -9 the one holding the step in flight: no double grant, ledger intact', async () => {
    await supervisorKillScenario();
  });
});
