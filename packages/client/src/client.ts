import {
  ApprovalDecision,
  ApprovalListReply,
  ApprovalListRequest,
  ApprovalRecord,
  BudgetReport,
  HaltReply,
  HaltRequest,
  RunGetRequest,
  RunListReply,
  RunListRequest,
  RunRecord,
  RunStartRequest,
  NotFoundError,
  ReinsError,
  type Scope,
  type TraceEvent,
  type TraceSubjectParts,
} from '@reins/protocol';
import {
  RunRecords,
  Runtime,
  listAgents,
  subscribeTraces,
  type AgentPresence,
  type RuntimeOptions,
  type SubscribeTracesOptions,
  type TraceSubscription,
} from '@reins/runtime';
import type { z } from 'zod';

/** Options of `connect`. */
export type ClientOptions = Omit<RuntimeOptions, 'ensureInfrastructure' | 'heartbeatMs'> & {
  /** Who this client acts as, recorded in the audit log (default `client`). */
  identity?: string;
};

/** Options of `runs.start`. */
export type StartOptions = Omit<z.input<typeof RunStartRequest>, 'goal'>;

/** A started run: its id and what you can do with it. */
export interface RunHandle {
  readonly id: string;
  /**
   * Waits until the run ends (completed, stopped or failed) and returns its record (answer or
   * stop reason). Woken by a watch of the run records shared by the client, not by polling;
   * works with no supervisor running (then `used` is the stored one, not the ledger's).
   * Throws `TimeoutError` after `timeoutMs` (default 1 h), `AbortedError` on `signal`.
   */
  result(options?: { timeoutMs?: number; signal?: AbortSignal }): Promise<RunRecord>;
  /**
   * The run's trace events, stored ones first; iterate or pass a callback. Includes the runs
   * it delegated to (and theirs), each child's events after the `delegate.start` that made it;
   * `descendants: false` for this run's own events only. Tell runs apart by `event.runId`.
   */
  events(options?: SubscribeTracesOptions): Promise<TraceSubscription>;
  /** Halts the run everywhere (its actors abort in-flight work). */
  halt(reason: string, options?: { deadlineMs?: number }): Promise<HaltReply>;
  /** Resumes a halted or paused run. */
  resume(reason?: string): Promise<HaltReply>;
  /** Caps, spend and open reservations. */
  budget(): Promise<BudgetReport>;
  /** The current run record (from KV when no supervisor answers; see `runs.get`). */
  get(): Promise<RunRecord>;
}

/** A connection to a Reins deployment, for starting, watching and stopping runs. */
export interface ReinsClient extends AsyncDisposable {
  readonly runtime: Runtime;
  readonly runs: {
    start(goal: string, options?: StartOptions): Promise<RunHandle>;
    /**
     * The run record from a supervisor (with the ledger's spend in `used`); when none answers,
     * the record as stored in KV. Throws `NotFoundError` for an unknown run.
     */
    get(runId: string): Promise<RunRecord>;
    list(filter?: z.input<typeof RunListRequest>): Promise<RunRecord[]>;
    handle(runId: string): RunHandle;
  };
  readonly traces: {
    /**
     * Trace events matching a pattern, stored ones first. A pattern naming one run includes
     * the runs it delegated to unless `descendants: false` (see `RunHandle.events`).
     */
    subscribe(
      pattern: TraceSubjectParts | string,
      options?: SubscribeTracesOptions,
    ): Promise<TraceSubscription>;
  };
  readonly agents: { list(options?: { includeStopped?: boolean }): Promise<AgentPresence[]> };
  /** Human approvals of actions a policy marks `approve`. Decisions are audited with `identity`. */
  readonly approvals: {
    list(filter?: z.input<typeof ApprovalListRequest>): Promise<ApprovalRecord[]>;
    /** Approves the pending action; `argsHash` defaults to the stored one (shown by `list`). */
    approve(
      approvalId: string,
      options?: { reason?: string; argsHash?: string },
    ): Promise<ApprovalRecord>;
    deny(approvalId: string, reason: string): Promise<ApprovalRecord>;
  };
  /**
   * Halts a scope: marker, broadcast, acks, fencing. Rejects with `NotFoundError` (details
   * `{ scope }`) when the run, agent or role does not exist and no halt marker names it.
   */
  halt(scope: Scope, reason: string, options?: { deadlineMs?: number }): Promise<HaltReply>;
  /**
   * Lifts a halt or pause; the reply's `lifted` is false when nothing was halted or paused (not
   * an error). Rejects with `NotFoundError` for an unknown target, as `halt` does.
   */
  resume(scope: Scope, reason?: string): Promise<HaltReply>;
  /** Pauses a scope. Rejects with `NotFoundError` for an unknown target, as `halt` does. */
  pause(scope: Scope, reason: string): Promise<HaltReply>;
  close(): Promise<void>;
}

