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
  TimeoutError,
  NotFoundError,
  ReinsError,
  AbortedError,
  type Scope,
  type TraceEvent,
  type TraceSubjectParts,
} from '@reins/protocol';
import {
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
  /** Waits until the run ends and returns its record (answer or stop reason). */
  result(options?: { timeoutMs?: number; signal?: AbortSignal }): Promise<RunRecord>;
  /** The run's trace events, stored ones first; iterate or pass a callback. */
  events(options?: SubscribeTracesOptions): Promise<TraceSubscription>;
  /** Halts the run everywhere (its actors abort in-flight work). */
  halt(reason: string, options?: { deadlineMs?: number }): Promise<HaltReply>;
  /** Resumes a halted or paused run. */
  resume(reason?: string): Promise<HaltReply>;
  /** Caps, spend and open reservations. */
  budget(): Promise<BudgetReport>;
  /** The current run record. */
  get(): Promise<RunRecord>;
}

const TERMINAL = new Set(['completed', 'stopped', 'failed']);

/** A connection to a Reins deployment, for starting, watching and stopping runs. */
export interface ReinsClient extends AsyncDisposable {
  readonly runtime: Runtime;
  readonly runs: {
    start(goal: string, options?: StartOptions): Promise<RunHandle>;
    get(runId: string): Promise<RunRecord>;
    list(filter?: z.input<typeof RunListRequest>): Promise<RunRecord[]>;
    handle(runId: string): RunHandle;
  };
  readonly traces: {
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
 * it works with any number of supervisor instances. Throws `UnavailableError` when NATS cannot
 * be reached; calls with no supervisor answering fail with `UnavailableError` too.
 */
export async function connect(options: ClientOptions = {}): Promise<ReinsClient> {
  const { identity = 'client', ...rest } = options;
  const runtime = await Runtime.connect({
    ...rest,
    ensureInfrastructure: false,
    name: rest.name ?? 'reins-client',
  });
  const s = runtime.subjects;

  const get = (runId: string) => runtime.request(s.runsGet, RunGetRequest, RunRecord, { runId });
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
      const deadline = Date.now() + (o.timeoutMs ?? 3_600_000);
      // The supervisor emits `run.end`: it wakes the wait early. The record is what counts, so
      // it is polled from the start, and a subscription that cannot be opened yet (JetStream
      // electing leaders after losing a node) only makes the wait poll longer.
      let ended = false;
      const stopWaking = new AbortController();
      const waking = subscribeTraces(
        runtime,
        { runId: id, role: 'supervisor', event: 'run.end' },
        {
          callback: () => (ended = true),
          signal: stopWaking.signal,
          openTimeoutMs: Math.max(0, deadline - Date.now()),
        },
      ).catch(() => undefined);
      try {
        for (;;) {
          if (o.signal?.aborted)
            throw new AbortedError('stopped waiting for the run', { cause: o.signal.reason });
          // A supervisor restart is not the end of the run: keep asking until the deadline.
          const rec = await get(id).catch((err: unknown) => {
            if (err instanceof ReinsError && err.retryable && Date.now() < deadline)
              return undefined;
            throw err;
          });
          if (rec && TERMINAL.has(rec.status)) return rec;
          if (Date.now() > deadline)
            throw new TimeoutError(`run ${id} did not end in time`, {
              details: { runId: id, status: rec?.status ?? 'unknown' },
            });
          for (let i = 0; i < 20 && !ended && !o.signal?.aborted; i++)
            await new Promise((r) => setTimeout(r, 25));
        }
      } finally {
        stopWaking.abort();
        await (await waking)?.stop();
      }
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
