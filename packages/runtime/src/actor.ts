import { hostname } from 'node:os';
import type { Msg, MsgHdrs, Subscription } from '@nats-io/transport-node';
import {
  AbortedError,
  Ack,
  ControlAck,
  ControlMessage,
  HaltedError,
  Heartbeat,
  PausedError,
  ReinsError,
  TraceEvent,
  UnavailableError,
  assertEventName,
  assertId,
  decode,
  encode,
  newId,
  toWireError,
  type ActorStatus,
  type Scope,
} from '@reins/protocol';
import type { z } from 'zod';
import type { Logger } from './logger.js';
import type { Runtime } from './runtime.js';
import { ScopeSet, scopeMatches, type ScopeTarget } from './scopes.js';
import { errorPayload, payloadHeaders } from './wire.js';
import { isAllowedReply, replyFamily } from './reply-guard.js';

/** Version reported in heartbeats. */
export const RUNTIME_VERSION = '0.1.0';

/** What a user writes to make an actor: a role and behaviour. The runtime does the rest. */
export interface ActorDefinition {
  /** Role name (`planner`, `executor`, `reviewer`…): `[A-Za-z0-9_-]{1,64}`. */
  role: string;
  /** Agent id; generated (`<role>_<unique>`) when absent. */
  agentId?: string;
  /** Version reported in heartbeats. */
  version?: string;
  /** Registers handlers and consumers. Throwing here fails the start. */
  setup?(actor: Actor): void | Promise<void>;
  /**
   * Take no work while no supervisor is heard (the runtime's dead-man switch): fail closed.
   * Planners and executors set it; a supervisor must not.
   */
  requireSupervisor?: boolean;
  /**
   * Whether halts and pauses apply to this actor (default true). The supervisor sets false: it
   * is the one that halts, and must keep answering (resume, runs.get) while everything else is
   * halted.
   */
  haltable?: boolean;
  /** Called after the actor has stopped (release resources). */
  teardown?(actor: Actor): void | Promise<void>;
  /**
   * Signs each heartbeat before it is published. Supervisors sign theirs, so the dead-man
   * switch of actors that trust their key cannot be satisfied by anyone else (`signHeartbeat`).
   */
  signHeartbeat?(heartbeat: Heartbeat): Heartbeat;
}

/** Identity helper that keeps the definition typed. */
export function defineActor(definition: ActorDefinition): ActorDefinition {
  assertId(definition.role, 'role');
  if (definition.agentId !== undefined) assertId(definition.agentId, 'agentId');
  return definition;
}

/** Context handed to every unit of work. */
export interface WorkContext {
  /** Aborted on halt (scope match), shutdown past its deadline, or caller cancellation. */
  signal: AbortSignal;
  runId: string | undefined;
  /** Child logger with `{ role, agentId, runId }`. */
  logger: Logger;
  /**
   * Marks the unit as being in the middle of a side effect (a tool that writes), or clears the
   * mark with `undefined`. A halt that aborts it meanwhile reports the action as an unknown
   * outcome in its ack: nobody can say whether the effect happened.
   */
  sideEffect(action: { tool: string; idempotencyKey: string } | undefined): void;
}

/** Context handed to a request handler. */
export interface HandlerContext extends WorkContext {
  /** The raw NATS message (headers, reply subject). */
  msg: Msg;
  /**
   * Forwards the request to another subject keeping the caller's reply subject, so the next
   * hop answers the caller directly. The handler's own return value is then not sent.
   */
  forward<S extends z.ZodType>(subject: string, schema: S, payload: z.input<S>): void;
}

/** Options of `Actor.handle`. */
export interface HandleOptions<Res extends z.ZodType> {
  /** Queue group: each request goes to one member of the group. */
  queue?: string;
  /** Schema of the reply; without it the handler's result is ignored and `{ ok: true }` is sent. */
  reply?: Res;
  /** Which run a request belongs to (default: its `runId` field, when it has one). */
  runOf?: (request: unknown) => string | undefined;
  /** Largest accepted request (default: the runtime's limit). */
  maxPayloadBytes?: number;
}

/** A tracked unit of work: what halts and shutdown abort and wait for. */
class WorkUnit {
  readonly runId: string | undefined;
  readonly label: string;
  readonly controller = new AbortController();
  /** The side effect in progress, if any (see `WorkContext.sideEffect`). */
  effect: { tool: string; idempotencyKey: string } | undefined;
  #ended = false;
  #done: Promise<void> | undefined;
  #resolve: (() => void) | undefined;

