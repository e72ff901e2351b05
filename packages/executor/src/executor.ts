import { runTool, type AnyTool } from '@reins/models';
import {
  Buckets,
  ExecuteRequest,
  GrantInvalidError,
  HaltedError,
  ProtocolError,
  ReinsError,
  SettleRequest,
  ToolFailedError,
  ToolResult,
  assertId,
  canonicalJson,
  hashArgs,
  sha256Hex,
  toWireError,
  verifyGrant,
  type Grant,
  type Outcome,
  type WireError,
} from '@reins/protocol';
import {
  defineActor,
  openBucket,
  type Actor,
  type HandlerContext,
  type Runtime,
} from '@reins/runtime';
import { z } from 'zod';
import { IdempotencyLedger, type Lease } from './idempotency.js';

/** Options of `startExecutor`. */
export interface ExecutorOptions {
  /** The tools this executor serves; names must be unique. */
  tools: readonly AnyTool[];
  /** Public nkeys of the supervisors whose grants are accepted. Empty is refused (fail closed). */
  trustedIssuers: readonly string[];
  /** Role name (default `executor`). */
  role?: string;
  /** Agent id (default generated). */
  agentId?: string;
  /** Length of an idempotency lease; renewed every third of it while a tool runs (default 15 s). */
  idempotencyLeaseMs?: number;
  /** How long a revoked grant id is remembered when its expiry is not given (default 1 h). */
  revocationTtlMs?: number;
}

/** A running executor. Dispose it (`await using`) to stop its actor. */
export interface Executor extends AsyncDisposable {
  /** The runtime actor serving `exec.<tool>` subjects. */
  readonly actor: Actor;
  /**
   * Refuses every later request carrying this grant (fencing), until `until` (epoch ms; default
   * now + `revocationTtlMs`). Pass the grant's `expiresAt` when known: after it the grant is
   * refused as expired anyway.
   */
  revokeGrant(grantId: string, until?: number): void;
}

/**
 * The request as accepted off the wire: everything but the grant is checked by the schema; the
 * grant is checked by `verifyGrant`, so a missing or malformed one is `GRANT_INVALID`, not
 * `BAD_REQUEST`.
 */
const IncomingExecute = ExecuteRequest.extend({ grant: z.unknown().optional() });
type IncomingExecute = z.output<typeof IncomingExecute>;

const DEFAULT_LEASE_MS = 15_000;
const DEFAULT_REVOCATION_TTL_MS = 3_600_000;
/** Room for the record fields around a stored result, below the payload limit. */
const RECORD_OVERHEAD_BYTES = 1024;

const NO_USAGE = { usd: 0, inputTokens: 0, outputTokens: 0, steps: 0 } as const;

/**
 * Starts an executor actor on `runtime`: each tool is served on `exec.<tool>` in queue group
 * `exec.<tool>`. A request runs its tool only with a valid grant (else `GRANT_INVALID`), for a
 * run/agent/role that is not halted (else `HALTED`), with arguments its input schema accepts
 * (else `BAD_REQUEST`), once per idempotency key (repeats get the stored result, `replayed: true`;
 * the same key with other arguments is `CONFLICT`). Tool failures, timeouts and aborts come back
 * as `ToolResult { ok: false }`. Throws `ProtocolError` on bad options and `UnavailableError` when
 * the idempotency bucket cannot be opened (fail closed).
 */
