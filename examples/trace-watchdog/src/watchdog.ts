// A trace subscriber that reacts: it watches the `tool.call` events of every run and halts a
// run that calls the same tool more than `maxCalls` times within `windowMs`. Traces are data in
// a JetStream stream, so a watchdog like this needs no hook into the planners: it only reads
// `reins.v1.trace.*.*.*.tool.call` and asks the supervisor for a halt like any operator would.
import type { ReinsClient } from '@reins/client';
import type { HaltReply, TraceEvent } from '@reins/protocol';
import type { TraceStart } from '@reins/runtime';

/** Options of `startWatchdog`. */
export interface WatchdogOptions {
  /** A run may call one tool this many times per window; one more call halts it. */
  maxCalls: number;
  /** The sliding window (default 60 s). */
  windowMs?: number;
  /** Where to start reading traces (default `new`: only calls from now on). */
  from?: TraceStart;
  /** Report only: never halt (default false). */
  dryRun?: boolean;
  /** Called once per run the watchdog trips on, after the halt (or instead, with `dryRun`). */
  onTrip?: (trip: Trip) => void;
  /** Called when a halt request fails (the watchdog keeps watching). */
  onError?: (err: unknown, trip: Trip) => void;
}

/** A run that called a tool too often. */
export interface Trip {
  runId: string;
  tool: string;
  /** Calls of `tool` in the window, the one that tripped included. */
  calls: number;
  windowMs: number;
  reason: string;
  /** The supervisor's answer (who acked, who is fenced); absent with `dryRun`. */
  halt?: HaltReply;
}

/** A running watchdog. */
export interface Watchdog extends AsyncDisposable {
  /** Runs tripped so far, by run id. */
  readonly trips: ReadonlyMap<string, Trip>;
  /** Resolves with the trip of `runId` once the watchdog has halted it. */
  tripped(runId: string): Promise<Trip>;
  stop(): Promise<void>;
}

/**
 * Counts `tool.call` trace events per run and tool in a sliding window (by the events'
 * timestamps) and halts a run (`client.halt({ kind: 'run', runId })`) the first time one tool
 * exceeds `maxCalls`. Each run is halted at most once.
 */
export async function startWatchdog(
  client: ReinsClient,
  options: WatchdogOptions,
): Promise<Watchdog> {
  if (!Number.isSafeInteger(options.maxCalls) || options.maxCalls < 1) {
    throw new RangeError('maxCalls must be a whole number of at least 1');
  }
  const windowMs = options.windowMs ?? 60_000;
  const calls = new Map<string, number[]>();
  const trips = new Map<string, Trip>();
  /** Runs being halted or halted: each is halted once. */
  const claimed = new Set<string>();
  const waiters = new Map<string, ((trip: Trip) => void)[]>();

  const settle = (trip: Trip) => {
    trips.set(trip.runId, trip);
    options.onTrip?.(trip);
    for (const w of waiters.get(trip.runId) ?? []) w(trip);
    waiters.delete(trip.runId);
  };

  const trip = async (runId: string, tool: string, count: number) => {
    const reason = `trace-watchdog: ${tool} called ${count} times in ${Math.round(windowMs / 1000)}s (max ${options.maxCalls})`;
    const base: Trip = { runId, tool, calls: count, windowMs, reason };
    if (options.dryRun) {
      settle(base);
      return;
    }
    try {
      const halt = await client.halt({ kind: 'run', runId }, reason);
      settle({ ...base, halt });
    } catch (err) {
      claimed.delete(runId); // let a later call try again
      options.onError?.(err, base);
    }
  };

  const onCall = (event: TraceEvent) => {
    if (claimed.has(event.runId)) return;
    const tool = typeof event.data['tool'] === 'string' ? event.data['tool'] : '?';
    const key = `${event.runId}\u0000${tool}`;
    const times = (calls.get(key) ?? []).filter((t) => t > event.ts - windowMs);
    times.push(event.ts);
    calls.set(key, times);
    if (times.length > options.maxCalls) {
      // Claim the run now: events keep arriving while the halt is on its way.
      claimed.add(event.runId);
      calls.delete(key);
      void trip(event.runId, tool, times.length);
    }
  };

  const sub = await client.traces.subscribe(
    { event: 'tool.call' },
    { from: options.from ?? 'new', callback: onCall },
  );
  // Forget the counts of runs that went quiet, so a long-running watchdog does not grow.
  const sweep = setInterval(() => {
    const cutoff = Date.now() - windowMs;
    for (const [key, times] of calls) if ((times.at(-1) ?? 0) < cutoff) calls.delete(key);
  }, windowMs);
  sweep.unref();

  const stop = async () => {
    clearInterval(sweep);
    await sub.stop();
  };
  return {
    trips,
    tripped(runId) {
      const done = trips.get(runId);
      if (done) return Promise.resolve(done);
      return new Promise((resolve) => {
        const list = waiters.get(runId) ?? [];
        list.push(resolve);
        waiters.set(runId, list);
      });
    },
    stop,
    [Symbol.asyncDispose]: stop,
  };
}
