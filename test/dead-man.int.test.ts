import { describe, expect, it } from 'vitest';
import { startE2E, waitFor } from './support/e2e.js';

// The dead-man switch on real processes: kill the only supervisor, and the executor says it is
// degraded and takes no work (fail closed); start a supervisor again, and it recovers.
describe('dead-man switch across processes', () => {
  it('an executor without a supervisor reports degraded and recovers when one starts', async () => {
    // Supervisors heartbeat every 2 s: the dead-man time must cover a few of them.
    await using e = await startE2E({ env: { REINS_DEADMAN_MS: '5000' } });
    e.startSupervisor('sv-1');
    await e.waitForAgents(1, 'supervisor');
    e.startExecutor('exec-1');
    await e.waitForAgents(1, 'executor');
    const executorState = async () =>
      (await e.client.agents.list()).find((a) => a.agentId === 'exec-1');
    expect((await executorState())?.degraded).toBe(false);

    await e.swarm.kill('sv-1', 'SIGKILL');
    await waitFor(async () => (await executorState())?.degraded === true, 'executor degraded', {
      timeoutMs: 20_000,
      intervalMs: 200,
      diagnostics: () => e.diagnostics(),
    });

    e.startSupervisor('sv-2');
    await waitFor(async () => (await executorState())?.degraded === false, 'executor recovered', {
      timeoutMs: 20_000,
      intervalMs: 200,
      diagnostics: () => e.diagnostics(),
    });
  });
});
