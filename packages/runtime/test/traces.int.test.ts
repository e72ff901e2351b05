import { describe, expect, it } from 'vitest';
import { startNatsServer } from '@reins/testing';
import { defineActor, listAgents, subscribeTraces } from '@reins/runtime';
import { ReinsError, type TraceEvent } from '@reins/protocol';
import { testRuntime } from './helpers.js';

describe('traces', () => {
  it('a wildcard subscriber sees every event of a run in order, including ones published before it subscribed', async () => {
    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url);
    const planner = await rt.start(defineActor({ role: 'planner' }));
    const executor = await rt.start(defineActor({ role: 'executor' }));

    // Published before anyone subscribes.
    const early: (TraceEvent | undefined)[] = [
      planner.trace('run-a', 'step.start', { n: 1 }, { stepId: 's1' }),
      executor.trace('run-a', 'tool.call', { tool: 'read_file' }, { stepId: 's1', parentId: 's1' }),
      planner.trace('run-b', 'step.start', { n: 1 }, { stepId: 'x1' }),
    ];
    await rt.nc.flush();

    const got: TraceEvent[] = [];
    await using sub = await subscribeTraces(
      rt,
      { runId: 'run-a' },
      { from: 'start', callback: (ev) => got.push(ev) },
    );
    const late = [
      executor.trace('run-a', 'tool.result', { ok: true }, { stepId: 's1', parentId: 's1' }),
      planner.trace('run-a', 'step.end', {}, { stepId: 's1' }),
      planner.trace('run-a', 'run.end', { answer: 'done' }),
    ];
    // Hostile publisher on the trace subject: skipped, counted.
    rt.nc.publish(
      rt.subjects.trace({ runId: 'run-a', role: 'evil', agentId: 'x', event: 'step.start' }),
      new Uint8Array([0xc1]),
    );
    await expect.poll(() => got.length, { timeout: 5000 }).toBe(5);
    expect(got.map((e) => e.event)).toEqual([
      'step.start',
      'tool.call',
      'tool.result',
      'step.end',
      'run.end',
    ]);
    expect(got).toEqual([early[0], early[1], ...late]);
    expect(got.every((e) => e.runId === 'run-a')).toBe(true);
    // per-actor sequence numbers are monotonic
    const plannerSeqs = got.filter((e) => e.agentId === planner.agentId).map((e) => e.seq);
    expect(plannerSeqs).toEqual([...plannerSeqs].sort((a, b) => a - b));
    await expect.poll(() => sub.invalid).toBe(1);
  });

  it('async-iterates by role pattern from now on', async () => {
    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url);
    const ex = await rt.start(defineActor({ role: 'executor' }));
    ex.trace('r1', 'tool.call', {});
    await rt.nc.flush();
    const sub = await subscribeTraces(
      rt,
      { role: 'executor', event: 'tool.result' },
      { from: 'new' },
    );
    ex.trace('r1', 'tool.call', {});
    ex.trace('r2', 'tool.result', { n: 2 });
    const events: TraceEvent[] = [];
    for await (const ev of sub) {
      events.push(ev);
      break;
    }
    await sub.stop();
    expect(events.map((e) => [e.runId, e.event, e.data])).toEqual([
      ['r2', 'tool.result', { n: 2 }],
    ]);
  });

  it('lists live agents with heartbeats and marks silent ones lost', async () => {
    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url, { heartbeatMs: 100 });
    const a = await rt.start(defineActor({ role: 'worker', agentId: 'w1' }));
    await expect
      .poll(async () => (await listAgents(rt)).map((x) => [x.agentId, x.status]), { timeout: 5000 })
      .toEqual([['w1', 'running']]);
    const [w1] = await listAgents(rt);
    expect(w1?.memory.rss).toBeGreaterThan(0);
    expect(w1?.version).toBe('0.1.0');
    // Looking from the future: its heartbeat has expired, so it is lost.
    expect((await listAgents(rt, { now: Date.now() + 60_000 }))[0]?.status).toBe('lost');
    await a.stop();
    expect(await listAgents(rt)).toEqual([]);
    expect((await listAgents(rt, { includeStopped: true }))[0]?.status).toBe('stopped');
  });

  it('opening where JetStream does not answer fails with a retryable coded error, not a raw NATS one', async () => {
    await using nats = await startNatsServer({ jetstream: false });
    await using rt = await testRuntime(nats.url, { ensureInfrastructure: false });
    const opening = subscribeTraces(rt, { runId: 'r1' }, { openTimeoutMs: 300 });
    await expect(opening).rejects.toBeInstanceOf(ReinsError);
    await expect(opening).rejects.toMatchObject({ code: 'UNAVAILABLE', retryable: true });
    // Listing agents reads KV the same way: coded as well.
    await expect(listAgents(rt, { timeoutMs: 300 })).rejects.toMatchObject({
      code: 'UNAVAILABLE',
      retryable: true,
    });
  });

  it('gives up opening when its signal aborts, and an open subscription stops on abort', async () => {
    await using down = await startNatsServer({ jetstream: false });
    await using rtDown = await testRuntime(down.url, { ensureInfrastructure: false });
    const gaveUp = subscribeTraces(
      rtDown,
      { runId: 'r1' },
      { openTimeoutMs: 600_000, signal: AbortSignal.timeout(200) },
    );
    await expect(gaveUp).rejects.toMatchObject({ code: 'ABORTED' });

    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url);
    const planner = await rt.start(defineActor({ role: 'planner' }));
    const controller = new AbortController();
    const sub = await subscribeTraces(rt, { runId: 'r2' }, { signal: controller.signal });
    planner.trace('r2', 'step.start', {});
    const seen: TraceEvent[] = [];
    for await (const ev of sub) {
      seen.push(ev);
      controller.abort();
    }
    // The iteration ended because the abort stopped the subscription.
    expect(seen.map((e) => e.event)).toEqual(['step.start']);
  });
});
