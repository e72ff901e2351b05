/** What every suite gets from the runner. */
export interface SuiteContext {
  /** URL of the nats-server the runner started for this run. */
  natsUrl: string;
  /** Smaller iteration counts, for CI and local checks (well under a minute in all). */
  quick: boolean;
  /** `--skip-postgres`: leave out figures that need a PostgreSQL cluster (the peers suite's). */
  skipPostgres: boolean;
  /** Progress line on stderr (the table goes to stdout). */
  log(message: string): void;
  /** A full garbage collection (for heap figures that compare live memory). */
  gc(): void;
  /**
   * Records an invariant (overshoot 0, no lost step). A broken one is printed and makes the run
   * exit non-zero; timings never do.
   */
  check(ok: boolean, message: string): void;
  /**
   * Records a figure that has no raw NATS counterpart (heap growth, overshoot ratio…), with the
   * absolute target the issue sets for it, if any (printed ok/MISSED; never fails the run).
   */
  figure(metric: string, value: number, unit: string, target?: FigureTarget): void;
}

/** An absolute target of a figure: at most (`lower`) or at least (`higher`) `value`. */
export interface FigureTarget {
  better: Better;
  value: number;
}

/** A figure without a raw NATS baseline (memory, accuracy). */
export interface Figure {
  metric: string;
  value: number;
  unit: string;
  target?: FigureTarget;
}

/** An invariant a suite checked. */
export interface Check {
  ok: boolean;
  message: string;
}

/** Whether a smaller or a larger figure is the better one. */
export type Better = 'lower' | 'higher';

/**
 * One Reins figure beside its raw NATS baseline, measured in the same run. `ratio` is always
 * reins / raw; `target` is the worst acceptable ratio, when the issue sets one.
 */
export interface Result {
  metric: string;
  unit: string;
  better: Better;
  raw: number;
  reins: number;
  ratio: number;
  target?: number;
  /** Per-round values the medians were taken from. */
  rounds: { raw: number[]; reins: number[] };
}

/** A benchmark suite: `bench/src/suites/<name>.ts`, listed in `suites/index.ts`. */
export interface Suite {
  name: string;
  description: string;
  run(ctx: SuiteContext): Promise<Result[]>;
}

/** Process memory at one moment (bytes). */
export interface MemorySample {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
}

/** What a suite produced, with the memory around it. */
export interface SuiteReport {
  name: string;
  description: string;
  durationMs: number;
  memory: { before: MemorySample; after: MemorySample; delta: MemorySample };
  results: Result[];
  /** Figures without a baseline. */
  figures: Figure[];
  /** Invariants checked; any `ok: false` fails the run. */
  checks: Check[];
}

/** Everything one run wrote to `bench/results/<timestamp>.json`. */
export interface RunReport {
  timestamp: string;
  mode: 'quick' | 'full';
  environment: {
    node: string;
    natsServer: string;
    platform: string;
    cpus: number;
    cpuModel: string;
  };
  suites: SuiteReport[];
}
