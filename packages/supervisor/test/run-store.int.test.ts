import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Buckets, NotFoundError, type RunRecord } from '@reins/protocol';
import { openBucket } from '@reins/runtime';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { RunStore, initBreakerState, isTerminal, recordAction } from '../src/index.js';

let seq = 0;
const uid = (p: string) => `${p}${Date.now().toString(36)}${(seq++).toString(36)}`;

const record = (runId: string): RunRecord => ({
  runId,
  goal: 'test',
  role: 'planner',
  roles: ['planner', 'executor'],
  status: 'running',
  budget: { steps: 10 },
  used: { inputTokens: 0, outputTokens: 0, usd: 0, steps: 0 },
  createdAt: Date.now(),
  updatedAt: Date.now(),
});

describe('RunStore caches', () => {
  let nats: NatsServer;
  const conns: NatsConnection[] = [];
  const stores: RunStore[] = [];

  beforeAll(async () => {
    nats = await startNatsServer();
    for (let i = 0; i < 2; i++) {
      const nc = await connect({ servers: nats.url, noAsyncTraces: true });
      conns.push(nc);
      const store = new RunStore(await openBucket(nc, Buckets.runs));
      await store.watch();
      stores.push(store);
    }
  });

  afterAll(async () => {
    for (const s of stores) s.stopWatch();
    for (const nc of conns) await nc.close();
    await nats.stop();
  });

  const a = () => stores[0]!;
  const b = () => stores[1]!;

  it('a run ended through one store is seen ended by another store within milliseconds', async () => {
    const runId = uid('run_');
    await a().create(record(runId));
    // b caches the live record…
    expect((await b().cached(runId, 60_000)).status).toBe('running');
    // …a ends the run; b's watch brings the end without b reading KV again.
    const started = Date.now();
    await a().setStatus(runId, 'completed', { endedAt: Date.now() });
    await expect
      .poll(async () => isTerminal((await b().cached(runId, 60_000)).status), {
        timeout: 500,
        interval: 2,
      })
      .toBe(true);
    expect(Date.now() - started).toBeLessThan(500);
    // The writer sees its own write at once.
    expect((await a().cached(runId, 60_000)).status).toBe('completed');
  });

  it('fails closed: unknown runs, and reads after the watch stopped, go to KV', async () => {
    await expect(a().cached(uid('run_'), 60_000)).rejects.toBeInstanceOf(NotFoundError);
    const nc = await connect({ servers: nats.url, noAsyncTraces: true });
    try {
      const c = new RunStore(await openBucket(nc, Buckets.runs));
      await c.watch();
      const runId = uid('run_');
      await c.create(record(runId));
      expect((await c.cached(runId, 60_000)).status).toBe('running');
      c.stopWatch();
      // Without a watch nothing is trusted from memory: another writer's end is seen at once.
      await a().setStatus(runId, 'stopped', { endedAt: Date.now() });
      expect((await c.cached(runId, 60_000)).status).toBe('stopped');
    } finally {
      await nc.close();
    }
  });

  it('breaker updates from two stores with cached states count every action exactly once', async () => {
    const runId = uid('run_');
    const step = (s: RunStore, i: number) =>
      s.updateBreakers(
        runId,
        () => initBreakerState(Date.now()),
        (st) => {
          const r = recordAction(st, { tool: 't', argsHash: `h${i}`, now: Date.now() });
          return { state: r.state, result: r.state.steps };
        },
      );
    // Interleaved: each store's cached revision is stale every other time.
    const seen: number[] = [];
    for (let i = 0; i < 10; i++) seen.push(await step(i % 2 === 0 ? a() : b(), i));
    expect(seen).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    // Concurrent, on both stores: no lost update.
    const more = await Promise.all(
      Array.from({ length: 20 }, (_, i) => step(i % 2 === 0 ? a() : b(), 100 + i)),
    );
    expect(new Set(more).size).toBe(20);
    expect(Math.max(...more)).toBe(30);
  });
});
