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

export { aborted, deferred } from '@reins/testing';
