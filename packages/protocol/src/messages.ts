import { z } from 'zod';
import { WireError } from './errors.js';
import { Id } from './ids.js';

// Wire messages. zod schemas are the single source of truth: each `export type X` is inferred.
// Limits on sizes are part of the contract: a message over them is refused with BAD_REQUEST.

const Millis = z.number().int().nonnegative();
const Count = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const Usd = z.number().nonnegative().max(1e9);
const Text = (max: number) => z.string().max(max);
/** Tool arguments, outputs and free-form data: plain JSON-like objects. */
const Data = z.record(z.string().max(256), z.unknown());
const Sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'must be a hex sha256');
const PublicNkey = z.string().regex(/^[A-Z2-7]{56}$/, 'must be a public nkey');
const Ed25519Sig = z.string().regex(/^[A-Za-z0-9_-]{80,100}$/, 'must be a base64url signature');
const IdempotencyKey = z
  .string()
  .regex(/^[A-Za-z0-9_.:-]{1,200}$/, 'must match [A-Za-z0-9_.:-]{1,200}');

/** Budget caps. Every dimension is optional; an absent one is unlimited at that scope. */
export const Budget = z.object({
  usd: Usd.optional(),
  tokens: Count.optional(),
  inputTokens: Count.optional(),
  outputTokens: Count.optional(),
  steps: Count.optional(),
  wallMs: Millis.optional(),
});
export type Budget = z.infer<typeof Budget>;

/** Measured or estimated consumption of one call. */
export const Usage = z.object({
  inputTokens: Count.default(0),
  outputTokens: Count.default(0),
  usd: Usd.default(0),
  steps: Count.default(0),
});
export type Usage = z.infer<typeof Usage>;

/** A halt / pause / resume / drain target. */
export const ScopeSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('agent'), agentId: Id }),
  z.object({ kind: z.literal('run'), runId: Id }),
  z.object({ kind: z.literal('role'), role: Id }),
  z.object({ kind: z.literal('all') }),
]);

/** Lifecycle states of a run. */
export const RunStatus = z.enum([
  'queued',
  'running',
  /** Suspended on a human decision (an approval): the decision re-enqueues it at once. */
  'waiting_approval',
  'paused',
  'halted',
  'completed',
  'stopped',
  'failed',
]);
export type RunStatus = z.infer<typeof RunStatus>;

/** Why a run stopped without an answer. */
export const StopReason = z.enum([
  'BUDGET_EXCEEDED',
  'HALTED',
  'BREAKER',
  'STEP_CAP',
  'WALL_TIME',
  'POLICY_DENIED',
  'ERROR',
]);
export type StopReason = z.infer<typeof StopReason>;

/** `runs.start` request: admit a run and queue its first task. */
export const RunStartRequest = z.object({
  goal: Text(65_536).min(1),
  /** Role of the planner pool that takes the run (default `planner`). */
  role: Id.default('planner'),
  /** Roles allowed to act in the run (default: the planner role and `executor`). */
  roles: z.array(Id).max(32).optional(),
  budget: Budget.default({}),
  /** A run-level policy overlay; it may only narrow the deployment policy. */
  policy: Data.optional(),
  tenant: Id.optional(),
  parentRunId: Id.optional(),
  /** Free-form input for the planner (documents, parameters). */
  input: Data.optional(),
  /** A client-chosen key: starting twice with the same key returns the same run. */
  idempotencyKey: IdempotencyKey.optional(),
  requestedBy: Text(256).optional(),
  /**
   * Admit the run even when no live planner serves its role (it waits in the queue until one
   * starts). Without it such a start is refused with `NO_PLANNER`.
   */
  waitForPlanner: z.boolean().optional(),
});
export type RunStartRequest = z.infer<typeof RunStartRequest>;

/** A run record as kept in KV `reins_runs`. */
export const RunRecord = z.object({
  runId: Id,
  goal: Text(65_536),
  role: Id,
  roles: z.array(Id).max(32),
  status: RunStatus,
  budget: Budget,
  used: Usage.default({ inputTokens: 0, outputTokens: 0, usd: 0, steps: 0 }),
  tenant: Id.optional(),
  parentRunId: Id.optional(),
  input: Data.optional(),
  policy: Data.optional(),
  answer: Text(1_048_576).optional(),
  stopReason: StopReason.optional(),
  error: WireError.optional(),
  createdAt: Millis,
  updatedAt: Millis,
  endedAt: Millis.optional(),
});
export type RunRecord = z.infer<typeof RunRecord>;

