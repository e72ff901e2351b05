import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  BudgetReport,
  HaltReply,
  HaltRequest,
  RunGetRequest,
  RunRecord,
  RunStartRequest,
  createGrantSigner,
  type TraceEvent,
} from '@reins/protocol';
import { Runtime, createLogger, subscribeTraces } from '@reins/runtime';
import {
  createFileTools,
  createScriptedModel,
  defineTool,
  researchScript,
  toolSpec,
} from '@reins/models';
import { startSupervisor, type Supervisor } from '@reins/supervisor';
import { startExecutor } from '@reins/executor';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { startPlanner } from '@reins/planner';

/** Tool executions by argument: a step whose tool runs twice shows up here. */
const executions = new Map<number, number>();
const countTool = defineTool({
  name: 'count_step',
  description: 'Counts its executions.',
  input: z.object({ i: z.number().int() }),
  output: z.object({ i: z.number().int() }),
  effect: 'write',
  idempotent: false,
  run: ({ i }) => {
    executions.set(i, (executions.get(i) ?? 0) + 1);
    return { i };
  },
});

const quiet = () => createLogger({ level: process.env['REINS_LOG_LEVEL'] ?? 'silent' });

describe('a governed run in one process', () => {
  let nats: NatsServer;
  let rt: Runtime;
  let sv: Supervisor;
  let dir: string;

  beforeAll(async () => {
    nats = await startNatsServer();
    dir = await mkdtemp(join(tmpdir(), 'reins-planner-'));
    await mkdir(join(dir, 'docs'));
    await writeFile(
      join(dir, 'docs', 'a.md'),
      '# Alpha\n\nAlpha is the first document. It has words.\n',
    );
    await writeFile(join(dir, 'docs', 'b.md'), '# Beta\n\nBeta comes second.\n');
    // `model.call` is traced too: one test halts a model call it sees in flight.
    rt = await Runtime.connect({
      servers: nats.url,
      logger: quiet(),
      heartbeatMs: 500,
      traceInFlight: true,
    });
    const { signer } = createGrantSigner();
    sv = await startSupervisor(rt, {
      signer,
      policy: {
        version: 1,
        rules: [
          { id: 'files.read', match: { tool: 'read_file' }, effect: 'allow' },
          { id: 'files.list', match: { tool: 'list_files' }, effect: 'allow' },
          { id: 'count', match: { tool: 'count_step' }, effect: 'allow' },
          {
            id: 'files.write',
            match: { tool: 'write_file' },
            effect: 'allow',
            args: [{ path: 'path', prefix: ['report.md'] }],
          },
        ],
      },
    });
    const files = createFileTools({ root: dir });
    await startExecutor(rt, {
      tools: [...files.tools, countTool],
      trustedIssuers: [signer.publicKey],
    });
    // Two planners share the task queue: consecutive steps of a run may land on either.
    for (let i = 0; i < 2; i++) {
      await startPlanner(rt, {
        agentId: `planner-${i}`,
        concurrency: 1,
        model: createScriptedModel({
          respond: researchScript({ dir: 'docs', reportPath: 'report.md' }),
        }),
        tools: files.tools.map(toolSpec),
      });
    }
  });

  const getRun = (runId: string) =>
    rt.request(rt.subjects.runsGet, RunGetRequest, RunRecord, { runId });

  afterAll(async () => {
    await sv.stop();
    await rt.close();
    await nats.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('runs the research script to a report, governed and traced', async () => {
    const run = await rt.request(rt.subjects.runsStart, RunStartRequest, RunRecord, {
      goal: 'Summarise the docs into report.md',
      budget: { steps: 10 },
    });
    const events: TraceEvent[] = [];
    await using _sub = await subscribeTraces(
      rt,
      { runId: run.runId },
      { callback: (e) => events.push(e) },
    );
    await expect
      .poll(async () => (await getRun(run.runId)).status, { timeout: 30_000, interval: 100 })
      .toBe('completed');
    const report = await readFile(join(dir, 'report.md'), 'utf8');
    expect(report).toContain('Alpha');
    expect(report).toContain('Beta');
    const done = await getRun(run.runId);
    expect(done.answer).toBeTruthy();
    expect(done.used.steps).toBeGreaterThanOrEqual(3);
    await expect
      .poll(() => events.some((e) => e.event === 'run.end'), { timeout: 5000 })
      .toBe(true);
    const kinds = new Set(events.map((e) => e.event));
    for (const k of [
      'run.start',
      'step.start',
      'model.result',
      'tool.call',
      'tool.result',
      'step.end',
      'run.end',
    ])
      expect(kinds, k).toContain(k);
  });

  it('stops a run at its step cap', async () => {
    const run = await rt.request(rt.subjects.runsStart, RunStartRequest, RunRecord, {
      goal: 'Summarise',
      budget: { steps: 1 },
    });
    await expect
      .poll(async () => (await getRun(run.runId)).status, { timeout: 30_000, interval: 100 })
      .toBe('stopped');
    const rec = await getRun(run.runId);
    expect(rec.stopReason).toBe('STEP_CAP');
    expect(rec.used.steps).toBe(1);
  });

  it('a model call cut off by a halt is charged its reserved estimate, not $0', async () => {
    // A planner of its own role, whose model answers only after ten minutes (abortable).
    await startPlanner(rt, {
      role: 'slow-planner',
      agentId: 'slow-planner-0',
      concurrency: 1,
      model: createScriptedModel({
        name: 'slow',
        price: { input: 2, output: 8 },
        latencyMs: 600_000,
        turns: ['never seen'],
      }),
      tools: [],
    });
    const run = await rt.request(rt.subjects.runsStart, RunStartRequest, RunRecord, {
      goal: 'Think for a long time',
      role: 'slow-planner',
      budget: { steps: 5, usd: 1 },
    });
    const calls: TraceEvent[] = [];
    await using _sub = await subscribeTraces(
      rt,
      { runId: run.runId, event: 'model.call' },
      { callback: (e) => calls.push(e) },
    );
    await expect.poll(() => calls.length, { timeout: 30_000 }).toBe(1);
    const estimate = (calls[0]?.data as { estimate: { usd: number } }).estimate.usd;
    expect(estimate).toBeGreaterThan(0);

    await rt.request(rt.subjects.ctlHalt, HaltRequest, HaltReply, {
      scope: { kind: 'run', runId: run.runId },
      reason: 'stop thinking',
      deadlineMs: 2000,
    });
    const budget = () =>
      rt.request(rt.subjects.runsBudget, RunGetRequest, BudgetReport, { runId: run.runId });
    // Settled: nothing reserved any more, one step committed.
    await expect.poll(async () => (await budget()).committed.steps, { timeout: 10_000 }).toBe(1);
    const report = await budget();
    expect(report.reserved.usd).toBe(0);
    // The provider may have billed the call it was cut off in: the reserved worst case is charged.
    expect(report.committed.usd).toBeCloseTo(estimate, 6);
  });

  it('runs a long run across two planners taking turns: every step and every tool call once', async () => {
    // Consecutive steps land on either planner, so each one often resumes from state the other
    // wrote since it last saw the run (its remembered copy is stale and must be re-read).
    const steps = 24;
    for (let i = 0; i < 2; i++) {
      await startPlanner(rt, {
        role: 'counter',
        agentId: `counter-${i}`,
        concurrency: 1,
        model: createScriptedModel({
          respond: (_c, ctx) =>
            ctx.turn + 1 >= steps
              ? { content: 'counted' }
              : { toolCalls: [{ name: 'count_step', args: { i: ctx.turn } }] },
        }),
        tools: [toolSpec(countTool)],
      });
    }
    const run = await rt.request(rt.subjects.runsStart, RunStartRequest, RunRecord, {
      goal: 'Count',
      role: 'counter',
      budget: { steps: steps + 5 },
    });
    const events: TraceEvent[] = [];
    await using _sub = await subscribeTraces(
      rt,
      { runId: run.runId },
      { callback: (e) => events.push(e) },
    );
    await expect
      .poll(() => events.some((e) => e.event === 'run.end'), { timeout: 60_000, interval: 100 })
      .toBe(true);
    const rec = await getRun(run.runId);
    expect(rec.status).toBe('completed');
    expect(rec.answer).toBe('counted');
    expect(rec.used.steps).toBe(steps);
    expect([...executions.entries()].sort((a, b) => a[0] - b[0])).toEqual(
      Array.from({ length: steps - 1 }, (_, i) => [i, 1]),
    );
    const starts = events.filter((e) => e.event === 'step.start');
    expect(starts.map((e) => e.data['step'])).toEqual(
      Array.from({ length: steps }, (_, i) => i + 1),
    );
    // Both planners took part (the point of this test).
    expect(new Set(starts.map((e) => e.agentId)).size).toBe(2);
  });
});