/**
 * Connects to NATS and returns a client. Every call goes to the supervisor (queue group), so
 * it works with any number of supervisor instances — except reading run records (`runs.get`,
 * `result()`), which falls back to KV when no supervisor answers. Throws `UnavailableError` when
 * NATS cannot be reached; other calls with no supervisor answering fail with `UnavailableError`.
 */
export async function connect(options: ClientOptions = {}): Promise<ReinsClient> {
  const { identity = 'client', ...rest } = options;
  const runtime = await Runtime.connect({
    ...rest,
    ensureInfrastructure: false,
    name: rest.name ?? 'reins-client',
  });
  const s = runtime.subjects;

  const records = RunRecords.of(runtime);
  const get = async (runId: string): Promise<RunRecord> => {
    try {
      return await runtime.request(s.runsGet, RunGetRequest, RunRecord, { runId });
    } catch (err) {
      // No supervisor answers: the record is in KV all the same (without the ledger's spend).
      if (!(err instanceof ReinsError) || (err.code !== 'UNAVAILABLE' && err.code !== 'TIMEOUT'))
        throw err;
      const stored = await records.get(runId).catch(() => {
        throw err;
      });
      if (!stored) throw new NotFoundError(`unknown run ${runId}`, { details: { runId } });
      return stored;
    }
  };
  const control = (subject: string, scope: Scope, reason: string, deadlineMs?: number) =>
    runtime.request(
      subject,
      HaltRequest,
      HaltReply,
      { scope, reason, requestedBy: identity, ...(deadlineMs !== undefined ? { deadlineMs } : {}) },
      { timeoutMs: (deadlineMs ?? 2000) + 5000 },
    );

  const decide = async (
    approvalId: string,
    decision: 'approve' | 'deny',
    reason?: string,
    argsHash?: string,
  ) => {
    let hash = argsHash;
    if (!hash) {
      const pending = await runtime.request(
        s.approvalsList,
        ApprovalListRequest,
        ApprovalListReply,
        { limit: 1000 },
      );
      hash = pending.approvals.find((a) => a.approvalId === approvalId)?.argsHash;
      if (!hash)
        throw new NotFoundError(`unknown approval ${approvalId}`, { details: { approvalId } });
    }
    return runtime.request(s.ctlApprove, ApprovalDecision, ApprovalRecord, {
      approvalId,
      decision,
      argsHash: hash,
      by: identity,
      ...(reason ? { reason } : {}),
    });
  };

  const handle = (id: string): RunHandle => ({
    id,
    get: () => get(id),
    budget: () => runtime.request(s.runsBudget, RunGetRequest, BudgetReport, { runId: id }),
    halt: (reason, o = {}) => control(s.ctlHalt, { kind: 'run', runId: id }, reason, o.deadlineMs),
    resume: (reason = 'resume') => control(s.ctlResume, { kind: 'run', runId: id }, reason),
    events: (o) => subscribeTraces(runtime, { runId: id }, o),
    async result(o = {}) {
      // Pushed, not polled: the shared watch of run records wakes this wait when the run ends.
      const ended = await records.waitForEnd(id, {
        timeoutMs: o.timeoutMs ?? 3_600_000,
        ...(o.signal ? { signal: o.signal } : {}),
      });
      // Spend lives in the ledger: the supervisor fills it in. Without one, the stored record.
      return runtime
        .request(s.runsGet, RunGetRequest, RunRecord, { runId: id }, { timeoutMs: 2_000 })
        .catch(() => ended);
    },
  });

  const client: ReinsClient = {
    runtime,
    runs: {
      async start(goal, o = {}) {
        const rec = await runtime.request(s.runsStart, RunStartRequest, RunRecord, {
          requestedBy: identity,
          ...o,
          goal,
        });
        return handle(rec.runId);
      },
      get,
      list: async (filter = {}) =>
        (await runtime.request(s.runsList, RunListRequest, RunListReply, filter)).runs,
      handle,
    },
    traces: { subscribe: (pattern, o) => subscribeTraces(runtime, pattern, o) },
    agents: { list: (o = {}) => listAgents(runtime, o) },
    approvals: {
      list: async (filter = {}) =>
        (await runtime.request(s.approvalsList, ApprovalListRequest, ApprovalListReply, filter))
          .approvals,
      approve: (approvalId, o = {}) => decide(approvalId, 'approve', o.reason, o.argsHash),
      deny: (approvalId, reason) => decide(approvalId, 'deny', reason),
    },
    halt: (scope, reason, o = {}) => control(s.ctlHalt, scope, reason, o.deadlineMs),
    resume: (scope, reason = 'resume') => control(s.ctlResume, scope, reason),
    pause: (scope, reason) => control(s.ctlPause, scope, reason),
    close: async () => {
      await runtime.close();
    },
    [Symbol.asyncDispose]: async () => {
      await runtime.close();
    },
  };
  return client;
}

export type { TraceEvent };
