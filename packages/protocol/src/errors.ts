import { z } from 'zod';

/** Stable error codes. They travel on the wire; never rename one. */
export const ErrorCode = {
  BAD_REQUEST: 'BAD_REQUEST',
  PAYLOAD_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  BUDGET_EXCEEDED: 'BUDGET_EXCEEDED',
  HALTED: 'HALTED',
  PAUSED: 'PAUSED',
  POLICY_DENIED: 'POLICY_DENIED',
  APPROVAL_TIMEOUT: 'APPROVAL_TIMEOUT',
  APPROVAL_DENIED: 'APPROVAL_DENIED',
  APPROVAL_PENDING: 'APPROVAL_PENDING',
  GRANT_INVALID: 'GRANT_INVALID',
  PRICE_UNKNOWN: 'PRICE_UNKNOWN',
  NOT_FOUND: 'NOT_FOUND',
  CONFLICT: 'CONFLICT',
  UNAVAILABLE: 'UNAVAILABLE',
  TIMEOUT: 'TIMEOUT',
  ABORTED: 'ABORTED',
  RATE_LIMITED: 'RATE_LIMITED',
  UNAUTHENTICATED: 'UNAUTHENTICATED',
  MODEL_ERROR: 'MODEL_ERROR',
  TOOL_FAILED: 'TOOL_FAILED',
  INTERNAL: 'INTERNAL',
  AUDIT_TRUNCATED: 'AUDIT_TRUNCATED',
  NO_PLANNER: 'NO_PLANNER',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** The wire form of every error: what a handler's failure looks like to the caller. */
export const WireError = z.object({
  code: z.string().min(1).max(64),
  message: z.string().max(4096),
  retryable: z.boolean(),
  details: z.record(z.string(), z.unknown()).optional(),
});
export type WireError = z.infer<typeof WireError>;

/** Options shared by every Reins error constructor. */
export interface ReinsErrorOptions {
  retryable?: boolean;
  details?: Record<string, unknown>;
  cause?: unknown;
}

/**
 * Base class of every error Reins raises or rebuilds from the wire. `code` is stable and
 * machine-readable; `retryable` says whether the same request may succeed later.
 */
export class ReinsError extends Error {
  override name = 'ReinsError';
  readonly code: string;
  readonly retryable: boolean;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: string, message: string, options: ReinsErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = options.retryable ?? false;
    this.details = options.details;
  }
}

/** The constructor type of a coded error class (keeps `ReinsError` visible in declarations). */
export interface ReinsErrorClass<C extends string> {
  new (message: string, options?: ReinsErrorOptions): ReinsError & { readonly code: C };
  readonly prototype: ReinsError;
}

function errorClass<C extends ErrorCode>(
  code: C,
  name: string,
  retryableByDefault = false,
): ReinsErrorClass<C> {
  const cls = class extends ReinsError {
    override name = name;
    constructor(message: string, options: ReinsErrorOptions = {}) {
      super(code, message, { ...options, retryable: options.retryable ?? retryableByDefault });
    }
  };
  Object.defineProperty(cls, 'name', { value: name });
  return cls as unknown as ReinsErrorClass<C>;
}

