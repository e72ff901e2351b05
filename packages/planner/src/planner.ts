import {
  AckPolicy,
  DeliverPolicy,
  jetstreamManager,
  type Consumer,
  type ConsumerMessages,
  type JsMsg,
} from '@nats-io/jetstream';
import {
  AbortedError,
  ActRequest,
  AuthorizeRequest,
  Buckets,
  ConflictError,
  Decision,
  HaltedError,
  PausedError,
  PayloadTooLargeError,
  ReinsError,
  RunEndRequest,
  RunGetRequest,
  RunRecord,
  RunStartRequest,
  SettleReply,
  SettleRequest,
  Streams,
  Task,
  ToolResult,
  UnavailableError,
  decode,
  encode,
  fromWireError,
  toWireError,
  type StopReason,
  type Grant,
} from '@reins/protocol';
import {
  budgetEstimate,
  costOf,
  toolResultMessage,
  type ChatMessage,
  type GenerateRequest,
  type Model,
  type ParsedToolCall,
  type ToolSpec,
} from '@reins/models';
import {
  BoundedMap,
  RunRecords,
  defineActor,
  mapTransportError,
  openBucket,
  retryTransport,
  type Actor,
  type Runtime,
  type WorkContext,
  isRunEnded,
} from '@reins/runtime';
import { RunStateStore, type RunState, type StoredState } from './run-state.js';

/** The tool a planner offers for delegating a sub-goal to another role as a child run. */
export const DELEGATE_TOOL = 'delegate';

/** Options of `startPlanner`. */
export interface PlannerOptions {
  /** The role this planner pool serves (`task.<role>`; default `planner`). */
  role?: string;
  agentId?: string;
  /** The model that thinks. */
  model: Model | ((run: RunRecord) => Model);
  /** Tools offered to the model (executors run them). Build with `toolSpec(tool)`. */
  tools: readonly ToolSpec[];
  /** System prompt. */
  system?: string;
  /** Roles this planner may delegate sub-goals to (adds the `delegate` tool). */
  delegateTo?: readonly string[];
  /** Most messages kept in run state; older ones go to `summarize` (default 200). */
  maxHistory?: number;
  /** Turns trimmed history into a summary kept in state (default: drop it). */
  summarize?: (
    trimmed: readonly ChatMessage[],
    previous: string | undefined,
  ) => string | Promise<string>;
  /** Output cap per model call (default: the model's). */
  maxOutputTokens?: number;
  /** Tasks handled at once (default 4). */
  concurrency?: number;
  /** How long a planner may hold a run before another may take it (default 60 s). */
  leaseMs?: number;
  /**
   * JetStream ack wait of the task consumer (default 10 s); in-progress is signalled every third
   * of it while a step runs. It bounds how long a task whose ack or nak was lost (a server
   * restart, a stream electing a leader) waits before it is delivered again.
   */
  ackWaitMs?: number;
  /** Tool call timeout (default 30 s). */
  toolTimeoutMs?: number;
  /**
   * Deliveries of one step before a retryable failure (no executor for a tool, supervisor
   * unreachable…) ends the run as failed (default 20, with backoff). A step waiting for an
   * approval does not retry: the run is suspended until the decision re-enqueues it.
   */
  maxAttempts?: number;
  /** Wait for a delegated child run at most this long (default 10 min). */
  childTimeoutMs?: number;
}

const STOP_BY_CODE: Record<string, StopReason> = {
  BUDGET_EXCEEDED: 'BUDGET_EXCEEDED',
  HALTED: 'HALTED',
  POLICY_DENIED: 'POLICY_DENIED',
};

/** How long a settle is retried before the reservation is left to be charged at its lease end. */
const SETTLE_RETRY_MS = 60_000;

/** Pull expiry of the task consumer (also how often a stalled pull is checked and renewed). */
const PULL_EXPIRES_MS = 5_000;

/** Ends the step without ending the run: the run is halted or paused and will be resumed. */
class Suspend extends Error {}

/** A tool call waits for a human decision: the run is suspended until the decision comes. */
class AwaitingApproval extends Suspend {
  constructor(readonly approvalId: string) {
    super('waiting for approval');
  }
}

/** Another planner holds the run; try this task again once its lease may have expired. */
class LeaseHeld extends Error {
  constructor(readonly retryInMs: number) {
    super('run held by another planner');
  }
}

