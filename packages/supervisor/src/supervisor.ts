import { jetstream } from '@nats-io/jetstream';
import {
  ActRequest,
  ApprovalDecision,
  ApprovalDeniedError,
  ApprovalListReply,
  ApprovalListRequest,
  ApprovalPendingError,
  ApprovalRecord,
  ApprovalTimeoutError,
  AuthorizeRequest,
  BudgetExceededError,
  BudgetReport,
  Buckets,
  Streams,
  Decision,
  HaltMarker,
  HaltReply,
  HaltRequest,
  HaltedError,
  NoPlannerError,
  NotFoundError,
  decode,
  scopeKey,
  PausedError,
  PolicyDeniedError,
  RunEndRequest,
  RunGetRequest,
  RunListReply,
  RunListRequest,
  RunRecord,
  RunStartRequest,
  SettleReply,
  SettleRequest,
  Task,
  UnavailableError,
  encode,
  newId,
  type Budget,
  type GrantSigner,
  type Scope,
  signHeartbeat,
} from '@reins/protocol';
import {
  broadcastControl,
  defaultReplicas,
  defineActor,
  openBucket,
  scopeMatches,
  ServerClock,
  type Actor,
  type Runtime,
} from '@reins/runtime';
import { z } from 'zod';
import { ApprovalStore, approvalIdFor } from './approvals.js';
import { AuditWriter, ensureAuditStream, type AuditInput } from './audit-log.js';
import type { BreakerConfig } from './breakers.js';
import { breakerConfig } from './breakers.js';
import { BudgetLedger, type Reaper, type ReserveResult } from './budget-ledger.js';
import { fromBudget } from './amounts.js';
import { Partition } from './partition.js';
import { PartitionLeases } from './partition-leases.js';
import {
  cancel as cancelReservation,
  carveKey,
  fitsRun,
  reportOf,
  reserve as reserveOn,
  usageOf,
  usedOf,
} from './run-state.js';
import { compilePolicy, narrowPolicy, type Policy, type PolicyDocument } from './policy.js';
import { PlannerPresence } from './planner-presence.js';
import { PresenceView } from './presence-view.js';
import { RunStore, isTerminal } from './run-store.js';
import { loadSigningKey, trustedIssuersFromEnv } from './signing-key.js';
import { runDecisions } from './run-decisions.js';

/** Options of `startSupervisor`. */
export interface SupervisorOptions {
  /** Agent id of this instance (also its audit writer id). Generated when absent. */
  agentId?: string;
  /** Grant signing key; default from `REINS_SUPERVISOR_SEED(_FILE)` or a dev key with a warning. */
  signer?: GrantSigner;
  /**
   * Tool policy (compiled or a document). Without one every tool call is denied
   * (`default.deny`): fail closed. Load a file with `loadPolicyFile`.
   */
  policy?: Policy | z.input<typeof PolicyDocument>;
  /** Breaker settings (repeat, no-progress, velocity, action cap). */
  breakers?: z.input<typeof BreakerConfig>;
  /** Lifetime of a grant (default 60 s; a tool grant lives at least its timeout). */
  grantTtlMs?: number;
  /** Lease of an unsettled reservation before the reaper charges it in full (default 120 s). */
  leaseMs?: number;
  /** Reaper pass interval (default 5 s). */
  reaperIntervalMs?: number;
  /** A cap across every run (`global` scope). */
  globalBudget?: Budget;
  /** Caps per tenant (`tenant.<id>` scope). */
  tenantBudgets?: Record<string, Budget>;
  /** Budget applied to runs started without one (default: 50 steps). */
  defaultRunBudget?: Budget;
  /** How long a human has to answer an approval request before it is denied (default 10 min). */
  approvalTimeoutMs?: number;
  /** Roles allowed to start as a run's planner (default: any). */
  plannerRoles?: string[];
  /**
   * How long `sv.authorize` and `sv.act` may trust a run record held in the watched cache
   * without re-reading it from KV (default 1000 ms; 0 turns the cache off: every step reads
   * KV). The watch keeps cached records current within milliseconds of any supervisor's write;
   * this bounds the staleness should the watch stall. See `RunStore`.
   */
  runCacheMaxAgeMs?: number;
  /**
   * How long a supervisor's membership lasts without renewal (default 5 s; the service reads
   * `REINS_PARTITION_LEASE_MS`): the partitions of a supervisor that died move to the others
   * after at most this long. See docs/design.md, "Run partitions".
   */
  partitionLeaseMs?: number;
}

/** A running supervisor instance. */
export interface Supervisor extends AsyncDisposable {
  readonly actor: Actor;
  readonly ledger: BudgetLedger;
  readonly audit: AuditWriter;
  /** Public key executors must trust (`REINS_TRUSTED_ISSUERS`). */
  readonly publicKey: string;
  stop(): Promise<void>;
}

const SUPERVISOR_QUEUE = 'supervisor';

/** Between supervisors: the budgets of live runs, asked of their partition's owner. */
const UsageRequest = z.object({ runIds: z.array(z.string()).max(1000) });
const UsageReply = z.object({ reports: z.array(BudgetReport) });

/**
 * Starts a supervisor: the control plane. It admits runs, authorizes every model call against
 * the budget ledger, authorizes every tool call against policy, breakers and budget and
 * forwards it to an executor with a signed grant, settles usage, halts and resumes, and audits
 * every decision. Several instances may serve at once (queue group `supervisor`): they share
 * the ledger, run records, breaker state and halt markers through JetStream KV.
 */
