import { AbortedError, type ReinsError } from '@reins/protocol';
import { mapTransportError } from './transport-errors.js';

/** Options of `retryTransport`. */
export interface RetryTransportOptions {
  /** Start no new attempt after this many milliseconds; the last coded error is thrown then. */
  timeoutMs: number;
  /** Stop retrying: `AbortedError`. */
  signal?: AbortSignal | undefined;
  /** Called before each pause with the coded error of the attempt that failed (for logs). */
  onRetry?: (err: ReinsError, attempt: number) => void;
}

/** Pause before attempt `n + 1`: 100 ms doubling, at most 2 s. */
const pauseMs = (attempt: number) => Math.min(2_000, 100 * 2 ** Math.min(attempt, 5));

/**
 * Runs `attempt` until it succeeds while its failures are transient NATS/JetStream failures —
 * those `mapTransportError` codes as retryable: a request or JetStream API call that timed out,
 * no responders, JetStream temporarily unavailable. That is what a JetStream cluster answers for
 * a few seconds after losing a node (streams elect leaders), and what nats-server < 2.11 answers
 * to the creation of an ephemeral consumer it placed on the lost node: no reply, a timeout — a
 * new attempt is placed again, on a live server two times in three on a 3-node cluster.
 *
 * Each attempt must be safe to repeat. Throws the coded error (`ReinsError`) of a failure that is
 * not transient at once, the last transient one once `timeoutMs` has passed, and `AbortedError`
 * when `signal` aborts.
 */
export async function retryTransport<T>(
  what: string,
  attempt: () => Promise<T>,
  options: RetryTransportOptions,
): Promise<T> {
  const deadline = Date.now() + options.timeoutMs;
  const { signal } = options;
  for (let n = 0; ; n++) {
    if (signal?.aborted) throw new AbortedError(`${what}: aborted`, { cause: signal.reason });
    try {
      return await attempt();
    } catch (err) {
      const coded = mapTransportError(err, what);
      if (!coded.retryable || Date.now() + pauseMs(n) > deadline) throw coded;
      options.onRetry?.(coded, n + 1);
      await pause(pauseMs(n), signal);
    }
  }
}

/** Resolves after `ms`, or at once when `signal` aborts (the caller checks it next). */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
