import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { TraceEvent } from '@reins/protocol';
import { startFakeOpenAI, type RecordedRequest } from '@reins/testing';
import { DOCS, startE2E } from './support/e2e.js';
import { readAudit } from './support/packages.js';

const GOAL = 'Read every document in docs/ and write a report to report.md';

/** The planner's events of one step, in stream order. */
function stepEvents(events: readonly TraceEvent[], stepId: string): TraceEvent[] {
  return events.filter((e) => e.role === 'researcher' && e.stepId === stepId);
}

describe('a governed run across service processes', () => {
  it('completes with the expected report and a complete, ordered step tree', async () => {
    await using e = await startE2E();
    e.startSupervisor('sv-1');
    e.startExecutor('exec-1');
    e.startExecutor('exec-2');
    e.startPlanner('researcher-1', { REINS_SCRIPTED_PRICE: '0.15,0.6' });
    await e.waitForAgents(4);

    const run = await e.client.runs.start(GOAL, {
      role: 'researcher',
      budget: { usd: 0.05, steps: 20 },
    });
    await using trace = await e.trace(run.id);
    const record = await run.result({ timeoutMs: 30_000 });
    expect(record.status, e.diagnostics()).toBe('completed');
    expect(record.answer).toMatch(/^Wrote report\.md: 3 documents/);
    await trace.waitFor((ev) => ev.event === 'run.end', 'run.end');

    const report = await readFile(join(e.sandbox, 'report.md'), 'utf8');
    for (const text of Object.values(DOCS)) {
      for (const heading of text.matchAll(/^#{1,6} (.+)$/gm)) expect(report).toContain(heading[1]);
    }

    const events = trace.events;
    // The run is framed by the supervisor: run.start first, run.end last, once each.
    expect(events[0]).toMatchObject({ event: 'run.start', role: 'supervisor' });
    expect(events.at(-1)).toMatchObject({
      event: 'run.end',
      role: 'supervisor',
      data: { status: 'completed' },
    });
    expect(events.filter((ev) => ev.event.startsWith('run.'))).toHaveLength(2);

    // research script: s1 lists, s2 reads every document, s3 writes the report, s4 answers.
    const expectedTools = [
      ['list_files'],
      Object.keys(DOCS).map(() => 'read_file'),
      ['write_file'],
      [],
    ];
    const planner = events.filter((ev) => ev.role === 'researcher');
    expect(new Set(planner.map((ev) => ev.stepId))).toEqual(new Set(['s1', 's2', 's3', 's4']));
    // Steps do not interleave: each one ends before the next starts.
    expect(planner.map((ev) => ev.stepId)).toEqual(
      [...planner.map((ev) => ev.stepId)].sort((a, b) => String(a).localeCompare(String(b))),
    );
    for (const [i, tools] of expectedTools.entries()) {
      const stepId = `s${i + 1}`;
      const step = stepEvents(events, stepId);
      const names = step.map((ev) => ev.event);
      const calls = tools.map(() => 'tool.call');
      const results = tools.map(() => 'tool.result');
      // Tool calls of a step run concurrently: calls first (in index order), then results.
      expect(names, stepId).toEqual([
        'step.start',
        'model.result',
        ...calls,
        ...results,
        'step.end',
      ]);
      expect(step.every((ev) => ev.agentId === 'researcher-1')).toBe(true);
      const [start, modelResult] = step;
      expect(start?.data['step']).toBe(i + 1);
      // The result names the grant it was made under (no separate `model.call` by default).
      expect(String(modelResult?.data['grantId'])).toMatch(/^g/);
      expect(modelResult).toMatchObject({
        parentId: stepId,
        spanId: `${stepId}-m`,
        data: { toolCalls: tools },
      });
      const toolCalls = step.filter((ev) => ev.event === 'tool.call');
      const toolResults = step.filter((ev) => ev.event === 'tool.result');
      expect(toolCalls.map((ev) => ev.data['tool'])).toEqual(tools);
      expect(toolCalls.map((ev) => ev.spanId)).toEqual(tools.map((_, k) => `${stepId}-t${k}`));
      expect(toolCalls.map((ev) => ev.data['idempotencyKey'])).toEqual(
        tools.map((_, k) => `${run.id}.${i + 1}.${k}`),
      );
      expect(new Set(toolResults.map((ev) => ev.spanId))).toEqual(
        new Set(toolCalls.map((ev) => ev.spanId)),
      );
      for (const ev of [...toolCalls, ...toolResults]) expect(ev.parentId).toBe(stepId);
      for (const ev of toolResults) expect(ev.data['ok'], JSON.stringify(ev.data)).toBe(true);

      // Each tool ran once on an executor, between the planner's call and its result.
      const position = (ev: TraceEvent | undefined) => (ev ? events.indexOf(ev) : -1);
      for (const call of toolCalls) {
        const key = call.data['idempotencyKey'];
        const result = toolResults.find((ev) => ev.spanId === call.spanId);
        const execs = events.filter(
          (ev) => ev.role === 'executor' && ev.data['idempotencyKey'] === key,
        );
        // One event per execution by default: `tool.end` (no `tool.start` unless traceInFlight).
        expect(execs.map((ev) => ev.event)).toEqual(['tool.end']);
        for (const ev of execs) {
          expect(ev).toMatchObject({ stepId, parentId: stepId, data: { replayed: false } });
          expect(position(ev)).toBeGreaterThan(position(call));
          expect(position(ev)).toBeLessThan(position(result));
        }
      }
    }
    const last = stepEvents(events, 's4').at(-1);
    expect(last?.data).toMatchObject({ final: true });
    expect(events.indexOf(last!)).toBeLessThan(events.length - 1);
  });

  it('stops at a USD budget counted at the source: one model request per model-call grant', async () => {
    // A model that never finishes: every answer is another tool call (distinct arguments, so the
    // repeat breaker stays out of it), with a small fixed usage below any estimate.
    let n = 0;
    await using fake = await startFakeOpenAI({
      respond: () => ({
        toolCalls: [{ name: 'calculator', arguments: { expression: `${++n} + 1` } }],
        usage: { promptTokens: 100, completionTokens: 20 },
      }),
    });
    await using e = await startE2E();
    e.startSupervisor('sv-1');
    e.startExecutor('exec-1');
    e.startPlanner('researcher-1', {
      OPENAI_BASE_URL: fake.url,
      OPENAI_API_KEY: 'sk-fake',
      REINS_MODEL: 'fake-model',
      // $100 per 1M tokens: a call costs $0.012; a reservation (estimate) is several times that.
      REINS_PRICES: JSON.stringify({ 'fake-model': { input: 100, output: 100 } }),
      REINS_MAX_OUTPUT_TOKENS: '200',
    });
    await e.waitForAgents(3);

    const cap = 0.15;
    const run = await e.client.runs.start('Count forever', {
      role: 'researcher',
      budget: { usd: cap, steps: 40 },
    });
    const record = await run.result({ timeoutMs: 30_000 });
    expect(record.status, e.diagnostics()).toBe('stopped');
    expect(record.stopReason).toBe('BUDGET_EXCEEDED');

    const chat = (r: RecordedRequest) => r.path === '/v1/chat/completions';
    const requests = fake.requests.filter(chat).length;
    expect(requests).toBeGreaterThanOrEqual(2);

    const grants = [];
    for await (const entry of readAudit(e.client.runtime.nc)) {
      if (entry.runId === run.id && entry.action === 'grant' && entry.details['kind'] === 'llm')
        grants.push(entry);
    }
    expect(grants).toHaveLength(requests);
    // Settles are fire-and-forget: wait until every model call has been committed.
    await expect
      .poll(async () => (await run.budget()).committed.steps, { timeout: 10_000 })
      .toBe(requests);
    const budget = await run.budget();
    expect(budget.reserved.usd).toBeCloseTo(0, 9);
    expect(budget.committed.usd).toBeCloseTo(requests * 0.012, 9);
    expect(budget.committed.usd).toBeLessThanOrEqual(cap);
  });
});
