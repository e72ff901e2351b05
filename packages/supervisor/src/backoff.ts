/**
 * Full-jitter exponential backoff: a random delay in [0, min(capMs, baseMs * 2^attempt)).
 * Spreads competing CAS writers apart so one of them wins each round.
 */
export function backoffDelay(attempt: number, baseMs = 2, capMs = 100): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 16));
  return Math.random() * ceiling;
}

/** Resolves after `ms` milliseconds (a retry pause, never a way to wait for an event). */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
