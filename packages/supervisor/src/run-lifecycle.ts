import type { RunRecord, StopReason, Usage, WireError } from '@reins/protocol';
import type { AuditInput } from './audit-log.js';
import { isTerminal, type RunStore } from './run-store.js';

/**
 * How a run ended. Every way a run ends — the planner's answer or failure (`runs.end`), a
 * budget or step cap the planner reports, a breaker, the run's wall time — is one of these,
 * and goes through `endRun`. (A halt or a pause does not end a run: it stops it until resume;
 * a denied or expired approval is reported to the model and the run goes on. See the table in
 * docs/design.md.)
 */
export type RunOutcome =
  | { status: 'completed'; answer?: string | undefined }
  | { status: 'stopped'; stopReason: StopReason; error?: WireError | undefined }
  | { status: 'failed'; stopReason?: StopReason | undefined; error?: WireError | undefined };

/**
 * What `endRun` needs of the owner of the run's partition: the run store, the run's budget
 * state, the partition's audit chain and traces.
 */
export interface RunLifecycleContext {
  readonly runs: RunStore;
  /** Grants nothing more to the run from now on (its budget state is final but for settles). */
  seal(runId: string): Promise<void>;
  /** What the run used: spent, plus what it still holds (charged in full: fail closed). */
  used(runId: string): Promise<Usage | undefined>;
  /**
   * Ends a child run's carve on its parent (same partition): what the child used is committed
   * on the parent, the rest is free again; audited. Idempotent.
   */
  releaseCarve(parentRunId: string, childRunId: string, used: Usage): Promise<void>;
  /** Appends an audit entry (the partition's chain; `actor` defaults to the supervisor). */
  audit(input: Omit<AuditInput, 'actor'> & { actor?: string }): Promise<unknown>;
  /** Emits a trace event of the run as the supervisor. */
  trace(runId: string, event: string, data: Record<string, unknown>): void;
}

/** What `endRun` answers: the stored terminal record, and whether this call ended the run. */
export interface EndRunResult {
  record: RunRecord;
  /** True for the call that wrote the terminal record; false when the run had ended already. */
  ended: boolean;
}

/**
 * Ends a run, once, at the owner of its partition: seals its budget state (no grant from now
 * on), returns a child run's carve to its parent (what the child used is committed on the
 * parent, the rest is free again), writes the terminal record with compare-and-set and what
 * the run used (the first end wins; a later one — a planner reporting after a breaker —
 * changes nothing and gets the stored record back), then, for the call that ended it, audits
 * `run.end` and emits the `run.end` trace.
 *
 * The carve release is idempotent and retried on a repeated end: an owner that crashed
 * between the release and the record write leaves a run that a retried end completes.
 *
 * Throws `NotFoundError` for an unknown run and `UnavailableError` when KV or the audit log
 * cannot be written (the record may then be terminal already; a retry completes the rest).
 */
export async function endRun(
  ctx: RunLifecycleContext,
  runId: string,
  outcome: RunOutcome,
  by?: { agentId?: string | undefined },
): Promise<EndRunResult> {
  let wrote = false;
  const now = Date.now();
  const before = await ctx.runs.get(runId);
  if (before && isTerminal(before.status)) {
    // Ended already: only finish what a crashed end may have left (idempotent).
    if (before.parentRunId) await ctx.releaseCarve(before.parentRunId, runId, before.used);
    return { record: before, ended: false };
  }
  // Sealed, measured and its carve returned to the parent BEFORE the terminal record is
  // written: whoever sees the run ended (the parent's planner wakes on the record) finds the
  // parent's budget already free of the child's carve.
  await ctx.seal(runId);
  const used = await ctx.used(runId);
  if (before?.parentRunId && used) await ctx.releaseCarve(before.parentRunId, runId, used);
  const record = await ctx.runs.update(runId, (r) => {
    wrote = false;
    if (isTerminal(r.status)) return undefined;
    wrote = true;
    // A terminal record carries no leftovers of the live states (a halt's note, an old error).
    const { answer: _a, stopReason: _s, error: _e, ...rest } = r;
    return {
      ...rest,
      status: outcome.status,
      endedAt: now,
      ...(used ? { used } : {}),
      ...(outcome.status === 'completed' && outcome.answer !== undefined
        ? { answer: outcome.answer }
        : {}),
      ...(outcome.status !== 'completed' && outcome.stopReason
        ? { stopReason: outcome.stopReason }
        : {}),
      ...(outcome.status !== 'completed' && outcome.error ? { error: outcome.error } : {}),
    };
  });
  if (!wrote) return { record, ended: false };
  await ctx.audit({
    action: 'run.end',
    runId,
    ...(by?.agentId ? { agentId: by.agentId } : {}),
    details: {
      status: record.status,
      used: record.used,
      stopReason: record.stopReason,
      ...(record.error ? { code: record.error.code } : {}),
    },
  });
  ctx.trace(runId, 'run.end', {
    status: record.status,
    stopReason: record.stopReason,
    answer: record.answer?.slice(0, 2000),
    ...(record.error ? { error: record.error.message.slice(0, 500) } : {}),
  });
  return { record, ended: true };
}
