import { describe, expect, it } from 'vitest';
import {
  Buckets,
  HaltedError,
  SettleRequest,
  decode,
  encode,
  hashArgs,
  type ToolResult,
} from '@reins/protocol';
import { broadcastControl, openBucket } from '@reins/runtime';
import { IdempotencyRecord, idempotencyKvKey, startExecutor } from '@reins/executor';
import { grantFor, setup, testRuntime, testTools, type Call } from './helpers.js';

describe('executor: idempotency', () => {
  it('a redelivered request runs the tool once and replays the stored result', async () => {
    const t = testTools();
    await using env = await setup(t.tools);
    const settles: SettleRequest[] = [];
    env.client.nc.subscribe(env.client.subjects.partition('*').settle, {
      callback: (_e, m) => void settles.push(decode(SettleRequest, m.data)),
    });
    await env.client.nc.flush();
    const call: Call = { tool: 'append', args: { line: 'once' }, idempotencyKey: 'run-1:s1:a' };
    const grant = grantFor(env.signer, call);

    const first = await env.execute(call, grant);
    const second = await env.execute(call, grant);

    expect(first).toMatchObject({ ok: true, output: { count: 1 }, replayed: false });
    expect(second).toMatchObject({ ok: true, output: { count: 1 }, replayed: true });
    expect(t.lines).toEqual(['once']);
    expect(t.calls.append).toBe(1);
    // Only the real run settles; a replay does not settle again.
    await expect.poll(() => settles.length).toBe(1);
    await env.client.nc.flush();
    expect(settles).toHaveLength(1);
  });

  it('the result is stored even when the executor stops right after replying; another replays it', async () => {
    const t = testTools();
    await using env = await setup(t.tools);
    const call: Call = { tool: 'append', args: { line: 'stop' }, idempotencyKey: 'run-1:s1:stop' };
    const grant = grantFor(env.signer, call);
    expect(await env.execute(call, grant)).toMatchObject({ ok: true, replayed: false });
    // The reply may go out before the record is written: stopping must still write it.
    await env.executor.actor.stop();
    const record = await (
      await openBucket(env.client.nc, Buckets.idem)
    ).get(idempotencyKvKey(call.idempotencyKey));
    expect(record && decode(IdempotencyRecord, record.value)).toMatchObject({ state: 'done' });
    await using other = await testRuntime(env.nats.url);
    await startExecutor(other, { tools: t.tools, trustedIssuers: [env.signer.publicKey] });
    expect(await env.execute(call, grant)).toMatchObject({ ok: true, replayed: true });
    expect(t.calls.append).toBe(1);
  });

  it('5 concurrent duplicates across 2 executors: one side effect, 5 identical outputs', async () => {
    const t = testTools();
    await using env = await setup(t.tools);
    await using rt2 = await testRuntime(env.nats.url);
    await using second = await startExecutor(rt2, {
      tools: t.tools,
      trustedIssuers: [env.signer.publicKey],
      agentId: 'executor-2',
    });
    const release = t.holdAppend();
    const call: Call = { tool: 'append', args: { line: 'dup' }, idempotencyKey: 'run-1:s2:a' };
    const grant = grantFor(env.signer, call);

    const results = Promise.all(Array.from({ length: 5 }, () => env.execute(call, grant)));
    results.catch(() => undefined); // awaited below; keeps a failed assertion from adding noise
    // Every duplicate is in flight: one running the tool, four waiting on its claim.
    await expect.poll(() => t.calls.append, { timeout: 10_000 }).toBe(1);
    await expect
      .poll(() => env.executor.actor.inFlight + second.actor.inFlight, { timeout: 10_000 })
      .toBe(5);
    release();
    const all: ToolResult[] = await results;

    expect(t.lines).toEqual(['dup']);
    expect(t.calls.append).toBe(1);
    for (const r of all) expect(r).toMatchObject({ ok: true, output: { count: 1 } });
    expect(all.filter((r) => r.ok && !r.replayed)).toHaveLength(1);
  });

  it('a holder renews its lease while the tool runs, so a duplicate waits instead of taking over', async () => {
    const t = testTools();
    await using env = await setup(t.tools, { idempotencyLeaseMs: 90 });
    const kv = await openBucket(env.client.nc, Buckets.idem);
    const release = t.holdAppend();
    const call: Call = { tool: 'append', args: { line: 'long' }, idempotencyKey: 'k-renew' };
    const grant = grantFor(env.signer, call);
    const first = env.execute(call, grant);
    first.catch(() => undefined);
    await expect.poll(() => t.calls.append).toBe(1);
    const leaseOf = async () => {
      const e = await kv.get(idempotencyKvKey(call.idempotencyKey));
      const r = e ? decode(IdempotencyRecord, e.value) : undefined;
      return r?.state === 'running' ? r.leaseUntil - r.startedAt : 0;
    };
    // Renewed many lease lengths past its start: the holder is alive.
    await expect.poll(leaseOf, { timeout: 10_000 }).toBeGreaterThan(1000);
    const duplicate = env.execute(call, grant);
    duplicate.catch(() => undefined);
    await expect.poll(() => env.executor.actor.inFlight).toBe(2);
    release();
    expect(await first).toMatchObject({ ok: true, replayed: false, output: { count: 1 } });
    expect(await duplicate).toMatchObject({ ok: true, replayed: true, output: { count: 1 } });
    expect(t.calls.append).toBe(1);
  });

  it('a halt mid-tool aborts it through its signal; a write ends with outcome unknown, stored', async () => {
    const t = testTools();
    await using env = await setup(t.tools);
    const call: Call = {
      tool: 'slow_write',
      args: {},
      idempotencyKey: 'run-9:s1:w',
      runId: 'run-9',
    };
    const pending = env.execute(call);
    await t.slowWriteStarted;

    const acks = await broadcastControl(
      env.client,
      { type: 'halt', scope: { kind: 'run', runId: 'run-9' }, reason: 'stop', deadlineMs: 1000 },
      { expectAcks: 1 },
    );
    expect(acks).toMatchObject([{ agentId: 'executor-1', aborted: 1, stillRunning: 0 }]);
    // The ack names the action whose effect may or may not have happened.
    expect(acks[0]?.unknownOutcomes).toEqual([
      { runId: 'run-9', tool: 'slow_write', idempotencyKey: 'run-9:s1:w' },
    ]);
    const result = await pending;
    expect(result).toMatchObject({
      ok: false,
      outcome: 'unknown',
      error: { code: 'HALTED', details: { outcome: 'unknown' } },
    });

    // The outcome is on record, so no later attempt re-runs the write silently.
    const kv = await openBucket(env.client.nc, Buckets.idem);
    const entry = await kv.get(idempotencyKvKey(call.idempotencyKey));
    const record = decode(IdempotencyRecord, entry!.value);
    expect(record).toMatchObject({ state: 'done', result: { ok: false, outcome: 'unknown' } });
    // And the run is refused from now on.
    await expect(env.execute(call)).rejects.toBeInstanceOf(HaltedError);
    expect(t.calls.slowWrite).toBe(1);
  });

  it('a read tool that times out is aborted, leaves no claim, and may run again', async () => {
    const t = testTools();
    await using env = await setup(t.tools);
    const call: Call = { tool: 'slow_read', args: {}, idempotencyKey: 'k-read', timeoutMs: 50 };
    const first = await env.execute(call);
    expect(first).toMatchObject({ ok: false, outcome: 'aborted', error: { code: 'TIMEOUT' } });
    const kv = await openBucket(env.client.nc, Buckets.idem);
    const entry = await kv.get(idempotencyKvKey('k-read'));
    expect(entry === null || entry.operation !== 'PUT').toBe(true);
    expect(await env.execute(call)).toMatchObject({ ok: false, outcome: 'aborted' });
    expect(t.calls.slowRead).toBe(2);
  });

  it('an expired lease of a crashed holder: non-idempotent → unknown, idempotent → re-run once', async () => {
    const t = testTools();
    await using env = await setup(t.tools);
    const kv = await openBucket(env.client.nc, Buckets.idem);
    const crashed = async (call: Call) => {
      const past = Date.now() - 60_000;
      await kv.put(
        idempotencyKvKey(call.idempotencyKey),
        encode(IdempotencyRecord, {
          state: 'running',
          tool: call.tool,
          argsHash: hashArgs(call.args),
          runId: 'run-1',
          grantId: 'g-crashed',
          owner: 'executor-dead',
          attemptId: 'try_dead',
          startedAt: past,
          leaseUntil: past + 1000,
        }),
      );
    };

    const write: Call = { tool: 'append', args: { line: 'maybe' }, idempotencyKey: 'k-crash-1' };
    await crashed(write);
    const unknown = await env.execute(write);
    expect(unknown).toMatchObject({
      ok: false,
      outcome: 'unknown',
      error: { code: 'TOOL_FAILED', details: { outcome: 'unknown' } },
    });
    expect(await env.execute(write)).toEqual(unknown);
    expect(t.calls.append).toBe(0);

    const put: Call = {
      tool: 'put_value',
      args: { key: 'a', value: '1' },
      idempotencyKey: 'k-crash-2',
    };
    await crashed(put);
    expect(await env.execute(put)).toMatchObject({ ok: true, replayed: false });
    expect(await env.execute(put)).toMatchObject({ ok: true, replayed: true });
    expect(t.calls.put).toBe(1);
    expect(t.values.get('a')).toBe('1');
  });

  it('duplicates on 2 executors race for the same expired lease: the idempotent tool runs once', async () => {
    const t = testTools();
    await using env = await setup(t.tools);
    await using rt2 = await testRuntime(env.nats.url);
    await using second = await startExecutor(rt2, {
      tools: t.tools,
      trustedIssuers: [env.signer.publicKey],
      agentId: 'executor-2',
    });
    const kv = await openBucket(env.client.nc, Buckets.idem);
    // Four keys raced at once, six duplicates each: a race lost by luck on one key is won on another.
    const KEYS = 4;
    const DUPLICATES = 6;
    const races = await Promise.all(
      Array.from({ length: KEYS }, async (_, i) => {
        const call: Call = {
          tool: 'put_value',
          args: { key: `race-${i}`, value: '1' },
          idempotencyKey: `k-race-${i}`,
        };
        const holder = {
          state: 'running',
          tool: call.tool,
          argsHash: hashArgs(call.args),
          runId: 'run-1',
          grantId: 'g-crashed',
          owner: 'executor-dead',
          attemptId: 'try_dead',
          startedAt: Date.now(),
        } as const;
        // A holder alive while the duplicates arrive: they all wait on its claim.
        const revision = await kv.put(
          idempotencyKvKey(call.idempotencyKey),
          encode(IdempotencyRecord, { ...holder, leaseUntil: Date.now() + 60_000 }),
        );
        return { call, holder, revision };
      }),
    );
    const release = t.holdPut();
    const results = Promise.all(
      races.map(({ call }) => {
        const grant = grantFor(env.signer, call);
        return Promise.all(Array.from({ length: DUPLICATES }, () => env.execute(call, grant)));
      }),
    );
    results.catch(() => undefined); // awaited below
    await expect
      .poll(() => env.executor.actor.inFlight + second.actor.inFlight, { timeout: 10_000 })
      .toBe(KEYS * DUPLICATES);
    // The holder's last word is a lease already in the past (it died): one write wakes every
    // duplicate at once, each finds the lease expired, and all try to take it over.
    await Promise.all(
      races.map(({ call, holder, revision }) =>
        kv.update(
          idempotencyKvKey(call.idempotencyKey),
          encode(IdempotencyRecord, { ...holder, leaseUntil: Date.now() - 1 }),
          revision,
        ),
      ),
    );
    await expect.poll(() => t.calls.put, { timeout: 10_000 }).toBeGreaterThanOrEqual(KEYS);
    release();
    const all: ToolResult[][] = await results;

    expect(t.calls.put).toBe(KEYS);
    for (const perKey of all) {
      for (const r of perKey) expect(r).toMatchObject({ ok: true, output: { ok: true } });
      expect(perKey.filter((r) => r.ok && !r.replayed)).toHaveLength(1);
    }
  });

  it('a live lease of another holder makes a duplicate wait, then replay its result', async () => {
    const t = testTools();
    await using env = await setup(t.tools);
    const kv = await openBucket(env.client.nc, Buckets.idem);
    const call: Call = { tool: 'append', args: { line: 'elsewhere' }, idempotencyKey: 'k-live' };
    const key = idempotencyKvKey(call.idempotencyKey);
    const binding = {
      tool: 'append',
      argsHash: hashArgs(call.args),
      runId: 'run-1',
      grantId: 'g-other',
      owner: 'executor-other',
      attemptId: 'try_other',
    };
    const revision = await kv.put(
      key,
      encode(IdempotencyRecord, {
        state: 'running',
        ...binding,
        startedAt: Date.now(),
        leaseUntil: Date.now() + 60_000,
      }),
    );
    const pending = env.execute(call);
    await expect.poll(() => env.executor.actor.inFlight).toBe(1);
    const stored: ToolResult = {
      ok: true,
      tool: 'append',
      idempotencyKey: call.idempotencyKey,
      output: { count: 7 },
      replayed: false,
      durationMs: 3,
    };
    await kv.update(
      key,
      encode(IdempotencyRecord, {
        state: 'done',
        ...binding,
        result: stored,
        finishedAt: Date.now(),
      }),
      revision,
    );
    expect(await pending).toMatchObject({ ok: true, output: { count: 7 }, replayed: true });
    expect(t.calls.append).toBe(0);
  });

  it('a tool that throws or returns invalid output gives a coded failure, stored; the next request works', async () => {
    const t = testTools();
    await using env = await setup(t.tools);
    const boom: Call = { tool: 'boom', args: { n: 1 }, idempotencyKey: 'k-boom' };
    const failed = await env.execute(boom);
    expect(failed).toMatchObject({
      ok: false,
      outcome: 'error',
      error: { code: 'TOOL_FAILED', retryable: false },
    });
    // A failure is stored like a success: the same key gives the same failure, not a re-run.
    expect(await env.execute(boom)).toEqual(failed);
    expect(t.calls.boom).toBe(1);

    const bad = await env.execute({ tool: 'bad_output', args: {}, idempotencyKey: 'k-bad' });
    expect(bad).toMatchObject({ ok: false, outcome: 'error', error: { code: 'TOOL_FAILED' } });
    if (bad.ok) throw new Error('unreachable');
    expect(bad.error.message).toMatch(/invalid output/);

    const ok = await env.execute({
      tool: 'append',
      args: { line: 'after' },
      idempotencyKey: 'k-next',
    });
    expect(ok).toMatchObject({ ok: true, output: { count: 1 } });
    expect(env.executor.actor.status).toBe('running');
  });
});
