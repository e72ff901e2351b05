import { median } from './stats.js';
import type { Better, Result } from './types.js';

/**
 * Builds a `Result` from per-round figures of both sides: the medians of the rounds, and the
 * ratio reins / raw. Rounds are paired (measured at the same moments), so the ratio is the
 * median of the per-round ratios, which cancels the machine's drift better than a ratio of
 * medians. Throws when either side has no rounds.
 */
export function compare(
  metric: string,
  unit: string,
  better: Better,
  rounds: { raw: number[]; reins: number[] },
  target?: number,
): Result {
  const raw = median(rounds.raw);
  const reins = median(rounds.reins);
  return {
    metric,
    unit,
    better,
    raw,
    reins,
    ratio:
      rounds.raw.length === rounds.reins.length
        ? median(rounds.reins.map((v, i) => v / (rounds.raw[i] ?? Number.NaN)))
        : reins / raw,
    ...(target === undefined ? {} : { target }),
    rounds,
  };
}

/** Whether a ratio meets its target; `undefined` when there is none. */
export function meetsTarget(r: {
  better: Better;
  ratio: number;
  target?: number | undefined;
}): boolean | undefined {
  if (r.target === undefined) return undefined;
  return r.better === 'lower' ? r.ratio <= r.target : r.ratio >= r.target;
}
