import {
  BudgetExceededError,
  ExecuteRequest,
  HaltedError,
  NotFoundError,
  PolicyDeniedError,
  ProtocolError,
  ReinsError,
  hashArgs,
  newId,
  toWireError,
  type ActRequest,
  type AuthorizeRequest,
  type Decision,
  type GrantSigner,
  type RunEndRequest,
  type RunRecord,
  type Scope,
  type SettleReply,
  type SettleRequest,
} from '@reins/protocol';
import { broadcastControl, type Actor, type HandlerContext, type Runtime } from '@reins/runtime';
import type { z } from 'zod';
import { fromUsage, subClip, toUser, zero } from './amounts.js';
import type { BreakerConfig, BreakerTrip } from './breakers.js';
import type { BudgetLedger, ReserveResult } from './budget-ledger.js';
import type { Partition } from './partition.js';
import { evaluatePolicy, type Policy } from './policy.js';
import { endRun, type RunLifecycleContext, type RunOutcome } from './run-lifecycle.js';
import {
  act as actOn,
  cancel as cancelReservation,
  carveKey,
  fitsRun,
  observe as observeOn,
  observeSpend,
  reapExpired,
  releaseCarve,
  reserve as reserveOn,
  settle as settleOn,
  usageOf,
  usedOf,
  type RunState,
} from './run-state.js';
import { isTerminal, type RunStore } from './run-store.js';

/** What the run-scoped decisions need of their supervisor. */
export interface RunDecisionDeps {
  agentId: string;
  logger: Runtime['logger'];
  runtime: Runtime;
  signer: GrantSigner;
  runs: RunStore;
  /** The KV ledger of the shared scopes (tenant, global). */
  ledger: BudgetLedger;
  /** The NATS server's clock (reservation leases). */
  clock: { now: () => number };
  breakers: BreakerConfig;
  grantTtlMs: number;
  /** Lease of an unsettled reservation. */
  leaseMs: number;
  runCacheMaxAgeMs: number;
  halts: Awaited<ReturnType<Runtime['halts']>>;
  /** Ids of tool grants issued recently (they reserve nothing; their settles skip the ledger). */
  toolGrants: Set<string>;
  /** The supervisor's actor (started after these are made). */
  actor: () => Actor;
  /** The run record, live (not ended, halted or paused), or why not. */
  liveRun: (runId: string, cached?: boolean) => Promise<RunRecord>;
  haltedScope: (target: { agentId: string; role: string; runId: string }) => Scope | undefined;
  sharedScopesFor: (run: RunRecord) => string[];
  runPolicy: (run: RunRecord) => Policy;
  checkApproval: (
    a: Actor,
    req: z.output<typeof ActRequest>,
    argsHash: string,
    rule: string,
  ) => Promise<string>;
  markRunning: (runId: string) => Promise<RunRecord>;
  denyBudget: (res: Extract<ReserveResult, { ok: false }>) => BudgetExceededError;
}

/**
 * The governed step's decisions, as the owner of a run's partition makes them: `sv.authorize`
 * (reserve the model call's worst case, sign an llm grant), `sv.settle` (commit the actual,
 * feed the breakers), `sv.act` (policy, approval, breakers, sign a tool grant and forward the
 * call to an executor), a run's end, and the partition's chores (reaping). Each decision is
 * applied to the partition's in-memory state and put on its audit chain before it takes effect
 * (see `Partition`, docs/design.md "One durable record per decision").
 */