/** `runs.get` request. */
export const RunGetRequest = z.object({ runId: Id });
export type RunGetRequest = z.infer<typeof RunGetRequest>;

/** `runs.list` request. */
export const RunListRequest = z.object({
  status: RunStatus.optional(),
  tenant: Id.optional(),
  limit: z.number().int().min(1).max(1000).default(100),
});
export type RunListRequest = z.infer<typeof RunListRequest>;

/** `runs.list` reply. */
export const RunListReply = z.object({ runs: z.array(RunRecord) });
export type RunListReply = z.infer<typeof RunListReply>;

/** A task on the `REINS_TASKS` work queue: "take the next step of this run". */
export const Task = z.object({
  runId: Id,
  role: Id,
  /** Monotonic per run; a redelivered task with an old step is a no-op. */
  step: Count,
  enqueuedAt: Millis,
});
export type Task = z.infer<typeof Task>;

/** Estimate of a model call, reserved before the call. */
export const Estimate = z.object({
  inputTokens: Count,
  outputTokens: Count,
  usd: Usd,
});
export type Estimate = z.infer<typeof Estimate>;

/** What a grant is for. */
export const GrantKind = z.enum(['llm', 'tool']);
export type GrantKind = z.infer<typeof GrantKind>;

/** The signed part of a grant. */
export const GrantBody = z.object({
  grantId: Id,
  runId: Id,
  agentId: Id,
  role: Id,
  kind: GrantKind,
  stepId: Id.optional(),
  model: Text(256).optional(),
  tool: Id.optional(),
  argsHash: Sha256.optional(),
  idempotencyKey: IdempotencyKey.optional(),
  reserved: Usage,
  issuedAt: Millis,
  expiresAt: Millis,
  /** Public nkey of the supervisor that signed it. */
  issuer: PublicNkey,
});
export type GrantBody = z.infer<typeof GrantBody>;

/** A grant: the body plus its ed25519 signature (base64url). */
export const Grant = GrantBody.extend({ sig: Ed25519Sig });
export type Grant = z.infer<typeof Grant>;

/** `sv.authorize` request: may this agent make this model call? */
export const AuthorizeRequest = z.object({
  runId: Id,
  agentId: Id,
  role: Id,
  stepId: Id,
  kind: z.literal('llm'),
  model: Text(256),
  estimate: Estimate,
});
export type AuthorizeRequest = z.infer<typeof AuthorizeRequest>;

/** A supervisor decision. `pending` means a human must approve first. */
export const Decision = z.discriminatedUnion('decision', [
  z.object({ decision: z.literal('grant'), grant: Grant, rule: Text(256).optional() }),
  z.object({ decision: z.literal('deny'), error: WireError, rule: Text(256).optional() }),
  z.object({ decision: z.literal('pending'), approvalId: Id, rule: Text(256).optional() }),
]);
export type Decision = z.infer<typeof Decision>;

/** Outcome of a granted call, reported when settling. */
export const Outcome = z.enum(['ok', 'error', 'aborted', 'unknown']);
export type Outcome = z.infer<typeof Outcome>;

/** `sv.settle` request: what a granted call really cost. Settling twice counts once. */
export const SettleRequest = z.object({
  grantId: Id,
  runId: Id,
  agentId: Id,
  actual: Usage,
  outcome: Outcome.default('ok'),
  /** sha256 of the tool's output, for the no-progress breaker. */
  observationHash: Sha256.optional(),
});
export type SettleRequest = z.infer<typeof SettleRequest>;

/** `runs.end` request: the planner reports how a run ended; the supervisor records it. */
export const RunEndRequest = z.object({
  runId: Id,
  agentId: Id,
  status: z.enum(['completed', 'stopped', 'failed']),
  answer: Text(1_048_576).optional(),
  stopReason: StopReason.optional(),
  error: WireError.optional(),
});
export type RunEndRequest = z.infer<typeof RunEndRequest>;

/** `runs.budget` reply: caps, spend and open reservations of a run. */
export const BudgetReport = z.object({
  runId: Id,
  cap: Budget,
  committed: Usage,
  reserved: Usage,
});
export type BudgetReport = z.infer<typeof BudgetReport>;

/** `sv.settle` reply. */
export const SettleReply = z.object({ settled: z.boolean(), duplicate: z.boolean() });
export type SettleReply = z.infer<typeof SettleReply>;

