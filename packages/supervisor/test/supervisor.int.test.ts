import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { z } from 'zod';
import { pack } from 'msgpackr';
import {
  ActRequest,
  Buckets,
  ControlAck,
  ControlMessage,
  Heartbeat,
  decode,
  encode,
  ApprovalDecision,
  ApprovalDeniedError,
  ApprovalListReply,
  ApprovalListRequest,
  ApprovalPendingError,
  ApprovalRecord,
  AuthorizeRequest,
  BudgetExceededError,
  BudgetReport,
  Decision,
  ExecuteRequest,
  HaltReply,
  HaltRequest,
  HaltedError,
  NotFoundError,
  PolicyDeniedError,
  ProtocolError,
  RunRecord,
  RunListReply,
  RunListRequest,
  RunEndRequest,
  RunStartRequest,
  SettleReply,
  SettleRequest,
  ToolResult,
  createGrantSigner,
  verifyGrant,
  hashArgs,
} from '@reins/protocol';
import { Runtime, createLogger, defineActor, listAgents } from '@reins/runtime';
import { connect } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { readAudit, startSupervisor, verifyAudit, type Supervisor } from '../src/index.js';
import { presenceOf } from './presence-fixture.js';

const quiet = () => createLogger({ level: process.env['REINS_LOG_LEVEL'] ?? 'silent' });
const { signer, seed } = createGrantSigner();

const policy = {
  rules: [
    { id: 'read.any', match: { tool: 'read_*' }, effect: 'allow' as const },
    {
      id: 'pay.small',
      match: { tool: 'pay' },
      effect: 'allow' as const,
      args: [{ path: 'amount', max: 100 }],
    },
    {
      id: 'pay.big',
      match: { tool: 'pay' },
      effect: 'approve' as const,
      args: [{ path: 'amount', min: 100.01 }],
    },
    { id: 'no.delete', match: { tool: 'delete_*' }, effect: 'deny' as const },
    { id: 'echo.any', match: { tool: 'echo' }, effect: 'allow' as const },
  ],
};

