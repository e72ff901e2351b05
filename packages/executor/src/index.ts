export { startExecutor } from './executor.js';
export type { Executor, ExecutorOptions } from './executor.js';
export { IdempotencyRecord, idempotencyKvKey } from './idempotency.js';
