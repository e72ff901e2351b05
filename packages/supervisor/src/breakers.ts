import { z } from 'zod';
import { parse } from '@reins/protocol';

/** Micro-dollars per dollar: spend is compared in whole micro-dollars. */
const MICROS = 1_000_000;

// Pure stop conditions: state in, state out. The caller keeps the state (per run, in KV next
// to the run record) and writes it back with CAS. Every collection in the state is bounded,
// so a run that lives for days keeps a small record.

const PositiveInt = z.number().int().positive();

/** Breaker settings; every field has a default, so `BreakerConfig.parse({})` is a usable config. */
export const BreakerConfig = z
  .object({
    /** Most actions (steps) a run may take; the next one trips `steps`. */
    maxSteps: PositiveInt.max(1_000_000).default(100),
    /** Wall-time limit of a run from `startedAt`; absent = none. */
    wallMs: PositiveInt.optional(),
    /** The same action (tool + argsHash) K times within the window trips `repeat`. */
    repeat: z
      .object({ k: PositiveInt.max(1000).default(3), windowMs: PositiveInt.default(600_000) })
      .default({ k: 3, windowMs: 600_000 }),
    /** N observations in a row that were all seen before trip `no_progress`. */
    noProgress: z.object({ steps: PositiveInt.max(100_000).default(8) }).default({ steps: 8 }),
    /** Spend above `usdPerMinute` over the sliding window trips `velocity`; absent = off. */
    velocity: z
      .object({ usdPerMinute: z.number().positive(), windowMs: PositiveInt.default(60_000) })
      .optional(),
    /**
     * How many distinct observation hashes and distinct actions are remembered (default 256 /
     * 64). The state is written at every action: these bounds keep it at ~10 KB.
     */
    maxObservations: PositiveInt.max(100_000).default(256),
    maxActionKeys: PositiveInt.max(10_000).default(64),
  })
  .strict();
export type BreakerConfig = z.infer<typeof BreakerConfig>;

/** Names of the breakers. */
export const BreakerName = z.enum(['steps', 'wall_time', 'repeat', 'no_progress', 'velocity']);
export type BreakerName = z.infer<typeof BreakerName>;

/** Why a breaker tripped. */
export const BreakerTrip = z.object({ breaker: BreakerName, reason: z.string() });
export type BreakerTrip = z.infer<typeof BreakerTrip>;

/** Persisted breaker state of one run (JSON-safe; parse it back with this schema). */
export const BreakerState = z.object({
  startedAt: z.number().int().nonnegative(),
  steps: z.number().int().nonnegative(),
  /**
   * action key (tool + argsHash prefix) → times it was recorded within the repeat window (most
   * recent last); keys in order of last use, least recent first.
   */
  actions: z.record(z.string(), z.array(z.number())),
  /** Observation hashes seen (their first 16 hex digits), oldest first. */
  seen: z.array(z.string()),
  /** Observations in a row that brought nothing new. */
  stale: z.number().int().nonnegative(),
  /** Spend per time bucket: [bucketStart, usd]. */
  spend: z.array(z.tuple([z.number(), z.number()])),
  /** Set once a breaker tripped; breakers stay tripped. */
  tripped: BreakerTrip.optional(),
  /**
   * Idempotency keys of recent actions (most recent last, bounded): a retry of the same action
   * (same key: a redelivered step, an approval retry) is not a new action and counts once.
   */
  keys: z.array(z.string()).default([]),
});
export type BreakerState = z.infer<typeof BreakerState>;

/**
 * Hashes are kept by their first 16 hex digits (64 bits): plenty to tell a few hundred apart,
 * a quarter of the bytes in the state written at every action.
 */
const HASH_CHARS = 16;

/** Most recent idempotency keys remembered (retries come within a few steps). */
const RECENT_KEYS = 64;

/** What every `record…` function returns. */
export interface BreakerResult {
  state: BreakerState;
  trip?: BreakerTrip;
}

/** Fresh state of a run that starts at `now`. */
export function initBreakerState(now: number): BreakerState {
  return { startedAt: now, steps: 0, actions: {}, seen: [], stale: 0, spend: [], keys: [] };
}

/** Parses a config (defaults applied); throws a `ProtocolError` naming bad fields. */
export function breakerConfig(input: z.input<typeof BreakerConfig> = {}): BreakerConfig {
  return parse(BreakerConfig, input, 'breaker config');
}

const DEFAULTS = breakerConfig();

function result(state: BreakerState, trip?: BreakerTrip): BreakerResult {
  if (!trip) return { state };
  const tripped = state.tripped ?? trip;
  return { state: { ...state, tripped }, trip: tripped };
}

function wallTrip(
  state: BreakerState,
  now: number,
  config: BreakerConfig,
): BreakerTrip | undefined {
  if (config.wallMs !== undefined && now - state.startedAt > config.wallMs) {
    return {
      breaker: 'wall_time',
      reason: `run exceeded its wall time of ${config.wallMs} ms`,
    };
  }
  return undefined;
}

/**
 * Checks the run deadline alone (for a periodic sweep): trips `wall_time` once `now` is past
 * `startedAt + wallMs`.
 */
export function checkDeadline(
  state: BreakerState,
  now: number,
  config: BreakerConfig = DEFAULTS,
): BreakerResult {
  if (state.tripped) return { state, trip: state.tripped };
  return result(state, wallTrip(state, now, config));
}

