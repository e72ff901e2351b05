export { BudgetLedger, assertBudgetScope, budgetScopes } from './budget-ledger.js';
export type {
  BudgetDimension,
  BudgetLedgerOptions,
  BudgetLedgerStats,
  LedgerAmount,
  ReapedReservation,
  Reaper,
  ReapOptions,
  ReaperOptions,
  ReleaseCarveResult,
  ReserveRequest,
  ReserveResult,
  ScopeParts,
  ScopeReport,
  SettleResult,
} from './budget-ledger.js';
export {
  ArgRule,
  PolicyDocument,
  PolicyEffect,
  PolicyRule,
  compilePolicy,
  evaluatePolicy,
  loadPolicyFile,
  narrowPolicy,
} from './policy.js';
export type { ArgCheck, Policy, PolicyDecision, PolicyInput, PolicyOptions } from './policy.js';
export {
  AuditWriter,
  acceptAuditGap,
  ensureAuditStream,
  readAudit,
  readAuditAnchors,
  readAuditMessages,
  verifyAudit,
} from './audit-log.js';
export type {
  AcceptAuditGapOptions,
  AcceptedAuditGap,
  AuditInput,
  AuditLogger,
  AuditProblemKind,
  AuditStreamOptions,
  AuditVerification,
  AuditWriterOptions,
  ReadAuditOptions,
  StoredAuditAnchor,
  StoredAuditMessage,
  VerifyAuditOptions,
} from './audit-log.js';
export {
  BreakerConfig,
  BreakerName,
  BreakerState,
  BreakerTrip,
  breakerConfig,
  checkDeadline,
  initBreakerState,
  recordAction,
  recordObservation,
  recordSpend,
} from './breakers.js';
export type { BreakerResult } from './breakers.js';
export { loadSigningKey, trustedIssuersFromEnv } from './signing-key.js';
export type {
  LoadSigningKeyOptions,
  LoadedSigningKey,
  SigningKeySource,
  WarnLogger,
} from './signing-key.js';
export { startSupervisor } from './supervisor.js';
export type { Supervisor, SupervisorOptions } from './supervisor.js';
export { RunStore, isTerminal } from './run-store.js';
export { PresenceView } from './presence-view.js';
export type { PresenceViewOptions, PresenceViewStats } from './presence-view.js';
