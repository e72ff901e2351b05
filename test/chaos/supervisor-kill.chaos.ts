import { describe, it } from 'vitest';
import { supervisorKillScenario } from './support.js';

describe('chaos: supervisor kill -9', () => {
  it('two supervisors, the one holding the step in flight is killed: no double grant, ledger intact', async () => {
    await supervisorKillScenario();
  });
});