describe('supervisor actor', () => {
  let nats: NatsServer;
  const runtimes: Runtime[] = [];
  const supervisors: Supervisor[] = [];
  let client: Runtime;
  let toolCalls = 0;

  beforeAll(async () => {
    nats = await startNatsServer();
    for (let i = 0; i < 3; i++) {
      const rt = await Runtime.connect({ servers: nats.url, logger: quiet(), heartbeatMs: 500 });
      runtimes.push(rt);
      supervisors.push(
        await startSupervisor(rt, {
          agentId: `sv${i}`,
          signer: (await import('@reins/protocol')).grantSignerFromSeed(seed),
          policy,
          leaseMs: 800,
          reaperIntervalMs: 100,
          approvalTimeoutMs: 3000,
          breakers: { repeat: { k: 3, windowMs: 60_000 } },
        }),
      );
    }
    client = await Runtime.connect({
      servers: nats.url,
      logger: quiet(),
      ensureInfrastructure: false,
    });
    // A planner in presence, so that runs of role `planner` are admitted (it takes no tasks:
    // the tests play its part).
    const planner = await Runtime.connect({ servers: nats.url, logger: quiet() });
    runtimes.push(planner);
    await planner.start(defineActor({ role: 'planner', agentId: 'stub-planner', setup() {} }));
    await presenceOf(client, ['stub-planner']);
    // A minimal executor: verifies the grant and echoes.
    const exec = await Runtime.connect({ servers: nats.url, logger: quiet() });
    runtimes.push(exec);
    await exec.start(
      defineActor({
        role: 'executor',
        setup(a) {
          for (const tool of ['echo', 'read_file', 'pay']) {
            a.handle(
              exec.subjects.exec(tool),
              ExecuteRequest,
              (req) => {
                verifyGrant(req.grant, {
                  trustedIssuers: [signer.publicKey],
                  expect: {
                    runId: req.runId,
                    tool: req.tool,
                    argsHash: hashArgs(req.args),
                    idempotencyKey: req.idempotencyKey,
                  },
                });
                toolCalls++;
                return {
                  ok: true as const,
                  tool: req.tool,
                  idempotencyKey: req.idempotencyKey,
                  output: req.args,
                  replayed: false,
                  durationMs: 0,
                };
              },
              { reply: ToolResult, queue: `exec.${tool}` },
            );
          }
        },
      }),
    );
  });

  afterAll(async () => {
    await client.close();
    for (const s of supervisors) await s.stop();
    for (const rt of runtimes) await rt.close();
    await nats.stop();
  });

  const start = (
    budget: z.input<typeof RunStartRequest>['budget'],
    extra: Partial<z.input<typeof RunStartRequest>> = {},
  ) =>
    client.request(client.subjects.runsStart, RunStartRequest, RunRecord, {
      goal: 'test',
      budget,
      ...extra,
    });
  const authorize = (runId: string, usd: number, agentId = 'p1') =>
    client.request(
      client.subjects.authorize(runId),
      AuthorizeRequest,
      Decision,
      {
        runId,
        agentId,
        role: 'planner',
        stepId: 's1',
        kind: 'llm',
        model: 'scripted',
        estimate: { inputTokens: 10, outputTokens: 10, usd },
      },
      { timeoutMs: 30_000 },
    );
  const act = (
    runId: string,
    tool: string,
    args: Record<string, unknown>,
    key = `${runId}:${tool}:${JSON.stringify(args).length}:${Math.random().toString(36).slice(2)}`,
  ) =>
    client.request(client.subjects.act(runId), ActRequest, ToolResult, {
      runId,
      agentId: 'p1',
      role: 'planner',
      stepId: 's1',
      tool,
      args,
      idempotencyKey: key,
    });

  it('admits a run and queues it; unknown runs are refused', async () => {
    const run = await start({ usd: 1, steps: 10 });
    expect(run.status).toBe('queued');
    expect(run.runId).toMatch(/^run_/);
    await expect(
      client.request(client.subjects.runsGet, z.object({ runId: z.string() }), RunRecord, {
        runId: 'nope',
      }),
    ).rejects.toBeInstanceOf(NotFoundError);
    const d = await authorize('nope', 0.01);
    expect(d).toMatchObject({ decision: 'deny', rule: 'run.unknown' });
  });

  it('budget race: cap $1.00, 200 concurrent $0.10 reservations over 3 supervisors → exactly 10 granted; settles add up to the cent', async () => {
    const run = await start({ usd: 1, steps: 1000 });
    const decisions = await Promise.all(
      Array.from({ length: 200 }, () => authorize(run.runId, 0.1)),
    );
    const grants = decisions.filter((d) => d.decision === 'grant');
    expect(grants).toHaveLength(10);
    expect(
      decisions
        .filter((d) => d.decision === 'deny')
        .every((d) => d.decision === 'deny' && d.error.code === 'BUDGET_EXCEEDED'),
    ).toBe(true);
    const issuers = new Set(grants.map((g) => (g.decision === 'grant' ? g.grant.issuer : '')));
    expect(issuers).toEqual(new Set([signer.publicKey]));
    let expected = 0;
    for (const [i, g] of grants.entries()) {
      if (g.decision !== 'grant') continue;
      const usd = Math.round((0.01 + i * 0.007) * 100) / 100;
      expected += usd;
      const r = await client.request(
        client.subjects.settle(run.runId),
        SettleRequest,
        SettleReply,
        {
          grantId: g.grant.grantId,
          runId: run.runId,
          agentId: 'p1',
          actual: { usd, inputTokens: 5, outputTokens: 5, steps: 1 },
        },
      );
      expect(r).toEqual({ settled: true, duplicate: false });
      // settling twice counts once
      expect(
        await client.request(client.subjects.settle(run.runId), SettleRequest, SettleReply, {
          grantId: g.grant.grantId,
          runId: run.runId,
          agentId: 'p1',
          actual: { usd, steps: 1 },
        }),
      ).toMatchObject({ duplicate: true });
    }
    const report = await client.request(
      client.subjects.runsBudget,
      z.object({ runId: z.string() }),
      BudgetReport,
      { runId: run.runId },
    );
    expect(Math.round(report.committed.usd * 100)).toBe(Math.round(expected * 100));
    expect(report.reserved.usd).toBe(0);
    expect(report.committed.steps).toBe(10);
    const listed = await client.request(client.subjects.runsList, RunListRequest, RunListReply, {
      limit: 1000,
    });
    expect(listed.runs.find((r) => r.runId === run.runId)?.used.steps).toBe(10);
  });

  it("refuses a run-scoped request sent to another partition than the run's: its budget is the other owner's", async () => {
    const run = await start({ steps: 5 });
    const other = (client.subjects.partitionOf(run.runId) + 1) % client.subjects.partitions;
    const d = await client.request(
      client.subjects.partition(other).authorize,
      AuthorizeRequest,
      Decision,
      {
        runId: run.runId,
        agentId: 'p1',
        role: 'planner',
        stepId: 's1',
        kind: 'llm',
        model: 'scripted',
        estimate: { inputTokens: 10, outputTokens: 10, usd: 0 },
      },
      { timeoutMs: 30_000 },
    );
    expect(d).toMatchObject({ decision: 'deny', rule: 'run.partition' });
    // Nothing was reserved or spent: the run's own partition grants all of its 5 steps.
    for (let i = 0; i < 5; i++) expect((await authorize(run.runId, 0)).decision).toBe('grant');
    expect((await authorize(run.runId, 0)).decision).toBe('deny');
  });

  it('step cap: a run with budget.steps = N gets exactly N model-call grants', async () => {
    const run = await start({ steps: 4 });
    const results: string[] = [];
    for (let i = 0; i < 6; i++) results.push((await authorize(run.runId, 0)).decision);
    expect(results).toEqual(['grant', 'grant', 'grant', 'grant', 'deny', 'deny']);
  });

  it('charges a reservation whose holder never settles once its lease ends; a late settle corrects it', async () => {
    const run = await start({ usd: 0.5 });
    const first = await authorize(run.runId, 0.5);
    if (first.decision !== 'grant') throw new Error('expected a grant');
    expect((await authorize(run.runId, 0.1)).decision).toBe('deny');
    await expect
      .poll(
        async () =>
          (
            await client.request(
              client.subjects.runsBudget,
              z.object({ runId: z.string() }),
              BudgetReport,
              { runId: run.runId },
            )
          ).reserved.usd,
        { timeout: 10_000, interval: 100 },
      )
      .toBe(0);
    // Charged in full (the call may have been made): still nothing fits.
    expect((await authorize(run.runId, 0.1)).decision).toBe('deny');
    // The holder's settle arrives after all: the run is charged what it spent.
    const settled = await client.request(
      client.subjects.settle(run.runId),
      SettleRequest,
      SettleReply,
      {
        grantId: first.grant.grantId,
        runId: run.runId,
        agentId: 'p1',
        actual: { inputTokens: 10, outputTokens: 10, usd: 0.2, steps: 1 },
        outcome: 'ok',
      },
    );
    expect(settled).toMatchObject({ settled: true, duplicate: false });
    expect((await authorize(run.runId, 0.1)).decision).toBe('grant');
  });

  it("a model call's settle rides on the step's tool call: counted once, before the call is decided", async () => {
    const run = await start({ usd: 1, steps: 10 });
    const g = await authorize(run.runId, 0.3);
    if (g.decision !== 'grant') throw new Error('no grant');
    const settle = {
      grantId: g.grant.grantId,
      runId: run.runId,
      agentId: 'p1',
      actual: { inputTokens: 5, outputTokens: 7, usd: 0.02, steps: 1 },
    };
    const call = (extra: Record<string, unknown>) =>
      client.request(client.subjects.act(run.runId), ActRequest, ToolResult, {
        runId: run.runId,
        agentId: 'p1',
        role: 'planner',
        stepId: 's1',
        tool: 'read_file',
        args: { path: 'a.txt' },
        idempotencyKey: `${run.runId}:carry:${Math.random().toString(36).slice(2)}`,
        ...extra,
      });
    expect(await call({ settle })).toMatchObject({ ok: true });
    const budget = () =>
      client.request(client.subjects.runsBudget, z.object({ runId: z.string() }), BudgetReport, {
        runId: run.runId,
      });
    expect(await budget()).toMatchObject({
      committed: { usd: 0.02, steps: 1, inputTokens: 5, outputTokens: 7 },
      reserved: { usd: 0, steps: 0 },
    });
    // Again (a retried step): counted once.
    expect(await call({ settle })).toMatchObject({ ok: true });
    expect((await budget()).committed.usd).toBe(0.02);
    // A settle of another run cannot ride on this run's call.
    const other = await start({ usd: 1, steps: 10 });
    const err = await call({ settle: { ...settle, runId: other.runId } }).catch((e: unknown) => e);
    expect(err, String(err)).toBeInstanceOf(ProtocolError);
  });

  it('forwards allowed tool calls to an executor with a signed grant; denies by policy with the rule', async () => {
    const run = await start({ steps: 10 });
    const before = toolCalls;
    const res = await act(run.runId, 'read_file', { path: 'a.txt' });
    expect(res).toMatchObject({ ok: true, output: { path: 'a.txt' } });
    expect(await act(run.runId, 'pay', { amount: 5 })).toMatchObject({ ok: true });
    const cases: [string, string][] = [
      ['delete_everything', 'no.delete'],
      ['launch_missiles', 'default.deny'],
    ];
    for (const [tool, rule] of cases) {
      const err = await act(run.runId, tool, {}).catch((e: unknown) => e);
      expect(err, tool).toBeInstanceOf(PolicyDeniedError);
      expect((err as PolicyDeniedError).details, tool).toMatchObject({ rule, effect: 'deny' });
    }
    // Homoglyphs of an allowed tool (Cyrillic а; Cyrillic і, which `read_*` would match), sent
    // past the client's own schema check as a hostile planner would: refused as malformed
    // before any rule is consulted, never forwarded.
    for (const [i, tool] of ['reаd_file', 'read_fіle'].entries()) {
      const err = await client
        .request(client.subjects.act(run.runId), z.unknown(), ToolResult, {
          runId: run.runId,
          agentId: 'p1',
          role: 'planner',
          stepId: 's1',
          tool,
          args: { path: 'a' },
          idempotencyKey: `${run.runId}:homoglyph:${i}`,
        })
        .catch((e: unknown) => e);
      expect(err, tool).toBeInstanceOf(ProtocolError);
      expect(err, tool).toMatchObject({
        code: 'BAD_REQUEST',
        details: { issues: [{ path: ['tool'] }] },
      });
    }
    // approval-required: not denied, not run — pending a human
    await expect(act(run.runId, 'pay', { amount: 500 })).rejects.toBeInstanceOf(
      ApprovalPendingError,
    );
    expect(toolCalls - before).toBe(2);
  });

  it('approval-required actions wait for a human, bind to their arguments, and time out', async () => {
    const run = await start({ steps: 20 });
    const key = `${run.runId}.1.0`;
    const pending = await act(run.runId, 'pay', { amount: 500 }, key).catch((e: unknown) => e);
    expect(pending).toBeInstanceOf(ApprovalPendingError);
    const approvalId = (pending as ApprovalPendingError).details?.['approvalId'] as string;
    const list = await client.request(
      client.subjects.approvalsList,
      ApprovalListRequest,
      ApprovalListReply,
      { runId: run.runId },
    );
    expect(list.approvals).toHaveLength(1);
    expect(list.approvals[0]).toMatchObject({
      approvalId,
      tool: 'pay',
      status: 'pending',
      args: { amount: 500 },
    });
    // still pending on retry; nothing ran
    const before = toolCalls;
    await expect(act(run.runId, 'pay', { amount: 500 }, key)).rejects.toBeInstanceOf(
      ApprovalPendingError,
    );
    // a decision for other arguments is refused
    await expect(
      client.request(client.subjects.ctlApprove, ApprovalDecision, ApprovalRecord, {
        approvalId,
        decision: 'approve',
        argsHash: hashArgs({ amount: 5000 }),
        by: 'mallory',
      }),
    ).rejects.toBeInstanceOf(PolicyDeniedError);
    const approved = await client.request(
      client.subjects.ctlApprove,
      ApprovalDecision,
      ApprovalRecord,
      {
        approvalId,
        decision: 'approve',
        argsHash: hashArgs({ amount: 500 }),
        by: 'alice',
        reason: 'ok',
      },
    );
    expect(approved).toMatchObject({ status: 'approved', decidedBy: 'alice' });
    // the approval cannot be replayed for other arguments under the same key
    await expect(act(run.runId, 'pay', { amount: 900 }, key)).rejects.toBeInstanceOf(
      PolicyDeniedError,
    );
    expect(await act(run.runId, 'pay', { amount: 500 }, key)).toMatchObject({
      ok: true,
      output: { amount: 500 },
    });
    expect(toolCalls - before).toBe(1);

    // denied
    const key2 = `${run.runId}.2.0`;
    const p2 = (await act(run.runId, 'pay', { amount: 200 }, key2).catch(
      (e: unknown) => e,
    )) as ApprovalPendingError;
    await client.request(client.subjects.ctlApprove, ApprovalDecision, ApprovalRecord, {
      approvalId: p2.details?.['approvalId'] as string,
      decision: 'deny',
      argsHash: hashArgs({ amount: 200 }),
      by: 'bob',
      reason: 'too much',
    });
    await expect(act(run.runId, 'pay', { amount: 200 }, key2)).rejects.toBeInstanceOf(
      ApprovalDeniedError,
    );

    // timed out (approvalTimeoutMs 3 s in this suite)
    const key3 = `${run.runId}.3.0`;
    await expect(act(run.runId, 'pay', { amount: 300 }, key3)).rejects.toBeInstanceOf(
      ApprovalPendingError,
    );
    await expect
      .poll(
        async () =>
          act(run.runId, 'pay', { amount: 300 }, key3).catch((e: unknown) => (e as Error).name),
        { timeout: 10_000, interval: 250 },
      )
      .toBe('ApprovalTimeoutError');
  });

  it('no-progress breaker: tool results that bring nothing new stop the run', async () => {
    const run = await start({ steps: 50 });
    const hash = 'a'.repeat(64);
    const settle = (i: number) =>
      client.request(client.subjects.settle(run.runId), SettleRequest, SettleReply, {
        grantId: `tool-grant-${run.runId.slice(-12)}-${i}`,
        runId: run.runId,
        agentId: 'exec-1',
        actual: { usd: 0 },
        outcome: 'ok',
        observationHash: hash,
      });
    // The first observation is new; the next 8 (the default) in a row bring nothing new.
    for (let i = 0; i < 9; i++) await settle(i);
    await expect
      .poll(
        async () =>
          (
            await client.request(
              client.subjects.runsGet,
              z.object({ runId: z.string() }),
              RunRecord,
              { runId: run.runId },
            )
          ).stopReason,
        { timeout: 5000 },
      )
      .toBe('BREAKER');
  });

  it('repeat breaker trips at exactly K identical calls and stops the run', async () => {
    const run = await start({ steps: 10 });
    expect(await act(run.runId, 'echo', { same: 1 })).toMatchObject({ ok: true });
    expect(await act(run.runId, 'echo', { same: 1 })).toMatchObject({ ok: true });
    await expect(act(run.runId, 'echo', { same: 1 })).rejects.toBeInstanceOf(HaltedError);
    const rec = await client.request(
      client.subjects.runsGet,
      z.object({ runId: z.string() }),
      RunRecord,
      { runId: run.runId },
    );
    expect(rec).toMatchObject({ status: 'stopped', stopReason: 'BREAKER' });
    expect((await authorize(run.runId, 0)).decision).toBe('deny');
  });

  it('a run ended through one supervisor is refused by every supervisor well within a second', async () => {
    const run = await start({ steps: 1000 });
    // Every supervisor (queue group: requests spread over all three) caches the live record.
    const before = await Promise.all(Array.from({ length: 30 }, () => authorize(run.runId, 0)));
    expect(before.every((d) => d.decision === 'grant')).toBe(true);
    const started = Date.now();
    await client.request(client.subjects.runsEnd, RunEndRequest, RunRecord, {
      runId: run.runId,
      agentId: 'p1',
      status: 'completed',
      answer: 'done',
    });
    await expect
      .poll(
        async () => {
          const ds = await Promise.all(Array.from({ length: 30 }, () => authorize(run.runId, 0)));
          return ds.every((d) => d.decision === 'deny' && d.rule === 'run.not_live');
        },
        { timeout: 500, interval: 5 },
      )
      .toBe(true);
    expect(Date.now() - started).toBeLessThan(500);
    await expect(act(run.runId, 'echo', { after: 'end' })).rejects.toBeInstanceOf(HaltedError);
  });

  it('fences an agent that does not acknowledge a halt: its grants are refused until resumed', async () => {
    const run = await start({ steps: 10 });
    // A silent agent: present (heartbeat in KV, working on the run) but deaf to control messages.
    const now = Date.now();
    const kv = await new Kvm(client.nc).open(Buckets.agents);
    await kv.put(
      'ghost-1',
      encode(Heartbeat, {
        agentId: 'ghost-1',
        role: 'planner',
        status: 'running',
        inFlight: 1,
        runs: [run.runId],
        memory: { rss: 1, heapUsed: 1 },
        version: 'x',
        ts: now,
        intervalMs: 1000,
        expiresAt: now + 60_000,
      }),
    );
    expect((await authorize(run.runId, 0, 'ghost-1')).decision).toBe('grant');
    const reply = await client.request(client.subjects.ctlHalt, HaltRequest, HaltReply, {
      scope: { kind: 'run', runId: run.runId },
      reason: 'stop',
      deadlineMs: 300,
    });
    expect(reply.missing).toEqual(['ghost-1']);
    await client.request(client.subjects.ctlResume, HaltRequest, HaltReply, {
      scope: { kind: 'run', runId: run.runId },
      reason: 'go',
      deadlineMs: 300,
    });
    // The run is resumed, but the fenced agent stays refused; other agents are granted.
    await expect
      .poll(async () => (await authorize(run.runId, 0, 'p1')).decision, { timeout: 5000 })
      .toBe('grant');
    expect(await authorize(run.runId, 0, 'ghost-1')).toMatchObject({
      decision: 'deny',
      error: { code: 'HALTED' },
    });
    await client.request(client.subjects.ctlResume, HaltRequest, HaltReply, {
      scope: { kind: 'agent', agentId: 'ghost-1' },
      reason: 'checked',
      deadlineMs: 300,
    });
    await expect
      .poll(async () => (await authorize(run.runId, 0, 'ghost-1')).decision, { timeout: 5000 })
      .toBe('grant');
    await kv.delete('ghost-1');
  });

  it('a halt waits for the acks of the agents it expects: unlisted responders acking first do not stand in', async () => {
    const role = 'ackers';
    const agentsRt = await Runtime.connect({
      servers: nats.url,
      logger: quiet(),
      heartbeatMs: 500,
    });
    runtimes.push(agentsRt);
    const n = 50;
    for (let i = 0; i < n; i++) await agentsRt.start(defineActor({ role, agentId: `acker-${i}` }));
    // Unlisted responders (no presence) that ack at once, before the real agents can: with a
    // count of acks, ten of them would make the halt answer ten real agents short (and fence them).
    const ghost = await connect({ servers: nats.url, noAsyncTraces: true });
    ghost.subscribe(client.subjects.ctlBcast({ kind: 'role', role }), {
      callback: (_e, m) => {
        const ctl = decode(ControlMessage, m.data);
        for (let i = 0; i < 10; i++) {
          ghost.publish(
            m.reply ?? '',
            encode(ControlAck, {
              id: ctl.id,
              agentId: `unlisted-${i}`,
              role,
              type: ctl.type,
              aborted: 0,
              stillRunning: 0,
            }),
          );
        }
      },
    });
    await ghost.flush();
    await expect
      .poll(
        async () =>
          (await listAgents(client)).filter((a) => a.role === role && a.status === 'running')
            .length,
        { timeout: 5000 },
      )
      .toBe(n);
    const reply = await client.request(client.subjects.ctlHalt, HaltRequest, HaltReply, {
      scope: { kind: 'role', role },
      reason: 'stop',
      deadlineMs: 2000,
    });
    expect(reply.missing).toEqual([]);
    for (let i = 0; i < n; i++) expect(reply.acked).toContain(`acker-${i}`);
    await client.request(client.subjects.ctlResume, HaltRequest, HaltReply, {
      scope: { kind: 'role', role },
      reason: 'go',
      deadlineMs: 300,
    });
    // Nobody was fenced: every agent takes work again.
    await expect
      .poll(
        async () => (await authorize((await start({ steps: 2 })).runId, 0, 'acker-49')).decision,
      )
      .toBe('grant');
    await ghost.close();
  });

  it('halt refuses grants for the run from that moment; resume grants again', async () => {
    const run = await start({ steps: 10 });
    expect((await authorize(run.runId, 0)).decision).toBe('grant');
    const halt = await client.request(client.subjects.ctlHalt, HaltRequest, HaltReply, {
      scope: { kind: 'run', runId: run.runId },
      reason: 'stop it',
      deadlineMs: 300,
    });
    expect(halt.haltId).toMatch(/^h_/);
    expect(await authorize(run.runId, 0)).toMatchObject({
      decision: 'deny',
      error: { code: 'HALTED' },
    });
    await expect(act(run.runId, 'echo', { x: 1 })).rejects.toBeInstanceOf(HaltedError);
    await client.request(client.subjects.ctlResume, HaltRequest, HaltReply, {
      scope: { kind: 'run', runId: run.runId },
      reason: 'go on',
      deadlineMs: 300,
    });
    await expect
      .poll(async () => (await authorize(run.runId, 0)).decision, { timeout: 5000 })
      .toBe('grant');
  });

  it('control commands for an unknown run, agent or role are NOT_FOUND and leave no marker; resume says whether it lifted anything', async () => {
    const control = (subject: string, scope: HaltRequest['scope']) =>
      client.request(subject, HaltRequest, HaltReply, { scope, reason: 'x', deadlineMs: 300 });
    const kv = await new Kvm(client.nc).open(Buckets.halts);
    for (const subject of [
      client.subjects.ctlHalt,
      client.subjects.ctlResume,
      client.subjects.ctlPause,
    ]) {
      for (const scope of [
        { kind: 'run', runId: 'run_doesnotexist' },
        { kind: 'agent', agentId: 'agent_nobody' },
        { kind: 'role', role: 'role_nobody_serves' },
      ] as const) {
        const err = await control(subject, scope).catch((e: unknown) => e);
        expect(err, `${subject} ${JSON.stringify(scope)}`).toBeInstanceOf(NotFoundError);
        expect((err as NotFoundError).details?.['scope']).toEqual(scope);
      }
    }
    expect(await kv.get('run.run_doesnotexist')).toBeNull();
    expect(await kv.get('role.role_nobody_serves')).toBeNull();

    const run = await start({ steps: 10 });
    const scope = { kind: 'run', runId: run.runId } as const;
    expect((await control(client.subjects.ctlResume, scope)).lifted).toBe(false);
    await control(client.subjects.ctlHalt, scope);
    expect((await control(client.subjects.ctlResume, scope)).lifted).toBe(true);
    expect((await control(client.subjects.ctlResume, scope)).lifted).toBe(false);
    // `all` always exists; with no halt in force, resuming it lifts nothing.
    expect((await control(client.subjects.ctlResume, { kind: 'all' })).lifted).toBe(false);
  });

  it('a child run is carved out of its parent and cannot exceed it', async () => {
    const parent = await start({ usd: 1, steps: 100 });
    await expect(start({ usd: 2 }, { parentRunId: parent.runId })).rejects.toBeInstanceOf(
      BudgetExceededError,
    );
    const child = await start({ usd: 0.6 }, { parentRunId: parent.runId });
    expect(child.budget.usd).toBe(0.6);
    expect(child.budget.steps).toBeLessThanOrEqual(100);
    expect((await authorize(parent.runId, 0.5)).decision).toBe('deny'); // only 0.4 left in the parent
    expect((await authorize(child.runId, 0.6)).decision).toBe('grant');
    expect((await authorize(child.runId, 0.01)).decision).toBe('deny');
  });

  it('never grants on hostile input to any supervisor subject, and keeps serving', async () => {
    const subjects = [
      client.subjects.runsStart,
      client.subjects.runsGet,
      client.subjects.runsList,
      client.subjects.runsBudget,
      client.subjects.runsEnd,
      client.subjects.authorize('r1'),
      client.subjects.settle('r1'),
      client.subjects.act('r1'),
      client.subjects.ctlHalt,
      client.subjects.ctlResume,
      client.subjects.ctlPause,
    ];
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...subjects),
        fc.oneof(
          fc.uint8Array({ maxLength: 300 }),
          fc.anything().map((v) => {
            try {
              return pack(v);
            } catch {
              return new Uint8Array([0xc1]);
            }
          }),
        ),
        async (subject, bytes) => {
          const reply = await client.nc.request(subject, bytes, { timeout: 5000 });
          // An empty map is a valid `runs.list` (all defaults); anything else must be refused.
          if (reply.headers?.get('Reins-Error') !== '1')
            expect(subject).toBe(client.subjects.runsList);
        },
      ),
      { numRuns: 150 },
    );
    // well-typed but hostile values
    const hostile = [
      {
        runId: '../../etc',
        agentId: 'p',
        role: 'planner',
        stepId: 's',
        kind: 'llm',
        model: 'm',
        estimate: { inputTokens: 1, outputTokens: 1, usd: NaN },
      },
      {
        runId: 'r',
        agentId: 'p',
        role: 'planner',
        stepId: 's',
        kind: 'llm',
        model: 'm',
        estimate: { inputTokens: -1, outputTokens: 1, usd: 0 },
      },
      JSON.parse(
        '{"runId":"r","agentId":"p","role":"planner","stepId":"s","kind":"llm","model":"m","estimate":{"inputTokens":1,"outputTokens":1,"usd":0},"__proto__":{"decision":"grant"}}',
      ),
    ];
    for (const h of hostile) {
      const reply = await client.nc.request(client.subjects.authorize('r1'), pack(h), {
        timeout: 5000,
      });
      expect(reply.headers?.get('Reins-Error')).toBe('1');
    }
    const run = await start({ steps: 2 });
    expect((await authorize(run.runId, 0)).decision).toBe('grant');
  });

  it('audits every decision in hash chains that verify', async () => {
    const entries = [];
    for await (const e of readAudit(client.nc)) entries.push(e);
    expect(entries.length).toBeGreaterThan(30);
    // Each supervisor's own chain (admission, halts, approvals) and one chain per run
    // partition (run-scoped decisions, by whichever supervisor owned the partition).
    const writers = new Set(entries.map((e) => e.writer));
    for (const w of ['sv0', 'sv1', 'sv2']) expect(writers, w).toContain(w);
    const partitions = [...writers].filter((w) => /^part-\d+$/.test(w));
    expect(partitions.length).toBe(client.subjects.partitions);
    for (const w of partitions) {
      const first = entries.find((e) => e.writer === w);
      expect(first?.action, `${w} starts with its first owner's takeover`).toBe(
        'partition.acquire',
      );
    }
    const actions = new Set(entries.map((e) => e.action));
    for (const a of ['admit', 'grant', 'deny', 'halt', 'resume', 'breaker', 'reap'])
      expect(actions, a).toContain(a);
    // Settles ride on the run's next record (or a carrier record of their own).
    const settled = entries.flatMap((e) => {
      const carried = e.details['carried'] as { settles?: unknown[] } | undefined;
      return carried?.settles ?? [];
    });
    expect(settled.length).toBeGreaterThan(0);
    expect(await verifyAudit(client.nc)).toMatchObject({ ok: true });
  });
});
