import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Kvm } from '@nats-io/kv';
import { Buckets, decode, type TraceEvent } from '@reins/protocol';
import { DOCS, startE2E, type E2E } from './support/e2e.js';
import { IdempotencyRecord, idempotencyKvKey, readAudit, verifyAudit } from './support/packages.js';

// Trace work as it starts too (`model.call`, `tool.start`; off by default): these scenarios crash processes while a tool or model call is in flight, seen by its start event.
// Set before any runtime connects; spawned processes inherit it.
process.env['REINS_TRACE_IN_FLIGHT'] = '1';

const GOAL = 'Read every document in docs/ and write a report to report.md';

/** Executions of write_file that really ran (not replays of a stored result). */
const writeRuns = (events: readonly TraceEvent[]) =>
  events.filter(
    (e) =>
      e.role === 'executor' &&
      e.event === 'tool.start' &&
      e.data['tool'] === 'write_file' &&
      e.data['replayed'] === false,
  );

/** The stored idempotency record of an idempotency key, read straight from KV. */
async function idempotencyRecord(e: E2E, key: string): Promise<IdempotencyRecord | undefined> {
  const kv = await new Kvm(e.client.runtime.nc).open(Buckets.idem);
  const entry = await kv.get(idempotencyKvKey(key));
  return entry?.operation === 'PUT' ? decode(IdempotencyRecord, entry.value) : undefined;
}

/** What every recovered run must show: one end, completed, one report written once. */
async function expectCompletedOnce(e: E2E, runId: string, events: readonly TraceEvent[]) {
  const ends = events.filter((ev) => ev.event === 'run.end');
  expect(ends).toHaveLength(1);
  expect(ends[0]?.data['status']).toBe('completed');
  const report = await readFile(join(e.sandbox, 'report.md'), 'utf8');
  for (const name of Object.keys(DOCS)) expect(report).toContain(`docs/${name}`);
  expect(writeRuns(events)).toHaveLength(1);
  const planned = events.filter(
    (ev) => ev.event === 'tool.call' && ev.data['tool'] === 'write_file',
  );
  const keys = new Set(planned.map((ev) => ev.data['idempotencyKey']));
  expect(keys.size).toBe(1);
  const [key] = [...keys];
  expect(key).toBe(`${runId}.3.0`);
  const stored = await idempotencyRecord(e, String(key));
  expect(stored).toMatchObject({ state: 'done', tool: 'write_file', result: { ok: true } });
}

describe('crash recovery across service processes', () => {
  it('a planner killed mid-run: another planner finishes the run, exactly once', async () => {
    await using e = await startE2E();
    e.startSupervisor('sv-1');
    e.startExecutor('exec-1');
    e.startExecutor('exec-2');
    // Two planners of one role; model calls take a while so a step can be interrupted. The run
    // lease is shorter than the ack wait: the redelivered task must find the dead holder's lease
    // expired (with a lease longer than the ack wait the task is dropped and the run hangs; see
    // the planner's "dropping duplicate task" path).
    const planner = {
      REINS_SCRIPTED_LATENCY_MS: '1000',
      REINS_ACK_WAIT_MS: '2500',
      REINS_LEASE_MS: '1000',
    };
    e.startPlanner('planner-a', planner);
    e.startPlanner('planner-b', planner);
    await e.waitForAgents(2, 'researcher');
    await e.waitForAgents(5);

    const run = await e.client.runs.start(GOAL, { role: 'researcher', budget: { steps: 20 } });
    await using trace = await e.trace(run.id);
    const s2 = await trace.waitFor(
      (ev) => ev.event === 'step.start' && ev.stepId === 's2',
      'step.start s2',
    );
    // The planner working on the run dies in the middle of step 2 (during its model call).
    const victim = s2.agentId;
    await e.swarm.kill(victim, 'SIGKILL');
    const survivor = victim === 'planner-a' ? 'planner-b' : 'planner-a';

    const record = await e.result(run);
    expect(record.status, e.diagnostics()).toBe('completed');
    await trace.waitFor((ev) => ev.event === 'run.end', 'run.end');
    await expectCompletedOnce(e, run.id, trace.events);
    // The survivor took over the run and did the rest of it.
    const later = trace.events.slice(trace.events.indexOf(s2) + 1);
    const finalStep = later.find((ev) => ev.event === 'step.end' && ev.data['final'] === true);
    expect(finalStep?.agentId).toBe(survivor);
  });

  it('a supervisor killed mid-run and restarted: the run continues and completes', async () => {
    await using e = await startE2E();
    e.startSupervisor('sv-1');
    e.startExecutor('exec-1');
    e.startPlanner('planner-a', { REINS_SCRIPTED_LATENCY_MS: '1000' });
    await e.waitForAgents(3);

    const run = await e.client.runs.start(GOAL, { role: 'researcher', budget: { steps: 20 } });
    await using trace = await e.trace(run.id);
    // Killed while the planner's model call of step 2 runs: its settle finds no supervisor and
    // is retried until the new one takes it; its tool calls find no supervisor (or the new one)
    // — retryable, so the step is retried.
    await trace.waitFor((ev) => ev.event === 'model.call' && ev.stepId === 's2', 'model.call s2');
    await e.swarm.kill('sv-1', 'SIGKILL');
    // The call ends while no supervisor runs: its settle finds nobody and must be retried. The
    // planner sends the settle before it publishes `model.result`, on the same connection, so
    // once the event is in the stream the settle has already gone out to no supervisor.
    await trace.waitFor(
      (ev) => ev.event === 'model.result' && ev.stepId === 's2',
      'model.result s2',
    );
    // Same key, same identity: a restarted service, not a new one.
    e.startSupervisor('sv-1');

    const record = await e.result(run);
    expect(record.status, e.diagnostics()).toBe('completed');
    await trace.waitFor((ev) => ev.event === 'run.end', 'run.end');
    await expectCompletedOnce(e, run.id, trace.events);
    // Every step ran: the interrupted one was retried, none was skipped.
    const steps = trace.events
      .filter((ev) => ev.event === 'step.end' && ev.data['denied'] === undefined)
      .map((ev) => ev.stepId);
    expect(new Set(steps)).toEqual(new Set(['s1', 's2', 's3', 's4']));
    // The budget counts what the model calls used, to the token, across the crash: no settle
    // was lost (none left to be charged at its worst case) and nothing stays reserved.
    const used = trace.events
      .filter((ev) => ev.event === 'model.result')
      .map((ev) => ev.data['usage'] as { inputTokens: number; outputTokens: number });
    const spent = {
      inputTokens: used.reduce((n, u) => n + u.inputTokens, 0),
      outputTokens: used.reduce((n, u) => n + u.outputTokens, 0),
    };
    await expect
      .poll(
        async () => {
          const b = await run.budget();
          return {
            inputTokens: b.committed.inputTokens,
            outputTokens: b.committed.outputTokens,
            reserved: b.reserved.outputTokens,
          };
        },
        { timeout: 20_000, interval: 250 },
      )
      .toEqual({ ...spent, reserved: 0 });
    // The restarted supervisor continued its audit chain.
    const entries = [];
    for await (const entry of readAudit(e.client.runtime.nc)) entries.push(entry);
    expect(await verifyAudit(e.client.runtime.nc)).toMatchObject({ ok: true });
  });
});