  constructor(runId: string | undefined, label: string) {
    this.runId = runId;
    this.label = label;
  }

  /** Settles when the unit ends. Made on demand: only halts and shutdown wait for a unit. */
  get done(): Promise<void> {
    if (this.#ended) return Promise.resolve();
    this.#done ??= new Promise<void>((r) => (this.#resolve = r));
    return this.#done;
  }

  end(): void {
    this.#ended = true;
    this.#resolve?.();
  }

  /** What a failure of the unit is reported as: the abort reason when it was aborted. */
  failure(err: unknown): unknown {
    const signal = this.controller.signal;
    return signal.aborted && signal.reason instanceof ReinsError ? signal.reason : err;
  }
}

/**
 * The context of a unit. The `{ runId }` child logger is made on first use: most handlers
 * never log, and a pino child costs more than the rest of a request's bookkeeping. An own
 * accessor (not a prototype getter), so `{ ...ctx }` still copies `logger`.
 */
function workContext(unit: WorkUnit, actorLogger: Logger): WorkContext {
  const runId = unit.runId;
  let logger: Logger | undefined;
  return {
    signal: unit.controller.signal,
    runId,
    get logger(): Logger {
      logger ??= runId ? actorLogger.child({ runId }) : actorLogger;
      return logger;
    },
    set logger(value: Logger) {
      logger = value;
    },
    sideEffect: (action) => {
      unit.effect = action;
    },
  };
}

/** Encoded `{ ok: true }`, the reply of a handler without a reply schema (made once). */
let ackBytes: Uint8Array | undefined;

type BaseStatus = Exclude<ActorStatus, 'halted' | 'lost'>;

/** An action a halt aborted in the middle of its side effect. */
type UnknownOutcome = { runId: string; tool: string; idempotencyKey: string };

/**
 * A running actor: a role, an agent id, handlers, a lifecycle
 * (`starting → running ⇄ paused → draining → stopped`, plus `halted` and `failed`), a control
 * channel, heartbeats and traces. Create it with `runtime.start(defineActor(…))`.
 */
export class Actor implements AsyncDisposable {
  readonly runtime: Runtime;
  readonly role: string;
  readonly agentId: string;
  readonly version: string;
  readonly logger: Logger;
  #base: BaseStatus = 'starting';
  #error: ReinsError | undefined;
  readonly #definition: ActorDefinition;
  readonly #units = new Set<WorkUnit>();
  readonly #subs: Subscription[] = [];
  readonly #localHalts = new ScopeSet();
  readonly #paused = new ScopeSet();
  #markers: { halted: ScopeSet } | undefined;
  #heartbeatTimer: NodeJS.Timeout | undefined;
  #traceSeq = 0;
  #stopping: Promise<{ abandoned: number }> | undefined;
  readonly #statusListeners = new Set<(status: ActorStatus) => void>();
  readonly #consumers = new Set<{ stop(): Promise<void> | void }>();
  /** Work that outlives the request or task that started it (see `background`). */
  readonly #background = new Set<Promise<void>>();

  /** Use `runtime.start()`. */
  constructor(runtime: Runtime, definition: ActorDefinition) {
    this.runtime = runtime;
    this.#definition = definition;
    this.role = assertId(definition.role, 'role');
    this.agentId =
      definition.agentId !== undefined
        ? assertId(definition.agentId, 'agentId')
        : newId(this.role.slice(0, 20));
    this.version = definition.version ?? RUNTIME_VERSION;
    this.logger = runtime.logger.child({ role: this.role, agentId: this.agentId });
  }

