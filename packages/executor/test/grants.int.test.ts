import { describe, expect, it } from 'vitest';
import {
  Buckets,
  ConflictError,
  ExecuteRequest,
  GrantInvalidError,
  HaltedError,
  PayloadTooLargeError,
  ProtocolError,
  ReinsError,
  SettleRequest,
  ToolResult,
  TraceEvent,
  UnavailableError,
  canonicalJson,
  createGrantSigner,
  decode,
  encode,
  newId,
  sha256Hex,
} from '@reins/protocol';
import { HaltMarkers, decodeReply, openBucket, payloadHeaders } from '@reins/runtime';
import { Kvm } from '@nats-io/kv';
import { pack } from 'msgpackr';
import { PLANNER, executeRequest, grantFor, setup, testTools, type Call } from './helpers.js';

async function refusal(p: Promise<unknown>): Promise<ReinsError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof ReinsError)) throw new Error(`expected a Reins error, got ${String(err)}`);
  return err;
}

describe('executor: grants', () => {
  it('runs the tool under a valid grant, answers with its output, traces and settles', async () => {
    const t = testTools();
    await using env = await setup(t.tools);
    const settles: SettleRequest[] = [];
    const traces: TraceEvent[] = [];
    env.client.nc.subscribe(env.client.subjects.partition('*').settle, {
      callback: (_e, m) => void settles.push(decode(SettleRequest, m.data)),
    });
    env.client.nc.subscribe(env.client.subjects.trace({ runId: 'run-1' }), {
      callback: (_e, m) => void traces.push(decode(TraceEvent, m.data)),
    });
    await env.client.nc.flush();

    const call: Call = { tool: 'append', args: { line: 'hello' }, idempotencyKey: 'run-1:step-1' };
    const grant = grantFor(env.signer, call);
    const result = await env.execute(call, grant);

    expect(result).toMatchObject({
      ok: true,
      tool: 'append',
      idempotencyKey: 'run-1:step-1',
      output: { count: 1 },
      replayed: false,
    });
    expect(t.lines).toEqual(['hello']);
    await expect.poll(() => settles.length).toBe(1);
    expect(settles[0]).toMatchObject({
      grantId: grant.grantId,
      runId: 'run-1',
      agentId: PLANNER.agentId,
      outcome: 'ok',
      observationHash: sha256Hex(canonicalJson({ count: 1 })),
      actual: { usd: 0, inputTokens: 0, outputTokens: 0, steps: 0 },
    });
    // One trace event per execution by default (`tool.start` only with traceInFlight).
    await expect.poll(() => traces.map((e) => e.event)).toEqual(['tool.end']);
    expect(traces[0]?.data['takeover']).toBe(false);
    expect(traces[0]?.data['timeoutMs']).toBeGreaterThan(0);
    expect(traces[0]).toMatchObject({
      role: 'executor',
      agentId: 'executor-1',
      stepId: 'step-1',
      parentId: 'step-1',
      data: { tool: 'append', idempotencyKey: 'run-1:step-1', replayed: false, outcome: 'ok' },
    });
  });

  it('refuses forged, expired, mismatched, wrong-kind and missing grants without running the tool', async () => {
    const t = testTools();
    await using env = await setup(t.tools);
    const call: Call = { tool: 'append', args: { line: 'x' }, idempotencyKey: 'k-refuse' };
    const { signer: stranger } = createGrantSigner();
    const now = Date.now();
    const cases: [string, ReturnType<typeof grantFor>][] = [
      ['untrusted_issuer', grantFor(stranger, call)],
      ['expired', grantFor(env.signer, call, { issuedAt: now - 10_000, expiresAt: now - 1 })],
      ['mismatch_argsHash', grantFor(env.signer, { ...call, args: { line: 'other' } })],
      ['mismatch_tool', grantFor(env.signer, { ...call, tool: 'put_value' })],
      ['mismatch_runId', grantFor(env.signer, { ...call, runId: 'run-2' })],
      ['mismatch_idempotencyKey', grantFor(env.signer, { ...call, idempotencyKey: 'k-other' })],
      ['mismatch_kind', grantFor(env.signer, call, { kind: 'llm' })],
      ['mismatch_stepId', grantFor(env.signer, call, { stepId: 'step-9' })],
    ];
    // A signature over other bytes: the body was altered after signing.
    const good = grantFor(env.signer, call);
    cases.push(['bad_signature', { ...good, expiresAt: good.expiresAt + 1 }]);
    for (const [reason, grant] of cases) {
      const err = await refusal(env.execute(call, grant));
      expect(err, reason).toBeInstanceOf(GrantInvalidError);
      expect(err.details?.['reason'], reason).toBe(reason);
    }
    // No grant at all.
    const { grant: _none, ...withoutGrant } = executeRequest(call, good);
    const missing = await refusal(
      env.client.request(
        env.client.subjects.exec('append'),
        ExecuteRequest.omit({ grant: true }),
        ToolResult,
        withoutGrant,
      ),
    );
    expect(missing).toBeInstanceOf(GrantInvalidError);
    expect(missing.details?.['reason']).toBe('malformed');
    expect(t.calls.append).toBe(0);

    // A revoked grant is refused; the same request with another grant then runs.
    env.executor.revokeGrant(good.grantId);
    const revoked = await refusal(env.execute(call, good));
    expect(revoked.details?.['reason']).toBe('revoked');
    expect(t.calls.append).toBe(0);
    expect(await env.execute(call)).toMatchObject({ ok: true, output: { count: 1 } });
  });

  it('refuses a grant whose run or agent is halted by a marker, without running the tool', async () => {
    const t = testTools();
    await using env = await setup(t.tools);
    const supervisorSide = await HaltMarkers.load(
      await openBucket(env.client.nc, Buckets.halts),
      env.client.logger,
    );
    const haltedRun = { kind: 'run' as const, runId: 'run-halted' };
    const haltedAgent = { kind: 'agent' as const, agentId: 'planner-bad' };
    for (const scope of [haltedRun, haltedAgent]) {
      await supervisorSide.write({
        haltId: newId('h'),
        scope,
        reason: 'runaway',
        createdAt: Date.now(),
      });
    }
    const executorSide = await env.rt.halts();
    await expect
      .poll(() => executorSide.halted.find({ agentId: 'planner-bad', role: 'planner' }))
      .toBeDefined();
    await expect
      .poll(() => executorSide.halted.find({ agentId: 'x', role: 'x', runId: 'run-halted' }))
      .toBeDefined();

    const onHaltedRun: Call = {
      tool: 'append',
      args: { line: 'a' },
      idempotencyKey: 'k1',
      runId: 'run-halted',
    };
    expect(await refusal(env.execute(onHaltedRun))).toBeInstanceOf(HaltedError);
    const byHaltedAgent: Call = { tool: 'append', args: { line: 'b' }, idempotencyKey: 'k2' };
    const err = await refusal(
      env.execute(byHaltedAgent, grantFor(env.signer, byHaltedAgent, { agentId: 'planner-bad' })),
    );
    expect(err).toBeInstanceOf(HaltedError);
    expect(t.calls.append).toBe(0);

    // The planner that is not halted still gets service.
    expect(await env.execute(byHaltedAgent)).toMatchObject({ ok: true });
  });

  it('refuses malformed, oversized and hostile requests and keeps serving', async () => {
    const t = testTools();
    await using env = await setup(t.tools, {}, { maxPayloadBytes: 64 * 1024 });
    const subject = env.client.subjects.exec('append');
    const raw = async (data: Uint8Array) =>
      refusal(
        env.client.nc
          .request(subject, data, { timeout: 5000, headers: payloadHeaders(ExecuteRequest) })
          .then((m) => decodeReply(m, ToolResult)),
      );

    expect(await raw(new TextEncoder().encode('not msgpack at all'))).toBeInstanceOf(ProtocolError);
    expect(await raw(new Uint8Array(128 * 1024))).toBeInstanceOf(PayloadTooLargeError);
    // A prototype-polluting key inside the arguments.
    const call: Call = { tool: 'append', args: { line: 'x' }, idempotencyKey: 'k-hostile' };
    const req = executeRequest(call, grantFor(env.signer, call));
    const hostile = pack({ ...req, args: JSON.parse('{"__proto__":{"x":1}}') as unknown });
    expect(await raw(hostile)).toBeInstanceOf(ProtocolError);
    // Arguments the tool's schema refuses, under a grant signed for them.
    const badArgs: Call = { tool: 'append', args: { line: 42 }, idempotencyKey: 'k-bad-args' };
    const err = await refusal(env.execute(badArgs));
    expect(err).toBeInstanceOf(ProtocolError);
    expect(err.details?.['tool']).toBe('append');
    // A request naming another tool than the subject it was sent to.
    const mismatch = await raw(encode(ExecuteRequest, { ...req, tool: 'put_value' }));
    expect(mismatch).toBeInstanceOf(ProtocolError);
    expect(mismatch.details?.['field']).toBe('tool');
    expect(t.calls.append).toBe(0);

    expect(
      await env.execute({ tool: 'append', args: { line: 'y' }, idempotencyKey: 'k-ok' }),
    ).toMatchObject({ ok: true, output: { count: 1 } });
  });

  it('answers UNAVAILABLE and runs nothing when the idempotency ledger is gone (fail closed)', async () => {
    const t = testTools();
    await using env = await setup(t.tools);
    const kv = await new Kvm(env.client.nc).open(Buckets.idem);
    await kv.destroy();
    const err = await refusal(
      env.execute({ tool: 'append', args: { line: 'x' }, idempotencyKey: 'k-nokv' }),
    );
    expect(err).toBeInstanceOf(UnavailableError);
    expect(t.calls.append).toBe(0);
  });

  it('same idempotency key with other arguments is a conflict', async () => {
    const t = testTools();
    await using env = await setup(t.tools);
    const first: Call = { tool: 'append', args: { line: 'one' }, idempotencyKey: 'k-same' };
    expect(await env.execute(first)).toMatchObject({ ok: true });
    const err = await refusal(env.execute({ ...first, args: { line: 'two' } }));
    expect(err).toBeInstanceOf(ConflictError);
    expect(err.details?.['reason']).toBe('mismatch_argsHash');
    // The same key for another tool is a conflict too, never a replay of the other tool.
    const other = await refusal(
      env.execute({ tool: 'put_value', args: { key: 'a', value: 'b' }, idempotencyKey: 'k-same' }),
    );
    expect(other).toBeInstanceOf(ConflictError);
    expect(other.details?.['reason']).toBe('mismatch_tool');
    expect(t.lines).toEqual(['one']);
    expect(t.calls).toMatchObject({ append: 1, put: 0 });
  });
});
