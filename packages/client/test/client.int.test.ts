import { describe, expect, it } from 'vitest';
import type { AuditEntry } from '@reins/protocol';
import { Runtime, createLogger } from '@reins/runtime';
import { readAudit, startSupervisor } from '@reins/supervisor';
import { startNatsServer } from '@reins/testing';
import { connect } from '@reins/client';

const quiet = () => createLogger({ level: process.env['REINS_LOG_LEVEL'] ?? 'silent' });

describe('@reins/client', () => {
  it('halt, pause and resume through connect({ identity }) are audited as requested by that identity', async () => {
    await using nats = await startNatsServer();
    await using rt = await Runtime.connect({
      servers: nats.url,
      logger: quiet(),
      heartbeatMs: 500,
    });
    await using _supervisor = await startSupervisor(rt, { agentId: 'sv-1' });
    await using ops = await connect({ servers: nats.url, logger: quiet(), identity: 'ops' });

    // No planner: the run is only there to be paused, halted and resumed.
    const run = await ops.runs.start('audit who did it', {
      budget: { steps: 5 },
      waitForPlanner: true,
    });
    await ops.pause({ kind: 'run', runId: run.id }, 'look first');
    expect(await run.get()).toMatchObject({ status: 'paused' });
    await run.halt('stop it', { deadlineMs: 300 });
    expect(await run.get()).toMatchObject({ status: 'halted' });
    await run.resume('carry on');
    await ops.halt({ kind: 'run', runId: run.id }, 'stop it again', { deadlineMs: 300 });
    await ops.resume({ kind: 'run', runId: run.id }, 'carry on again');

    const controls = async () => {
      const entries: AuditEntry[] = [];
      for await (const e of readAudit(ops.runtime.nc)) {
        if (e.runId === run.id && ['admit', 'pause', 'halt', 'resume'].includes(e.action)) {
          entries.push(e);
        }
      }
      return entries.map((e) => ({ action: e.action, requestedBy: e.details['requestedBy'] }));
    };
    await expect.poll(controls, { timeout: 10_000 }).toEqual([
      { action: 'admit', requestedBy: 'ops' },
      { action: 'pause', requestedBy: 'ops' },
      { action: 'halt', requestedBy: 'ops' },
      { action: 'resume', requestedBy: 'ops' },
      { action: 'halt', requestedBy: 'ops' },
      { action: 'resume', requestedBy: 'ops' },
    ]);
  });
});
