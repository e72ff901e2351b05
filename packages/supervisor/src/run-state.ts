import { z } from 'zod';
import { Budget, Usage } from '@reins/protocol';
import {
  Amount,
  DIMENSIONS,
  add,
  fromUsage,
  subClip,
  toUser,
  zero,
  type LedgerAmount,
  fitsCap,
} from './amounts.js';
import type { Fit, SettleResult } from './budget-ledger.js';
import {
  BreakerState,
  initBreakerState,
  recordAction,
  recordObservation,
  recordSpend,
  type BreakerConfig,
  type BreakerTrip,
} from './breakers.js';

/** How many settled (and reaped) grant ids a run remembers, to count a late duplicate once. */
const RECENT_GRANTS = 64;

const Reservation = z.object({ amount: Amount, expiresAt: z.number().int().nullable() });

/**
 * What the owner of a run's partition keeps of it in memory: its run-scope ledger (cap, spend,
 * open reservations, child carves) and its breaker state. Nothing of it is written per step:
 * each change rides on the partition's audit record of the decision that made it (see
 * `applyRecord`), and the owner checkpoints it now and then for a successor to start from.
 */
export const RunState = z.object({
  runId: z.string(),
  cap: Budget,
  committed: Amount,
  /** Open reservations by grant id; `carve:<childRunId>` for a child's carve (no expiry). */
  reservations: z.record(z.string(), Reservation),
  /** Recently settled grant ids (a repeated settle counts once). */
  settled: z.array(z.string()),
  /** Recently reaped grants and what they were charged (a late settle corrects it). */
  reaped: z.record(z.string(), Amount),
  breaker: BreakerState,
  createdAt: z.number(),
  /** The parent run (same partition), whose budget this run's cap was carved from. */
  parentRunId: z.string().optional(),
  /** When the run ended; its state stays a while, so that late settles still count. */
  endedAt: z.number().optional(),
});
export type RunState = z.infer<typeof RunState>;

/** A new run's state: nothing spent, its cap from the run record. */
export function newRunState(run: {
  runId: string;
  budget: Budget;
  createdAt: number;
  parentRunId?: string | undefined;
}): RunState {
  return {
    ...(run.parentRunId !== undefined ? { parentRunId: run.parentRunId } : {}),
    runId: run.runId,
    cap: run.budget,
    committed: zero(),
    reservations: {},
    settled: [],
    reaped: {},
    breaker: initBreakerState(run.createdAt),
    createdAt: run.createdAt,
  };
}

/** The sum of a run's open reservations. */
export function reservedOf(s: RunState): Amount {
  let sum = zero();
  for (const r of Object.values(s.reservations)) sum = add(sum, r.amount);
  return sum;
}

/** Whether `amount` fits in the run's cap beside what it spent and holds. */
export function fitsRun(s: RunState, amount: Amount): Fit {
  return fitsCap(`run.${s.runId}`, s.cap, s.committed, reservedOf(s), amount);
}

const remember = (list: string[], id: string) => [...list, id].slice(-RECENT_GRANTS);

/** Holds `amount` for `grantId` until `expiresAt` (null: until released — a carve). */
export function reserve(
  s: RunState,
  grantId: string,
  amount: Amount,
  expiresAt: number | null,
): void {
  s.reservations[grantId] = { amount, expiresAt };
}

/**
 * Settles a grant: its actual usage is committed and the rest of its reservation returns. A
 * grant already settled counts once; a grant the reaper charged in full is corrected to the
 * actual. An unknown grant (not this run's, or older than the run remembers) changes nothing.
 */
export function settle(s: RunState, grantId: string, actualInput: unknown): SettleResult {
  const actual = fromUsage(actualInput, 'settle usage');
  if (s.settled.includes(grantId)) return { settled: true, duplicate: true, reaped: false };
  const open = s.reservations[grantId];
  const reaped = s.reaped[grantId];
  if (!open && !reaped) return { settled: false, duplicate: false, reaped: false };
  const held = open?.amount ?? reaped ?? zero();
  if (open) cancel(s, grantId);
  if (reaped) {
    // Charged in full at its lease end: take the charge back, commit the actual.
    s.committed = subClip(s.committed, reaped);
    s.reaped = without(s.reaped, grantId);
  }
  s.committed = add(s.committed, actual);
  s.settled = remember(s.settled, grantId);
  const over: Partial<LedgerAmount> = {};
  const user = toUser(subClip(actual, held));
  for (const d of DIMENSIONS) if (user[d] > 0) over[d] = user[d];
  return {
    settled: true,
    duplicate: false,
    reaped: reaped !== undefined,
    ...(Object.keys(over).length ? { overshoot: over } : {}),
  };
}

/** Charges in full the reservations whose lease ended by `now` (a lost settle). */
export function reapExpired(s: RunState, now: number): { grantId: string; amount: Amount }[] {
  const out: { grantId: string; amount: Amount }[] = [];
  for (const [grantId, r] of Object.entries(s.reservations)) {
    if (r.expiresAt === null || r.expiresAt > now) continue;
    out.push({ grantId, amount: r.amount });
    chargeReaped(s, grantId, r.amount);
  }
  return out;
}

function chargeReaped(s: RunState, grantId: string, amount: Amount): void {
  cancel(s, grantId);
  s.committed = add(s.committed, amount);
  s.reaped[grantId] = amount;
  const ids = Object.keys(s.reaped);
  if (ids.length > RECENT_GRANTS) s.reaped = without(s.reaped, ids[0] ?? '');
}

/** Drops a reservation without charging it (a grant that was not given after all). */
export function cancel(s: RunState, grantId: string): void {
  s.reservations = without(s.reservations, grantId);
}

