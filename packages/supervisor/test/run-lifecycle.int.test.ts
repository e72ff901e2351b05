// The run lifecycle table of docs/design.md, row by row, against real supervisors: every way a
// run ends writes the terminal record once, returns a child's carve to its parent, audits
// `run.end` and emits the `run.end` trace; what does not end a run leaves the carve held.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jetstreamManager } from '@nats-io/jetstream';
import { z } from 'zod';
import {
  ActRequest,
  ApprovalDecision,
  ApprovalDeniedError,
  ApprovalPendingError,
  ApprovalRecord,
  AuthorizeRequest,
  BudgetReport,
  Decision,
  ExecuteRequest,
  HaltReply,
  HaltRequest,
  HaltedError,
  NoPlannerError,
  RunEndRequest,
  RunRecord,
  RunStartRequest,
  SettleReply,
  SettleRequest,
  Streams,
  Task,
  ToolResult,
  createGrantSigner,
  decode,
  grantSignerFromSeed,
  hashArgs,
  type TraceEvent,
} from '@reins/protocol';
import {
  Runtime,
  createLogger,
  defineActor,
  subscribeTraces,
  type TraceSubscription,
} from '@reins/runtime';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { readAudit, startSupervisor, type Supervisor } from '../src/index.js';
import { presenceOf } from './presence-fixture.js';

const quiet = () => createLogger({ level: process.env['REINS_LOG_LEVEL'] ?? 'silent' });
const { seed } = createGrantSigner();