export async function startExecutor(runtime: Runtime, options: ExecutorOptions): Promise<Executor> {
  const tools = new Map<string, AnyTool>();
  for (const tool of options.tools) {
    if (tools.has(tool.name)) throw new ProtocolError(`tool ${tool.name} is registered twice`);
    tools.set(tool.name, tool);
  }
  if (tools.size === 0) throw new ProtocolError('an executor needs at least one tool');
  if (options.trustedIssuers.length === 0) {
    throw new ProtocolError('no trusted grant issuers: every request would be refused');
  }
  const leaseMs = options.idempotencyLeaseMs ?? DEFAULT_LEASE_MS;
  if (!Number.isInteger(leaseMs) || leaseMs < 30) {
    throw new ProtocolError('idempotencyLeaseMs must be an integer of at least 30');
  }
  const revocationTtlMs = options.revocationTtlMs ?? DEFAULT_REVOCATION_TTL_MS;
  const trustedIssuers = [...options.trustedIssuers];
  // The supervisors whose grants we take are the ones whose heartbeats keep us working.
  runtime.trustSupervisors(trustedIssuers);
  const revoked = new Map<string, number>();
  const isRevoked = (grantId: string): boolean => {
    const until = revoked.get(grantId);
    if (until === undefined) return false;
    if (until > Date.now()) return true;
    revoked.delete(grantId);
    return false;
  };

  const actor = await runtime.start(
    defineActor({
      role: options.role ?? 'executor',
      // Fail closed: no supervisor heard for a while → no tool runs (the runtime's dead-man switch).
      requireSupervisor: true,
      ...(options.agentId !== undefined ? { agentId: options.agentId } : {}),
      async setup(actor) {
        const kv = await openBucket(runtime.nc, Buckets.idem);
        const ledger = new IdempotencyLedger(kv, {
          leaseMs,
          logger: actor.logger,
          maxRecordBytes: runtime.maxPayloadBytes - RECORD_OVERHEAD_BYTES,
        });
        const execution: Execution = { runtime, actor, ledger, trustedIssuers, isRevoked };
        for (const tool of tools.values()) {
          const subject = runtime.subjects.exec(tool.name);
          actor.handle(subject, IncomingExecute, (req, ctx) => execute(execution, tool, req, ctx), {
            queue: `exec.${tool.name}`,
            reply: ToolResult,
            runOf: (r) => (r as IncomingExecute).runId,
          });
        }
      },
    }),
  );

  return {
    actor,
    revokeGrant(grantId, until) {
      assertId(grantId, 'grantId');
      const now = Date.now();
      for (const [id, t] of revoked) if (t <= now) revoked.delete(id);
      revoked.set(grantId, until ?? now + revocationTtlMs);
    },
    [Symbol.asyncDispose]: () => actor.stop().then(() => undefined),
  };
}

interface Execution {
  runtime: Runtime;
  actor: Actor;
  ledger: IdempotencyLedger;
  trustedIssuers: readonly string[];
  isRevoked: (grantId: string) => boolean;
}

/** Checks the grant for exactly this request; throws `GrantInvalidError`. */
function checkGrant(x: Execution, tool: AnyTool, req: IncomingExecute, argsHash: string): Grant {
  const grant = verifyGrant(req.grant, {
    trustedIssuers: x.trustedIssuers,
    isRevoked: x.isRevoked,
    expect: {
      kind: 'tool',
      runId: req.runId,
      tool: tool.name,
      argsHash,
      idempotencyKey: req.idempotencyKey,
    },
  });
  // Unchecked-for fields must be present: a tool grant binds all of them.
  if (grant.argsHash === undefined || grant.idempotencyKey === undefined) {
    throw new GrantInvalidError('tool grant does not bind arguments and idempotency key', {
      details: { reason: 'incomplete', grantId: grant.grantId },
    });
  }
  if (grant.stepId !== undefined && grant.stepId !== req.stepId) {
    throw new GrantInvalidError('grant is for another stepId', {
      details: { reason: 'mismatch_stepId', grantId: grant.grantId },
    });
  }
  return grant;
}

function argsHashOf(args: unknown): string {
  try {
    return hashArgs(args);
  } catch (cause) {
    throw new ProtocolError('tool arguments cannot be hashed (not plain JSON data)', { cause });
  }
}

/** How a failed run ended: aborted mid-run is `unknown` unless the tool only reads. */
function outcomeOf(err: unknown, tool: AnyTool): Outcome {
  const interrupted =
    err instanceof ReinsError && ['ABORTED', 'TIMEOUT', 'HALTED', 'CONFLICT'].includes(err.code);
  if (!interrupted) return 'error';
  return tool.effect === 'read' ? 'aborted' : 'unknown';
}

function withDetails(wire: WireError, details: Record<string, unknown>): WireError {
  return { ...wire, details: { ...wire.details, ...details } };
}

