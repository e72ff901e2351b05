// The product packages these tests drive, through their public entry points.
export { connect } from '@reins/client';
export type { ReinsClient, RunHandle } from '@reins/client';
export { createLogger } from '@reins/runtime';
export type { TraceSubscription } from '@reins/runtime';
export { readAudit, verifyAudit } from '@reins/supervisor';
export { IdempotencyRecord, idempotencyKvKey } from '@reins/executor';
