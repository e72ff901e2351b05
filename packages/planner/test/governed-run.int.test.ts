import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { RunRecord, RunStartRequest, createGrantSigner, type TraceEvent } from '@reins/protocol';
import { Runtime, createLogger, subscribeTraces } from '@reins/runtime';
import { createFileTools, createScriptedModel, researchScript, toolSpec } from '@reins/models';
import { startSupervisor, type Supervisor } from '@reins/supervisor';
import { startExecutor } from '@reins/executor';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { startPlanner } from '@reins/planner';

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
    rt = await Runtime.connect({ servers: nats.url, logger: quiet(), heartbeatMs: 500 });
    const { signer } = createGrantSigner();
    sv = await startSupervisor(rt, {
      signer,
      policy: {
        version: 1,
        rules: [
          { id: 'files.read', match: { tool: 'read_file' }, effect: 'allow' },
          { id: 'files.list', match: { tool: 'list_files' }, effect: 'allow' },
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
    await startExecutor(rt, { tools: files.tools, trustedIssuers: [signer.publicKey] });
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
      .poll(
        async () =>
          (
            await rt.request(rt.subjects.runsGet, z.object({ runId: z.string() }), RunRecord, {
              runId: run.runId,
            })
          ).status,
        { timeout: 30_000, interval: 100 },
      )
      .toBe('completed');
    const report = await readFile(join(dir, 'report.md'), 'utf8');
    expect(report).toContain('Alpha');
    expect(report).toContain('Beta');
    const done = await rt.request(rt.subjects.runsGet, z.object({ runId: z.string() }), RunRecord, {
      runId: run.runId,
    });
    expect(done.answer).toBeTruthy();
    expect(done.used.steps).toBeGreaterThanOrEqual(3);
    await expect
      .poll(() => events.some((e) => e.event === 'run.end'), { timeout: 5000 })
      .toBe(true);
    const kinds = new Set(events.map((e) => e.event));
    for (const k of [
      'run.start',
      'step.start',
      'model.call',
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
      .poll(
        async () =>
          (
            await rt.request(rt.subjects.runsGet, z.object({ runId: z.string() }), RunRecord, {
              runId: run.runId,
            })
          ).status,
        { timeout: 30_000, interval: 100 },
      )
      .toBe('stopped');
    const rec = await rt.request(rt.subjects.runsGet, z.object({ runId: z.string() }), RunRecord, {
      runId: run.runId,
    });
    expect(rec.stopReason).toBe('STEP_CAP');
    expect(rec.used.steps).toBe(1);
  });
});
