import { z } from 'zod';
import { Usage, parse, type Budget } from '@reins/protocol';

// Budget amounts in the units the control plane counts in: integers only, USD as micro-dollars,
// so sums are exact. Shared by the KV ledger (shared scopes) and the in-memory run state.

/** A budget dimension the ledger enforces. Wall time is a run deadline, checked by breakers. */
export type BudgetDimension = 'usd' | 'tokens' | 'inputTokens' | 'outputTokens' | 'steps';

export const DIMENSIONS: readonly BudgetDimension[] = [
  'usd',
  'tokens',
  'inputTokens',
  'outputTokens',
  'steps',
];

export const MICROS = 1_000_000;
const Int = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

/** An amount in internal units (USD as integer micro-dollars). */
export const Amount = z.object({
  usdMicros: Int,
  tokens: Int,
  inputTokens: Int,
  outputTokens: Int,
  steps: Int,
});
export type Amount = z.infer<typeof Amount>;

/** An amount in user units (USD as a decimal). */
export interface LedgerAmount {
  usd: number;
  tokens: number;
  inputTokens: number;
  outputTokens: number;
  steps: number;
}

/** Nothing. */
export const zero = (): Amount => ({
  usdMicros: 0,
  tokens: 0,
  inputTokens: 0,
  outputTokens: 0,
  steps: 0,
});

export function add(a: Amount, b: Amount): Amount {
  return {
    usdMicros: a.usdMicros + b.usdMicros,
    tokens: a.tokens + b.tokens,
    inputTokens: a.inputTokens + b.inputTokens,
    outputTokens: a.outputTokens + b.outputTokens,
    steps: a.steps + b.steps,
  };
}

export function subClip(a: Amount, b: Amount): Amount {
  return {
    usdMicros: Math.max(0, a.usdMicros - b.usdMicros),
    tokens: Math.max(0, a.tokens - b.tokens),
    inputTokens: Math.max(0, a.inputTokens - b.inputTokens),
    outputTokens: Math.max(0, a.outputTokens - b.outputTokens),
    steps: Math.max(0, a.steps - b.steps),
  };
}

export function fromUsage(input: unknown, name: string): Amount {
  const u = parse(Usage, input, name);
  return {
    usdMicros: Math.round(u.usd * MICROS),
    tokens: u.inputTokens + u.outputTokens,
    inputTokens: u.inputTokens,
    outputTokens: u.outputTokens,
    steps: u.steps,
  };
}

export function fromBudget(b: Budget): Amount {
  return {
    usdMicros: Math.round((b.usd ?? 0) * MICROS),
    tokens: b.tokens ?? 0,
    inputTokens: b.inputTokens ?? 0,
    outputTokens: b.outputTokens ?? 0,
    steps: b.steps ?? 0,
  };
}

export function toUser(a: Amount): LedgerAmount {
  return {
    usd: a.usdMicros / MICROS,
    tokens: a.tokens,
    inputTokens: a.inputTokens,
    outputTokens: a.outputTokens,
    steps: a.steps,
  };
}

/** Value of a dimension in internal units. */
export function dim(a: Amount, d: BudgetDimension): number {
  return d === 'usd' ? a.usdMicros : a[d];
}

/** A cap in internal units, or undefined when the dimension is unlimited. */
export function capOf(cap: Budget, d: BudgetDimension): number | undefined {
  if (d === 'usd') return cap.usd === undefined ? undefined : Math.round(cap.usd * MICROS);
  return cap[d];
}

export const userUnits = (d: BudgetDimension, v: number) => (d === 'usd' ? v / MICROS : v);

/** Why an amount does not fit a cap: the first dimension that overflows, in user units. */
export interface CapOverflow {
  ok: false;
  scope: string;
  dimension: BudgetDimension;
  cap: number;
  /** committed + reserved + amount on that dimension, had it been admitted. */
  wouldBe: number;
  /** The amount asked for on that dimension. */
  requested: number;
  /** Spent (settled or charged) on that dimension. */
  committed: number;
  /** Held by other open reservations on that dimension. */
  reserved: number;
}

/** Whether `amount` fits in `cap` beside what the scope spent and holds. */
export function fitsCap(
  scope: string,
  cap: Budget,
  committed: Amount,
  reserved: Amount,
  amount: Amount,
): { ok: true } | CapOverflow {
  for (const d of DIMENSIONS) {
    const limit = capOf(cap, d);
    const want = dim(amount, d);
    if (limit === undefined || want === 0) continue;
    const wouldBe = dim(committed, d) + dim(reserved, d) + want;
    if (wouldBe > limit) {
      return {
        ok: false,
        scope,
        dimension: d,
        cap: userUnits(d, limit),
        wouldBe: userUnits(d, wouldBe),
        requested: userUnits(d, want),
        committed: userUnits(d, dim(committed, d)),
        reserved: userUnits(d, dim(reserved, d)),
      };
    }
  }
  return { ok: true };
}
