import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RunGetRequest, decode, type TraceEvent } from '@reins/protocol';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { connect, type ReinsClient, type RunHandle } from '@reins/client';
import {
  RESEARCH_ANSWER,
  startDelegation,
  type Delegation,
} from '../../../test/support/delegation.js';

/** Records the messages published on `subject` (a NATS pattern) while it is open. */
function countOn(client: ReinsClient, subject: string) {
  const seen: { subject: string; data: Uint8Array }[] = [];
  const sub = client.runtime.nc.subscribe(subject, {
    callback: (_e, m) => {
      seen.push({ subject: m.subject, data: m.data });
    },
  });
  return { seen, stop: () => sub.unsubscribe() };
}

/** The runs of a tree, root first: the child is named by the root's `delegate.start`, and so on. */
function tree(events: readonly TraceEvent[], root: string): string[] {
  const runs = [root];
  for (let i = 0; i < runs.length; i++) {
    const d = events.find((e) => e.runId === runs[i] && e.event === 'delegate.start');
    if (typeof d?.data['childRunId'] === 'string') runs.push(d.data['childRunId']);
  }
  return runs;
}

describe('run lifecycle: a run with its descendants, ends pushed not polled', () => {
  let nats: NatsServer;
  let swarm: Delegation;
  let client: ReinsClient;

  beforeAll(async () => {
    nats = await startNatsServer();
    swarm = await startDelegation(nats.url);
    client = await connect({ servers: nats.url });
  });

  afterAll(async () => {
    await client?.close();
    await swarm?.stop();
    await nats?.stop();
  });

  const startLead = () => client.runs.start('Find it', { role: 'lead', budget: { steps: 10 } });

  it("run.events() includes the child's and grandchild's steps, each after the delegate.start that made it", async () => {
    const run = await startLead();
    const live: TraceEvent[] = [];
    await using _live = await run.events({ callback: (e) => live.push(e) });
    const rec = await run.result({ timeoutMs: 30_000 });
    expect(rec.status).toBe('completed');
    expect(rec.answer).toContain(RESEARCH_ANSWER);

    // A finished run read again: the whole tree, stored events first.
    const events: TraceEvent[] = [];
    await using stored = await run.events({ callback: (e) => events.push(e) });
    await stored.caughtUp();
    const runs = tree(events, run.id);
    expect(runs).toHaveLength(3);
    const [, child, grandchild] = runs;
    expect(events.filter((e) => e.event === 'step.start').map((e) => e.runId)).toEqual(
      expect.arrayContaining(runs),
    );
    expect(
      events.some(
        (e) => e.runId === grandchild && e.event === 'tool.call' && e.data['tool'] === 'note',
      ),
    ).toBe(true);
    for (const [parent, kid] of [
      [run.id, child],
      [child, grandchild],
    ]) {
      const made = events.findIndex(
        (e) => e.runId === parent && e.event === 'delegate.start' && e.data['childRunId'] === kid,
      );
      expect(made).toBeGreaterThanOrEqual(0);
      expect(events.findIndex((e) => e.runId === kid)).toBeGreaterThan(made);
    }
    // Per source in each run, `seq` only grows.
    const last = new Map<string, number>();
    for (const e of events) {
      const source = `${e.runId}/${e.agentId}`;
      expect(e.seq).toBeGreaterThan(last.get(source) ?? -1);
      last.set(source, e.seq);
    }

    // Followed live, the same events of every run arrive (the grandchild's end last of its own).
    await expect
      .poll(() => live.some((e) => e.runId === grandchild && e.event === 'run.end'), {
        timeout: 10_000,
      })
      .toBe(true);
    expect(new Set(live.map((e) => e.runId))).toEqual(new Set(runs));
  });

  it("descendants: false leaves the children out; a filtered pattern keeps the children's matching events", async () => {
    const run = await startLead();
    await run.result({ timeoutMs: 30_000 });
    const own: TraceEvent[] = [];
    await using ownSub = await run.events({ descendants: false, callback: (e) => own.push(e) });
    await ownSub.caughtUp();
    expect(own.some((e) => e.event === 'delegate.start')).toBe(true);
    expect(own.every((e) => e.runId === run.id)).toBe(true);

    const ends: TraceEvent[] = [];
    await using endSub = await client.traces.subscribe(
      { runId: run.id, event: 'run.end' },
      { callback: (e) => ends.push(e) },
    );
    await endSub.caughtUp();
    expect(ends.map((e) => e.event)).toEqual(['run.end', 'run.end', 'run.end']);
    expect(new Set(ends.map((e) => e.runId)).size).toBe(3);
  });

  it("a child's end wakes its delegating parent, which does not poll for it", async () => {
    const gets = countOn(client, `${client.runtime.subjects.prefix}.runs.get`);
    try {
      const run = await startLead();
      const events: TraceEvent[] = [];
      await using _sub = await run.events({ callback: (e) => events.push(e) });
      await expect
        .poll(() => events.some((e) => e.runId === run.id && e.event === 'run.end'), {
          timeout: 30_000,
        })
        .toBe(true);
      const runs = tree(events, run.id);
      expect(runs).toHaveLength(3);
      // Each run is asked for once, by the planner taking its first step; a parent waiting on
      // its child would ask again and again.
      const asked = gets.seen.map((m) => decode(RunGetRequest, m.data).runId);
      expect(asked.sort()).toEqual([...runs].sort());
    } finally {
      gets.stop();
    }
  });

  it('result() of 50 concurrent runs: every one ends, through one shared watch', async () => {
    const creates = countOn(client, '$JS.API.CONSUMER.CREATE.>');
    try {
      const runs: RunHandle[] = await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          client.runs.start(`note ${i}`, { role: 'researcher', budget: { steps: 5 } }),
        ),
      );
      const records = await Promise.all(runs.map((r) => r.result({ timeoutMs: 60_000 })));
      expect(records.map((r) => r.status)).toEqual(runs.map(() => 'completed'));
      expect(records.map((r) => r.runId)).toEqual(runs.map((r) => r.id));
      expect(records.every((r) => r.answer === RESEARCH_ANSWER)).toBe(true);
      // The client made at most the one watch (none if it was still open from an earlier wait).
      const mine = creates.seen.filter((m) => /KV_reins_runs|REINS_TRACE/.test(m.subject));
      expect(mine.length).toBeLessThanOrEqual(1);
    } finally {
      creates.stop();
    }
  });

  it('result() and get() answer from the stored record with no supervisor running', async () => {
    const run = await client.runs.start('note once', { role: 'researcher', budget: { steps: 5 } });
    const first = await run.result({ timeoutMs: 30_000 });
    expect(first.status).toBe('completed');
    await swarm.supervisor.stop();
    // A fresh client: nothing cached, no watch open yet.
    await using other = await connect({ servers: nats.url });
    const again = await other.runs.handle(run.id).result({ timeoutMs: 10_000 });
    expect(again.status).toBe('completed');
    expect(again.answer).toBe(RESEARCH_ANSWER);
    expect((await other.runs.get(run.id)).answer).toBe(RESEARCH_ANSWER);
    await expect(other.runs.get('no-such-run')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});
