/** Latency summary of one measured series, in microseconds. */
export interface LatencySummary {
  count: number;
  meanUs: number;
  p50Us: number;
  p90Us: number;
  p99Us: number;
  minUs: number;
  maxUs: number;
}

/**
 * Collects `process.hrtime.bigint()` durations into a preallocated buffer, so recording a
 * sample allocates nothing on the measured path.
 */
export class Samples {
  readonly #ns: Float64Array;
  #count = 0;

  constructor(capacity: number) {
    this.#ns = new Float64Array(capacity);
  }

  /** Records one duration (end − start, nanoseconds). Samples past the capacity are dropped. */
  add(startNs: bigint, endNs: bigint): void {
    if (this.#count < this.#ns.length) this.#ns[this.#count++] = Number(endNs - startNs);
  }

  get count(): number {
    return this.#count;
  }

  /** The summary of what was recorded. Throws when nothing was recorded. */
  summary(): LatencySummary {
    return summarize(this.#ns.subarray(0, this.#count));
  }
}

/** Nearest-rank percentile of an ascending array (`q` in 0..1). */
export function percentile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) throw new RangeError('percentile of an empty series');
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank] ?? Number.NaN;
}

/** Summarizes durations in nanoseconds as microseconds. Throws on an empty series. */
export function summarize(ns: Float64Array): LatencySummary {
  if (ns.length === 0) throw new RangeError('no samples');
  const sorted = Float64Array.from(ns).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  const us = (v: number) => v / 1000;
  return {
    count: sorted.length,
    meanUs: us(sum / sorted.length),
    p50Us: us(percentile(sorted, 0.5)),
    p90Us: us(percentile(sorted, 0.9)),
    p99Us: us(percentile(sorted, 0.99)),
    minUs: us(sorted[0] ?? Number.NaN),
    maxUs: us(sorted[sorted.length - 1] ?? Number.NaN),
  };
}

/** Operations per second of `count` operations that took `elapsedNs`. */
export function opsPerSecond(count: number, elapsedNs: bigint): number {
  return elapsedNs > 0n ? count / (Number(elapsedNs) / 1e9) : Number.NaN;
}

/** Median of a series (mean of the middle two when even). Throws on an empty series. */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError('median of an empty series');
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const hi = sorted[mid] ?? Number.NaN;
  return sorted.length % 2 ? hi : ((sorted[mid - 1] ?? Number.NaN) + hi) / 2;
}

/**
 * Sequential latency of several sides, alternating between them every `chunk` operations (and
 * reversing the order each turn): latency on these noisy 2-core machines swings 2–3× with the
 * machine's state, so every side must sample the same moments. `op(side)` runs one operation.
 */
export async function interleavedLatency<S>(
  sides: readonly S[],
  iterations: number,
  chunk: number,
  op: (side: S) => Promise<unknown>,
): Promise<Map<S, LatencySummary>> {
  const samples = new Map(sides.map((side) => [side, new Samples(iterations)] as const));
  for (let done = 0, turn = 0; done < iterations; done += chunk, turn++) {
    const n = Math.min(chunk, iterations - done);
    const order = turn % 2 === 0 ? sides : [...sides].reverse();
    for (const side of order) {
      const into = samples.get(side);
      if (!into) continue;
      for (let k = 0; k < n; k++) {
        const start = process.hrtime.bigint();
        await op(side);
        into.add(start, process.hrtime.bigint());
      }
    }
  }
  return new Map([...samples].map(([side, s]) => [side, s.summary()] as const));
}
