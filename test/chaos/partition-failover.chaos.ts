import { describe, expect, it } from 'vitest';
import { ActRequest, ToolResult, isErrorCode } from '@reins/protocol';
import { startE2E, waitFor, type E2E } from '../support/e2e.js';
import { verifyAudit } from '../support/packages.js';
import { auditEntries, ownerAt } from './support.js';

// A run partition is owned by one supervisor, which keeps the run's breaker and budget state in
// memory and puts every decision on the partition's audit chain. These scenarios take the owner
// away mid-run and check that its successor continues from the chain — same breaker counts,
// same budget — and that an owner that comes back after a pause grants nothing more.

/** Short memberships so a lost owner's partitions move within seconds. */
const SV = { REINS_PARTITION_LEASE_MS: '2000' };

/** A run no planner serves: the test plays its planner, one `sv.act` at a time. */
async function manualRun(e: E2E) {
  const run = await e.client.runs.start('read alpha again and again', {
    role: 'chaos-manual',
    waitForPlanner: true,
    budget: { steps: 50 },
  });
  const rt = e.client.runtime;
  let i = 0;
  /** Reads `file` (by default the same one each time, as a looping model would ask for it). */
  const act = (file = 'alpha.md') =>
    rt.request(
      rt.subjects.act(run.id),
      ActRequest,
      ToolResult,
      {
        runId: run.id,
        agentId: 'chaos-planner',
        role: 'chaos-manual',
        stepId: `s${++i}`,
        tool: 'read_file',
        args: { path: `docs/${file}` },
        idempotencyKey: `${run.id}.${i}.0`,
      },
      { timeoutMs: 20_000 },
    );
  return { run, act, partition: rt.subjects.partitionOf(run.id) };
}

/** The supervisor that owns the chain of `partition` now (its last `partition.acquire`). */
async function ownerOf(e: E2E, partition: number): Promise<string> {
  const entries = await auditEntries(e.client.runtime.nc);
  return ownerAt(entries, `part-${partition}`, Number.MAX_SAFE_INTEGER);
}

describe('chaos: the owner of a run partition fails', () => {
  it('kill -9 of the owner mid-run: another supervisor takes the partition over and the repeat breaker still trips at exactly K', async () => {
    await using e = await startE2E();
    e.startSupervisor('sv-1', SV);
    e.startSupervisor('sv-2', SV);
    e.startExecutor('exec-1');
    await e.waitForAgents(3);
    const { run, act, partition } = await manualRun(e);

    // K = 3 (the default): two identical actions pass, on the first owner.
    expect((await act()).ok).toBe(true);
    expect((await act()).ok).toBe(true);
    const first = await ownerOf(e, partition);
    expect(['sv-1', 'sv-2']).toContain(first);

    const killedAt = Date.now();
    await e.swarm.kill(first, 'SIGKILL');
    // The third identical action reaches the survivor once it owns the partition: its state,
    // rebuilt from the chain, counts the two before — it trips, it does not start again at 1.
    const third = await act().then(
      () => undefined,
      (err: unknown) => err,
    );
    const takeoverMs = Date.now() - killedAt;
    expect(isErrorCode(third, 'HALTED'), String(third)).toBe(true);
    expect((third as { details?: Record<string, unknown> }).details?.['rule']).toBe(
      'breaker.repeat',
    );
    const survivor = first === 'sv-1' ? 'sv-2' : 'sv-1';
    expect(await ownerOf(e, partition)).toBe(survivor);
    const record = await e.client.runs.handle(run.id).get();
    expect(record.status).toBe('stopped');
    expect(record.stopReason).toBe('BREAKER');

    // Two grants (no double grant across the failover), all on the partition's chain.
    const entries = await auditEntries(e.client.runtime.nc);
    const grants = entries.filter((a) => a.action === 'grant' && a.runId === run.id);
    expect(grants.map((g) => g.writer)).toEqual([`part-${partition}`, `part-${partition}`]);
    expect(await verifyAudit(e.client.runtime.nc)).toMatchObject({ ok: true });
    console.log(
      `partition ${partition}: owner killed, next decision answered after ${takeoverMs} ms`,
    );
  });

  it('an owner paused past its membership (SIGSTOP) comes back fenced: it appends nothing after its successor took over', async () => {
    await using e = await startE2E();
    e.startSupervisor('sv-1', SV);
    e.startSupervisor('sv-2', SV);
    e.startExecutor('exec-1');
    await e.waitForAgents(3);
    const { act, partition } = await manualRun(e);
    expect((await act('alpha.md')).ok).toBe(true);
    const first = await ownerOf(e, partition);
    const survivor = first === 'sv-1' ? 'sv-2' : 'sv-1';
    const paused = e.swarm.processes.get(first);
    if (!paused?.pid) throw new Error(`no process ${first}`);

    paused.kill('SIGSTOP');
    try {
      // The successor takes the partition over once the paused owner's membership ended. (A
      // request the paused owner alone received before that waits for it, as any request to a
      // paused process does, until the caller's timeout.)
      await waitFor(
        async () => (await ownerOf(e, partition)) === survivor,
        'the successor takes the partition over',
        { timeoutMs: 15_000 },
      );
      // Answered by the successor. The paused owner still subscribes (its connection is open):
      // it gets the request too, and handles it when it wakes up.
      expect((await act('beta.md')).ok).toBe(true);
    } finally {
      paused.kill('SIGCONT');
    }
    // Back, the old owner handles what it received meanwhile: its appends are refused (the
    // chain moved on), so it grants nothing. Another action is answered by the successor.
    expect((await act('gamma.txt')).ok).toBe(true);
    await waitFor(
      async () => (await ownerOf(e, partition)) === survivor,
      'the successor still owns the partition',
    );
    const entries = await auditEntries(e.client.runtime.nc);
    const chain = entries.filter((a) => a.writer === `part-${partition}`);
    const takeover = chain.findLast(
      (a) => a.action === 'partition.acquire' && a.actor === survivor,
    );
    expect(takeover).toBeDefined();
    const late = chain.filter((a) => a.seq > (takeover?.seq ?? 0) && a.actor === first);
    expect(late, 'entries by the fenced owner after the takeover').toEqual([]);
    expect(await verifyAudit(e.client.runtime.nc)).toMatchObject({ ok: true });
  });
});