function without<V>(rec: Record<string, V>, key: string): Record<string, V> {
  const { [key]: _dropped, ...rest } = rec;
  return rest;
}

/** An amount in the units of a `Usage` (what run records and budget reports show). */
export function usageOf(a: Amount): {
  usd: number;
  inputTokens: number;
  outputTokens: number;
  steps: number;
} {
  const u = toUser(a);
  return { usd: u.usd, inputTokens: u.inputTokens, outputTokens: u.outputTokens, steps: u.steps };
}

/** A run's budget as `runs.budget` reports it: cap, committed and held. */
export function reportOf(s: RunState): {
  runId: string;
  cap: Budget;
  committed: ReturnType<typeof usageOf>;
  reserved: ReturnType<typeof usageOf>;
} {
  return {
    runId: s.runId,
    cap: s.cap,
    committed: usageOf(s.committed),
    reserved: usageOf(reservedOf(s)),
  };
}

/** What a run used: committed plus what it still holds (a child's share of its parent at end). */
export function usedOf(s: RunState): Amount {
  return add(s.committed, reservedOf(s));
}

/** Ends a child's carve on its parent: what the child used is committed, the rest returns. */
export function releaseCarve(
  parent: RunState,
  childRunId: string,
  used: Amount,
): { released: boolean; returned: Amount } {
  const key = carveKey(childRunId);
  const carve = parent.reservations[key];
  if (!carve) return { released: false, returned: zero() };
  cancel(parent, key);
  parent.committed = add(parent.committed, used);
  return { released: true, returned: subClip(carve.amount, used) };
}

export const carveKey = (childRunId: string) => `carve:${childRunId}`;

/** Keeps a breaker's new state on the run; returns its trip, if any. */
function track(
  s: RunState,
  r: { state: BreakerState; trip?: BreakerTrip },
): BreakerTrip | undefined {
  s.breaker = r.state;
  return r.trip;
}

/** Spend of a settle, for the velocity and wall-time breakers. */
export const observeSpend = (s: RunState, usd: number, now: number, config: BreakerConfig) =>
  track(s, recordSpend(s.breaker, { usd, now }, config));

/** A tool result's observation, for the no-progress breaker. */
export const observe = (s: RunState, hash: string, now: number, config: BreakerConfig) =>
  track(s, recordObservation(s.breaker, { hash, now }, config));

/** A tool call about to be granted, for the repeat, step-cap and wall-time breakers. */
export const act = (
  s: RunState,
  action: { tool: string; argsHash: string; now: number; idempotencyKey?: string },
  config: BreakerConfig,
) => track(s, recordAction(s.breaker, action, config));

/** A settle or an observation applied in memory and not yet on record. */
export const Carried = z.object({
  settles: z.array(
    z.object({
      grantId: z.string(),
      actual: Usage,
      ts: z.number(),
      outcome: z.string().optional(),
    }),
  ),
  observations: z.array(z.object({ hash: z.string(), ts: z.number() })),
});
export type Carried = z.infer<typeof Carried>;

/**
 * Applies one record of the partition's audit chain to the state of its run, as the owner
 * applied it when it made the decision: so a successor that replays the chain from the last
 * checkpoint has the same state. Records of other actions change nothing.
 */
export function applyRecord(
  s: RunState,
  entry: { action: string; ts: number; details: Record<string, unknown> },
  config: BreakerConfig,
): void {
  const d = entry.details;
  const carried = Carried.safeParse(d['carried']);
  if (carried.success) applyCarried(s, carried.data, config);
  switch (entry.action) {
    case 'grant': {
      const grantId = String(d['grantId']);
      if (d['kind'] === 'llm') {
        const amount = fromUsage(d['reserved'], 'reservation');
        const expiresAt = typeof d['expiresAt'] === 'number' ? d['expiresAt'] : entry.ts;
        reserve(s, grantId, amount, expiresAt);
      } else if (d['kind'] === 'tool') {
        act(
          s,
          {
            tool: String(d['tool']),
            argsHash: String(d['argsHash']),
            now: entry.ts,
            ...(typeof d['idempotencyKey'] === 'string'
              ? { idempotencyKey: d['idempotencyKey'] }
              : {}),
          },
          config,
        );
      }
      return;
    }
    case 'reap':
      if (typeof d['grantId'] === 'string' && s.reservations[d['grantId']]) {
        chargeReaped(s, d['grantId'], s.reservations[d['grantId']]?.amount ?? zero());
      }
      return;
    case 'carve':
      reserve(s, carveKey(String(d['child'])), fromBudgetAmount(d['amount']), null);
      return;
    case 'release':
      releaseCarve(s, String(d['child']), fromBudgetAmount(d['usedAmount']));
      return;
    case 'run.end':
      s.endedAt ??= entry.ts;
      return;
    default:
      return;
  }
}

/** Applies carried settles and observations (their spend and observations feed the breakers). */
export function applyCarried(s: RunState, c: Carried, config: BreakerConfig): BreakerTrip[] {
  const trips: BreakerTrip[] = [];
  for (const x of c.settles) {
    const res = settle(s, x.grantId, x.actual);
    if (res.settled && !res.duplicate) {
      const t = observeSpend(s, x.actual.usd, x.ts, config);
      if (t) trips.push(t);
    }
  }
  for (const o of c.observations) {
    const t = observe(s, o.hash, o.ts, config);
    if (t) trips.push(t);
  }
  return trips;
}

/** An amount stored in a record (internal units), parsed. */
function fromBudgetAmount(input: unknown): Amount {
  const parsed = Amount.safeParse(input);
  return parsed.success ? parsed.data : zero();
}