/** `sv.act` request: run this tool with these arguments (the supervisor forwards it). */
export const ActRequest = z.object({
  runId: Id,
  agentId: Id,
  role: Id,
  stepId: Id,
  tool: Id,
  args: Data,
  idempotencyKey: IdempotencyKey,
  timeoutMs: Millis.max(3_600_000).optional(),
  /**
   * The settle of the step's model call, riding on its first tool call instead of a request
   * of its own (of the same run; applied before the call is decided; settling twice counts once).
   */
  settle: SettleRequest.optional(),
});
export type ActRequest = z.infer<typeof ActRequest>;

/** `exec.<tool>` request: a granted tool call, forwarded by the supervisor. */
export const ExecuteRequest = z.object({
  grant: Grant,
  runId: Id,
  stepId: Id,
  tool: Id,
  args: Data,
  idempotencyKey: IdempotencyKey,
  timeoutMs: Millis.max(3_600_000).optional(),
});
export type ExecuteRequest = z.infer<typeof ExecuteRequest>;

/** A tool's answer, sent by the executor straight back to the planner. */
export const ToolResult = z.discriminatedUnion('ok', [
  z.object({
    ok: z.literal(true),
    tool: Id,
    idempotencyKey: IdempotencyKey,
    output: z.unknown(),
    /** True when the stored result of an earlier run of the same key was returned. */
    replayed: z.boolean(),
    durationMs: Millis,
  }),
  z.object({
    ok: z.literal(false),
    tool: Id,
    idempotencyKey: IdempotencyKey,
    error: WireError,
    outcome: Outcome,
  }),
]);
export type ToolResult = z.infer<typeof ToolResult>;

/** A control message type. */
export const ControlType = z.enum(['halt', 'pause', 'resume', 'drain']);
export type ControlType = z.infer<typeof ControlType>;

/** `ctl.halt` / `ctl.pause` / `ctl.resume` request from a client to the supervisor. */
export const HaltRequest = z.object({
  scope: ScopeSchema,
  reason: Text(1024).min(1),
  deadlineMs: Millis.max(600_000).default(2_000),
  requestedBy: Text(256).optional(),
});
export type HaltRequest = z.infer<typeof HaltRequest>;

/** Reply to a halt: who acknowledged before the deadline and who was fenced. */
export const HaltReply = z.object({
  haltId: Id,
  acked: z.array(Id),
  missing: z.array(Id),
  aborted: Count,
  unknownOutcomes: z.array(z.object({ runId: Id, tool: Id, idempotencyKey: IdempotencyKey })),
  /**
   * Resume only: whether a halt or pause was in force for the scope (a halt marker, a halted or
   * paused run, or an agent in it reporting `paused`/`halted`). False: there was nothing to lift.
   */
  lifted: z.boolean().optional(),
});
export type HaltReply = z.infer<typeof HaltReply>;

/** A halt marker in KV `reins_halts`; actors read them on start. */
export const HaltMarker = z.object({
  haltId: Id,
  scope: ScopeSchema,
  reason: Text(1024),
  createdAt: Millis,
  requestedBy: Text(256).optional(),
});
export type HaltMarker = z.infer<typeof HaltMarker>;

/** A control broadcast from the supervisor to actors on `ctl.bcast.<scope>`. */
export const ControlMessage = z.object({
  type: ControlType,
  scope: ScopeSchema,
  reason: Text(1024),
  id: Id,
  deadlineMs: Millis.max(600_000).default(2_000),
});
export type ControlMessage = z.infer<typeof ControlMessage>;

/** An actor's acknowledgement of a control message. */
export const ControlAck = z.object({
  id: Id,
  agentId: Id,
  role: Id,
  type: ControlType,
  aborted: Count,
  stillRunning: Count,
  /** Work aborted in the middle of a side effect: whether it happened is unknown. */
  unknownOutcomes: z
    .array(z.object({ runId: Id, tool: Id, idempotencyKey: IdempotencyKey }))
    .max(1000)
    .default([]),
});
export type ControlAck = z.infer<typeof ControlAck>;

/** Actor lifecycle states. */
export const ActorStatus = z.enum([
  'starting',
  'running',
  'paused',
  'draining',
  'stopped',
  'halted',
  'failed',
  'lost',
]);
export type ActorStatus = z.infer<typeof ActorStatus>;

/** A heartbeat, published on `hb.<role>.<agentId>` and kept in KV `reins_agents`. */
/**
 * A supervisor's signature over its heartbeat (`agentId`, `role`, `seq`, `ts`): planners and
 * executors that trust supervisor keys count only signed heartbeats for their dead-man switch.
 */