function observationOf(result: ToolResult): string | undefined {
  try {
    return sha256Hex(
      canonicalJson(
        result.ok ? result.output : { error: { code: result.error.code, outcome: result.outcome } },
      ),
    );
  } catch {
    return undefined;
  }
}

async function execute(
  x: Execution,
  tool: AnyTool,
  req: IncomingExecute,
  ctx: HandlerContext,
): Promise<ToolResult> {
  const argsHash = argsHashOf(req.args);
  const grant = checkGrant(x, tool, req, argsHash);
  if (req.tool !== tool.name) {
    throw new ProtocolError(`request for tool ${req.tool} sent to tool ${tool.name}`, {
      details: { field: 'tool' },
    });
  }
  const halt = (await x.runtime.halts()).halted.find({
    agentId: grant.agentId,
    role: grant.role,
    runId: req.runId,
  });
  if (halt) {
    throw new HaltedError(`halted: ${halt.kind} scope covers this grant`, {
      details: { scope: halt, grantId: grant.grantId },
    });
  }
  const parsed = tool.input.safeParse(req.args);
  if (!parsed.success) {
    throw new ProtocolError(`invalid arguments for tool ${tool.name}`, {
      details: {
        tool: tool.name,
        issues: parsed.error.issues
          .slice(0, 20)
          .map((i) => ({ path: i.path.map(String).join('.'), message: i.message })),
      },
    });
  }

  const now = Date.now();
  const timeoutMs = Math.max(
    1,
    Math.min(req.timeoutMs ?? Infinity, tool.timeoutMs, grant.expiresAt - now),
  );
  const ids = { stepId: req.stepId, parentId: req.stepId };
  const base = { tool: tool.name, idempotencyKey: req.idempotencyKey };

  const claim = await x.ledger.claim({
    idempotencyKey: req.idempotencyKey,
    binding: {
      tool: tool.name,
      argsHash,
      runId: req.runId,
      grantId: grant.grantId,
      owner: x.actor.agentId,
    },
    idempotent: tool.idempotent,
    deadline: now + timeoutMs,
    signal: ctx.signal,
    unknownOutcome: (previousOwner) => ({
      ok: false,
      ...base,
      outcome: 'unknown',
      error: toWireError(
        new ToolFailedError(
          `an earlier attempt of tool ${tool.name} stopped mid-run (its executor died); ` +
            'its effect is unknown and it is not run again',
          { details: { tool: tool.name, outcome: 'unknown', previousOwner } },
        ),
      ),
    }),
  });

  if (claim.kind === 'stored') {
    const result: ToolResult = claim.result.ok ? { ...claim.result, replayed: true } : claim.result;
    x.actor.trace(
      req.runId,
      'tool.end',
      {
        ...base,
        replayed: true,
        outcome: result.ok ? 'ok' : result.outcome,
        durationMs: 0,
      },
      ids,
    );
    return result;
  }
  if (claim.kind === 'lost') {
    ctx.logger.warn(
      { ...base, previousOwner: claim.previousOwner },
      'earlier attempt died mid-run; outcome unknown',
    );
    x.actor.trace(
      req.runId,
      'tool.end',
      { ...base, replayed: false, outcome: 'unknown', durationMs: 0 },
      ids,
    );
    settleLater(x, grant, req.runId, claim.result);
    return claim.result;
  }

  return run(x, tool, req, ctx, grant, claim.lease, { timeoutMs, argsHash, ids, claim });
}

