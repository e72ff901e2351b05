import { describe, expect, it } from 'vitest';
import { Heartbeat, createGrantSigner, encode, signHeartbeat } from '@reins/protocol';
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

    // Heartbeats that are not the trusted supervisor's do not lift the switch: garbage, a
    // well-formed unsigned one, one signed by another key. The executor keeps saying degraded
    // in the heartbeats it publishes after them.
    const nc = e.client.runtime.nc;
    const subject = e.client.runtime.subjects.heartbeat('supervisor', 'sv-fake');
    const impostor = createGrantSigner().signer;
    const fake = (): Heartbeat => {
      const now = Date.now();
      return {
        agentId: 'sv-fake',
        role: 'supervisor',
        status: 'running',
        inFlight: 0,
        runs: [],
        memory: { rss: 0, heapUsed: 0 },
        version: 'x',
        ts: now,
        intervalMs: 200,
        expiresAt: now + 600,
        seq: 1,
      };
    };
    const seqBefore = (await executorState())?.seq ?? 0;
    const spoof = setInterval(() => {
      nc.publish(subject, new Uint8Array([0xc1]));
      nc.publish(subject, encode(Heartbeat, fake()));
      nc.publish(subject, encode(Heartbeat, signHeartbeat(impostor, fake())));
    }, 100);
    try {
      await waitFor(
        async () => ((await executorState())?.seq ?? 0) >= seqBefore + 3,
        'three executor heartbeats while impostors beat',
        { timeoutMs: 20_000, intervalMs: 200, diagnostics: () => e.diagnostics() },
      );
      expect((await executorState())?.degraded).toBe(true);
    } finally {
      clearInterval(spoof);
    }

    e.startSupervisor('sv-2');
    await waitFor(async () => (await executorState())?.degraded === false, 'executor recovered', {
      timeoutMs: 20_000,
      intervalMs: 200,
      diagnostics: () => e.diagnostics(),
    });
  });
});
