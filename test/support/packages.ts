// The product packages these tests drive, through their built entry points. The root package
// depends only on @reins/protocol and @reins/testing; importing the others' `dist/index.js` (their
// only door) keeps the lockfile untouched. Build first (`tsc -b`): the services run from dist too.
export { connect } from '../../packages/client/dist/index.js';
export type { ReinsClient, RunHandle } from '../../packages/client/dist/index.js';
export { createLogger } from '../../packages/runtime/dist/index.js';
export type { TraceSubscription } from '../../packages/runtime/dist/index.js';
export { readAudit, verifyAudit } from '../../packages/supervisor/dist/index.js';
export { IdempotencyRecord, idempotencyKvKey } from '../../packages/executor/dist/index.js';
