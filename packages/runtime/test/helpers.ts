import { Runtime, createLogger, type RuntimeOptions } from '@reins/runtime';

/** A runtime on a test server with logs kept quiet unless REINS_LOG_LEVEL says otherwise. */
export function testRuntime(url: string, options: RuntimeOptions = {}): Promise<Runtime> {
  return Runtime.connect({
    servers: url,
    logger: createLogger({ level: process.env['REINS_LOG_LEVEL'] ?? 'silent' }),
    heartbeatMs: 200,
    ...options,
  });
}

/** A promise with its resolver, for waiting on events. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Resolves when `signal` aborts (never rejects). */
export function aborted(signal: AbortSignal): Promise<unknown> {
  return new Promise((r) => {
    if (signal.aborted) r(signal.reason);
    else signal.addEventListener('abort', () => r(signal.reason), { once: true });
  });
}