/** Malformed, oversized or hostile input. Never retryable as is. */
export const ProtocolError = errorClass(ErrorCode.BAD_REQUEST, 'ProtocolError');
export type ProtocolError = InstanceType<typeof ProtocolError>;
/** A payload over the configured size limit. */
export const PayloadTooLargeError = errorClass(ErrorCode.PAYLOAD_TOO_LARGE, 'PayloadTooLargeError');
export type PayloadTooLargeError = InstanceType<typeof PayloadTooLargeError>;
/** A reservation would exceed a budget cap. */
export const BudgetExceededError = errorClass(ErrorCode.BUDGET_EXCEEDED, 'BudgetExceededError');
export type BudgetExceededError = InstanceType<typeof BudgetExceededError>;
/** The scope (agent, run, role or everything) is halted. */
export const HaltedError = errorClass(ErrorCode.HALTED, 'HaltedError');
export type HaltedError = InstanceType<typeof HaltedError>;
/** The actor or run is paused; the same request may succeed after resume. */
export const PausedError = errorClass(ErrorCode.PAUSED, 'PausedError', true);
export type PausedError = InstanceType<typeof PausedError>;
/** Policy refused the action; `details.rule` names the rule. */
export const PolicyDeniedError = errorClass(ErrorCode.POLICY_DENIED, 'PolicyDeniedError');
export type PolicyDeniedError = InstanceType<typeof PolicyDeniedError>;
/** A human did not answer an approval request in time. */
export const ApprovalTimeoutError = errorClass(ErrorCode.APPROVAL_TIMEOUT, 'ApprovalTimeoutError');
export type ApprovalTimeoutError = InstanceType<typeof ApprovalTimeoutError>;
/** A human denied an approval request. */
export const ApprovalDeniedError = errorClass(ErrorCode.APPROVAL_DENIED, 'ApprovalDeniedError');
export type ApprovalDeniedError = InstanceType<typeof ApprovalDeniedError>;
/** The action waits for a human decision; `details.approvalId` names it. Retry later. */
export const ApprovalPendingError = errorClass(
  ErrorCode.APPROVAL_PENDING,
  'ApprovalPendingError',
  true,
);
export type ApprovalPendingError = InstanceType<typeof ApprovalPendingError>;
/** A grant is missing, forged, expired, revoked or for another action. */
export const GrantInvalidError = errorClass(ErrorCode.GRANT_INVALID, 'GrantInvalidError');
export type GrantInvalidError = InstanceType<typeof GrantInvalidError>;
/** A model has no price while a USD budget applies (fail closed). */
export const PriceUnknownError = errorClass(ErrorCode.PRICE_UNKNOWN, 'PriceUnknownError');
export type PriceUnknownError = InstanceType<typeof PriceUnknownError>;
/** The thing asked for does not exist. */
export const NotFoundError = errorClass(ErrorCode.NOT_FOUND, 'NotFoundError');
export type NotFoundError = InstanceType<typeof NotFoundError>;
/** A concurrent writer won; retry with fresh state. */
export const ConflictError = errorClass(ErrorCode.CONFLICT, 'ConflictError', true);
export type ConflictError = InstanceType<typeof ConflictError>;
/** A dependency (NATS, KV, supervisor, model endpoint) cannot be reached. */
export const UnavailableError = errorClass(ErrorCode.UNAVAILABLE, 'UnavailableError', true);
export type UnavailableError = InstanceType<typeof UnavailableError>;
/** A deadline passed before an answer came. */
export const TimeoutError = errorClass(ErrorCode.TIMEOUT, 'TimeoutError', true);
export type TimeoutError = InstanceType<typeof TimeoutError>;
/** Work was aborted through its AbortSignal (halt, shutdown, caller gave up). */
export const AbortedError = errorClass(ErrorCode.ABORTED, 'AbortedError');
export type AbortedError = InstanceType<typeof AbortedError>;
/** A provider rate-limited the call; `details.retryAfterMs` when known. */
export const RateLimitedError = errorClass(ErrorCode.RATE_LIMITED, 'RateLimitedError', true);
export type RateLimitedError = InstanceType<typeof RateLimitedError>;
/** Credentials were missing or refused. */
export const UnauthenticatedError = errorClass(ErrorCode.UNAUTHENTICATED, 'UnauthenticatedError');
export type UnauthenticatedError = InstanceType<typeof UnauthenticatedError>;
/** A model provider failed; `retryable` tells whether trying again may help. */
export const ModelError = errorClass(ErrorCode.MODEL_ERROR, 'ModelError');
export type ModelError = InstanceType<typeof ModelError>;
/** A tool threw or returned invalid output. */
export const ToolFailedError = errorClass(ErrorCode.TOOL_FAILED, 'ToolFailedError');
export type ToolFailedError = InstanceType<typeof ToolFailedError>;
/** A bug on the answering side. Details are not leaked to the caller. */
export const InternalError = errorClass(ErrorCode.INTERNAL, 'InternalError');
export type InternalError = InstanceType<typeof InternalError>;