/**
 * Records one action (a step: a tool call or model call) before it runs. Trips `steps` on the
 * action after the `maxSteps`-th, `repeat` on the K-th identical action (same tool and
 * argsHash) within the window, and `wall_time` past the deadline. A tripped state stays
 * tripped and every later call returns the first trip.
 */
export function recordAction(
  state: BreakerState,
  action: { tool: string; argsHash: string; now: number; idempotencyKey?: string },
  config: BreakerConfig = DEFAULTS,
): BreakerResult {
  if (state.tripped) return { state, trip: state.tripped };
  // A retry of an action already recorded (same idempotency key) is the same action.
  if (action.idempotencyKey !== undefined && state.keys.includes(action.idempotencyKey)) {
    return { state };
  }
  const recentKeys =
    action.idempotencyKey === undefined
      ? state.keys
      : [...state.keys, action.idempotencyKey].slice(-Math.min(RECENT_KEYS, config.maxActionKeys));
  const { now } = action;
  const steps = state.steps + 1;
  const key = `${action.tool}:${action.argsHash.slice(0, HASH_CHARS)}`;
  const horizon = now - config.repeat.windowMs;
  // Only this action's times matter to detect its K-th repeat (the last K-1 within the window).
  const times = [...(state.actions[key] ?? []).filter((t) => t > horizon), now].slice(
    -config.repeat.k,
  );
  // Keys stay in order of last use (JSON keeps it): this one moves to the end, and the least
  // recently used go first when there are too many. Linear in the number of keys, no sort.
  const actions: Record<string, number[]> = {};
  const names = Object.keys(state.actions).filter((k) => k !== key);
  for (const k of names.slice(Math.max(0, names.length + 1 - config.maxActionKeys))) {
    const kept = state.actions[k];
    if (kept) actions[k] = kept;
  }
  actions[key] = times;
  const next: BreakerState = { ...state, steps, actions, keys: recentKeys };
  const wall = wallTrip(next, now, config);
  if (wall) return result(next, wall);
  if (steps > config.maxSteps) {
    return result(next, {
      breaker: 'steps',
      reason: `step ${steps} is over the cap of ${config.maxSteps}`,
    });
  }
  if (times.length >= config.repeat.k) {
    return result(next, {
      breaker: 'repeat',
      reason: `${action.tool} with the same arguments ${times.length} times within ${config.repeat.windowMs} ms`,
    });
  }
  return { state: next };
}

/**
 * Records what a step observed (a hash of its result). An observation never seen before
 * resets the count; `noProgress.steps` observations in a row that were all seen before trip
 * `no_progress`. Only the last `maxObservations` hashes are remembered.
 */
export function recordObservation(
  state: BreakerState,
  observation: { hash: string; now: number },
  config: BreakerConfig = DEFAULTS,
): BreakerResult {
  if (state.tripped) return { state, trip: state.tripped };
  const hash = observation.hash.slice(0, HASH_CHARS);
  const isNew = !state.seen.includes(hash);
  const seen = isNew ? [...state.seen, hash].slice(-config.maxObservations) : state.seen;
  const stale = isNew ? 0 : state.stale + 1;
  const next: BreakerState = { ...state, seen, stale };
  const wall = wallTrip(next, observation.now, config);
  if (wall) return result(next, wall);
  if (stale >= config.noProgress.steps) {
    return result(next, {
      breaker: 'no_progress',
      reason: `${stale} steps in a row observed nothing new`,
    });
  }
  return { state: next };
}

/**
 * Records spend (USD) at `now`. With `velocity` configured, trips `velocity` when the spend
 * within the sliding window, per minute of window, exceeds `usdPerMinute`. Spend is kept in
 * at most 60 time buckets per window.
 */
export function recordSpend(
  state: BreakerState,
  spend: { usd: number; now: number },
  config: BreakerConfig = DEFAULTS,
): BreakerResult {
  if (state.tripped) return { state, trip: state.tripped };
  if (!Number.isFinite(spend.usd) || spend.usd < 0) return { state };
  const v = config.velocity;
  const next: BreakerState = { ...state };
  if (v) {
    const bucketMs = Math.max(1, Math.floor(v.windowMs / 60));
    const bucket = spend.now - (spend.now % bucketMs);
    const horizon = spend.now - v.windowMs;
    const kept = state.spend
      .filter(([t]) => t + bucketMs > horizon)
      .map(([t, u]) => [t, u] as [number, number]);
    const last = kept.at(-1);
    if (last && last[0] === bucket) last[1] += spend.usd;
    else kept.push([bucket, spend.usd]);
    next.spend = kept;
    // Counted in whole micro-dollars, as the ledger counts: ten $0.10 are $1.00, not
    // $0.9999999999999999, and ten $0.07 and one $0.30 are not $1.0000000000000002.
    const totalMicros = kept.reduce((a, [, u]) => a + Math.round(u * MICROS), 0);
    const perMinuteMicros = Math.round((totalMicros * 60_000) / v.windowMs);
    if (perMinuteMicros > Math.round(v.usdPerMinute * MICROS)) {
      const perMinute = perMinuteMicros / MICROS;
      return result(next, {
        breaker: 'velocity',
        reason: `spending $${perMinute.toFixed(4)}/min over the last ${v.windowMs} ms (limit $${v.usdPerMinute}/min)`,
      });
    }
  }
  const wall = wallTrip(next, spend.now, config);
  if (wall) return result(next, wall);
  return { state: next };
}