export const HeartbeatProof = z.object({
  issuer: z.string().regex(/^[A-Z2-7]{56}$/, 'must be a public nkey'),
  sig: z.string().regex(/^[A-Za-z0-9_-]{1,128}$/, 'must be a base64url signature'),
});
export type HeartbeatProof = z.infer<typeof HeartbeatProof>;

export const Heartbeat = z.object({
  agentId: Id,
  role: Id,
  status: ActorStatus,
  inFlight: Count,
  runs: z.array(Id).max(1000),
  memory: z.object({ rss: Count, heapUsed: Count }),
  version: Text(64),
  pid: Count.optional(),
  host: Text(256).optional(),
  ts: Millis,
  intervalMs: Millis,
  /** After this time without a newer heartbeat the agent counts as lost. */
  expiresAt: Millis,
  error: WireError.optional(),
  /** True while the actor cannot hear the supervisor or NATS. */
  degraded: z.boolean().optional(),
  /** Per-actor heartbeat counter, from 1. */
  seq: Count.optional(),
  /** Supervisors sign their heartbeats (see `signHeartbeat`). */
  proof: HeartbeatProof.optional(),
});
export type Heartbeat = z.infer<typeof Heartbeat>;

/** A trace event on `trace.<runId>.<role>.<agentId>.<event>`. */
export const TraceEvent = z.object({
  runId: Id,
  role: Id,
  agentId: Id,
  event: z.string().regex(/^[a-z][a-z0-9_-]{0,31}(\.[a-z][a-z0-9_-]{0,31}){0,3}$/),
  /** Monotonic per publishing actor: orders events from one source. */
  seq: Count,
  /** Wall-clock milliseconds since the epoch. */
  ts: Millis,
  stepId: Id.optional(),
  parentId: Id.optional(),
  spanId: Id.optional(),
  data: Data.default({}),
});
export type TraceEvent = z.infer<typeof TraceEvent>;

/** One entry of the hash-chained audit log. */
export const AuditEntry = z.object({
  /** Position in the writer's chain, from 1. */
  seq: Count,
  /** The supervisor instance whose chain this entry belongs to. */
  writer: Id,
  ts: Millis,
  /** What was decided: `admit`, `grant`, `deny`, `settle`, `reap`, `breaker`, `halt`, … */
  action: Text(64),
  actor: Text(256),
  runId: Id.optional(),
  agentId: Id.optional(),
  rule: Text(256).optional(),
  details: Data.default({}),
  prevHash: Sha256,
  hash: Sha256,
});
export type AuditEntry = z.infer<typeof AuditEntry>;

/** Most entries one `AuditBatch` may hold (writers default to fewer; see `AuditWriter`). */
export const AUDIT_BATCH_MAX_ENTRIES = 1024;

/**
 * One stored message of an audit chain: consecutive entries of one writer, chained as usual
 * (group commit: entries appended while a publish is in flight are stored together).
 */
export const AuditBatch = z.object({
  entries: z.array(AuditEntry).min(1).max(AUDIT_BATCH_MAX_ENTRIES),
  /**
   * Public nkey of the supervisor that signed the batch head (its last entry). Optional in the
   * schema so unsigned and forged messages still decode and can be named; `verifyAudit`
   * rejects a batch without a valid signature.
   */
  signer: PublicNkey.optional(),
  /** ed25519 signature (base64url) of the batch head: see `auditHeadBytes`. */
  sig: Ed25519Sig.optional(),
});
export type AuditBatch = z.infer<typeof AuditBatch>;

/** A gap an operator accepted in a writer's chain (`reins audit accept-gap`). */
export const AuditGap = z.object({
  /** First and last missing seq. */
  from: Count,
  to: Count,
  acceptedBy: Text(256),
  reason: Text(1024).optional(),
  ts: Millis,
  /** The chain head the gap was accepted at: the supervisor records the gap only onto it. */
  headSeq: Count,
  headHash: Sha256,
});
export type AuditGap = z.infer<typeof AuditGap>;

/**
 * A writer's signed chain head, kept outside the audit stream (KV `reins_audit_anchors`, key
 * = writer id, with history) so a chain cut short can be told from one that ended there.
 * `acceptedGap` is written by an operator (unsigned); the supervisor then records it in the
 * chain as an `audit.gap_accepted` entry.
 */
