import { assertId } from './ids.js';
import { ProtocolError } from './errors.js';

/** The default subject prefix. Deployments may run several Reins versions side by side with another. */
export const DEFAULT_PREFIX = 'reins.v1';

const PREFIX_PATTERN = /^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$/;
/** Trace event names: dotted lower-case words (`step.start`, `tool.result`). */
const EVENT_PATTERN = /^[a-z][a-z0-9_-]{0,31}(\.[a-z][a-z0-9_-]{0,31}){0,3}$/;

/** A halt/pause/resume/drain target. */
export type Scope =
  | { kind: 'agent'; agentId: string }
  | { kind: 'run'; runId: string }
  | { kind: 'role'; role: string }
  | { kind: 'all' };

/**
 * How many partitions run-scoped control requests are spread over (the default; a deployment
 * sets its own with `REINS_PARTITIONS`, and every process of it must use the same number).
 */
export const DEFAULT_PARTITIONS = 32;
/** The most partitions a deployment may have. */
export const MAX_PARTITIONS = 1024;

/** Returns `partitions` when it is a whole number from 1 to `MAX_PARTITIONS`; throws otherwise. */
export function assertPartitions(partitions: unknown): number {
  if (
    typeof partitions !== 'number' ||
    !Number.isInteger(partitions) ||
    partitions < 1 ||
    partitions > MAX_PARTITIONS
  ) {
    throw new ProtocolError(
      `invalid partition count ${JSON.stringify(partitions)}: a whole number from 1 to ${MAX_PARTITIONS}`,
      { details: { field: 'partitions' } },
    );
  }
  return partitions;
}

/**
 * The partition of a run: FNV-1a (32 bit) of the run id's UTF-8 bytes, modulo `partitions`.
 * Stable across processes, languages and versions (an actor written in another language
 * computes the same number), so run-scoped requests of one run always reach the same
 * partition subject — and, on a server with subject-mapping partitions, a mapping can compute
 * it instead.
 */
export function partitionOf(runId: string, partitions: number = DEFAULT_PARTITIONS): number {
  let h = 0x811c9dc5;
  for (const byte of utf8.encode(runId)) h = Math.imul(h ^ byte, 0x01000193) >>> 0;
  return h % partitions;
}
const utf8 = new TextEncoder();

/** `*` in a subscriber pattern: any single token. */
export const ANY = '*';

/** Returns `event` when it is a valid trace event name; throws a `ProtocolError` otherwise. */
export function assertEventName(event: unknown): string {
  if (typeof event !== 'string' || !EVENT_PATTERN.test(event)) {
    throw new ProtocolError(
      `invalid trace event name ${JSON.stringify(String(event).slice(0, 80))}: dotted lower-case words`,
      { details: { field: 'event' } },
    );
  }
  return event;
}

function idOrAny(value: string | undefined, what: string): string {
  if (value === undefined || value === ANY) return ANY;
  return assertId(value, what);
}

/** Fields of a trace subject; any left out (or `'*'`) becomes a wildcard. */
export interface TraceSubjectParts {
  runId?: string;
  role?: string;
  agentId?: string;
  /** An event name, or omitted / `'>'` for every event. */
  event?: string;
}

/**
 * Builds every subject Reins uses under one prefix. Ids are validated; a bad id throws a
 * `ProtocolError` (BAD_REQUEST) and is never escaped into a subject.
 */