/**
 * Starts a planner: a durable pull consumer on `REINS_TASKS` (`task.<role>`) that runs one
 * governed ReAct step per task — authorize → model call → settle, then each tool call through
 * `sv.act` (the supervisor forwards it to an executor with a signed grant) — persists the step
 * in KV, enqueues the next step and only then acks. A crashed planner's task is redelivered and
 * another planner resumes from the persisted state; idempotency keys derive from runId + step +
 * call index, so no side effect repeats.
 */
export async function startPlanner(runtime: Runtime, options: PlannerOptions): Promise<Actor> {
  const role = options.role ?? 'planner';
  const subjects = runtime.subjects;
  const store = new RunStateStore(await openBucket(runtime.nc, Buckets.runs));
  const leaseMs = options.leaseMs ?? 60_000;
  const ackWaitMs = options.ackWaitMs ?? 10_000;
  const maxHistory = options.maxHistory ?? 200;
  const toolTimeoutMs = options.toolTimeoutMs ?? 30_000;
  const maxAttempts = options.maxAttempts ?? 20;
  const delegateTo = options.delegateTo ?? [];
  const tools: ToolSpec[] = [...options.tools];
  if (delegateTo.length) {
    tools.push({
      name: DELEGATE_TOOL,
      description: `Delegate a sub-goal to another agent role (${delegateTo.join(', ')}) as a child run with its own share of this run's budget. Returns the child's answer.`,
      parameters: {
        type: 'object',
        properties: {
          role: { type: 'string', enum: [...delegateTo] },
          goal: { type: 'string' },
          budgetUsd: { type: 'number' },
          maxSteps: { type: 'integer' },
        },
        required: ['role', 'goal'],
        additionalProperties: false,
      },
    });
  }

  // What a planner remembers between steps of a run (bounded; oldest dropped first). The run
  // record's fields a step uses (goal, input, budget, role, tenant) never change, and whether the
  // run is still live is the supervisor's call at authorize and act. The state is the one this
  // planner last wrote: with a stale revision the step's next write fails its compare-and-set.
  const runCache = new BoundedMap<string, RunRecord>(CACHE_RUNS);
  const stateCache = new BoundedMap<string, StoredState>(CACHE_RUNS);

  const jsm = await jetstreamManager(runtime.nc);
  const durable = `planner-${role}`;
  /** Creates the durable task consumer, or updates its ack wait when it exists. */
  const ensureConsumer = () =>
    jsm.consumers
      .add(Streams.tasks, {
        durable_name: durable,
        filter_subject: subjects.task(role),
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        ack_wait: ackWaitMs * 1_000_000,
        max_ack_pending: 1000,
      })
      .catch(async (err: unknown) => {
        // Exists with another config (e.g. ack wait changed): update it.
        if (!/already in use|exists/i.test(String((err as Error).message))) throw err;
        await jsm.consumers.update(Streams.tasks, durable, { ack_wait: ackWaitMs * 1_000_000 });
      });
  await ensureConsumer();
  const consumer: Consumer = await runtime.js.consumers.get(Streams.tasks, durable);

  let messages: ConsumerMessages | undefined;
  const actor = await runtime.start(
    defineActor({
      role,
      requireSupervisor: true,
      ...(options.agentId ? { agentId: options.agentId } : {}),
      async setup(a) {
        let stopping = false;
        // The pull consumer can end (server restart, consumer lost): start it again until the
        // actor stops, so a planner never silently stops taking tasks.
        const consume = async (): Promise<void> => {
          const current = await consumer.consume({
            max_messages: options.concurrency ?? 4,
            // Short pulls: after a server restart the client checks the consumer and pulls
            // again on this period (its default, 30 s, left the planner idle that long).
            expires: PULL_EXPIRES_MS,
            callback: (m) => void handleTask(a, m),
          });
          messages = current;
          void (async () => {
            for await (const s of current.status()) {
              // The durable consumer is gone (deleted, or a server lost its state): make it
              // again; the client keeps checking for it and resumes pulling once it exists.
              if ((s.type === 'consumer_not_found' || s.type === 'consumer_deleted') && !stopping) {
                a.logger.warn({ status: s.type }, 'task consumer missing; creating it again');
                await ensureConsumer().catch((err: unknown) =>
                  a.logger.warn({ err }, 'could not create the task consumer'),
                );
              }
            }
          })().catch(() => undefined);
          void current.closed().then(async (err) => {
            if (stopping) return;
            a.logger.warn({ err }, 'task consumer ended; restarting it');
            for (let attempt = 0; !stopping; attempt++) {
              await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** attempt)));
              try {
                await consume();
                return;
              } catch (restartErr) {
                a.logger.warn({ err: restartErr, attempt }, 'task consumer restart failed');
              }
            }
          });
        };
        await consume();
        a.own({
          stop: async () => {
            stopping = true;
            await messages?.close().catch(() => undefined);
          },
        });
      },
    }),
  );

  async function handleTask(a: Actor, m: JsMsg): Promise<void> {
    let task: Task;
    try {
      task = decode(Task, m.data, { name: 'task' });
    } catch (err) {
      a.logger.warn({ err }, 'malformed task dropped');
      m.term();
      return;
    }
    const keepAlive = setInterval(() => m.working(), Math.max(1000, ackWaitMs / 3));
    let stepDone = false;
    // What to tell JetStream about the task; sent once connected (see below).
    let reply: () => void = () => m.ack();
    try {
      const firstDelivery = m.info.deliveryCount === 1;
      await a.work({ runId: task.runId, label: 'step' }, (ctx) =>
        step(a, task, ctx, firstDelivery),
      );
      stepDone = true;
    } catch (caught) {
      // NATS and JetStream failures (no responders while a stream elects a leader, timeouts, a
      // closed connection) are transient: coded as retryable, not as a reason to end the run.
      const err =
        caught instanceof ReinsError || caught instanceof LeaseHeld || caught instanceof Suspend
          ? caught
          : mapTransportError(caught, 'planner step');
      if (err instanceof LeaseHeld) {
        // The holder usually lets go soon (its step ended, or suspended on an approval and a
        // decision re-enqueued the run meanwhile): look again after a growing pause, at the
        // latest when the lease runs out (a crashed holder).
        const pause = 500 * 2 ** Math.min(6, m.info.deliveryCount - 1);
        reply = () => m.nak(Math.min(err.retryInMs, pause, 60_000));
      } else if (err instanceof Suspend) {
        // The run itself is halted or paused, or waits for an approval: resume (or the
        // decision) re-enqueues it, so this task is done.
        reply = () => m.ack();
      } else if (err instanceof ReinsError && (err.code === 'HALTED' || err.code === 'PAUSED')) {
        // Halted or paused for the run: done (resume re-enqueues). For this agent, its role or
        // everything: keep the task for later (or for another planner) — nothing is lost.
        // The supervisor's refusals for the run itself name it (`details.runId`).
        const scope = err.details?.['scope'];
        const runScoped =
          err.details?.['runId'] === task.runId ||
          (typeof scope === 'object' &&
            scope !== null &&
            (scope as { kind?: unknown }).kind === 'run');
        if (runScoped) reply = () => m.ack();
        else reply = () => m.nak(5000);
      } else if (err instanceof ReinsError && err.details?.['reason'] === 'supervisor_lost') {
        // Dead-man switch: no supervisor, no step (fail closed) — and no give-up either.
        retrying(a, task, err, m.info.deliveryCount, 5000, 'no supervisor is heard');
        reply = () => m.nak(5000);
      } else if (err instanceof ReinsError && err.retryable && m.info.deliveryCount < maxAttempts) {
        const delay = Math.min(30_000, 1000 * 2 ** Math.min(5, m.info.deliveryCount - 1));
        retrying(a, task, err, m.info.deliveryCount, delay);
        reply = () => m.nak(delay);
      } else {
        a.logger.error({ err, runId: task.runId }, 'step failed; ending the run');
        await endRun(a, task.runId, 'failed', {
          stopReason: 'ERROR',
          error: toWireError(err),
        }).catch(() => undefined);
        reply = () => m.ack();
      }
    } finally {
      clearInterval(keepAlive);
    }
    // An ack or nak published while the connection is down is lost, and the task would only
    // come back after the ack wait: send it once reconnected (a step that failed because the
    // server went away is retried promptly after the restart).
    await runtime.whenConnected();
    if (!stepDone) await releaseLease(task.runId, a.agentId);
    reply();
  }

  /**
   * A step failed in a way worth another try: say why in the run's trace (what failed, which
   * attempt of how many, when the next one comes), not only in this planner's log.
   */
  function retrying(
    a: Actor,
    task: Task,
    err: ReinsError,
    attempt: number,
    nextTryMs: number,
    reason = err.message,
  ): void {
    a.logger.warn({ err, runId: task.runId, attempt }, 'step failed; will retry');
    a.trace(task.runId, 'step.retry', {
      code: err.code,
      reason: reason.slice(0, 500),
      attempt,
      ...(err.details?.['reason'] === 'supervisor_lost' ? {} : { maxAttempts }),
      nextTryMs,
    });
  }

  /** Lets another planner take the run at once (after a halt, pause or failure of this step). */
  async function releaseLease(runId: string, agentId: string): Promise<void> {
    stateCache.delete(runId);
    try {
      const { state, revision } = await store.load(runId);
      if (state.owner !== agentId || state.done) return;
      await save({ ...state, owner: undefined, leaseUntil: undefined }, revision);
    } catch {
      // best effort: the lease expires anyway
    }
  }

  /** The run record from the supervisor (fresh). */
  function fetchRun(runId: string, ctx: WorkContext): Promise<RunRecord> {
    return runtime.request(
      subjects.runsGet,
      RunGetRequest,
      RunRecord,
      { runId },
      { signal: ctx.signal },
    );
  }

  /** Drops what this planner remembers of a run (it ended, or someone else may write it). */
  function forget(runId: string): void {
    runCache.delete(runId);
    stateCache.delete(runId);
  }

  async function endRun(
    a: Actor,
    runId: string,
    status: 'completed' | 'stopped' | 'failed',
    extra: {
      answer?: string;
      stopReason?: StopReason;
      error?: ReturnType<typeof toWireError>;
    } = {},
  ): Promise<void> {
    await runtime.request(subjects.runsEnd, RunEndRequest, RunRecord, {
      runId,
      agentId: a.agentId,
      status,
      ...extra,
    });
  }

  /** One governed step of a run. */
  /** What a step carries to its first tool call. */
  type Carried = { settle?: SettleRequest };

  /**
   * One step of a run. The model call's settle rides on the step's first tool call (`sv.act`)
   * when there is one; whatever is still carried when the step ends — no tool call was sent,
   * or the step stopped first — is sent on its own.
   */
  async function step(
    a: Actor,
    task: Task,
    ctx: WorkContext,
    firstDelivery: boolean,
  ): Promise<void> {
    const carried: Carried = {};
    try {
      await stepBody(a, task, ctx, firstDelivery, carried);
    } finally {
      if (carried.settle) void sendSettle(a, carried.settle);
    }
  }

  async function stepBody(
    a: Actor,
    task: Task,
    ctx: WorkContext,
    firstDelivery: boolean,
    carried: Carried,
  ): Promise<void> {
    const runId = task.runId;
    let run = runCache.get(runId);
    if (!run) {
      run = await fetchRun(runId, ctx);
      if (run.status === 'halted' || run.status === 'paused') throw new Suspend();
      if (isRunEnded(run.status)) return;
      runCache.set(runId, run);
    }

    // The state this planner wrote last is trusted for the task it enqueued itself (the step
    // right after it) on that task's first delivery; a task delivered again may have been
    // worked on by another planner meanwhile (a step that failed, or waited for an approval),
    // and any other task reads the state afresh. A stale copy could not fork the run (every
    // write below is a compare-and-set on the revision it was read at), but it would make a
    // model call twice and leave the run to the planner that wrote last.
    const remembered = stateCache.get(runId);
    let { state, revision } =
      remembered &&
      firstDelivery &&
      task.step > 0 &&
      remembered.state.step === task.step &&
      !remembered.state.pending
        ? remembered
        : await store.load(runId);
    if (state.done) {
      // The final answer is persisted but the run is not recorded as ended (the supervisor was
      // unreachable right after): record it now, from the stored answer.
      const last = state.history.at(-1);
      if (last?.role === 'assistant') {
        await endRun(a, runId, 'completed', { answer: last.content ?? '' });
      }
      forget(runId);
      return;
    }
    // Tasks enqueued by planners carry the number of steps done when they were enqueued; one
    // that is behind the state is a stale duplicate. Tasks from the supervisor (step 0: start,
    // resume) mean "continue from wherever the run is".
    if (task.step > 0 && state.step > task.step) {
      // The step this task asked for is done. Make sure its successor was enqueued: a step
      // whose save landed but whose reply was lost (NATS restart) never got to enqueue it.
      // JetStream dedupes by message id, so this is a no-op when it was.
      if (!state.pending && !(state.owner && (state.leaseUntil ?? 0) > Date.now())) {
        await enqueueNext(runId, state.step);
      }
      return;
    }
    const now = Date.now();
    if (state.owner && state.owner !== a.agentId && (state.leaseUntil ?? 0) > now) {
      // The holder may be alive (then it finishes the step) or crashed (then its lease runs
      // out): either way this task comes back after the lease, and is stale or takes over.
      throw new LeaseHeld((state.leaseUntil ?? now) - now + 250);
    }
    // The run is held (leased) while its tool calls run: the lease is written with the pending
    // step. A step resumed after a crash takes the lease before running its tools again.
    if (state.pending) {
      state = { ...state, owner: a.agentId, leaseUntil: now + leaseMs };
      revision = await save(state, revision);
    }

    const model = typeof options.model === 'function' ? options.model(run) : options.model;
    const stepNo = state.step + 1;
    const stepId = `s${stepNo}`;
    const trace = (
      event: string,
      data: Record<string, unknown>,
      ids: { spanId?: string; parentId?: string } = {},
    ) => a.trace(runId, event, data, { stepId, ...ids });

    /** Another planner wrote the run's state since it was read here: it carries the run on. */
    const superseded = () => {
      forget(runId);
      trace('step.end', { step: stepNo, superseded: true });
    };

    let pending = state.pending;
    if (!pending || pending.step !== stepNo) {
      trace('step.start', {
        step: stepNo,
        goal: stepNo === 1 ? run.goal.slice(0, 500) : undefined,
      });
      const conversation = buildConversation(run, state);
      const request: Omit<GenerateRequest, 'signal'> = {
        messages: conversation,
        tools,
        ...(options.maxOutputTokens ? { maxOutputTokens: options.maxOutputTokens } : {}),
      };
      const estimate = budgetEstimate(model, request, { usdBudget: run.budget.usd !== undefined });
      const decision = await runtime.request(
        subjects.authorize(runId),
        AuthorizeRequest,
        Decision,
        { runId, agentId: a.agentId, role, stepId, kind: 'llm', model: model.name, estimate },
        { signal: ctx.signal, timeoutMs: 10_000 },
      );
      if (decision.decision !== 'grant') {
        const err =
          decision.decision === 'deny'
            ? fromWireError(decision.error)
            : new PausedError('approval pending');
        trace('step.end', { step: stepNo, denied: err.code, rule: decision.rule });
        if (decision.rule === 'run.not_live' || decision.rule === 'run.unknown') {
          // The run ended, or was halted or paused, since this planner cached its record.
          // (No lease to release: this path holds none, and `handleTask` releases on failure.)
          forget(runId);
          const fresh = await fetchRun(runId, ctx);
          if (isRunEnded(fresh.status) || fresh.status === 'halted' || fresh.status === 'paused')
            throw new Suspend();
          throw err;
        }
        if (decision.decision === 'pending') throw new Suspend();
        if (err.code === 'HALTED' || err.code === 'PAUSED') throw err;
        const isStepCap = err.code === 'BUDGET_EXCEEDED' && err.details?.['dimension'] === 'steps';
        await endRun(a, runId, 'stopped', {
          stopReason: isStepCap ? 'STEP_CAP' : (STOP_BY_CODE[err.code] ?? 'ERROR'),
          error: toWireError(err),
        });
        await save(
          { ...state, done: true, owner: undefined, leaseUntil: undefined },
          revision,
        ).catch(() => undefined);
        forget(runId);
        return;
      }
      const grant = decision.grant;
      // In flight only on request: `model.result` carries the same grant and estimate.
      if (runtime.traceInFlight)
        trace(
          'model.call',
          { model: model.name, estimate, grantId: grant.grantId },
          { spanId: `${stepId}-m`, parentId: stepId },
        );
      let result;
      try {
        result = await model.generate({ ...request, signal: ctx.signal });
      } catch (err) {
        // A call cut off in flight (abort, timeout) may have been billed: charge the reserved
        // worst case. A refused call (auth, rate limit, bad request) cost nothing.
        const cutOff =
          err instanceof ReinsError && (err.code === 'ABORTED' || err.code === 'TIMEOUT');
        void sendSettle(
          a,
          settleRequest(
            grant,
            cutOff
              ? {
                  inputTokens: estimate.inputTokens,
                  outputTokens: estimate.outputTokens,
                  usd: estimate.usd,
                }
              : { inputTokens: 0, outputTokens: 0, usd: 0 },
            'error',
          ),
        );
        throw err;
      }
      const usd = costOrZero(model, result.usage);
      const settleReq = settleRequest(grant, { ...result.usage, usd }, 'ok');
      trace(
        'model.result',
        {
          model: result.model,
          grantId: grant.grantId,
          estimate,
          usage: result.usage,
          usd,
          finishReason: result.finishReason,
          toolCalls: result.toolCalls.map((c) => c.name),
          text: result.message.content?.slice(0, 500),
        },
        { spanId: `${stepId}-m`, parentId: stepId },
      );
      if (result.toolCalls.length === 0) {
        const answer = result.message.content ?? '';
        const history = [...state.history, result.message];
        const saved = await saveUnlessSuperseded(
          {
            ...state,
            step: stepNo,
            history,
            done: true,
            owner: undefined,
            leaseUntil: undefined,
            pending: undefined,
          },
          revision,
        );
        if (saved === undefined) return superseded();
        trace('step.end', { step: stepNo, final: true });
        // The last call's actual cost is counted before the end is reported, so the run's
        // record says what it really used (a settle after the end is corrected later).
        await sendSettle(a, settleReq);
        await endRun(a, runId, 'completed', { answer });
        forget(runId);
        return;
      }
      // Sent with the step's first tool call (or on its own when the step ends without one).
      carried.settle = settleReq;
      pending = { step: stepNo, assistant: result.message, results: {} };
      state = { ...state, pending, owner: a.agentId, leaseUntil: Date.now() + leaseMs };
      const saved = await saveUnlessSuperseded(state, revision);
      if (saved === undefined) return superseded();
      revision = saved;
    }

    // Run every tool call of the step (again, after a crash: results are idempotent).
    const assistant = pending.assistant;
    const calls = assistant.role === 'assistant' ? (assistant.toolCalls ?? []) : [];
    const parsed = calls.map((c) => parseCall(c));
    const results = { ...pending.results };
    const outcomes = await Promise.allSettled(
      parsed.map(async (call, i) => {
        if (results[call.id]) return;
        results[call.id] = await runToolCall(a, run, stepNo, stepId, i, call, ctx, trace, carried);
      }),
    );
    const failed = outcomes.find((o) => o.status === 'rejected');
    if (failed) {
      // Keep the results that came in (a call waiting for approval must not make the others
      // run again), then stop the step.
      if (Object.keys(results).length > Object.keys(pending.results).length) {
        await saveUnlessSuperseded({ ...state, pending: { ...pending, results } }, revision);
      }
      throw failed.reason;
    }
    const toolMessages = parsed
      .map((c) => results[c.id])
      .filter((m): m is ChatMessage => m !== undefined);
    const history = [...state.history, assistant, ...toolMessages];
    const trimmed = await trimHistory(history, state.summary);
    await save(
      {
        ...state,
        step: stepNo,
        history: trimmed.history,
        ...(trimmed.summary !== undefined ? { summary: trimmed.summary } : {}),
        // Release the run: the next step may be taken by any planner.
        owner: undefined,
        leaseUntil: undefined,
        pending: undefined,
      },
      revision,
    );
    trace('step.end', { step: stepNo, tools: parsed.length });
    // Next step: deduplicated by step number, so a redelivered task cannot fork the run.
    await enqueueNext(runId, stepNo);
  }

  /** Enqueues the task for the step after `stepsDone`, deduplicated by step number. */
  async function enqueueNext(runId: string, stepsDone: number): Promise<void> {
    const next: Task = { runId, role, step: stepsDone, enqueuedAt: Date.now() };
    await runtime.js.publish(subjects.task(role), encode(Task, next), {
      msgID: `${runId}:${stepsDone}`,
    });
  }

  /** `save`, but `undefined` when another planner wrote the state since `revision`. */
  async function saveUnlessSuperseded(
    state: RunState,
    revision: number,
  ): Promise<number | undefined> {
    try {
      return await save(state, revision);
    } catch (err) {
      if (err instanceof ConflictError) return undefined;
      throw err;
    }
  }

  /** Writes the run state (CAS on `revision`) and remembers it for the run's next step. */
  async function save(state: RunState, revision: number): Promise<number> {
    try {
      const next = await store.save(state, revision);
      if (state.done) forget(state.runId);
      else stateCache.set(state.runId, { state, revision: next });
      return next;
    } catch (err) {
      stateCache.delete(state.runId);
      if (!(err instanceof PayloadTooLargeError)) throw err;
      // History too large for one KV value: keep the most recent half and retry.
      const keep = Math.max(4, Math.floor(state.history.length / 2));
      return save({ ...state, history: state.history.slice(-keep) }, revision);
    }
  }

  async function trimHistory(
    history: ChatMessage[],
    summary: string | undefined,
  ): Promise<{ history: ChatMessage[]; summary?: string }> {
    if (history.length <= maxHistory)
      return { history, ...(summary !== undefined ? { summary } : {}) };
    let cut = history.length - maxHistory;
    // Never split an assistant turn from its tool results.
    while (cut < history.length && history[cut]?.role === 'tool') cut++;
    const dropped = history.slice(0, cut);
    const next = options.summarize ? await options.summarize(dropped, summary) : summary;
    return { history: history.slice(cut), ...(next !== undefined ? { summary: next } : {}) };
  }

  function buildConversation(run: RunRecord, state: RunState): ChatMessage[] {
    const system =
      options.system ?? 'You are a careful agent. Use the tools to reach the goal, then answer.';
    const goal = run.input ? `${run.goal}\n\nInput:\n${JSON.stringify(run.input)}` : run.goal;
    const out: ChatMessage[] = [
      { role: 'system', content: system },
      { role: 'user', content: goal },
    ];
    if (state.summary)
      out.push({ role: 'user', content: `Summary of earlier steps: ${state.summary}` });
    return [...out, ...state.history];
  }

  /**
   * Settles a model-call grant without holding up the step: sent as a request and retried (a
   * supervisor restarting, JetStream electing a leader) until a supervisor acknowledges it. One
   * that never gets through leaves the reservation to be charged in full when its lease ends:
   * the budget stays safe but counts the worst case. Settling twice counts once.
   */
  /** The settle of a model-call grant: what the call really cost. */
  function settleRequest(
    grant: Grant,
    actual: { inputTokens: number; outputTokens: number; usd: number },
    outcome: 'ok' | 'error',
  ): SettleRequest {
    return {
      grantId: grant.grantId,
      runId: grant.runId,
      agentId: grant.agentId,
      actual: { ...actual, steps: 1 },
      outcome,
    };
  }

  /**
   * Sends a settle on its own, retried in the background until a supervisor acknowledges it;
   * resolves then (never rejects: a settle that cannot be sent is charged in full at its lease end).
   */
  function sendSettle(a: Actor, req: SettleRequest): Promise<void> {
    const sent = retryTransport(
      'settle',
      () =>
        runtime.request(subjects.settle(req.runId), SettleRequest, SettleReply, req, {
          timeoutMs: 5_000,
        }),
      { timeoutMs: SETTLE_RETRY_MS },
    ).then(
      () => undefined,
      (err: unknown) => {
        runtime.logger.error(
          { err, grantId: req.grantId },
          'settle not acknowledged; the reservation will be charged in full when its lease ends',
        );
      },
    );
    a.background(sent);
    return sent;
  }

  async function runToolCall(
    a: Actor,
    run: RunRecord,
    stepNo: number,
    stepId: string,
    index: number,
    call: ParsedToolCall,
    ctx: WorkContext,
    trace: (
      event: string,
      data: Record<string, unknown>,
      ids?: { spanId?: string; parentId?: string },
    ) => void,
    carried: Carried,
  ): Promise<ChatMessage> {
    const spanId = `${stepId}-t${index}`;
    const idempotencyKey = `${run.runId}.${stepNo}.${index}`;
    trace(
      'tool.call',
      {
        tool: call.name,
        args: call.valid ? call.args : call.arguments.slice(0, 500),
        idempotencyKey,
      },
      { spanId, parentId: stepId },
    );
    const done = (outcome: Parameters<typeof toolResultMessage>[2]): ChatMessage => {
      trace(
        'tool.result',
        outcome.ok
          ? { tool: call.name, ok: true, output: preview(outcome.output) }
          : { tool: call.name, ok: false, error: outcome.error },
        { spanId, parentId: stepId },
      );
      return toolResultMessage(call.id, call.name, outcome);
    };
    if (!call.valid)
      return done({ ok: false, error: { code: 'BAD_REQUEST', message: call.error } });
    try {
      if (call.name === DELEGATE_TOOL && delegateTo.length) {
        const output = await delegate(a, run, call.args, idempotencyKey, ctx, spanId);
        return done({ ok: true, output });
      }
      // The step's model-call settle rides on its first tool call.
      const settle = carried.settle;
      delete carried.settle;
      const res = await runtime
        .request(
          subjects.act(run.runId),
          ActRequest,
          ToolResult,
          {
            runId: run.runId,
            agentId: a.agentId,
            role,
            stepId,
            tool: call.name,
            args: call.args,
            idempotencyKey,
            timeoutMs: toolTimeoutMs,
            ...(settle ? { settle } : {}),
          },
          { signal: ctx.signal, timeoutMs: toolTimeoutMs + 5_000 },
        )
        .catch((err: unknown) => {
          // No answer from the control plane: it may not have seen the settle either. Send it
          // on its own (settling twice counts once). A refusal came after the settle counted.
          const answered = err instanceof ReinsError && !err.retryable && err.code !== 'ABORTED';
          if (settle && !answered) void sendSettle(a, settle);
          throw err;
        });
      return done(res.ok ? { ok: true, output: res.output } : { ok: false, error: res.error });
    } catch (err) {
      // The run itself is halted or paused: stop this step without recording a result.
      if (
        err instanceof ReinsError &&
        (err.code === 'HALTED' || err.code === 'PAUSED' || err.code === 'ABORTED')
      )
        throw err;
      // A human decides: the step stops here with its pending action kept in the run state,
      // and carries on (with the same idempotency key) when the decision re-enqueues the run.
      if (err instanceof ReinsError && err.code === 'APPROVAL_PENDING') {
        const id = err.details?.['approvalId'];
        const approvalId = typeof id === 'string' ? id : '';
        trace(
          'tool.waiting',
          { tool: call.name, approvalId, expiresAt: err.details?.['expiresAt'] },
          { spanId, parentId: stepId },
        );
        throw new AwaitingApproval(approvalId);
      }
      // No answer (the executor died mid-call, NATS is recovering): retry the step later with
      // the same idempotency key — the executor replays, takes over an idempotent tool, or
      // reports the outcome as unknown. Never guess that the tool failed.
      if (err instanceof ReinsError && err.retryable) throw err;
      return done({ ok: false, error: toWireError(err) });
    }
  }

  async function delegate(
    a: Actor,
    run: RunRecord,
    args: Record<string, unknown>,
    key: string,
    ctx: WorkContext,
    spanId: string,
  ): Promise<unknown> {
    const childRole = typeof args['role'] === 'string' ? args['role'] : '';
    if (!delegateTo.includes(childRole))
      throw new HaltedError(`cannot delegate to role ${childRole}`);
    const budget: Record<string, number> = {};
    if (typeof args['budgetUsd'] === 'number') budget['usd'] = args['budgetUsd'];
    if (typeof args['maxSteps'] === 'number') budget['steps'] = args['maxSteps'];
    const child = await runtime.request(subjects.runsStart, RunStartRequest, RunRecord, {
      goal: (typeof args['goal'] === 'string' ? args['goal'] : '').slice(0, 65_536) || 'sub-goal',
      role: childRole,
      parentRunId: run.runId,
      budget,
      idempotencyKey: key,
      requestedBy: a.agentId,
      ...(run.tenant ? { tenant: run.tenant } : {}),
    });
    a.trace(
      run.runId,
      'delegate.start',
      { childRunId: child.runId, role: childRole },
      { spanId, parentId: spanId.split('-')[0] ?? spanId },
    );
    // Woken by the child's end through the process's shared watch of run records (no polling,
    // no supervisor round trips); the child timeout and the step's abort still apply.
    const childTimeoutMs = options.childTimeoutMs ?? 600_000;
    let rec: RunRecord;
    try {
      rec = await RunRecords.of(runtime).waitForEnd(child.runId, {
        timeoutMs: childTimeoutMs,
        signal: ctx.signal,
      });
    } catch (err) {
      if (err instanceof ReinsError && err.code === 'TIMEOUT')
        throw new UnavailableError(`child run ${child.runId} did not finish in time`, {
          retryable: false,
          cause: err,
        });
      if (err instanceof ReinsError && err.code === 'ABORTED')
        throw new AbortedError('delegation aborted', { cause: ctx.signal.reason });
      throw err;
    }
    if (rec.status === 'completed') return { childRunId: rec.runId, answer: rec.answer ?? '' };
    return {
      childRunId: rec.runId,
      status: rec.status,
      stopReason: rec.stopReason,
      error: rec.error?.message,
    };
  }

  return actor;
}

/** Runs (records and states) a planner remembers between steps. */
const CACHE_RUNS = 10_000;

function parseCall(c: { id: string; name: string; arguments: string }): ParsedToolCall {
  try {
    const args: unknown = JSON.parse(c.arguments);
    if (typeof args === 'object' && args !== null && !Array.isArray(args)) {
      return { ...c, valid: true, args: args as Record<string, unknown> };
    }
    return { ...c, valid: false, error: 'tool arguments must be a JSON object' };
  } catch {
    return { ...c, valid: false, error: 'tool arguments are not valid JSON' };
  }
}

function costOrZero(model: Model, usage: { inputTokens: number; outputTokens: number }): number {
  try {
    return costOf(model, usage);
  } catch {
    return 0;
  }
}

function preview(value: unknown): unknown {
  const s = JSON.stringify(value) ?? 'null';
  return s.length > 500 ? `${s.slice(0, 500)}…` : value;
}