async function run(
  x: Execution,
  tool: AnyTool,
  req: IncomingExecute,
  ctx: HandlerContext,
  grant: Grant,
  lease: Lease,
  o: {
    timeoutMs: number;
    argsHash: string;
    ids: { stepId: string; parentId: string };
    claim: { takeover: boolean };
  },
): Promise<ToolResult> {
  const base = { tool: tool.name, idempotencyKey: req.idempotencyKey };
  const started = Date.now();
  lease.start();
  const startInfo = { takeover: o.claim.takeover, timeoutMs: o.timeoutMs };
  // In flight only on request: `tool.end` carries the same takeover and timeout.
  if (x.runtime.traceInFlight)
    x.actor.trace(req.runId, 'tool.start', { ...base, replayed: false, ...startInfo }, o.ids);
  const signal = AbortSignal.any([ctx.signal, lease.lost]);
  let result: ToolResult;
  // A tool that changes the world is mid-effect while it runs: a halt now leaves its outcome
  // unknown, and the halt's ack says so.
  if (tool.effect !== 'read') ctx.sideEffect(base);
  try {
    const output: unknown = await runTool(tool, req.args, {
      runId: req.runId,
      stepId: req.stepId,
      idempotencyKey: req.idempotencyKey,
      signal,
      logger: ctx.logger,
      timeoutMs: o.timeoutMs,
    });
    result = { ok: true, ...base, output, replayed: false, durationMs: Date.now() - started };
  } catch (err) {
    // A halt or a lost lease is a better explanation than "the tool was aborted".
    const reason: unknown = signal.aborted ? signal.reason : undefined;
    const cause = reason instanceof ReinsError ? reason : err;
    const outcome = outcomeOf(cause, tool);
    result = {
      ok: false,
      ...base,
      outcome,
      error: withDetails(toWireError(cause), { tool: tool.name, outcome }),
    };
    if (!(err instanceof ReinsError)) ctx.logger.error({ err, tool: tool.name }, 'tool failed');
  } finally {
    ctx.sideEffect(undefined);
  }

  const binding = {
    tool: tool.name,
    argsHash: o.argsHash,
    runId: req.runId,
    grantId: grant.grantId,
    owner: x.actor.agentId,
  };
  const done = (r: ToolResult) => ({
    state: 'done' as const,
    ...binding,
    attemptId: lease.attemptId,
    result: r,
    finishedAt: Date.now(),
  });
  try {
    x.ledger.encode(done(result));
  } catch (err) {
    // Output that cannot travel (too large, not plain data) is a tool failure, stored as such.
    result = {
      ok: false,
      ...base,
      outcome: 'error',
      error: withDetails(
        toWireError(
          new ToolFailedError(
            `output of tool ${tool.name} cannot be returned: ${err instanceof Error ? err.message : String(err)}`,
          ),
        ),
        { tool: tool.name, outcome: 'error', sideEffect: tool.effect !== 'read' },
      ),
    };
    x.ledger.encode(done(result));
  }

  // The result is stored for replays without holding up the reply: the caller persists what it
  // receives, and a duplicate arriving meanwhile waits for the stored record (the claim is
  // ours until then). Only if this process dies in between does a later retry of the same key
  // find the claim unfinished: an idempotent tool is then run again, another reports its
  // outcome as unknown — as after a crash mid-tool.
  if (!result.ok && result.outcome === 'aborted') await lease.release();
  else
    x.actor.background(
      lease.finish(done(result)).catch((err: unknown) => {
        x.actor.logger.error({ err, ...base }, 'could not store the tool result');
      }),
    );

  const outcome = result.ok ? 'ok' : result.outcome;
  x.actor.trace(
    req.runId,
    'tool.end',
    { ...base, replayed: false, ...startInfo, outcome, durationMs: Date.now() - started },
    o.ids,
  );
  settleLater(x, grant, req.runId, result);
  return result;
}

/** Settles after the reply has gone out (the reply is sent when the handler returns). */
function settleLater(x: Execution, grant: Grant, runId: string, result: ToolResult): void {
  const observationHash = observationOf(result);
  const settle: z.input<typeof SettleRequest> = {
    grantId: grant.grantId,
    runId,
    agentId: grant.agentId,
    actual: NO_USAGE,
    outcome: result.ok ? 'ok' : result.outcome,
    ...(observationHash !== undefined ? { observationHash } : {}),
  };
  setImmediate(() => {
    try {
      x.runtime.publish(x.runtime.subjects.settle(runId), SettleRequest, settle);
    } catch (err) {
      x.actor.logger.warn({ err, grantId: grant.grantId }, 'settle publish failed');
    }
  });
}