  /** Current status; `halted` when a halt marker covers this actor. */
  get status(): ActorStatus {
    if (
      (this.#base === 'running' || this.#base === 'paused') &&
      this.#haltFor({ agentId: this.agentId, role: this.role })
    ) {
      return 'halted';
    }
    return this.#base;
  }

  /** The error that failed the actor, if any. */
  get error(): ReinsError | undefined {
    return this.#error;
  }

  /** Units of work in flight. */
  get inFlight(): number {
    return this.#units.size;
  }

  /** Runs with work in flight. */
  get runs(): string[] {
    return [...new Set([...this.#units].flatMap((u) => (u.runId ? [u.runId] : [])))];
  }

  /** Calls `listener` on every status change. Returns an unsubscribe function. */
  onStatus(listener: (status: ActorStatus) => void): () => void {
    this.#statusListeners.add(listener);
    return () => this.#statusListeners.delete(listener);
  }

  #setBase(status: BaseStatus): void {
    if (this.#base === status) return;
    this.#base = status;
    const s = this.status;
    for (const l of this.#statusListeners) l(s);
    this.logger.debug({ status: s }, 'status');
  }

  /** @internal Started by the runtime. */
  async start(): Promise<void> {
    // Fail closed: an actor that cannot read halt markers does not start.
    this.#markers = await this.runtime.halts();
    // Served on the serving connection: its acks go to the supervisor's inbox and nowhere else.
    const nc = this.runtime.serving;
    this.#subs.push(
      nc.subscribe(this.runtime.subjects.ctlBcastAll, {
        callback: (err, msg) => {
          if (err) return;
          void this.#onControl(msg);
        },
      }),
    );
    try {
      await this.#definition.setup?.(this);
    } catch (err) {
      this.fail(err);
      throw err;
    }
    // Make sure the server has every subscription before we say we are running: a request
    // from another connection right after start() must not meet "no responders".
    await this.runtime.serving.flush();
    if (this.runtime.serving !== this.runtime.nc) await this.runtime.nc.flush();
    this.#setBase('running');
    void this.#heartbeat();
    this.#heartbeatTimer = setInterval(() => void this.#heartbeat(), this.runtime.heartbeatMs);
    if (this.#definition.requireSupervisor) this.runtime.watchSupervisors();
    this.#heartbeatTimer.unref();
    this.logger.info({ version: this.version }, 'actor started');
  }

  #haltFor(target: ScopeTarget): Scope | undefined {
    return this.#localHalts.find(target) ?? this.#markers?.halted.find(target);
  }

  /**
   * Why new work for `runId` would be refused right now, or `undefined` when it may start:
   * halted (marker or broadcast), paused, draining/stopped, failed.
   */
  refusal(runId?: string): ReinsError | undefined {
    const target = { agentId: this.agentId, role: this.role, runId };
    const haltable = this.#definition.haltable !== false;
    const halt = haltable ? this.#haltFor(target) : undefined;
    if (halt)
      return new HaltedError(`halted: ${describeScope(halt)}`, { details: { scope: halt } });
    switch (this.#base) {
      case 'starting':
      case 'running':
        break;
      case 'paused':
        return new PausedError(`agent ${this.agentId} is paused`);
      case 'draining':
      case 'stopped':
        return new UnavailableError(`agent ${this.agentId} is ${this.#base}`);
      case 'failed':
        return new UnavailableError(`agent ${this.agentId} has failed`, { retryable: false });
    }
    const paused = haltable ? this.#paused.find(target) : undefined;
    if (paused)
      return new PausedError(`paused: ${describeScope(paused)}`, { details: { scope: paused } });
    if (!this.runtime.connected) return new UnavailableError('NATS connection is down');
    if (this.#definition.requireSupervisor && !this.runtime.supervisorAlive) {
      return new UnavailableError(
        `no supervisor heard for ${this.runtime.supervisorDeadManMs} ms: taking no work (fail closed)`,
        { details: { reason: 'supervisor_lost' } },
      );
    }
    return undefined;
  }

  /**
   * Runs `fn` as a tracked unit of work: refused when its run (or this actor) is halted or
   * paused, aborted through `ctx.signal` by a matching halt or by shutdown. When the unit was
   * aborted, the abort reason (`HaltedError`, `AbortedError`) is thrown instead of `fn`'s error.
   */
  async work<T>(
    options: { runId?: string | undefined; label?: string },
    fn: (ctx: WorkContext) => Promise<T>,
  ): Promise<T> {
    const unit = this.#begin(options.runId, options.label ?? 'work');
    try {
      return await fn(workContext(unit, this.logger));
    } catch (err) {
      throw unit.failure(err);
    } finally {
      this.#end(unit);
    }
  }

  /** Starts a unit of work for `runId`, or throws why it is refused. */
  #begin(runId: string | undefined, label: string): WorkUnit {
    const refused = this.refusal(runId);
    if (refused) throw refused;
    const unit = new WorkUnit(runId, label);
    this.#units.add(unit);
    return unit;
  }

  #end(unit: WorkUnit): void {
    this.#units.delete(unit);
    unit.end();
  }

  /**
   * Serves typed requests on `subject`. Each request is validated with `requestSchema` and
   * runs as a unit of work. Malformed, oversized or refused requests, and handlers that throw,
   * get a coded error reply (logged once); the actor keeps serving.
   */
  handle<Req extends z.ZodType, Res extends z.ZodType = typeof Ack>(
    subject: string,
    requestSchema: Req,
    fn: (
      request: z.output<Req>,
      ctx: HandlerContext,
    ) => Promise<z.input<Res> | undefined> | z.input<Res> | undefined,
    options: HandleOptions<Res> = {},
  ): { unsubscribe(): void } {
    // Same for every request on this subject: made once, not per message.
    const decodeOptions = {
      maxPayloadBytes: options.maxPayloadBytes ?? this.runtime.maxPayloadBytes,
      name: subject,
    };
    const sub = this.runtime.serving.subscribe(subject, {
      ...(options.queue ? { queue: options.queue } : {}),
      callback: (err, msg) => {
        if (err) {
          this.logger.error({ err, subject }, 'subscription error');
          return;
        }
        void this.#dispatch(msg, subject, requestSchema, fn, options, decodeOptions);
      },
    });
    this.#subs.push(sub);
    return { unsubscribe: () => sub.unsubscribe() };
  }

  /**
   * One request: decode, run the handler as a unit of work, answer once (the result, `{ ok }`,
   * or a coded error), unless the handler forwarded the request. Each failure is logged once.
   */
  async #dispatch<Req extends z.ZodType, Res extends z.ZodType>(
    msg: Msg,
    subject: string,
    requestSchema: Req,
    fn: (
      request: z.output<Req>,
      ctx: HandlerContext,
    ) => Promise<z.input<Res> | undefined> | z.input<Res> | undefined,
    options: HandleOptions<Res>,
    decodeOptions: { maxPayloadBytes: number; name: string },
  ): Promise<void> {
    // A reply subject outside the inboxes would make this actor write there with its own
    // credentials (a halt marker, a ledger key, an audit entry): refuse before anything runs.
    if (msg.reply && !this.#replyAllowed(msg, subject)) return;
    let request: z.output<Req>;
    try {
      request = decode(requestSchema, msg.data, decodeOptions);
    } catch (err) {
      this.#refuse(msg, subject, err, 'warn', true);
      return;
    }
    const runId = options.runOf ? options.runOf(request) : runIdOf(request);
    // Set before the forward is published: whatever happens next, the handler's answer is not
    // sent (the next hop answers, or the caller times out).
    let forwarded = false;
    try {
      const unit = this.#begin(runId, subject);
      let result: z.input<Res> | undefined;
      try {
        // The unit's context grows the two request-only members (still one object per request).
        const ctx: HandlerContext = Object.assign(workContext(unit, this.logger), {
          msg,
          forward: <S extends z.ZodType>(to: string, schema: S, payload: z.input<S>) => {
            forwarded = true;
            this.runtime.publish(to, schema, payload, msg.reply ? { reply: msg.reply } : {});
          },
        });
        const out = fn(request, ctx);
        // A synchronous handler's result needs no extra turn of the event loop.
        result = isThenable(out) ? await out : out;
      } catch (err) {
        throw unit.failure(err);
      } finally {
        this.#end(unit);
      }
      if (forwarded) return;
      if (options.reply)
        this.#answer(
          msg,
          subject,
          encode(options.reply, result as z.input<Res>),
          payloadHeaders(options.reply),
        );
      else
        this.#answer(msg, subject, (ackBytes ??= encode(Ack, { ok: true })), payloadHeaders(Ack));
    } catch (err) {
      this.#refuse(msg, subject, err, err instanceof ReinsError ? 'debug' : 'error', !forwarded);
    }
  }

  /** False (and reported) when `msg` asks for its answer outside the inboxes. */
  #replyAllowed(msg: Msg, subject: string): boolean {
    const reply = msg.reply ?? '';
    if (isAllowedReply(reply, this.runtime.replyPrefixes)) return true;
    this.runtime.reportSecurityEvent({
      kind: 'reply_refused',
      subject,
      reply: reply.slice(0, 256),
      family: replyFamily(reply),
      role: this.role,
      agentId: this.agentId,
    });
    return false;
  }