export function createSubjects(
  prefix: string = DEFAULT_PREFIX,
  partitions: number = DEFAULT_PARTITIONS,
) {
  if (!PREFIX_PATTERN.test(prefix)) {
    throw new ProtocolError(`invalid subject prefix ${JSON.stringify(prefix)}`);
  }
  assertPartitions(partitions);
  const p = prefix;
  const sv = (runId: string, verb: string) =>
    `${p}.sv.${partitionOf(assertId(runId, 'runId'), partitions)}.${verb}`;
  return {
    prefix: p,
    /** How many partitions run-scoped control requests are spread over. */
    partitions,
    /** The partition of a run (see `partitionOf`). */
    partitionOf: (runId: string) => partitionOf(runId, partitions),
    runsStart: `${p}.runs.start`,
    runsGet: `${p}.runs.get`,
    runsList: `${p}.runs.list`,
    /** Caps, spend and reservations of a run. */
    runsBudget: `${p}.runs.budget`,
    /** The planner reports a run's end (answer or stop reason). */
    runsEnd: `${p}.runs.end`,
    /** May this agent make this model call? The run's partition subject `sv.<n>.authorize`. */
    authorize: (runId: string) => sv(runId, 'authorize'),
    /** What a granted call cost: `sv.<n>.settle` of the run's partition. */
    settle: (runId: string) => sv(runId, 'settle'),
    /** Run this tool call: `sv.<n>.act` of the run's partition (forwarded to an executor). */
    act: (runId: string) => sv(runId, 'act'),
    /**
     * The run-scoped control subjects of partition `n` (`'*'`: every partition, a subscriber
     * pattern): what the supervisor owning it serves.
     */
    partition: (n: number | typeof ANY) => {
      if (n !== ANY && !(Number.isInteger(n) && n >= 0 && n < partitions)) {
        throw new ProtocolError(`invalid partition ${String(n)} (0..${partitions - 1})`, {
          details: { field: 'partition' },
        });
      }
      return {
        authorize: `${p}.sv.${n}.authorize`,
        settle: `${p}.sv.${n}.settle`,
        act: `${p}.sv.${n}.act`,
        /** Between supervisors: admit a child run of a run of this partition (carved here). */
        start: `${p}.sv.${n}.start`,
        /** Between supervisors: end a run of this partition (`runs.end`, forwarded). */
        end: `${p}.sv.${n}.end`,
        /** Between supervisors: the budgets of live runs of this partition. */
        usage: `${p}.sv.${n}.usage`,
      } as const;
    },
    ctlHalt: `${p}.ctl.halt`,
    ctlResume: `${p}.ctl.resume`,
    ctlPause: `${p}.ctl.pause`,
    ctlApprove: `${p}.ctl.approve`,
    /** List approvals (pending by default filters). */
    approvalsList: `${p}.ctl.approvals`,
    /** Work-queue subject for a role's task pool (JetStream `REINS_TASKS`). */
    task: (role: string) => `${p}.task.${assertId(role, 'role')}`,
    /** Every task subject: the `REINS_TASKS` stream's filter. */
    taskAll: `${p}.task.>`,
    /** Execution subject of one tool; executors serve it in a queue group. */
    exec: (tool: string) => `${p}.exec.${assertId(tool, 'tool')}`,
    /** Control broadcast for one scope. */
    ctlBcast: (scope: Scope) => `${p}.ctl.bcast.${scopeToken(scope)}`,
    /** Every control broadcast. */
    ctlBcastAll: `${p}.ctl.bcast.>`,
    /** Heartbeat of one actor, or a wildcard pattern. */
    heartbeat: (role: string = ANY, agentId: string = ANY) =>
      `${p}.hb.${idOrAny(role, 'role')}.${idOrAny(agentId, 'agentId')}`,
    /** Approval requests of a run (or every run with `'*'`). */
    approvals: (runId: string = ANY) => `${p}.approvals.${idOrAny(runId, 'runId')}`,
    /**
     * A trace subject `…trace.<runId>.<role>.<agentId>.<event>`. With parts left out it is a
     * subscriber pattern: `trace({ runId })` matches every event of a run.
     */
    trace: (parts: TraceSubjectParts = {}) => {
      const event =
        parts.event === undefined || parts.event === '>' ? '>' : assertEventName(parts.event);
      return `${p}.trace.${idOrAny(parts.runId, 'runId')}.${idOrAny(parts.role, 'role')}.${idOrAny(parts.agentId, 'agentId')}.${event}`;
    },
    /**
     * Audit subject of one writer (a supervisor instance). Each writer keeps its own hash chain,
     * so several supervisors append without contending; `'*'` matches every writer.
     */
    audit: (writer: string = ANY) => `${p}.audit.${idOrAny(writer, 'audit writer')}`,
    /** Every audit subject: the `REINS_AUDIT` stream's filter. */
    auditAll: `${p}.audit.>`,
    /** Every trace subject: the `REINS_TRACE` stream's filter. */
    traceAll: `${p}.trace.>`,
  } as const;
}

/** The subject builder for a prefix; see `createSubjects`. */
export type Subjects = ReturnType<typeof createSubjects>;

/** Subject token(s) for a scope: `agent.<id>`, `run.<id>`, `role.<role>` or `all`. */
export function scopeToken(scope: Scope): string {
  switch (scope.kind) {
    case 'agent':
      return `agent.${assertId(scope.agentId, 'agentId')}`;
    case 'run':
      return `run.${assertId(scope.runId, 'runId')}`;
    case 'role':
      return `role.${assertId(scope.role, 'role')}`;
    case 'all':
      return 'all';
  }
}

/** KV key of a scope (halt markers): same tokens as the broadcast subject. */
export const scopeKey = scopeToken;

/** JetStream stream and KV bucket names. */
export const Streams = {
  tasks: 'REINS_TASKS',
  trace: 'REINS_TRACE',
  audit: 'REINS_AUDIT',
} as const;

/** KV bucket names. */
export const Buckets = {
  runs: 'reins_runs',
  budget: 'reins_budget',
  /** One record per grant: its scopes, amount and state (settled / reaped). */
  budgetGrants: 'reins_budget_grants',
  halts: 'reins_halts',
  idem: 'reins_idem',
  agents: 'reins_agents',
  approvals: 'reins_approvals',
  /** Each audit writer's signed chain head (key = writer id, with history). */
  auditAnchors: 'reins_audit_anchors',
  /** Run partitions: supervisor memberships, partition leases and state checkpoints. */
  partitions: 'reins_partitions',
} as const;

/** Header names on every Reins message. */
export const Headers = {
  contentType: 'Content-Type',
  schema: 'Reins-Schema',
  /** Present on replies that carry a `WireError` instead of the expected response. */
  error: 'Reins-Error',
} as const;

/** Value of the Content-Type header. */
export const CONTENT_TYPE = 'application/msgpack';
