import { pino, type Logger } from 'pino';

export type { Logger } from 'pino';

/**
 * The root logger: JSON to stdout, level from `REINS_LOG_LEVEL` (default `info`). Actors take
 * child loggers with `{ role, agentId }`, work units with `{ runId }`.
 */
export function createLogger(options: { level?: string; name?: string } = {}): Logger {
  const level = options.level ?? process.env['REINS_LOG_LEVEL'] ?? 'info';
  return pino({ level, base: options.name ? { name: options.name } : null });
}