  /** Sends a reply when the request asked for one; a failed send is logged, not thrown. */
  #answer(msg: Msg, subject: string, data: Uint8Array, headers: MsgHdrs): void {
    if (!msg.reply) return;
    try {
      msg.respond(data, { headers });
    } catch (err) {
      this.logger.warn({ err, subject }, 'could not send reply');
    }
  }

  /** Logs why a request failed and, unless it was forwarded, answers with the coded error. */
  #refuse(
    msg: Msg,
    subject: string,
    err: unknown,
    level: 'warn' | 'error' | 'debug',
    send: boolean,
  ): void {
    const wire = toWireError(err);
    if (level === 'error') this.logger.error({ err, subject }, 'handler failed');
    else this.logger[level]({ subject, code: wire.code, message: wire.message }, 'request refused');
    if (!send) return;
    const e = errorPayload(err);
    this.#answer(msg, subject, e.data, e.headers);
  }

  /**
   * Tracks work that finishes after its request was answered or its task acked (a result
   * stored for replays, a settle still being retried): `stop()` waits for it, after the units
   * of work, up to its deadline. Its failure is the caller's to handle; it is only awaited here.
   */
  background(work: Promise<unknown>): void {
    const tracked = work.then(
      () => undefined,
      () => undefined,
    );
    this.#background.add(tracked);
    void tracked.then(() => this.#background.delete(tracked));
  }

  /** Registers something with a `stop()` (a task consumer) to stop when the actor stops. */
  own(resource: { stop(): Promise<void> | void }): void {
    this.#consumers.add(resource);
  }

  /**
   * Publishes a trace event on `trace.<runId>.<role>.<agentId>.<event>` (fire-and-forget; the
   * `REINS_TRACE` stream keeps it for late subscribers). Returns the event, or `undefined` when
   * it could not be encoded (logged, never thrown: tracing must not break the work).
   */
  trace(
    runId: string,
    event: string,
    data: Record<string, unknown> = {},
    ids: { stepId?: string; parentId?: string; spanId?: string } = {},
  ): TraceEvent | undefined {
    try {
      assertEventName(event);
      const ev: TraceEvent = {
        runId,
        role: this.role,
        agentId: this.agentId,
        event,
        seq: ++this.#traceSeq,
        ts: Date.now(),
        ...ids,
        data,
      };
      const subject = this.runtime.subjects.trace({
        runId,
        role: this.role,
        agentId: this.agentId,
        event,
      });
      this.runtime.publish(subject, TraceEvent, ev);
      return ev;
    } catch (err) {
      this.logger.warn({ err, runId, event }, 'trace event dropped');
      return undefined;
    }
  }

  async #onControl(msg: Msg): Promise<void> {
    let ctl: ControlMessage;
    try {
      ctl = decode(ControlMessage, msg.data, { name: 'control message' });
    } catch (err) {
      this.logger.warn({ err }, 'malformed control message ignored');
      return;
    }
    const self = { agentId: this.agentId, role: this.role };
    const coversSelf = scopeMatches(ctl.scope, self);
    // Run-scoped messages concern every actor (it must refuse the run from now on).
    if (!coversSelf && ctl.scope.kind !== 'run') return;
    // A non-haltable actor (the supervisor) neither halts nor pauses, and does not ack.
    if (this.#definition.haltable === false) return;
    let aborted = 0;
    let stillRunning = 0;
    let unknownOutcomes: UnknownOutcome[] = [];
    switch (ctl.type) {
      case 'halt': {
        this.#localHalts.add(ctl.scope);
        const reason = new HaltedError(`halted: ${ctl.reason}`, {
          details: { scope: ctl.scope, id: ctl.id },
        });
        ({ aborted, stillRunning, unknownOutcomes } = await this.#abortMatching(
          ctl.scope,
          reason,
          ctl.deadlineMs,
        ));
        if (stillRunning > 0) this.#armWatchdog(ctl.scope);
        this.logger.warn({ scope: ctl.scope, reason: ctl.reason, aborted, stillRunning }, 'halted');
        for (const l of this.#statusListeners) l(this.status);
        break;
      }
      case 'resume':
        this.#localHalts.delete(ctl.scope);
        this.#paused.delete(ctl.scope);
        if (coversSelf && this.#base === 'paused') this.#setBase('running');
        for (const l of this.#statusListeners) l(this.status);
        break;
      case 'pause':
        if (ctl.scope.kind === 'run') this.#paused.add(ctl.scope);
        else if (this.#base === 'running') this.#setBase('paused');
        stillRunning = this.#units.size;
        break;
      case 'drain':
        void this.stop({ deadlineMs: ctl.deadlineMs });
        stillRunning = this.#units.size;
        break;
    }
    // Presence shows the new status before the ack says it is done (`reins ps` right after a
    // halt or resume), bounded so that a slow KV never holds the ack back for long.
    if (coversSelf && ctl.type !== 'drain') {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        this.#heartbeat(),
        new Promise<void>((resolve) => (timer = setTimeout(resolve, 1000))),
      ]);
      clearTimeout(timer);
    }
    // The control message is honoured either way (a halt must not be dodged); only the ack
    // stays inside the inboxes.
    if (msg.reply && this.#replyAllowed(msg, msg.subject)) {
      try {
        msg.respond(
          encode(ControlAck, {
            id: ctl.id,
            agentId: this.agentId,
            role: this.role,
            type: ctl.type,
            aborted,
            stillRunning,
            unknownOutcomes: unknownOutcomes.slice(0, 1000),
          }),
          { headers: payloadHeaders(ControlAck) },
        );
      } catch (err) {
        this.logger.warn({ err }, 'could not ack control message');
      }
    }
  }

  /**
   * Work that ignored its abort signal past the halt deadline gets `haltWatchdogMs` more; if it
   * is still running then, the process exits (code 70) rather than let a halted tool act on.
   */
  #armWatchdog(scope: Scope): void {
    const ms = this.runtime.haltWatchdogMs;
    if (!(ms > 0)) return;
    const stuck = [...this.#units].filter((u) =>
      scopeMatches(scope, { agentId: this.agentId, role: this.role, runId: u.runId }),
    );
    this.logger.error(
      { scope, stuck: stuck.map((u) => u.label), exitInMs: ms },
      'halted work ignores its abort signal',
    );
    const timer = setTimeout(() => {
      const still = stuck.filter((u) => this.#units.has(u));
      if (still.length === 0) return;
      this.logger.fatal(
        { scope, abandoned: still.map((u) => ({ label: u.label, runId: u.runId })) },
        'halt watchdog: exiting',
      );
      process.exit(70);
    }, ms);
    timer.unref();
  }

  /** Aborts every unit matching `scope` and waits until they settle or the deadline passes. */
  async #abortMatching(
    scope: Scope,
    reason: ReinsError,
    deadlineMs: number,
  ): Promise<{ aborted: number; stillRunning: number; unknownOutcomes: UnknownOutcome[] }> {
    const matching = [...this.#units].filter((u) =>
      scopeMatches(scope, { agentId: this.agentId, role: this.role, runId: u.runId }),
    );
    // Aborted mid-effect: the effect may or may not have happened.
    const unknownOutcomes = matching.flatMap((u) =>
      u.effect && u.runId ? [{ runId: u.runId, ...u.effect }] : [],
    );
    for (const u of matching) u.controller.abort(reason);
    await settleWithin(
      matching.map((u) => u.done),
      deadlineMs,
    );
    return {
      aborted: matching.length,
      stillRunning: matching.filter((u) => this.#units.has(u)).length,
      unknownOutcomes,
    };
  }

  /** Stops taking new work (requests get `PausedError`); in-flight work continues. */
  pause(): void {
    if (this.#base === 'running') this.#setBase('paused');
  }

  /** Takes new work again after `pause()`. */
  resume(): void {
    if (this.#base === 'paused') this.#setBase('running');
  }

  /** Marks the actor failed with `error` (reported in heartbeats); it takes no more work. */
  fail(error: unknown): void {
    this.#error =
      error instanceof ReinsError
        ? error
        : new UnavailableError('actor failed', { cause: error, retryable: false });
    this.logger.error({ err: error }, 'actor failed');
    this.#setBase('failed');
    void this.#heartbeat();
  }

  /**
   * Drains: stops taking work, lets in-flight work finish until `deadlineMs`, aborts what is
   * left and waits a short grace, then unsubscribes. Returns how many units were abandoned
   * (still running after the abort). Idempotent.
   */
  stop(options: { deadlineMs?: number; graceMs?: number } = {}): Promise<{ abandoned: number }> {
    this.#stopping ??= this.#stop(options.deadlineMs ?? 5000, options.graceMs ?? 1000);
    return this.#stopping;
  }

  async #stop(deadlineMs: number, graceMs: number): Promise<{ abandoned: number }> {
    const failed = this.#base === 'failed';
    if (!failed) this.#setBase('draining');
    await Promise.all([...this.#consumers].map(async (c) => c.stop()));
    void this.#heartbeat();
    await settleWithin(
      [...this.#units].map((u) => u.done),
      deadlineMs,
    );
    const left = [...this.#units];
    if (left.length) {
      const reason = new AbortedError('actor is shutting down');
      for (const u of left) u.controller.abort(reason);
      await settleWithin(
        left.map((u) => u.done),
        graceMs,
      );
    }
    const abandoned = [...this.#units];
    // What the finished work left running (stored results, settles) before the connection goes.
    await settleWithin([...this.#background], deadlineMs);
    if (abandoned.length) {
      this.logger.error(
        { abandoned: abandoned.map((u) => ({ label: u.label, runId: u.runId })) },
        'abandoned work that ignored its abort signal',
      );
    }
    for (const s of this.#subs) {
      try {
        s.unsubscribe();
      } catch {
        // connection already closed
      }
    }
    if (this.#heartbeatTimer) clearInterval(this.#heartbeatTimer);
    if (!failed) this.#setBase('stopped');
    // Wait for the last presence write: a stopped actor must not look alive (halts would wait
    // for its ack until their deadline).
    await this.#heartbeat();
    this.runtime.actors.delete(this);
    try {
      await this.#definition.teardown?.(this);
    } catch (err) {
      this.logger.error({ err }, 'teardown failed');
    }
    this.logger.info({ abandoned: abandoned.length }, 'actor stopped');
    return { abandoned: abandoned.length };
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop().then(() => undefined);
  }

  /** The heartbeat this actor would publish now. */
  snapshot(): Heartbeat {
    const now = Date.now();
    const mem = process.memoryUsage();
    const hb: Heartbeat = {
      agentId: this.agentId,
      role: this.role,
      status: this.status,
      inFlight: this.#units.size,
      runs: this.runs.slice(0, 1000),
      memory: { rss: mem.rss, heapUsed: mem.heapUsed },
      version: this.version.slice(0, 64),
      pid: process.pid,
      host: hostname().slice(0, 256),
      ts: now,
      intervalMs: this.runtime.heartbeatMs,
      expiresAt: now + 3 * this.runtime.heartbeatMs,
      degraded:
        !this.runtime.connected ||
        (this.#definition.requireSupervisor === true && !this.runtime.supervisorAlive),
    };
    if (this.#error) hb.error = toWireError(this.#error);
    return hb;
  }

  #heartbeatSeq = 0;

  /** Publishes a heartbeat and updates presence; the returned promise settles with the KV write. */
  #heartbeat(): Promise<void> {
    if (this.runtime.nc.isClosed()) return Promise.resolve();
    let hb: Heartbeat = { ...this.snapshot(), seq: ++this.#heartbeatSeq };
    try {
      if (this.#definition.signHeartbeat) hb = this.#definition.signHeartbeat(hb);
      this.runtime.publish(this.runtime.subjects.heartbeat(this.role, this.agentId), Heartbeat, hb);
    } catch (err) {
      this.logger.warn({ err }, 'heartbeat publish failed');
      return Promise.resolve();
    }
    return this.runtime
      .agentsBucket()
      .then(async (kv) => {
        await kv.put(this.agentId, encode(Heartbeat, hb));
      })
      .catch((err: unknown) => this.logger.debug({ err }, 'presence update failed'));
  }
}

function isThenable<T>(value: T | PromiseLike<T>): value is PromiseLike<T> {
  return typeof (value as { then?: unknown } | null | undefined)?.then === 'function';
}

function runIdOf(request: unknown): string | undefined {
  if (request && typeof request === 'object' && 'runId' in request) {
    const id = request.runId;
    return typeof id === 'string' ? id : undefined;
  }
  return undefined;
}

function describeScope(scope: Scope): string {
  switch (scope.kind) {
    case 'all':
      return 'everything';
    case 'agent':
      return `agent ${scope.agentId}`;
    case 'role':
      return `role ${scope.role}`;
    case 'run':
      return `run ${scope.runId}`;
  }
}

async function settleWithin(promises: Promise<void>[], ms: number): Promise<void> {
  if (!promises.length) return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    Promise.allSettled(promises),
    new Promise<void>((r) => {
      timer = setTimeout(r, ms);
    }),
  ]);
  clearTimeout(timer);
}