describe('run lifecycle: one way to end a run', () => {
  let nats: NatsServer;
  const runtimes: Runtime[] = [];
  const supervisors: Supervisor[] = [];
  let client: Runtime;
  const traces: TraceSubscription[] = [];

  beforeAll(async () => {
    nats = await startNatsServer();
    for (let i = 0; i < 2; i++) {
      const rt = await Runtime.connect({ servers: nats.url, logger: quiet(), heartbeatMs: 500 });
      runtimes.push(rt);
      supervisors.push(
        await startSupervisor(rt, {
          agentId: `lc-sv${i}`,
          signer: grantSignerFromSeed(seed),
          policy: {
            rules: [
              { id: 'echo', match: { tool: 'echo' }, effect: 'allow' },
              { id: 'pay', match: { tool: 'pay' }, effect: 'approve' },
            ],
          },
          breakers: { repeat: { k: 3, windowMs: 60_000 } },
        }),
      );
    }
    client = await Runtime.connect({ servers: nats.url, logger: quiet() });
    // A planner in presence (it takes no tasks: the test plays its part) and an echo executor.
    const agents = await Runtime.connect({ servers: nats.url, logger: quiet(), heartbeatMs: 500 });
    runtimes.push(agents);
    await agents.start(defineActor({ role: 'planner', agentId: 'lc-planner', setup() {} }));
    await agents.start(
      defineActor({
        role: 'executor',
        agentId: 'lc-exec',
        setup(a) {
          a.handle(
            agents.subjects.exec('echo'),
            ExecuteRequest,
            (req) => ({
              ok: true as const,
              tool: req.tool,
              idempotencyKey: req.idempotencyKey,
              output: req.args,
              replayed: false,
              durationMs: 0,
            }),
            { reply: ToolResult, queue: 'exec.echo' },
          );
        },
      }),
    );
    await presenceOf(client, ['lc-planner', 'lc-exec']);
  });

  afterAll(async () => {
    for (const t of traces) await t.stop();
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
      goal: 'lifecycle',
      budget,
      ...extra,
    });
  const get = (runId: string) =>
    client.request(client.subjects.runsGet, z.object({ runId: z.string() }), RunRecord, {
      runId,
    });
  const budgetOf = (runId: string) =>
    client.request(client.subjects.runsBudget, z.object({ runId: z.string() }), BudgetReport, {
      runId,
    });
  const authorize = (runId: string, usd: number) =>
    client.request(client.subjects.authorize(runId), AuthorizeRequest, Decision, {
      runId,
      agentId: 'lc-planner',
      role: 'planner',
      stepId: 's1',
      kind: 'llm',
      model: 'scripted',
      estimate: { inputTokens: 10, outputTokens: 10, usd },
    });
  const settle = (
    runId: string,
    grantId: string,
    usd: number,
    extra: Partial<z.input<typeof SettleRequest>> = {},
  ) =>
    client.request(client.subjects.settle(runId), SettleRequest, SettleReply, {
      grantId,
      runId,
      agentId: 'lc-planner',
      actual: { usd, inputTokens: 5, outputTokens: 5, steps: 1 },
      ...extra,
    });
  const act = (runId: string, tool: string, args: Record<string, unknown>, key: string) =>
    client.request(client.subjects.act(runId), ActRequest, ToolResult, {
      runId,
      agentId: 'lc-planner',
      role: 'planner',
      stepId: 's1',
      tool,
      args,
      idempotencyKey: key,
    });
  const end = (runId: string, body: Omit<z.input<typeof RunEndRequest>, 'runId' | 'agentId'>) =>
    client.request(client.subjects.runsEnd, RunEndRequest, RunRecord, {
      runId,
      agentId: 'lc-planner',
      ...body,
    });
  const control = (subject: string, scope: HaltRequest['scope'], reason = 'test') =>
    client.request(subject, HaltRequest, HaltReply, { scope, reason, deadlineMs: 300 });
  const auditOf = async (runId: string, action: string) => {
    const out = [];
    for await (const e of readAudit(client.nc)) {
      if (e.runId === runId && e.action === action) out.push(e);
    }
    return out;
  };
  /** Collects the run's trace events from the start of the stream. */
  const traceOf = async (runId: string) => {
    const events: TraceEvent[] = [];
    traces.push(await subscribeTraces(client, { runId }, { callback: (e) => events.push(e) }));
    return events;
  };
  /** The last task queued for role `planner`, if any. */
  const lastPlannerTask = async (): Promise<Task | undefined> => {
    const jsm = await jetstreamManager(client.nc);
    const m = await jsm.streams
      .getMessage(Streams.tasks, { last_by_subj: client.subjects.task('planner') })
      .catch(() => null);
    return m ? decode(Task, m.data, { name: 'task' }) : undefined;
  };

  /** A parent with $1 and 100 steps, and a child carved out of it with $0.60. */
  const family = async (childBudget: z.input<typeof RunStartRequest>['budget'] = {}) => {
    const parent = await start({ usd: 1, steps: 100 });
    const child = await start({ usd: 0.6, ...childBudget }, { parentRunId: parent.runId });
    const held = await budgetOf(parent.runId);
    expect(held.reserved.usd).toBeCloseTo(0.6, 6);
    expect(held.reserved.steps).toBe(100);
    return { parent, child };
  };

  /** The child spends $0.10 (one step), so that what it used is committed on the parent. */
  const spend = async (runId: string) => {
    const d = await authorize(runId, 0.1);
    if (d.decision !== 'grant') throw new Error(`expected a grant, got ${JSON.stringify(d)}`);
    await settle(runId, d.grant.grantId, 0.1);
    return 0.1;
  };

  const endings: {
    name: string;
    /** The child's budget beyond its $0.60 (e.g. a wall time). */
    budget?: z.input<typeof RunStartRequest>['budget'];
    /** Ends the child; returns what the child spent before. */
    end: (child: RunRecord) => Promise<number>;
    expected: Partial<RunRecord>;
  }[] = [
    {
      name: 'completed (runs.end)',
      end: async (c) => {
        const spent = await spend(c.runId);
        await end(c.runId, { status: 'completed', answer: 'done' });
        return spent;
      },
      expected: { status: 'completed', answer: 'done' },
    },
    {
      name: 'failed (runs.end)',
      end: async (c) => {
        const spent = await spend(c.runId);
        await end(c.runId, {
          status: 'failed',
          stopReason: 'ERROR',
          error: { code: 'MODEL_ERROR', message: 'boom', retryable: false },
        });
        return spent;
      },
      expected: { status: 'failed', stopReason: 'ERROR' },
    },
    {
      name: 'budget: the planner reports a refused reservation (runs.end)',
      end: async (c) => {
        const spent = await spend(c.runId);
        expect((await authorize(c.runId, 0.55)).decision).toBe('deny');
        await end(c.runId, { status: 'stopped', stopReason: 'BUDGET_EXCEEDED' });
        return spent;
      },
      expected: { status: 'stopped', stopReason: 'BUDGET_EXCEEDED' },
    },
    {
      name: 'breaker: repeated tool calls (sv.act)',
      end: async (c) => {
        const spent = await spend(c.runId);
        for (let i = 0; i < 2; i++) await act(c.runId, 'echo', { same: 1 }, `${c.runId}-${i}`);
        await expect(act(c.runId, 'echo', { same: 1 }, `${c.runId}-2`)).rejects.toBeInstanceOf(
          HaltedError,
        );
        return spent;
      },
      expected: { status: 'stopped', stopReason: 'BREAKER' },
    },
    {
      name: 'breaker: no progress (sv.settle)',
      end: async (c) => {
        const spent = await spend(c.runId);
        // The first observation is new; the next 8 (the default) in a row bring nothing new.
        for (let i = 0; i < 9; i++)
          await settle(c.runId, `tool-${c.runId.slice(-12)}-${i}`, 0, {
            actual: { usd: 0 },
            observationHash: 'b'.repeat(64),
          });
        return spent;
      },
      expected: { status: 'stopped', stopReason: 'BREAKER' },
    },
    {
      name: 'wall time (sv.authorize)',
      budget: { wallMs: 1 },
      end: async (c) => {
        // Its wall time is over at the first request: it never spends.
        await expect
          .poll(async () => authorize(c.runId, 0.1), { timeout: 5_000 })
          .toMatchObject({ decision: 'deny', rule: 'budget.wall_time' });
        return 0;
      },
      expected: { status: 'stopped', stopReason: 'WALL_TIME' },
    },
  ];

  for (const ending of endings) {
    it(`a delegated child ended by ${ending.name}: recorded once, its carve returns, the parent spends the rest`, async () => {
      const { parent, child } = await family(ending.budget);
      const childTrace = await traceOf(child.runId);
      const spent = await ending.end(child);

      expect(await get(child.runId)).toMatchObject(ending.expected);
      const after = await budgetOf(parent.runId);
      expect(after.reserved).toEqual({ usd: 0, inputTokens: 0, outputTokens: 0, steps: 0 });
      expect(after.committed.usd).toBeCloseTo(spent, 6);
      // The parent can spend the rest of its cap, and no more.
      const rest = Math.round((1 - spent) * 100) / 100;
      expect(await authorize(parent.runId, rest)).toMatchObject({ decision: 'grant' });
      expect(await authorize(parent.runId, 0.01)).toMatchObject({ decision: 'deny' });

      // A second end (the planner reporting after the supervisor stopped it) changes nothing.
      const again = await end(child.runId, { status: 'completed', answer: 'late' });
      expect(again).toMatchObject(ending.expected);
      expect(await auditOf(child.runId, 'run.end')).toHaveLength(1);
      const releases = (await auditOf(parent.runId, 'release')).filter(
        (e) => e.details?.['child'] === child.runId,
      );
      expect(releases).toHaveLength(1);
      await expect
        .poll(() => childTrace.filter((e) => e.event === 'run.end').map((e) => e.data['status']), {
          timeout: 5_000,
        })
        .toEqual([ending.expected.status]);
    });
  }

  it('two ends at once through two supervisors: one wins, both answer with its record', async () => {
    for (let i = 0; i < 5; i++) {
      const run = await start({ steps: 10 });
      const [a, b] = await Promise.all([
        end(run.runId, { status: 'completed', answer: 'first' }),
        end(run.runId, { status: 'failed', stopReason: 'ERROR' }),
      ]);
      expect(a).toEqual(b);
      expect(await auditOf(run.runId, 'run.end')).toHaveLength(1);
    }
  });

  it('a halt does not end a run: the carve stays held; resume runs it again', async () => {
    const { parent, child } = await family();
    await control(client.subjects.ctlHalt, { kind: 'run', runId: child.runId });
    expect(await get(child.runId)).toMatchObject({ status: 'halted' });
    expect((await budgetOf(parent.runId)).reserved.usd).toBeCloseTo(0.6, 6);
    expect(await auditOf(child.runId, 'run.end')).toHaveLength(0);
    await control(client.subjects.ctlResume, { kind: 'run', runId: child.runId });
    expect(await get(child.runId)).toMatchObject({ status: 'running' });
  });

  it('a denied approval does not end a run: the model is told, the carve stays held', async () => {
    const { parent, child } = await family();
    await spend(child.runId); // running: a pending approval suspends a run that runs
    const key = `${child.runId}-pay`;
    const pending = await act(child.runId, 'pay', { amount: 1 }, key).catch((e: unknown) => e);
    expect(pending).toBeInstanceOf(ApprovalPendingError);
    expect(await get(child.runId)).toMatchObject({ status: 'waiting_approval' });
    await client.request(client.subjects.ctlApprove, ApprovalDecision, ApprovalRecord, {
      approvalId: (pending as ApprovalPendingError).details?.['approvalId'] as string,
      decision: 'deny',
      argsHash: hashArgs({ amount: 1 }),
      by: 'alice',
    });
    await expect(act(child.runId, 'pay', { amount: 1 }, key)).rejects.toBeInstanceOf(
      ApprovalDeniedError,
    );
    expect(await get(child.runId)).toMatchObject({ status: 'running' });
    expect((await budgetOf(parent.runId)).reserved.usd).toBeCloseTo(0.6, 6);
    expect(await auditOf(child.runId, 'run.end')).toHaveLength(0);
  });

  it('admission: a role no live planner serves is refused with NO_PLANNER, naming the roles served; waitForPlanner queues it', async () => {
    const err = await start({ steps: 5 }, { role: 'nobody' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NoPlannerError);
    expect((err as NoPlannerError).retryable).toBe(false);
    expect((err as NoPlannerError).details).toMatchObject({ role: 'nobody' });
    // The executor is in presence too, but supervisors are not: they never take tasks.
    expect((err as NoPlannerError).details?.['served']).toContain('planner');
    expect((err as NoPlannerError).details?.['served']).not.toContain('supervisor');
    expect((err as NoPlannerError).message).toMatch(/no live planner serves role nobody/);
    const queued = await start({ steps: 5 }, { role: 'nobody', waitForPlanner: true });
    expect(queued).toMatchObject({ status: 'queued', role: 'nobody' });
  });

  it('admission: a child run for a role nobody serves is refused, and nothing is carved from its parent', async () => {
    const parent = await start({ usd: 1, steps: 100 });
    await expect(
      start({ usd: 0.5 }, { parentRunId: parent.runId, role: 'nobody' }),
    ).rejects.toBeInstanceOf(NoPlannerError);
    expect((await budgetOf(parent.runId)).reserved).toEqual({
      usd: 0,
      inputTokens: 0,
      outputTokens: 0,
      steps: 0,
    });
  });

  it('admission under halt --all: the run is halted (not queued) and names the halt; resume --all queues it', async () => {
    await control(client.subjects.ctlHalt, { kind: 'all' }, 'freeze');
    try {
      const run = await start({ steps: 5 });
      expect(run).toMatchObject({
        status: 'halted',
        error: { code: 'HALTED', details: { scope: { kind: 'all' }, reason: 'freeze' } },
      });
      expect(run.error?.message).toMatch(/a halt of everything \(freeze\)/);
      expect((await lastPlannerTask())?.runId).not.toBe(run.runId);
      await control(client.subjects.ctlResume, { kind: 'all' });
      const resumed = await get(run.runId);
      expect(resumed.status).toBe('queued');
      expect(resumed.error).toBeUndefined();
      expect((await lastPlannerTask())?.runId).toBe(run.runId);
    } finally {
      await control(client.subjects.ctlResume, { kind: 'all' });
    }
  });

  it('admission under a role halt: halted; resuming the role queues it, unless its own run halt holds it', async () => {
    await control(client.subjects.ctlHalt, { kind: 'role', role: 'planner' }, 'planners out');
    const a = await start({ steps: 5 });
    const b = await start({ steps: 5 });
    expect(a).toMatchObject({ status: 'halted', error: { details: { reason: 'planners out' } } });
    await control(client.subjects.ctlHalt, { kind: 'run', runId: b.runId }, 'hold b');
    await control(client.subjects.ctlResume, { kind: 'role', role: 'planner' });
    expect(await get(a.runId)).toMatchObject({ status: 'queued' });
    expect(await get(b.runId)).toMatchObject({ status: 'halted' });
    await control(client.subjects.ctlResume, { kind: 'run', runId: b.runId });
    expect(await get(b.runId)).toMatchObject({ status: 'queued' });
    expect((await lastPlannerTask())?.runId).toBe(b.runId);
  });
});
