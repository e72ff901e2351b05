import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ActRequest, ToolResult } from '@reins/protocol';
import { startE2E } from '../support/e2e.js';
import { verifyAudit } from '../support/packages.js';
import {
  GOAL,
  auditEntries,
  chaosExecutors,
  expectNoDoubleGrant,
  idempotencyRecord,
} from './support.js';

describe('chaos: executor kill -9 mid-tool', () => {
  it('a non-idempotent write interrupted: its outcome is recorded unknown, never re-run, and the run ends', async () => {
    await using e = await startE2E();
    e.startSupervisor('sv-1');
    e.startPlanner('planner-a');
    // write_file is slow and (here) not idempotent: a second attempt must not run it again.
    await using xs = chaosExecutors(e, {
      CHAOS_SLOW_TOOLS: 'write_file',
      CHAOS_NON_IDEMPOTENT: 'write_file',
      CHAOS_TOOL_LATENCY_MS: '3000',
      CHAOS_IDEMPOTENCY_LEASE_MS: '1500',
    });
    xs.start('cx-1');
    xs.start('cx-2');
    await e.waitForAgents(4);

    const run = await e.client.runs.start(GOAL, { role: 'researcher', budget: { steps: 20 } });
    await using trace = await e.trace(run.id);
    const start = await trace.waitFor(
      (ev) =>
        ev.role === 'executor' && ev.event === 'tool.start' && ev.data['tool'] === 'write_file',
      'tool.start write_file',
    );
    await xs.kill(start.agentId);
    const call = trace.events.find(
      (ev) => ev.event === 'tool.call' && ev.data['tool'] === 'write_file',
    );
    const key = String(call?.data['idempotencyKey']);

    // The same action again (what a retrying planner sends): the surviving executor finds the
    // dead holder's expired lease on a tool that may not run twice and records outcome unknown.
    const retry = await e.client.runtime.request(
      e.client.runtime.subjects.act(run.id),
      ActRequest,
      ToolResult,
      {
        runId: run.id,
        agentId: call?.agentId ?? 'planner-a',
        role: 'researcher',
        stepId: call?.stepId ?? 's3',
        tool: 'write_file',
        args: call?.data['args'] as Record<string, unknown>,
        idempotencyKey: key,
        timeoutMs: 10_000,
      },
      { timeoutMs: 20_000 },
    );
    expect(retry, xs.logs()).toMatchObject({ ok: false, outcome: 'unknown' });
    const stored = await idempotencyRecord(e.client.runtime.nc, key);
    expect(stored).toMatchObject({
      state: 'done',
      tool: 'write_file',
      result: { ok: false, outcome: 'unknown' },
    });
    // The interrupted write never happened, and nobody ran it again.
    await expect(access(join(e.sandbox, 'report.md'))).rejects.toThrow();

    // The run still ends, with the failed write in its history.
    const record = await e.result(run, 90_000);
    expect(['completed', 'stopped', 'failed'], e.diagnostics()).toContain(record.status);
    await trace.waitFor((ev) => ev.event === 'run.end', 'run.end');
    const starts = trace.events.filter(
      (ev) => ev.event === 'tool.start' && ev.data['idempotencyKey'] === key,
    );
    expect(starts).toHaveLength(1);
    const entries = await auditEntries(e.client.runtime.nc);
    expect(await verifyAudit(e.client.runtime.nc)).toMatchObject({ ok: true });
    expectNoDoubleGrant(entries, trace.events, run.id);
  });

  it('an idempotent read interrupted: the retry is taken over and run by another executor', async () => {
    await using e = await startE2E();
    e.startSupervisor('sv-1');
    await using xs = chaosExecutors(e, {
      CHAOS_SLOW_TOOLS: 'read_file',
      CHAOS_TOOL_LATENCY_MS: '3000',
      CHAOS_IDEMPOTENCY_LEASE_MS: '1500',
    });
    xs.start('cx-1');
    xs.start('cx-2');
    await e.waitForAgents(3);

    // The test plays the planner of a run no planner serves, so it controls each tool call
    // (admission would refuse the role with NO_PLANNER: queue it anyway).
    const run = await e.client.runs.start('read alpha', {
      role: 'chaos-manual',
      waitForPlanner: true,
    });
    await using trace = await e.trace(run.id);
    const rt = e.client.runtime;
    const key = `${run.id}.1.0`;
    const act = (timeoutMs: number) =>
      rt.request(
        rt.subjects.act(run.id),
        ActRequest,
        ToolResult,
        {
          runId: run.id,
          agentId: 'chaos-planner',
          role: 'chaos-manual',
          stepId: 's1',
          tool: 'read_file',
          args: { path: 'docs/alpha.md' },
          idempotencyKey: key,
          timeoutMs: 15_000,
        },
        { timeoutMs },
      );
    const first = act(6_000).then(
      (r) => ({ ok: true as const, r }),
      (err: unknown) => ({ ok: false as const, err }),
    );
    const start = await trace.waitFor(
      (ev) => ev.event === 'tool.start' && ev.data['tool'] === 'read_file',
      'tool.start read_file',
    );
    await xs.kill(start.agentId);
    // The executor died: the first attempt gets no answer.
    expect((await first).ok).toBe(false);

    const res = await act(25_000);
    expect(res, xs.logs()).toMatchObject({ ok: true });
    expect(JSON.stringify(res.ok ? res.output : null)).toContain('Alpha Overview');
    const takeover = await trace.waitFor(
      (ev) => ev.event === 'tool.start' && ev.data['takeover'] === true,
      'tool.start takeover',
    );
    expect(takeover.agentId).not.toBe(start.agentId);
    expect(await idempotencyRecord(rt.nc, key)).toMatchObject({
      state: 'done',
      owner: takeover.agentId,
      result: { ok: true },
    });
  });
});