export const AuditAnchor = z.object({
  writer: Id,
  seq: Count,
  hash: Sha256,
  signer: PublicNkey,
  sig: Ed25519Sig,
  ts: Millis,
  acceptedGap: AuditGap.optional(),
});
export type AuditAnchor = z.infer<typeof AuditAnchor>;

/** A pending human approval. */
export const ApprovalRequest = z.object({
  approvalId: Id,
  runId: Id,
  agentId: Id,
  role: Id,
  tool: Id,
  args: Data,
  argsHash: Sha256,
  rule: Text(256),
  createdAt: Millis,
  expiresAt: Millis,
});
export type ApprovalRequest = z.infer<typeof ApprovalRequest>;

/** A human's answer to an approval; it binds to the exact action through `argsHash`. */
export const ApprovalDecision = z.object({
  approvalId: Id,
  decision: z.enum(['approve', 'deny']),
  argsHash: Sha256,
  by: Text(256).min(1),
  reason: Text(1024).optional(),
});
export type ApprovalDecision = z.infer<typeof ApprovalDecision>;

/** An approval as stored in KV `reins_approvals`: the request and, once decided, the decision. */
export const ApprovalRecord = ApprovalRequest.extend({
  idempotencyKey: IdempotencyKey,
  status: z.enum(['pending', 'approved', 'denied', 'expired']),
  decidedBy: Text(256).optional(),
  reason: Text(1024).optional(),
  decidedAt: Millis.optional(),
});
export type ApprovalRecord = z.infer<typeof ApprovalRecord>;

/** `approvals.list` request. */
export const ApprovalListRequest = z.object({
  runId: Id.optional(),
  status: z.enum(['pending', 'approved', 'denied', 'expired']).optional(),
  limit: z.number().int().min(1).max(1000).default(100),
});
export type ApprovalListRequest = z.infer<typeof ApprovalListRequest>;

/** `approvals.list` reply. */
export const ApprovalListReply = z.object({ approvals: z.array(ApprovalRecord) });
export type ApprovalListReply = z.infer<typeof ApprovalListReply>;

/** A reply that carries an error instead of the expected response. */
export const ErrorReply = z.object({ error: WireError });
export type ErrorReply = z.infer<typeof ErrorReply>;

/** An empty acknowledgement. */
export const Ack = z.object({ ok: z.literal(true) });
export type Ack = z.infer<typeof Ack>;

/** Every wire message by its stable name (the `Reins-Schema` header value). */
export const Messages = {
  'reins.RunStartRequest': RunStartRequest,
  'reins.RunRecord': RunRecord,
  'reins.RunGetRequest': RunGetRequest,
  'reins.RunListRequest': RunListRequest,
  'reins.RunListReply': RunListReply,
  'reins.Task': Task,
  'reins.AuthorizeRequest': AuthorizeRequest,
  'reins.Decision': Decision,
  'reins.Grant': Grant,
  'reins.SettleRequest': SettleRequest,
  'reins.SettleReply': SettleReply,
  'reins.RunEndRequest': RunEndRequest,
  'reins.BudgetReport': BudgetReport,
  'reins.ActRequest': ActRequest,
  'reins.ExecuteRequest': ExecuteRequest,
  'reins.ToolResult': ToolResult,
  'reins.HaltRequest': HaltRequest,
  'reins.HaltReply': HaltReply,
  'reins.HaltMarker': HaltMarker,
  'reins.ControlMessage': ControlMessage,
  'reins.ControlAck': ControlAck,
  'reins.Heartbeat': Heartbeat,
  'reins.TraceEvent': TraceEvent,
  'reins.AuditEntry': AuditEntry,
  'reins.AuditBatch': AuditBatch,
  'reins.AuditAnchor': AuditAnchor,
  'reins.ApprovalRequest': ApprovalRequest,
  'reins.ApprovalDecision': ApprovalDecision,
  'reins.ApprovalRecord': ApprovalRecord,
  'reins.ApprovalListRequest': ApprovalListRequest,
  'reins.ApprovalListReply': ApprovalListReply,
  'reins.ErrorReply': ErrorReply,
  'reins.Ack': Ack,
} as const;
export type MessageName = keyof typeof Messages;

const names = new Map<z.ZodType, string>(
  Object.entries(Messages).map(([k, v]) => [v as z.ZodType, k]),
);

/** The registered name of a schema (for the `Reins-Schema` header), or `undefined` for ad-hoc schemas. */
export function messageName(schema: z.ZodType): string | undefined {
  return names.get(schema);
}
