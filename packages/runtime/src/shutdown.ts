import type { Runtime } from './runtime.js';

/** Options of `handleSignals`. */
export interface ShutdownOptions {
  /** How long in-flight work may take to finish before it is aborted (default 10 s). */
  deadlineMs?: number;
  /** Past this, the watchdog exits the process whatever is still running (default deadline + 5 s). */
  hardDeadlineMs?: number;
  signals?: NodeJS.Signals[];
  /** Process exit (injectable for tests). */
  exit?: (code: number) => void;
}

/**
 * SIGTERM/SIGINT → stop taking work, finish or abort in-flight work within the deadline, drain
 * NATS, exit 0 (1 when work had to be abandoned). A watchdog exits hard past the hard deadline
 * and logs what it abandoned. Returns a function that removes the handlers.
 */
export function handleSignals(runtime: Runtime, options: ShutdownOptions = {}): () => void {
  const deadlineMs = options.deadlineMs ?? 10_000;
  const hardMs = options.hardDeadlineMs ?? deadlineMs + 5_000;
  const exit = options.exit ?? ((code: number) => process.exit(code));
  const signals = options.signals ?? ['SIGTERM', 'SIGINT'];
  let shuttingDown = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (shuttingDown) {
      runtime.logger.warn({ signal }, 'second signal: exiting now');
      exit(1);
      return;
    }
    shuttingDown = true;
    runtime.logger.info({ signal, deadlineMs }, 'shutting down');
    const watchdog = setTimeout(() => {
      const stuck = [...runtime.actors].map((a) => ({
        agentId: a.agentId,
        role: a.role,
        inFlight: a.inFlight,
        runs: a.runs,
      }));
      runtime.logger.error({ stuck }, 'shutdown watchdog: exiting with work still running');
      exit(1);
    }, hardMs);
    watchdog.unref();
    runtime.close(deadlineMs).then(
      ({ abandoned }) => {
        clearTimeout(watchdog);
        exit(abandoned ? 1 : 0);
      },
      (err: unknown) => {
        runtime.logger.error({ err }, 'shutdown failed');
        exit(1);
      },
    );
  };
  for (const s of signals) process.on(s, onSignal);
  return () => {
    for (const s of signals) process.off(s, onSignal);
  };
}