export function runDecisions(d: RunDecisionDeps) {
  const {
    agentId,
    logger,
    runtime,
    signer,
    runs,
    ledger,
    clock,
    breakers,
    grantTtlMs,
    leaseMs,
    runCacheMaxAgeMs,
    halts,
    toolGrants,
    liveRun,
    haltedScope,
    sharedScopesFor,
    runPolicy,
    checkApproval,
    markRunning,
    denyBudget,
  } = d;
  const actorOf = d.actor;
  const subjects = runtime.subjects;

  /**
   * What ending a run needs (see `endRun`): every way a run ends goes through it, at the owner
   * of the run's partition.
   */
  const lifecycleOf = (part: Partition): RunLifecycleContext => ({
    runs,
    seal: async (runId) => {
      const st = await part.state(runId);
      if (st) st.endedAt ??= Date.now();
    },
    used: async (runId) => {
      const st = await part.state(runId);
      return st ? usageOf(usedOf(st)) : undefined;
    },
    releaseCarve: async (parentRunId, childRunId, used) => {
      const parent = await part.state(parentRunId);
      if (!parent?.reservations[carveKey(childRunId)]) return;
      const usedAmount = fromUsage(used, 'child usage');
      const carve = parent.reservations[carveKey(childRunId)]?.amount ?? zero();
      // On record first: the successor replays the release as it is applied here.
      await part.record({
        action: 'release',
        runId: parentRunId,
        details: {
          child: childRunId,
          usedAmount,
          used,
          returned: toUser(subClip(carve, usedAmount)),
        },
      });
      releaseCarve(parent, childRunId, usedAmount);
    },
    audit: (input) => part.record(input),
    trace: (runId, event, data) => actorOf().trace(runId, event, data),
  });

  /**
   * A breaker tripped: the run ends (stopped, `BREAKER`), and work of it still in flight is
   * halted (a run marker, then a broadcast), since the planner may be mid-step.
   */
  const tripBreaker = async (run: RunRecord, trip: BreakerTrip, part: Partition) => {
    logger.warn({ runId: run.runId, trip }, 'breaker tripped');
    const { ended } = await endRun(lifecycleOf(part), run.runId, {
      status: 'stopped',
      stopReason: 'BREAKER',
      error: {
        code: 'BREAKER',
        message: trip.reason,
        retryable: false,
        details: { breaker: trip.breaker },
      },
    });
    if (!ended) return;
    await part.record({
      action: 'breaker',
      runId: run.runId,
      rule: `breaker.${trip.breaker}`,
      details: { reason: trip.reason },
    });
    await halts.write({
      haltId: newId('h'),
      scope: { kind: 'run', runId: run.runId },
      reason: `breaker ${trip.breaker}: ${trip.reason}`,
      createdAt: Date.now(),
      requestedBy: agentId,
    });
    void broadcastControl(runtime, {
      type: 'halt',
      scope: { kind: 'run', runId: run.runId },
      reason: trip.reason,
      deadlineMs: 1000,
    }).catch(() => undefined);
  };

  /** The live state of a run this partition holds, or the reason it may not act. */
  const liveState = async (part: Partition, runId: string): Promise<RunState> => {
    const st = await part.state(runId);
    if (!st) throw new NotFoundError(`unknown run ${runId}`, { details: { runId } });
    if (st.endedAt !== undefined)
      throw new HaltedError(`run ${runId} has ended`, { details: { runId } });
    return st;
  };

  // ── sv.<n>.authorize: model calls ──────────────────────────────────────────────────────
  const authorize = async (
    req: z.output<typeof AuthorizeRequest>,
    part: Partition,
  ): Promise<Decision> => {
    const deny = async (err: ReinsError, rule: string): Promise<Decision> => {
      await part.record({
        action: 'deny',
        runId: req.runId,
        agentId: req.agentId,
        rule,
        details: { kind: 'llm', code: err.code, message: err.message },
      });
      return { decision: 'deny', error: toWireError(err), rule };
    };
    let run: RunRecord;
    let st: RunState;
    try {
      run = await liveRun(req.runId, true);
      st = await liveState(part, req.runId);
    } catch (err) {
      if (err instanceof ReinsError)
        return deny(
          err,
          err.code === 'NOT_FOUND'
            ? 'run.unknown'
            : err.code === 'BAD_REQUEST'
              ? 'run.partition'
              : 'run.not_live',
        );
      throw err;
    }
    const halted = haltedScope(req);
    if (halted)
      return deny(
        new HaltedError(`halted (${halted.kind})`, { details: { scope: halted } }),
        'halt',
      );
    if (run.budget.wallMs !== undefined && Date.now() > run.createdAt + run.budget.wallMs) {
      const err = new BudgetExceededError('run wall time is over', {
        details: { dimension: 'wallMs' },
      });
      await endRun(lifecycleOf(part), run.runId, {
        status: 'stopped',
        stopReason: 'WALL_TIME',
        error: toWireError(err),
      });
      return deny(err, 'budget.wall_time');
    }
    const grantId = newId('g');
    const reserved = {
      steps: 1,
      inputTokens: req.estimate.inputTokens,
      outputTokens: req.estimate.outputTokens,
      usd: req.estimate.usd,
    };
    const amount = fromUsage(reserved, 'estimate');
    const fit = fitsRun(st, amount);
    if (!fit.ok) return deny(denyBudget(fit), `budget.${fit.dimension}`);
    // Held before anything is awaited, so concurrent asks of the run see it (zero overshoot).
    const expiresAt = clock.now() + leaseMs;
    reserveOn(st, grantId, amount, expiresAt);
    const shared = sharedScopesFor(run);
    try {
      if (shared.length > 0) {
        const res = await ledger.reserve({ grantId, scopes: shared, amount: reserved, leaseMs });
        if (!res.ok) {
          cancelReservation(st, grantId);
          return await deny(denyBudget(res), `budget.${res.dimension}`);
        }
      }
      await part.record({
        action: 'grant',
        runId: run.runId,
        agentId: req.agentId,
        rule: 'budget.ok',
        details: {
          grantId,
          kind: 'llm',
          model: req.model,
          reserved,
          expiresAt,
          ...(shared.length > 0 ? { shared } : {}),
        },
      });
    } catch (err) {
      cancelReservation(st, grantId);
      throw err;
    }
    if (run.status === 'queued') await runs.setStatus(run.runId, 'running');
    const now = Date.now();
    const grant = signer.sign({
      grantId,
      runId: run.runId,
      agentId: req.agentId,
      role: req.role,
      kind: 'llm',
      stepId: req.stepId,
      model: req.model,
      reserved,
      issuedAt: now,
      expiresAt: now + grantTtlMs,
      issuer: signer.publicKey,
    });
    return { decision: 'grant', grant, rule: 'budget.ok' };
  };

  // ── sv.<n>.settle ──────────────────────────────────────────────────────────────────────
  const settleAt = async (
    req: z.output<typeof SettleRequest>,
    part: Partition,
  ): Promise<z.output<typeof SettleReply>> => {
    const st = await part.state(req.runId);
    if (!st) return { settled: false, duplicate: false };
    const now = Date.now();
    let reply = { settled: false, duplicate: false };
    let trip: BreakerTrip | undefined;
    // Tool grants reserve nothing: only their observation counts.
    if (!toolGrants.delete(req.grantId)) {
      const res = settleOn(st, req.grantId, req.actual);
      reply = { settled: res.settled, duplicate: res.duplicate };
      if (res.settled && !res.duplicate) {
        // On record with the run's next decision (`applyCarried` replays it the same way).
        part.carry(req.runId, {
          settles: [
            {
              grantId: req.grantId,
              actual: req.actual,
              ts: now,
              ...(req.outcome ? { outcome: req.outcome } : {}),
            },
          ],
        });
        trip = observeSpend(st, req.actual.usd, now, breakers);
        const run = await runs.cached(req.runId, runCacheMaxAgeMs).catch(() => undefined);
        if (run && sharedScopesFor(run).length > 0) await ledger.settle(req.grantId, req.actual);
        // A settle after the run's end corrects what its record says it used.
        if (st.endedAt !== undefined) {
          const used = usageOf(usedOf(st));
          await runs.update(req.runId, (r) => ({ ...r, used })).catch(() => undefined);
        }
      }
    }
    // Tool results carry an observation hash for the no-progress breaker.
    if (req.observationHash !== undefined && !reply.duplicate) {
      part.carry(req.runId, { observations: [{ hash: req.observationHash, ts: now }] });
      const t = observeOn(st, req.observationHash, now, breakers);
      trip ??= t;
    }
    if (trip && st.endedAt === undefined) {
      const run = await runs.get(req.runId);
      if (run && !isTerminal(run.status)) await tripBreaker(run, trip, part);
    }
    return reply;
  };

  // ── sv.<n>.act: tool calls, forwarded to an executor with a signed grant ────────────────
  const actAt = async (
    req: z.output<typeof ActRequest>,
    ctx: HandlerContext,
    part: Partition,
  ): Promise<undefined> => {
    // The model call's settle riding on this call: counted first, whatever the call's fate.
    if (req.settle) {
      if (req.settle.runId !== req.runId || req.settle.agentId !== req.agentId) {
        throw new ProtocolError('a settle riding on sv.act must be of the same run and agent', {
          details: { runId: req.runId },
        });
      }
      await settleAt(req.settle, part);
    }
    const run = await liveRun(req.runId, true);
    const halted = haltedScope(req);
    if (halted) throw new HaltedError(`halted (${halted.kind})`, { details: { scope: halted } });
    const decision = evaluatePolicy(runPolicy(run), {
      role: req.role,
      agentId: req.agentId,
      runId: req.runId,
      tool: req.tool,
      args: req.args,
    });
    const argsHash = hashArgs(req.args);
    let approvedBy: string | undefined;
    if (decision.effect === 'approve') {
      approvedBy = await checkApproval(actorOf(), req, argsHash, decision.rule);
      if (run.status === 'waiting_approval') await markRunning(run.runId);
    } else if (decision.effect !== 'allow') {
      const reason = decision.reason;
      await part.record({
        action: 'deny',
        runId: req.runId,
        agentId: req.agentId,
        rule: decision.rule,
        details: { kind: 'tool', tool: req.tool, effect: decision.effect, reason },
      });
      throw new PolicyDeniedError(`${req.tool}: ${reason}`, {
        details: { rule: decision.rule, effect: decision.effect },
      });
    }
    const st = await liveState(part, req.runId);
    const now = Date.now();
    const before = st.breaker;
    const trip = actOn(
      st,
      { tool: req.tool, argsHash, now, idempotencyKey: req.idempotencyKey },
      breakers,
    );
    if (trip) {
      await tripBreaker(run, trip, part);
      throw new HaltedError(`breaker ${trip.breaker}: ${trip.reason}`, {
        details: { rule: `breaker.${trip.breaker}` },
      });
    }
    const timeoutMs = req.timeoutMs ?? 30_000;
    const grant = signer.sign({
      grantId: newId('g'),
      runId: run.runId,
      agentId: req.agentId,
      role: req.role,
      kind: 'tool',
      stepId: req.stepId,
      tool: req.tool,
      argsHash,
      idempotencyKey: req.idempotencyKey,
      reserved: { steps: 0, inputTokens: 0, outputTokens: 0, usd: 0 },
      issuedAt: now,
      expiresAt: now + Math.max(grantTtlMs, timeoutMs + 5_000),
      issuer: signer.publicKey,
    });
    try {
      await part.record({
        action: 'grant',
        runId: run.runId,
        agentId: req.agentId,
        rule: decision.rule,
        ts: now,
        details: {
          grantId: grant.grantId,
          kind: 'tool',
          tool: req.tool,
          argsHash,
          idempotencyKey: req.idempotencyKey,
          ...(approvedBy ? { approvedBy } : {}),
        },
      });
    } catch (err) {
      st.breaker = before; // not granted: the action does not count
      throw err;
    }
    toolGrants.add(grant.grantId);
    if (toolGrants.size > 4096) {
      const oldest = toolGrants.values().next();
      if (!oldest.done) toolGrants.delete(oldest.value);
    }
    const exec: z.input<typeof ExecuteRequest> = {
      grant,
      runId: run.runId,
      stepId: req.stepId,
      tool: req.tool,
      args: req.args,
      idempotencyKey: req.idempotencyKey,
      timeoutMs,
    };
    ctx.forward(subjects.exec(req.tool), ExecuteRequest, exec);
    return undefined;
  };

  // ── sv.<n>.end: a run's end, forwarded from runs.end ────────────────────────────────────
  const endAt = async (
    req: z.output<typeof RunEndRequest>,
    part: Partition,
  ): Promise<RunRecord> => {
    const outcome: RunOutcome =
      req.status === 'completed'
        ? { status: 'completed', answer: req.answer }
        : req.status === 'stopped'
          ? { status: 'stopped', stopReason: req.stopReason ?? 'ERROR', error: req.error }
          : { status: 'failed', stopReason: req.stopReason, error: req.error };
    const { record: ended } = await endRun(lifecycleOf(part), req.runId, outcome, {
      agentId: req.agentId,
    });
    return ended;
  };

  /** Charges expired reservations, puts carried settles on record, checkpoints. */
  const partitionChores = async (parts: readonly Partition[]) => {
    const now = clock.now();
    for (const part of parts) {
      if (part.lost) continue;
      try {
        for (const runId of part.runIds) {
          const st = part.peek(runId);
          if (!st) continue;
          for (const [grantId, r] of Object.entries(st.reservations)) {
            if (r.expiresAt === null || r.expiresAt > now) continue;
            // Nobody settled it (a crashed holder, a lost settle): charged in full, fail closed.
            await part.record({
              action: 'reap',
              runId,
              details: { grantId, amount: toUser(r.amount), charged: true },
            });
            logger.warn(
              { runId, grantId, amount: toUser(r.amount) },
              'unsettled reservation charged in full at the end of its lease',
            );
          }
          reapExpired(st, now);
        }
        await part.chores(Date.now());
      } catch (err) {
        logger.warn({ err, partition: part.n }, 'partition chores failed');
      }
    }
  };

  return {
    lifecycleOf,
    tripBreaker,
    authorize,
    settle: settleAt,
    act: actAt,
    end: endAt,
    chores: partitionChores,
  };
}
