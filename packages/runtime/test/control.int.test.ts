import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { startNatsServer } from '@reins/testing';
import { broadcastControl, defineActor, type Actor, type Runtime } from '@reins/runtime';
import { HaltedError, Buckets, PausedError, newId } from '@reins/protocol';
import { HaltMarkers, openBucket } from '@reins/runtime';
import { aborted, deferred, testRuntime } from './helpers.js';

const Job = z.object({ runId: z.string() });

/** Starts `count` actors of `role`, each with a `work.<agentId>` handler that blocks until aborted. */
async function startWorkers(rt: Runtime, role: string, count: number) {
  const started: Actor[] = [];
  for (let i = 0; i < count; i++) {
    started.push(
      await rt.start(
        defineActor({
          role,
          agentId: `${role}-${i}`,
          setup(actor) {
            actor.handle(`work.${actor.agentId}`, Job, async (_req, ctx) => {
              await aborted(ctx.signal);
              throw ctx.signal.reason;
            });
          },
        }),
      ),
    );
  }
  return started;
}

describe('control channel', () => {
  it('with 100 actors on one connection, each halt scope aborts exactly the matching work', async () => {
    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url, { heartbeatMs: 5000 });
    const alpha = await startWorkers(rt, 'alpha', 50);
    const beta = await startWorkers(rt, 'beta', 50);
    const all = [...alpha, ...beta];
    expect(rt.actors.size).toBe(100);

    // Every actor works on a run: actor i on run-(i % 4).
    const outcomes = new Map<string, Promise<unknown>>();
    const launch = () => {
      for (const [i, a] of all.entries()) {
        outcomes.set(
          a.agentId,
          rt
            .request(
              `work.${a.agentId}`,
              Job,
              z.unknown(),
              { runId: `run-${i % 4}` },
              { timeoutMs: 20_000 },
            )
            .catch((e: unknown) => e),
        );
      }
    };
    launch();
    await expect.poll(() => all.every((a) => a.inFlight === 1), { timeout: 10_000 }).toBe(true);

    // agent scope
    let acks = await broadcastControl(
      rt,
      {
        type: 'halt',
        scope: { kind: 'agent', agentId: 'alpha-3' },
        reason: 'test',
        deadlineMs: 1000,
      },
      { expectAcks: 1 },
    );
    expect(acks.map((a) => a.agentId)).toEqual(['alpha-3']);
    expect(acks[0]).toMatchObject({ aborted: 1, stillRunning: 0 });
    expect(await outcomes.get('alpha-3')).toBeInstanceOf(HaltedError);
    expect(all.filter((a) => a.inFlight === 0).map((a) => a.agentId)).toEqual(['alpha-3']);

    // run scope: every actor acks, only actors on run-1 abort
    acks = await broadcastControl(
      rt,
      { type: 'halt', scope: { kind: 'run', runId: 'run-1' }, reason: 'test', deadlineMs: 1000 },
      { expectAcks: 100 },
    );
    expect(acks).toHaveLength(100);
    const onRun1 = all.filter((_, i) => i % 4 === 1).map((a) => a.agentId);
    expect(
      acks
        .filter((a) => a.aborted === 1)
        .map((a) => a.agentId)
        .sort(),
    ).toEqual(onRun1.filter((id) => id !== 'alpha-3').sort());
    for (const id of onRun1) expect(await outcomes.get(id)).toBeInstanceOf(HaltedError);
    // a halted run is refused from now on, by everyone
    await expect(
      rt.request('work.beta-0', Job, z.unknown(), { runId: 'run-1' }),
    ).rejects.toBeInstanceOf(HaltedError);

    // role scope: only beta actors ack and abort
    acks = await broadcastControl(
      rt,
      { type: 'halt', scope: { kind: 'role', role: 'beta' }, reason: 'test', deadlineMs: 1000 },
      { expectAcks: 50 },
    );
    expect(acks.map((a) => a.agentId).sort()).toEqual(beta.map((a) => a.agentId).sort());
    expect(beta.every((a) => a.inFlight === 0 && a.status === 'halted')).toBe(true);
    const alphaStillWorking = alpha.filter((a) => a.inFlight === 1).length;
    expect(alphaStillWorking).toBe(alpha.filter((_, i) => i % 4 !== 1 && i !== 3).length);

    // all scope
    acks = await broadcastControl(
      rt,
      { type: 'halt', scope: { kind: 'all' }, reason: 'test', deadlineMs: 1000 },
      { expectAcks: 100 },
    );
    expect(acks).toHaveLength(100);
    expect(acks.reduce((n, a) => n + a.aborted, 0)).toBe(alphaStillWorking);
    expect(all.every((a) => a.inFlight === 0)).toBe(true);
    const results = await Promise.all(outcomes.values());
    expect(results.every((r) => r instanceof HaltedError)).toBe(true);

    // resume everything: work is taken again
    for (const scope of [
      { kind: 'all' as const },
      { kind: 'role' as const, role: 'beta' },
      { kind: 'run' as const, runId: 'run-1' },
      { kind: 'agent' as const, agentId: 'alpha-3' },
    ]) {
      await broadcastControl(
        rt,
        { type: 'resume', scope, reason: 'go', deadlineMs: 200 },
        { expectAcks: scope.kind === 'role' ? 50 : scope.kind === 'agent' ? 1 : 100 },
      );
    }
    expect(all.every((a) => a.status === 'running')).toBe(true);
    const again = rt
      .request('work.beta-5', Job, z.unknown(), { runId: 'run-1' }, { timeoutMs: 20_000 })
      .catch((e: unknown) => e);
    await expect.poll(() => beta[5]?.inFlight, { timeout: 5000 }).toBe(1);
    await broadcastControl(
      rt,
      { type: 'halt', scope: { kind: 'agent', agentId: 'beta-5' }, reason: 'end', deadlineMs: 500 },
      { expectAcks: 1 },
    );
    expect(await again).toBeInstanceOf(HaltedError);
  });

  it('an actor started after a halt refuses the halted run, and takes it after resume', async () => {
    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url);
    const supervisorSide = await HaltMarkers.load(
      await openBucket(rt.nc, Buckets.halts),
      rt.logger,
    );
    await supervisorSide.write({
      haltId: newId('h'),
      scope: { kind: 'run', runId: 'r-bad' },
      reason: 'runaway',
      createdAt: Date.now(),
    });

    await using late = await testRuntime(nats.url);
    const seen: string[] = [];
    await late.start(
      defineActor({
        role: 'late',
        setup(actor) {
          actor.handle('late.work', Job, (req) => {
            seen.push(req.runId);
            return undefined;
          });
        },
      }),
    );
    await expect(
      late.request('late.work', Job, z.unknown(), { runId: 'r-bad' }),
    ).rejects.toBeInstanceOf(HaltedError);
    await late.request('late.work', Job, z.unknown(), { runId: 'r-good' });
    expect(seen).toEqual(['r-good']);

    await supervisorSide.clear({ kind: 'run', runId: 'r-bad' });
    await expect
      .poll(
        () =>
          late.request('late.work', Job, z.unknown(), { runId: 'r-bad' }).then(
            () => 'ok',
            (e: unknown) => (e as Error).name,
          ),
        { timeout: 5000 },
      )
      .toBe('ok');
    expect(seen).toEqual(['r-good', 'r-bad']);
    supervisorSide.stop();
  });

  it('pause stops new work, resume continues; in-flight work is untouched by pause', async () => {
    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url);
    const release = deferred();
    const actor = await rt.start(
      defineActor({
        role: 'pausable',
        setup(a) {
          a.handle('p.work', Job, async () => {
            await release.promise;
            return undefined;
          });
        },
      }),
    );
    const inflight = rt.request('p.work', Job, z.unknown(), { runId: 'r1' }, { timeoutMs: 10_000 });
    await expect.poll(() => actor.inFlight).toBe(1);
    const acks = await broadcastControl(
      rt,
      { type: 'pause', scope: { kind: 'role', role: 'pausable' }, reason: 'hold', deadlineMs: 200 },
      { expectAcks: 1 },
    );
    expect(acks[0]).toMatchObject({ type: 'pause', stillRunning: 1 });
    expect(actor.status).toBe('paused');
    await expect(rt.request('p.work', Job, z.unknown(), { runId: 'r2' })).rejects.toBeInstanceOf(
      PausedError,
    );
    release.resolve();
    await expect(inflight).resolves.toEqual({ ok: true });
    await broadcastControl(
      rt,
      {
        type: 'resume',
        scope: { kind: 'agent', agentId: actor.agentId },
        reason: 'go',
        deadlineMs: 200,
      },
      { expectAcks: 1 },
    );
    expect(actor.status).toBe('running');
    await expect(rt.request('p.work', Job, z.unknown(), { runId: 'r2' })).resolves.toEqual({
      ok: true,
    });
  });

  it('ignores malformed control messages and keeps serving', async () => {
    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url);
    const actor = await rt.start(
      defineActor({ role: 'sturdy', setup: (a) => void a.handle('s.work', Job, () => undefined) }),
    );
    rt.nc.publish(`${rt.subjects.prefix}.ctl.bcast.all`, new Uint8Array([1, 2, 3]));
    rt.nc.publish(
      `${rt.subjects.prefix}.ctl.bcast.all`,
      new TextEncoder().encode('{"type":"halt"}'),
    );
    await rt.nc.flush();
    await expect(rt.request('s.work', Job, z.unknown(), { runId: 'r' })).resolves.toEqual({
      ok: true,
    });
    expect(actor.status).toBe('running');
  });
});