/**
 * An audit chain ends before its anchored head (entries were removed): its supervisor refuses
 * to extend it until an operator accepts the gap (`reins audit accept-gap`).
 */
export const AuditTruncatedError = errorClass(ErrorCode.AUDIT_TRUNCATED, 'AuditTruncatedError');
export type AuditTruncatedError = InstanceType<typeof AuditTruncatedError>;

/**
 * No live planner serves the role a run was started for (`details.role`, and the roles that
 * are served in `details.served`): admitted, it would wait in the queue for good. Not
 * retryable: what fixes it is an operator starting a planner of that role (or fixing a
 * mistyped role), not the same request again — a client that retried it would wait as
 * silently as the queued run did. Start with `waitForPlanner: true` to queue it anyway.
 */
export const NoPlannerError = errorClass(ErrorCode.NO_PLANNER, 'NoPlannerError');
export type NoPlannerError = InstanceType<typeof NoPlannerError>;

const classes: Record<string, new (message: string, options?: ReinsErrorOptions) => ReinsError> = {
  BAD_REQUEST: ProtocolError,
  PAYLOAD_TOO_LARGE: PayloadTooLargeError,
  BUDGET_EXCEEDED: BudgetExceededError,
  HALTED: HaltedError,
  PAUSED: PausedError,
  POLICY_DENIED: PolicyDeniedError,
  APPROVAL_TIMEOUT: ApprovalTimeoutError,
  APPROVAL_DENIED: ApprovalDeniedError,
  APPROVAL_PENDING: ApprovalPendingError,
  GRANT_INVALID: GrantInvalidError,
  PRICE_UNKNOWN: PriceUnknownError,
  NOT_FOUND: NotFoundError,
  CONFLICT: ConflictError,
  UNAVAILABLE: UnavailableError,
  TIMEOUT: TimeoutError,
  ABORTED: AbortedError,
  RATE_LIMITED: RateLimitedError,
  UNAUTHENTICATED: UnauthenticatedError,
  MODEL_ERROR: ModelError,
  TOOL_FAILED: ToolFailedError,
  INTERNAL: InternalError,
  AUDIT_TRUNCATED: AuditTruncatedError,
  NO_PLANNER: NoPlannerError,
};

/**
 * Turns any thrown value into its wire form. Non-Reins errors become `INTERNAL` with a
 * generic message, so stack traces and internals never leak to callers.
 */
export function toWireError(err: unknown): WireError {
  if (err instanceof ReinsError) {
    const wire: WireError = {
      code: err.code,
      message: err.message.slice(0, 4096),
      retryable: err.retryable,
    };
    if (err.details !== undefined) wire.details = err.details;
    return wire;
  }
  return { code: ErrorCode.INTERNAL, message: 'internal error', retryable: false };
}

/**
 * Rebuilds the error class for a wire error (`BUDGET_EXCEEDED` → `BudgetExceededError`).
 * Unknown codes become a plain `ReinsError` carrying the code.
 */
export function fromWireError(wire: WireError, cause?: unknown): ReinsError {
  const options: ReinsErrorOptions = { retryable: wire.retryable };
  if (wire.details !== undefined) options.details = wire.details;
  if (cause !== undefined) options.cause = cause;
  if (Object.hasOwn(classes, wire.code)) {
    const cls = classes[wire.code];
    if (cls) return new cls(wire.message, options);
  }
  return new ReinsError(wire.code, wire.message, options);
}

/** True when `err` is a Reins error with the given code. */
export function isErrorCode(err: unknown, code: ErrorCode): err is ReinsError {
  return err instanceof ReinsError && err.code === code;
}