export async function startSupervisor(
  runtime: Runtime,
  options: SupervisorOptions = {},
): Promise<Supervisor> {
  const agentId = options.agentId ?? newId('sv');
  const logger = runtime.logger.child({ role: 'supervisor', agentId });
  const signer = options.signer ?? loadSigningKey({ logger }).signer;
  const policy: Policy = options.policy
    ? 'kind' in options.policy
      ? options.policy
      : compilePolicy(options.policy)
    : compilePolicy({ rules: [] });
  if (!options.policy) {
    logger.warn(
      'no tool policy configured: every tool call will be denied (set REINS_POLICY_FILE or pass a policy)',
    );
  }
  const breakers = breakerConfig({ maxSteps: 1000, ...options.breakers });
  const grantTtlMs = options.grantTtlMs ?? 60_000;
  const leaseMs = options.leaseMs ?? 120_000;
  const subjects = runtime.subjects;
  const nc = runtime.nc;
  const js = jetstream(nc);

  const jsm = await js.jetstreamManager();
  await ensureAuditStream(jsm, { prefix: subjects.prefix, replicas: defaultReplicas() });
  // First, before anything that holds resources: a chain cut short behind its anchor is refused
  // (AuditTruncatedError) until an operator runs `reins audit accept-gap`.
  const audit = await AuditWriter.open(nc, {
    writerId: agentId,
    prefix: subjects.prefix,
    signer,
    logger,
  });
  // Ledger leases (reservation expiry and reaping) follow the NATS server's clock, which every
  // supervisor shares, not this machine's: a slow local clock would otherwise write leases other
  // reapers return while the grant is still live (K8). Fail closed: no measured clock, no start
  // (the ledger needs the same JetStream anyway). The probe key lives in the ledger's bucket
  // (created here as the ledger would): supervisors may write it in secure mode, and `clock` is
  // not a scope key, so the ledger never reads it.
  const clock = await ServerClock.start(await openBucket(nc, Buckets.budget), {
    onError: (err) =>
      logger.warn({ err }, 'cannot read the NATS server clock; keeping the last offset'),
  });
  if (Math.abs(clock.offsetMs) > 1_000) {
    logger.warn(
      { offsetMs: Math.round(clock.offsetMs), roundTripMs: clock.roundTripMs },
      "this machine's clock is off from the NATS server's; budget leases use the server's clock",
    );
  }
  // Generous CAS retry bounds: under heavy contention a reservation waits rather than fails.
  const ledger = await BudgetLedger.open(nc, {
    maxAttempts: 1000,
    casDeadlineMs: 30_000,
    replicas: defaultReplicas(),
    now: () => clock.now(),
  });
  const runs = new RunStore(await openBucket(nc, Buckets.runs));
  const runCacheMaxAgeMs = options.runCacheMaxAgeMs ?? 1000;
  if (runCacheMaxAgeMs > 0) await runs.watch();
  const approvals = new ApprovalStore(await openBucket(nc, Buckets.approvals));
  const approvalTimeoutMs = options.approvalTimeoutMs ?? 600_000;
  const halts = await runtime.halts();
  // Read directly (not the watched set) so that every supervisor instance sees a marker another
  // one wrote a moment ago.
  const haltsKv = await openBucket(nc, Buckets.halts);
  const hasMarker = async (scope: Scope): Promise<boolean> => {
    const e = await haltsKv.get(scopeKey(scope));
    return e?.operation === 'PUT' && e.value.length > 0;
  };
  // Who is present, kept in memory from a watch of the presence bucket (halts, resumes, admission).
  const presence = await PresenceView.start(runtime, { logger });
  const planners = PlannerPresence.of(presence);
  const policyCache = new Map<string, Policy>();
  /**
   * Ids of tool grants this instance issued recently (bounded). Tool grants reserve nothing, so
   * the ledger holds no record of them: their settles are answered without a ledger read.
   */
  const toolGrants = new Set<string>();

  // Caps of the shared scopes; a scope without a cap is not touched by reservations.
  if (options.globalBudget) await ledger.setCap('global', options.globalBudget);
  for (const [tenant, cap] of Object.entries(options.tenantBudgets ?? {}))
    await ledger.setCap(`tenant.${tenant}`, cap);

  const record = (input: Omit<AuditInput, 'actor'> & { actor?: string }) =>
    audit.append({ actor: agentId, ...input }).catch((err: unknown) => {
      // An audit that cannot be written is an operator emergency, not a silent gap.
      logger.error({ err, action: input.action, runId: input.runId }, 'AUDIT WRITE FAILED');
      throw new UnavailableError('audit log unavailable', { cause: err });
    });

  /**
   * The shared budget scopes of a run (its tenant's and the global cap), kept in the KV ledger
   * and reserved by compare-and-set. The run's own scope lives with its partition's owner.
   */
  const sharedScopesFor = (run: RunRecord) => {
    const s: string[] = [];
    if (run.tenant && options.tenantBudgets?.[run.tenant]) s.push(`tenant.${run.tenant}`);
    if (options.globalBudget) s.push('global');
    return s.sort();
  };

  const runPolicy = (run: RunRecord): Policy => {
    if (!run.policy) return policy;
    let p = policyCache.get(run.runId);
    if (!p) {
      p = narrowPolicy(policy, run.policy);
      if (policyCache.size > 1000) policyCache.clear();
      policyCache.set(run.runId, p);
    }
    return p;
  };

  const haltedScope = (target: {
    agentId: string;
    role: string;
    runId: string;
  }): Scope | undefined => halts.halted.find(target);

  /**
   * Run must exist and be live; returns it. Unknown or ended runs are refused: fail closed.
   * `cached`: the hot path (authorize, act) may use the watched run record cache.
   */
  const liveRun = async (runId: string, cached = false): Promise<RunRecord> => {
    const run =
      cached && runCacheMaxAgeMs > 0
        ? await runs.cached(runId, runCacheMaxAgeMs)
        : await runs.require(runId);
    if (isTerminal(run.status)) {
      throw new HaltedError(`run ${runId} has ended (${run.status})`, {
        details: { runId, status: run.status },
      });
    }
    if (run.status === 'halted')
      throw new HaltedError(`run ${runId} is halted`, { details: { runId } });
    if (run.status === 'paused')
      throw new PausedError(`run ${runId} is paused`, { details: { runId } });
    return run;
  };

  const enqueue = async (run: RunRecord, dedupe: string) => {
    const task: Task = { runId: run.runId, role: run.role, step: 0, enqueuedAt: Date.now() };
    await js.publish(subjects.task(run.role), encode(Task, task), {
      msgID: `${run.runId}:${dedupe}`,
    });
  };

  /** The halt marker (read from KV, not the watched set) covering a new run of `role`. */
  const admissionHalt = async (role: string): Promise<HaltMarker | undefined> => {
    for (const scope of [{ kind: 'all' }, { kind: 'role', role }] as const) {
      const e = await haltsKv.get(scopeKey(scope));
      if (e?.operation !== 'PUT' || e.value.length === 0) continue;
      try {
        return decode(HaltMarker, e.value, { name: 'halt marker' });
      } catch {
        // Unreadable: it still halts what its key names (fail closed).
        return { haltId: 'unknown', scope, reason: 'unreadable halt marker', createdAt: 0 };
      }
    }
    return undefined;
  };

  /** What a run halted at admission carries in `error`, so that followers can name the halt. */
  const haltNote = (halt: HaltMarker) => ({
    code: 'HALTED',
    message: `admitted under ${halt.scope.kind === 'all' ? 'a halt of everything' : `a halt of ${halt.scope.kind === 'role' ? `role ${halt.scope.role}` : halt.scope.kind}`} (${halt.reason}): it starts when the halt is lifted`,
    retryable: false,
    details: {
      scope: halt.scope,
      haltId: halt.haltId,
      reason: halt.reason,
      atAdmission: true,
    },
  });

  /**
   * A halted run that no halt covers any more runs again: `queued` when it was halted at
   * admission (it never started), else `running`, and its task is enqueued. No-op for a run
   * in any other status. Returns the stored record.
   */
  const requeue = async (run: RunRecord): Promise<RunRecord> => {
    let wrote = false;
    const next = await runs.update(run.runId, (r) => {
      wrote = false;
      if (r.status !== 'halted') return undefined;
      wrote = true;
      const { error, ...rest } = r;
      const atAdmission = error?.details?.['atAdmission'] === true;
      return { ...rest, status: atAdmission ? 'queued' : 'running' };
    });
    if (wrote) await enqueue(next, `resume-${newId()}`);
    return next;
  };

  /**
   * After a halt of everything or of a role is lifted: the halted runs no halt covers any more
   * (not their run, their role, nor everything) run again. Lists the run store: resumes are rare.
   */
  const requeueUncovered = async () => {
    const halted = await runs.list({ status: 'halted', limit: 1000 });
    for (const run of halted) {
      if (await hasMarker({ kind: 'run', runId: run.runId })) continue;
      if (await admissionHalt(run.role)) continue;
      await requeue(run);
    }
  };

  // A model call reserves its worst case before it runs: say that it is the reservation that
  // did not fit, not money already spent.
  const denyBudget = (res: Extract<ReserveResult, { ok: false }>) =>
    new BudgetExceededError(
      res.dimension === 'sealed'
        ? `budget exceeded on ${res.scope} (its budget was already released)`
        : `budget exceeded on ${res.scope} (${res.dimension}): this call's worst-case reservation ` +
            `${res.requested} does not fit — committed ${res.committed} + reserved ` +
            `${res.reserved} + ${res.requested} = ${res.wouldBe} > cap ${res.cap}`,
      {
        details: {
          scope: res.scope,
          dimension: res.dimension,
          cap: res.cap,
          wouldBe: res.wouldBe,
          requested: res.requested,
          committed: res.committed,
          reserved: res.reserved,
        },
      },
    );

  /**
   * Who should acknowledge a control message for `scope`: live agents (supervisors excluded:
   * they issue halts and are never halted by them). `ackers` are the agents whose acks to wait
   * for — every live agent acks a run-scoped message — and `owners` the agents a missing ack
   * fences (for a run: those working on it).
   */
  const controlTargets = async (scope: Scope) => {
    // From memory once the watch caught up with the bucket; else a listing bounded well below a
    // halt's own deadline (a listing JetStream does not answer is retried, K9).
    const live = (await presence.agents({ includeLost: false })).filter(
      (ag) => ag.role !== 'supervisor',
    );
    const owners = live.filter((ag) =>
      scope.kind === 'run'
        ? ag.runs.includes(scope.runId)
        : scopeMatches(scope, { agentId: ag.agentId, role: ag.role }),
    );
    return {
      owners,
      ackers: (scope.kind === 'run' ? live : owners).map((ag) => ag.agentId),
    };
  };

  /**
   * A control command must name something that exists: a typo (`--run run_doesnotexist`,
   * `--role exectuor`) is a `NOT_FOUND` error, not a halt acknowledged by nobody. A run must be
   * in the run store or have trace events (actors may work on runs the supervisor did not
   * start, e.g. a custom actor's); an agent must be in presence (any status: halting a lost agent fences it
   * should it come back); a role must be served by an agent in presence. A role nobody serves
   * yet is refused too — pre-empting late starters is what `all` is for — unless a halt marker
   * names the scope already (repeating a halt, lifting a marker whose target is gone). `all`
   * always exists. Returns the run record of a run scope when there is one.
   */
  /** True when the trace stream holds an event of the run (one direct read, no consumer). */
  const hasTraces = async (runId: string): Promise<boolean> => {
    const last = await jsm.streams
      .getMessage(Streams.trace, { last_by_subj: subjects.trace({ runId }) })
      .catch((err: unknown) => {
        // Only "no message" is an answer; anything else must not pass for one (fail closed).
        throw new UnavailableError('cannot read the trace stream', { cause: err });
      });
    return last !== null && last !== undefined;
  };

  const requireTarget = async (scope: Scope): Promise<RunRecord | undefined> => {
    if (scope.kind === 'all') return undefined;
    const marked = await hasMarker(scope);
    if (scope.kind === 'run') {
      const run = await runs.get(scope.runId);
      if (!run && !marked && !(await hasTraces(scope.runId)))
        throw new NotFoundError(`unknown run ${scope.runId}`, { details: { scope } });
      return run;
    }
    if (marked) return undefined;
    const known = await presence.agents({ includeLost: true, includeStopped: true });
    if (scope.kind === 'agent' && !known.some((ag) => ag.agentId === scope.agentId)) {
      throw new NotFoundError(`unknown agent ${scope.agentId}: no such agent in presence`, {
        details: { scope },
      });
    }
    if (scope.kind === 'role' && !known.some((ag) => ag.role === scope.role)) {
      const roles = [...new Set(known.map((ag) => ag.role))].sort();
      throw new NotFoundError(
        `unknown role ${scope.role}: no agent serves it${roles.length ? ` (roles: ${roles.join(', ')})` : ''}`,
        { details: { scope, roles } },
      );
    }
    return undefined;
  };

  /** Broadcasts resume or pause to `ackers` and answers with who acknowledged. */
  const relay = async (
    type: 'resume' | 'pause',
    req: z.output<typeof HaltRequest>,
    ackers: string[],
  ): Promise<HaltReply> => {
    const acks = await broadcastControl(
      runtime,
      { type, scope: req.scope, reason: req.reason, deadlineMs: Math.min(req.deadlineMs, 1000) },
      { expectFrom: ackers },
    );
    return {
      haltId: newId('h'),
      acked: acks.map((k) => k.agentId).filter((id) => id !== agentId),
      missing: [],
      aborted: 0,
      unknownOutcomes: [],
    };
  };

  /**
   * Puts a control message in the trace of each run it concerns (the run of a run scope, or the
   * runs the named agents work on), so `reins trace` shows why a run stopped or went on.
   */
  const traceControl = (
    type: 'halt' | 'resume' | 'pause',
    req: z.output<typeof HaltRequest>,
    owners: { runs: string[] }[],
  ) => {
    const runIds =
      req.scope.kind === 'run' ? [req.scope.runId] : [...new Set(owners.flatMap((o) => o.runs))];
    for (const runId of runIds.slice(0, 1000)) {
      actor.trace(runId, `run.${type}`, {
        scope: req.scope,
        reason: req.reason,
        ...(req.requestedBy ? { by: req.requestedBy } : {}),
      });
    }
  };

  /** A run suspended on an approval runs again (no-op for any other status). */
  const markRunning = (runId: string) =>
    runs.update(runId, (r) =>
      r.status === 'waiting_approval' ? { ...r, status: 'running' } : undefined,
    );

  /**
   * An approval was decided (approved, denied or expired): its run continues at once, on
   * whichever planner takes the task; the step re-asks for the action and gets the grant or
   * the refusal. Every supervisor may call this for the same decision: the task is deduplicated.
   */
  const onDecided = async (approval: { approvalId: string; runId: string }) => {
    // Failures throw: the caller (a decision, which the client retries; an expiry, retried
    // below) runs this again, and the enqueue is deduplicated.
    const run = await markRunning(approval.runId);
    if (run.status !== 'running') return;
    await enqueue(run, `approval:${approval.approvalId}`);
  };

  /**
   * Expires a pending approval past its time (once, whichever supervisor gets there first: the
   * audit entry and trace come from that one). Returns the stored record.
   */
  const expire = async (approvalId: string) => {
    const now = Date.now();
    const rec = await approvals.update(approvalId, (r) =>
      r.status === 'pending' && now > r.expiresAt
        ? { ...r, status: 'expired', decidedAt: now }
        : undefined,
    );
    if (rec?.status === 'expired' && rec.decidedAt === now) {
      await record({
        action: 'approval.expired',
        runId: rec.runId,
        rule: rec.rule,
        details: { approvalId },
      });
      actor.trace(rec.runId, 'approval.decision', { approvalId, status: 'expired' });
    }
    return rec;
  };

  /**
   * The approval gate of a tool call whose policy says `approve`. The first request creates a
   * pending approval (stored, published on `approvals.<runId>`, audited), and while it is
   * pending the run is `waiting_approval` and the call answered `APPROVAL_PENDING`: the planner
   * suspends the step and the decision re-enqueues it (same idempotency key). Returns who
   * approved; throws for pending, denied, expired, or an approval for other arguments.
   */
  const checkApproval = async (
    a: Actor,
    req: z.output<typeof ActRequest>,
    argsHash: string,
    rule: string,
  ): Promise<string> => {
    const approvalId = approvalIdFor(req.runId, req.idempotencyKey);
    const now = Date.now();
    let rec = await approvals.get(approvalId);
    if (!rec) {
      rec = await approvals.create({
        approvalId,
        runId: req.runId,
        agentId: req.agentId,
        role: req.role,
        tool: req.tool,
        args: req.args,
        argsHash,
        rule,
        idempotencyKey: req.idempotencyKey,
        createdAt: now,
        expiresAt: now + approvalTimeoutMs,
        status: 'pending',
      });
      if (rec.createdAt === now) {
        await record({
          action: 'approval.request',
          runId: req.runId,
          agentId: req.agentId,
          rule,
          details: { approvalId, tool: req.tool, argsHash },
        });
        runtime.publish(subjects.approvals(req.runId), ApprovalRecord, rec);
        a.trace(
          req.runId,
          'approval.request',
          { approvalId, tool: req.tool, rule },
          { stepId: req.stepId },
        );
      }
    }
    if (rec.argsHash !== argsHash || rec.tool !== req.tool) {
      throw new PolicyDeniedError('the approval for this action was given for other arguments', {
        details: { rule, approvalId },
      });
    }
    if (rec.status === 'pending' && now > rec.expiresAt) rec = (await expire(approvalId)) ?? rec;
    switch (rec.status) {
      case 'approved':
        return rec.decidedBy ?? 'unknown';
      case 'pending': {
        // The run waits for the decision without retrying: the decision (or its expiry)
        // re-enqueues it (`onDecided`).
        await runs.update(req.runId, (r) =>
          r.status === 'running' ? { ...r, status: 'waiting_approval' } : undefined,
        );
        // A decision that came in meanwhile found the run still running: look again, so the
        // run is not left marked waiting while it goes on.
        const latest = await approvals.get(approvalId);
        if (latest && latest.status !== 'pending') {
          await markRunning(req.runId);
          return checkApproval(a, req, argsHash, rule);
        }
        throw new ApprovalPendingError(`${req.tool} waits for approval ${approvalId}`, {
          details: { approvalId, rule, expiresAt: rec.expiresAt },
        });
      }
      case 'denied':
        throw new ApprovalDeniedError(
          `${req.tool} was denied by ${rec.decidedBy ?? 'a human'}${rec.reason ? `: ${rec.reason}` : ''}`,
          { details: { approvalId, rule } },
        );
      case 'expired':
        throw new ApprovalTimeoutError(`approval ${approvalId} for ${req.tool} timed out`, {
          details: { approvalId, rule },
        });
    }
  };

  // ── Run partitions: each run-scoped decision is made by the owner of the run's partition ──

  const decisions = runDecisions({
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
    actor: () => actor,
    liveRun,
    haltedScope,
    sharedScopesFor,
    runPolicy,
    checkApproval,
    markRunning,
    denyBudget,
  });
  const NO_USAGE = { usd: 0, inputTokens: 0, outputTokens: 0, steps: 0 };

  /** Partitions this supervisor owns: their state and the subscriptions that serve them. */
  const owned = new Map<number, { part: Partition; subs: { unsubscribe(): void }[] }>();
  const partitionsKv = await openBucket(nc, Buckets.partitions);
  /** The subjects of the partition a run belongs to. */
  const ownerOf = (runId: string) => subjects.partition(subjects.partitionOf(runId));

  /** The budget reports of live runs, from the owners of their partitions (one ask each). */
  const liveReports = async (live: RunRecord[]): Promise<Map<string, BudgetReport>> => {
    const byPartition = new Map<number, string[]>();
    for (const r of live) {
      const n = subjects.partitionOf(r.runId);
      byPartition.set(n, [...(byPartition.get(n) ?? []), r.runId]);
    }
    const out = new Map<string, BudgetReport>();
    await Promise.all(
      [...byPartition].map(async ([n, runIds]) => {
        const reply = await runtime
          .request(
            subjects.partition(n).usage,
            UsageRequest,
            UsageReply,
            { runIds },
            {
              timeoutMs: 5_000,
            },
          )
          .catch((err: unknown) => {
            logger.warn({ err, partition: n }, 'cannot read live budgets from the partition owner');
            return { reports: [] };
          });
        for (const rep of reply.reports) out.set(rep.runId, rep);
      }),
    );
    return out;
  };

  /** Run records with what each used: stored at the end, else asked of the partition owner. */
  const withUsage = async (records: RunRecord[]): Promise<RunRecord[]> => {
    const reports = await liveReports(records.filter((r) => !isTerminal(r.status)));
    return records.map((r) => {
      const rep = reports.get(r.runId);
      return rep ? { ...r, used: rep.committed } : r;
    });
  };

  const budgetOf = async (runId: string): Promise<BudgetReport> => {
    const run = await runs.require(runId);
    if (!isTerminal(run.status)) {
      const rep = (await liveReports([run])).get(runId);
      if (rep) return rep;
    }
    return { runId, cap: run.budget, committed: run.used, reserved: NO_USAGE };
  };

  /** A new run id in partition `n` (a child run lives in its parent's partition). */
  const runIdIn = (n: number): string => {
    for (;;) {
      const id = newId('run');
      if (subjects.partitionOf(id) === n) return id;
    }
  };

  /**
   * Admission. A top-level run is admitted by any supervisor (queue group); a child run by the
   * owner of its parent's partition (`part`), where its budget is carved from the parent's.
   */
  const admit = async (
    req: z.output<typeof RunStartRequest>,
    part: Partition | undefined,
  ): Promise<RunRecord> => {
    if (req.parentRunId && !part) {
      return runtime.request(ownerOf(req.parentRunId).start, RunStartRequest, RunRecord, req, {
        timeoutMs: 10_000,
      });
    }
    if (options.plannerRoles && !options.plannerRoles.includes(req.role)) {
      throw new PolicyDeniedError(`role ${req.role} may not plan runs`, {
        details: { rule: 'admission.role' },
      });
    }
    if (req.idempotencyKey) {
      const existing = await runs.startKey(req.idempotencyKey);
      if (existing) return runs.require(existing);
    }
    // A role no live planner serves would wait in the queue for good: say so now, unless the
    // caller asked to queue it for a planner still to come.
    if (!req.waitForPlanner) {
      const presence = await planners.check(req.role);
      if (!presence.served) {
        await record({
          action: 'deny',
          ...(req.parentRunId ? { runId: req.parentRunId } : {}),
          rule: 'admission.no_planner',
          details: { role: req.role, served: presence.roles },
        });
        const served = presence.roles.length
          ? `served: ${presence.roles.join(', ')}`
          : 'no role is served';
        throw new NoPlannerError(`no live planner serves role ${req.role} (${served})`, {
          details: { role: req.role, served: presence.roles },
        });
      }
    }
    const now = Date.now();
    let runId: string;
    // A child run inherits its parent's remaining budget (below); a top-level run gets the default.
    let budget: Budget;
    if (req.parentRunId && part) {
      const parent = await liveRun(req.parentRunId);
      const ps = await part.state(parent.runId);
      if (!ps) throw new NotFoundError(`unknown run ${parent.runId}`);
      runId = runIdIn(part.n);
      const spent = usageOf(usedOf(ps));
      // A child inherits whatever the parent caps and it did not set: its remaining budget.
      const filled: Budget = { ...req.budget };
      for (const k of ['usd', 'inputTokens', 'outputTokens', 'steps'] as const) {
        const cap = ps.cap[k];
        if (cap === undefined || filled[k] !== undefined) continue;
        const rem = Math.max(0, cap - spent[k]);
        filled[k] = k === 'usd' ? rem : Math.floor(rem);
      }
      if (ps.cap.tokens !== undefined && filled.tokens === undefined) {
        const used = usedOf(ps).tokens;
        filled.tokens = Math.max(0, ps.cap.tokens - used);
      }
      budget = filled;
      const amount = fromBudget(budget);
      const fit = fitsRun(ps, amount);
      if (!fit.ok) {
        await part.record({
          action: 'deny',
          runId: parent.runId,
          rule: 'admission.child_budget',
          details: { child: runId },
        });
        throw denyBudget(fit);
      }
      // Held before anything is awaited (a concurrent ask sees it), on record before the child exists.
      reserveOn(ps, carveKey(runId), amount, null);
      try {
        await part.record({
          action: 'carve',
          runId: parent.runId,
          details: { child: runId, amount, budget },
        });
      } catch (err) {
        cancelReservation(ps, carveKey(runId));
        throw err;
      }
    } else {
      runId = newId('run');
      budget = { ...(options.defaultRunBudget ?? { steps: 50 }), ...req.budget };
    }
    // Shared caps already spent → refuse admission.
    for (const scope of [
      ...(req.tenant && options.tenantBudgets?.[req.tenant] ? [`tenant.${req.tenant}`] : []),
      ...(options.globalBudget ? ['global'] : []),
    ]) {
      const sc = await ledger.get(scope);
      for (const k of ['usd', 'tokens', 'steps'] as const) {
        const cap = sc.cap[k];
        if (cap !== undefined && sc.committed[k] + sc.reserved[k] >= cap) {
          await record({
            action: 'deny',
            runId,
            rule: 'admission.spent',
            details: { scope, dimension: k },
          });
          throw new BudgetExceededError(`${scope} budget is spent (${k})`, {
            details: { scope, dimension: k },
          });
        }
      }
    }
    // A run admitted while a halt covers it (everything, or its role) is recorded as halted,
    // not queued: nothing of it runs until the halt is lifted, and the caller is told so. The
    // resume that lifts the last covering halt enqueues it.
    const halt = await admissionHalt(req.role);
    const run: RunRecord = {
      runId,
      goal: req.goal,
      role: req.role,
      roles: req.roles ?? [req.role, 'executor'],
      status: halt ? 'halted' : 'queued',
      ...(halt ? { error: haltNote(halt) } : {}),
      budget,
      used: { inputTokens: 0, outputTokens: 0, usd: 0, steps: 0 },
      createdAt: now,
      updatedAt: now,
      ...(req.tenant ? { tenant: req.tenant } : {}),
      ...(req.parentRunId ? { parentRunId: req.parentRunId } : {}),
      ...(req.input ? { input: req.input } : {}),
      ...(req.policy ? { policy: req.policy } : {}),
    };
    if (req.policy) narrowPolicy(policy, req.policy); // invalid overlays are refused here
    await runs.create(run);
    if (req.idempotencyKey) {
      const winner = await runs.claimStartKey(req.idempotencyKey, runId);
      if (winner !== runId) return runs.require(winner);
    }
    await record({
      action: 'admit',
      runId,
      details: {
        goal: req.goal.slice(0, 200),
        budget,
        role: req.role,
        parentRunId: req.parentRunId,
        requestedBy: req.requestedBy,
        ...(halt ? { halted: { haltId: halt.haltId, scope: halt.scope } } : {}),
      },
    });
    actor.trace(runId, 'run.start', {
      goal: req.goal.slice(0, 1000),
      budget,
      parentRunId: req.parentRunId,
      ...(halt ? { halted: { scope: halt.scope, reason: halt.reason } } : {}),
    });
    if (!halt) {
      await enqueue(run, 'start');
      return run;
    }
    // The halt may have been lifted while the run was being recorded, by a resume that listed
    // the halted runs before this one existed: then nobody else enqueues it.
    return (await admissionHalt(req.role)) ? run : requeue(run);
  };

  /** Serves partition `n`'s subjects (only its owner subscribes: no queue group). */
  const servePartition = (part: Partition): { unsubscribe(): void }[] => {
    const ps = subjects.partition(part.n);
    const opts = { runOf: () => undefined };
    return [
      actor.handle(ps.authorize, AuthorizeRequest, (req) => decisions.authorize(req, part), {
        ...opts,
        reply: Decision,
      }),
      actor.handle(ps.settle, SettleRequest, (req) => decisions.settle(req, part), {
        ...opts,
        reply: SettleReply,
      }),
      actor.handle(ps.act, ActRequest, (req, ctx) => decisions.act(req, ctx, part), opts),
      actor.handle(ps.end, RunEndRequest, (req) => decisions.end(req, part), {
        ...opts,
        reply: RunRecord,
      }),
      actor.handle(ps.start, RunStartRequest, (req) => admit(req, part), {
        ...opts,
        reply: RunRecord,
      }),
      actor.handle(
        ps.usage,
        UsageRequest,
        async (req) => {
          const reports: BudgetReport[] = [];
          for (const runId of req.runIds) {
            const st = part.peek(runId) ?? (await part.state(runId));
            if (st) reports.push(reportOf(st));
          }
          return { reports };
        },
        { ...opts, reply: UsageReply },
      ),
    ];
  };

  let choresRunning: Promise<void> = Promise.resolve();
  const choresTimer = setInterval(() => {
    choresRunning = choresRunning.then(() =>
      decisions.chores([...owned.values()].map((o) => o.part)),
    );
  }, 2_000);
  choresTimer.unref();

  const leases = new PartitionLeases(
    partitionsKv,
    {
      agentId,
      partitions: subjects.partitions,
      leaseMs: options.partitionLeaseMs ?? 5_000,
      now: () => clock.now(),
    },
    {
      acquired: async (n) => {
        const part = await Partition.open(n, {
          nc,
          prefix: subjects.prefix,
          signer,
          trusted: trustedIssuersFromEnv(),
          agentId,
          logger,
          kv: partitionsKv,
          runs,
          breakers,
          partitionOf: (runId) => subjects.partitionOf(runId),
        });
        owned.set(n, { part, subs: servePartition(part) });
        logger.debug({ partition: n }, 'partition acquired');
      },
      lost: async (n) => {
        const o = owned.get(n);
        if (!o) return;
        owned.delete(n);
        for (const sub of o.subs) sub.unsubscribe();
        await o.part.release();
        logger.debug({ partition: n }, 'partition released');
      },
      warn: (err, message) => logger.warn({ err }, message),
    },
  );

  const reaper: Reaper = ledger.startReaper(options.reaperIntervalMs ?? 5_000, {
    onReaped: (reaped) => {
      for (const r of reaped) {
        // Nobody settled it (a crashed holder, a lost settle): charged in full, fail closed.
        logger.warn(
          { scope: r.scope, grantId: r.grantId, amount: r.amount },
          'unsettled reservation charged in full at the end of its lease',
        );
        void record({
          action: 'reap',
          details: { scope: r.scope, grantId: r.grantId, amount: r.amount, charged: true },
        }).catch(() => undefined);
      }
    },
    onError: (err) => logger.warn({ err }, 'reaper pass failed'),
  });
  // A request that asked for its answer outside the inboxes (a confused-deputy attempt) is
  // refused by the runtime; the control plane keeps it on record (once per subject and family).
  const stopSecurityAudit = runtime.onSecurityEvent((e) => {
    const { kind, ...details } = e;
    void record({ action: 'security', rule: `security.${kind}`, details }).catch(() => undefined);
  });
  const actor = await runtime.start(
    defineActor({
      role: 'supervisor',
      agentId,
      // The control plane is never halted by the halts it issues.
      haltable: false,
      // Signed heartbeats: actors that trust this key count no one else's for their dead-man switch.
      signHeartbeat: (hb) => signHeartbeat(signer, hb),
      // Stopping the actor (dispose, SIGTERM via the runtime) also stops the reaper.
      teardown: async () => {
        stopSecurityAudit();
        // Partitions go back at once (the next owner need not wait for the membership to end).
        clearInterval(choresTimer);
        await choresRunning;
        await leases.stop().catch((err: unknown) => {
          logger.warn(
            { err },
            'cannot give the partitions back; they move when the membership ends',
          );
        });
        runs.stopWatch();
        presence.stop();
        await reaper.stop();
        await clock.stop();
      },
      setup(a) {
        // ── runs.start: admission (a child run's: at the owner of its parent's partition) ──
        a.handle(subjects.runsStart, RunStartRequest, (req) => admit(req, undefined), {
          queue: SUPERVISOR_QUEUE,
          reply: RunRecord,
          runOf: () => undefined,
        });

        // ── runs.get / list / budget / end ───────────────────────────────────────────────
        a.handle(
          subjects.runsGet,
          RunGetRequest,
          async (req) => (await withUsage([await runs.require(req.runId)]))[0],
          { queue: SUPERVISOR_QUEUE, reply: RunRecord, runOf: () => undefined },
        );
        a.handle(
          subjects.runsList,
          RunListRequest,
          async (req) => {
            const listed = await runs.list({
              limit: req.limit,
              ...(req.status ? { status: req.status } : {}),
              ...(req.tenant ? { tenant: req.tenant } : {}),
            });
            // Spend lives with the partitions' owners, not the record: fill it in.
            return { runs: await withUsage(listed) };
          },
          { queue: SUPERVISOR_QUEUE, reply: RunListReply },
        );
        a.handle(subjects.runsBudget, RunGetRequest, (req) => budgetOf(req.runId), {
          queue: SUPERVISOR_QUEUE,
          reply: BudgetReport,
          runOf: () => undefined,
        });
        // A run ends at the owner of its partition (its budget state lives there).
        a.handle(
          subjects.runsEnd,
          RunEndRequest,
          (req) =>
            runtime.request(ownerOf(req.runId).end, RunEndRequest, RunRecord, req, {
              timeoutMs: 10_000,
            }),
          { queue: SUPERVISOR_QUEUE, reply: RunRecord, runOf: () => undefined },
        );

        // ── approvals ────────────────────────────────────────────────────────────────────
        a.handle(
          subjects.ctlApprove,
          ApprovalDecision,
          async (req) => {
            const now = Date.now();
            const current = await approvals.get(req.approvalId);
            if (!current)
              throw new NotFoundError(`unknown approval ${req.approvalId}`, {
                details: { approvalId: req.approvalId },
              });
            // A decision binds to the exact action: it names the arguments it approves.
            if (current.argsHash !== req.argsHash) {
              throw new PolicyDeniedError(
                'this decision is for other arguments than the pending action',
                { details: { approvalId: req.approvalId } },
              );
            }
            const updated = await approvals.update(req.approvalId, (r) => {
              if (r.status !== 'pending') return undefined;
              if (now > r.expiresAt) return { ...r, status: 'expired', decidedAt: now };
              return {
                ...r,
                status: req.decision === 'approve' ? 'approved' : 'denied',
                decidedBy: req.by,
                decidedAt: now,
                ...(req.reason ? { reason: req.reason } : {}),
              };
            });
            if (!updated)
              throw new NotFoundError(`unknown approval ${req.approvalId}`, {
                details: { approvalId: req.approvalId },
              });
            if (updated.decidedAt === now) {
              await record({
                action: 'approval.decision',
                runId: updated.runId,
                actor: req.by,
                rule: updated.rule,
                details: { approvalId: req.approvalId, status: updated.status, reason: req.reason },
              });
              a.trace(updated.runId, 'approval.decision', {
                approvalId: req.approvalId,
                status: updated.status,
                by: req.by,
                ...(req.reason ? { reason: req.reason } : {}),
              });
            } else if (updated.status !== (req.decision === 'approve' ? 'approved' : 'denied')) {
              throw new ApprovalTimeoutError(
                `approval ${req.approvalId} is already ${updated.status}`,
                { details: { status: updated.status } },
              );
            }
            // Also on a repeated decision: if the first one's re-enqueue failed, this one sends
            // the run on (the task is deduplicated when it did not).
            await onDecided(updated);
            return updated;
          },
          { queue: SUPERVISOR_QUEUE, reply: ApprovalRecord, runOf: () => undefined },
        );
        a.handle(
          subjects.approvalsList,
          ApprovalListRequest,
          async (req) => ({
            approvals: await approvals.list({
              runId: req.runId,
              status: req.status,
              limit: req.limit,
            }),
          }),
          { queue: SUPERVISOR_QUEUE, reply: ApprovalListReply, runOf: () => undefined },
        );

        // ── ctl.halt / ctl.resume / ctl.pause ─────────────────────────────────────────────
        a.handle(
          subjects.ctlHalt,
          HaltRequest,
          async (req) => {
            await requireTarget(req.scope);
            const haltId = newId('h');
            await halts.write({
              haltId,
              scope: req.scope,
              reason: req.reason,
              createdAt: Date.now(),
              ...(req.requestedBy ? { requestedBy: req.requestedBy } : {}),
            });
            await record({
              action: 'halt',
              ...(req.scope.kind === 'run' ? { runId: req.scope.runId } : {}),
              details: {
                haltId,
                scope: req.scope,
                reason: req.reason,
                requestedBy: req.requestedBy,
              },
            });
            if (req.scope.kind === 'run') {
              await runs.setStatus(req.scope.runId, 'halted').catch((err: unknown) => {
                if (!(err instanceof NotFoundError)) throw err;
              });
            }
            const { owners: expected, ackers } = await controlTargets(req.scope);
            traceControl('halt', req, expected);
            const acks = (
              await broadcastControl(
                runtime,
                {
                  type: 'halt',
                  scope: req.scope,
                  reason: req.reason,
                  deadlineMs: req.deadlineMs,
                  id: haltId,
                },
                // Every live agent acks a run-scoped halt; otherwise the agents the scope names.
                // The reply comes as soon as each of them has acked (acks of agents presence
                // did not list yet do not stand in for theirs), at the latest at the deadline.
                { expectFrom: ackers },
              )
            ).filter((k) => k.agentId !== agentId);
            const acked = acks
              .filter(
                (k) =>
                  req.scope.kind !== 'run' ||
                  k.aborted > 0 ||
                  expected.some((e) => e.agentId === k.agentId),
              )
              .map((k) => k.agentId);
            const ackedSet = new Set(acked);
            const missing = expected.map((e) => e.agentId).filter((id) => !ackedSet.has(id));
            // Fencing: an agent that did not acknowledge in time is halted as a whole. Its grants
            // are refused from now on (supervisors and executors check agent markers), and its
            // own runtime refuses work once it hears the marker. `resume` with its agent scope lifts it.
            for (const id of missing) {
              await halts.write({
                haltId: newId('h'),
                scope: { kind: 'agent', agentId: id },
                reason: `fenced: no acknowledgement of halt ${haltId} within ${req.deadlineMs} ms`,
                createdAt: Date.now(),
                requestedBy: agentId,
              });
              await record({ action: 'fence', agentId: id, details: { haltId } });
            }
            const reply: HaltReply = {
              haltId,
              acked,
              missing,
              aborted: acks.reduce((n, k) => n + k.aborted, 0),
              unknownOutcomes: acks.flatMap((k) => k.unknownOutcomes).slice(0, 1000),
            };
            await record({
              action: 'halt.acks',
              details: {
                haltId,
                acked: acked.length,
                missing,
                unknownOutcomes: reply.unknownOutcomes,
              },
            });
            return reply;
          },
          { queue: SUPERVISOR_QUEUE, reply: HaltReply, runOf: () => undefined },
        );
        a.handle(
          subjects.ctlResume,
          HaltRequest,
          async (req) => {
            const run = await requireTarget(req.scope);
            const marked = await hasMarker(req.scope);
            const stoppedRun = run?.status === 'halted' || run?.status === 'paused';
            await halts.clear(req.scope);
            await record({
              action: 'resume',
              ...(req.scope.kind === 'run' ? { runId: req.scope.runId } : {}),
              details: { scope: req.scope, reason: req.reason, requestedBy: req.requestedBy },
            });
            const { owners, ackers } = await controlTargets(req.scope);
            // Pauses of agents, roles or `all` live only in the actors: their heartbeats say so.
            const pausedAgent = owners.some(
              (ag) => ag.status === 'paused' || ag.status === 'halted',
            );
            traceControl('resume', req, owners);
            const reply = await relay('resume', req, ackers);
            if (run && stoppedRun) {
              if (run.status === 'halted') await requeue(run);
              else {
                const resumed = await runs.setStatus(run.runId, 'running');
                await enqueue(resumed, `resume-${newId()}`);
              }
            }
            if (req.scope.kind === 'all' || req.scope.kind === 'role') await requeueUncovered();
            return { ...reply, lifted: marked || stoppedRun || pausedAgent };
          },
          { queue: SUPERVISOR_QUEUE, reply: HaltReply, runOf: () => undefined },
        );
        a.handle(
          subjects.ctlPause,
          HaltRequest,
          async (req) => {
            await requireTarget(req.scope);
            await record({
              action: 'pause',
              ...(req.scope.kind === 'run' ? { runId: req.scope.runId } : {}),
              details: { scope: req.scope, reason: req.reason, requestedBy: req.requestedBy },
            });
            if (req.scope.kind === 'run') await runs.setStatus(req.scope.runId, 'paused');
            const { owners, ackers } = await controlTargets(req.scope);
            traceControl('pause', req, owners);
            return relay('pause', req, ackers);
          },
          { queue: SUPERVISOR_QUEUE, reply: HaltReply, runOf: () => undefined },
        );
      },
    }),
  );

  // An approval nobody decides expires as a denial, and its run goes on at once.
  const expiries = await approvals.watchExpiries((approvalId) => {
    // Retried with backoff: a run whose expiry is lost would wait for good.
    const attempt = (n: number): void => {
      void (async () => {
        const rec = await expire(approvalId);
        if (rec && rec.status !== 'pending') await onDecided(rec);
      })().catch((err: unknown) => {
        logger.warn({ err, approvalId, attempt: n }, 'approval expiry failed; trying again');
        if (n < 20) setTimeout(() => attempt(n + 1), Math.min(30_000, 500 * 2 ** n)).unref();
      });
    };
    attempt(0);
  });
  actor.own(expiries);
  // Run-scoped requests are served once partitions are held: alone, this supervisor holds them
  // all when this resolves; beside others, it takes its share as they give partitions back.
  await leases.start();

  logger.info({ publicKey: signer.publicKey }, 'supervisor started');
  const stop = async () => {
    await actor.stop();
    // Anchor the final head, so a chain cut short after this stop is found.
    await audit.close().catch((err: unknown) => {
      logger.warn({ err }, 'cannot anchor the audit chain head at shutdown');
    });
  };
  return {
    actor,
    ledger,
    audit,
    publicKey: signer.publicKey,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}
