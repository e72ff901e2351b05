import { RunRecord, RunStartRequest } from '@reins/protocol';
import type { Runtime } from '@reins/runtime';
import { rawChain, type StepSide } from '../chains.js';
import { compare } from '../compare.js';
import { RunWaiter, deploy, deployProcesses, loopModel, noopTool } from '../governed.js';
import type { Result, Suite, SuiteContext } from '../types.js';

interface Config {
  levels: number[];
  /** Levels also measured with every role in its own process. */
  processLevels: number[];
  stepsPerRun: number;
  rounds: number;
}

const QUICK: Config = { levels: [1, 10, 50], processLevels: [50], stepsPerRun: 2, rounds: 1 };
const FULL: Config = {
  levels: [1, 10, 50, 100, 200],
  processLevels: [1, 10, 50, 100, 200],
  stepsPerRun: 10,
  rounds: 3,
};

/** The targets at 200 concurrent runs: ≥ 25 % of raw, and ≥ 5,000 steps/s. */
const TARGET_LEVEL = 200;

type Figures = Map<number, { raw: number[]; reins: number[] }>;

/**
 * Measures governed steps/s at each level (runs started at once, each `stepsPerRun` steps,
 * timed to the last `run.end`) against the raw chain at the same concurrency, interleaved.
 */
async function measure(
  ctx: SuiteContext,
  label: string,
  client: Runtime,
  role: string,
  levels: readonly number[],
  cfg: Config,
  raw: StepSide,
  counter: { i: number },
): Promise<Figures> {
  const waiter = new RunWaiter(client);
  await waiter.flush(client);
  const figures: Figures = new Map(levels.map((c) => [c, { raw: [], reins: [] }]));
  const governed = async (c: number): Promise<number> => {
    const start = performance.now();
    await Promise.all(
      Array.from({ length: c }, async () => {
        const r = await client.request(client.subjects.runsStart, RunStartRequest, RunRecord, {
          goal: 'throughput',
          role,
          budget: { steps: cfg.stepsPerRun + 5 },
        });
        await waiter.ended(r.runId, 300_000);
      }),
    );
    return (c * cfg.stepsPerRun) / ((performance.now() - start) / 1000);
  };
  const rawAt = async (c: number): Promise<number> => {
    const start = performance.now();
    await Promise.all(
      Array.from({ length: c }, async () => {
        for (let k = 0; k < cfg.stepsPerRun; k++) await raw.step(counter.i++);
      }),
    );
    return (c * cfg.stepsPerRun) / ((performance.now() - start) / 1000);
  };
  try {
    // Warm-up (JIT, connections, consumers), at the first levels' size.
    for (const c of levels.slice(0, 3)) await governed(c);
    await rawAt(10);
    for (let round = 0; round < cfg.rounds; round++) {
      for (const c of levels) {
        const f = figures.get(c);
        if (!f) continue;
        const r = await rawAt(c);
        const g = await governed(c);
        f.raw.push(r);
        f.reins.push(g);
        ctx.log(
          `round ${round + 1}: ${label}: ${c} concurrent runs: ${g.toFixed(0)} steps/s (raw ${r.toFixed(0)})`,
        );
      }
    }
  } finally {
    waiter.stop();
  }
  return figures;
}

async function run(ctx: SuiteContext): Promise<Result[]> {
  const cfg = ctx.quick ? QUICK : FULL;
  const tool = noopTool();
  const raw = await rawChain(ctx.natsUrl, 'tput');
  const counter = { i: 1 };
  const results: Result[] = [];
  const report = (figures: Figures, where: string) => {
    for (const [c, f] of figures) {
      results.push(
        compare(
          `governed steps/s, ${c} concurrent runs (1 supervisor, ${where})`,
          'steps/s',
          'higher',
          f,
          c === TARGET_LEVEL ? 0.25 : undefined,
        ),
      );
      if (c === TARGET_LEVEL) {
        const sorted = [...f.reins].sort((a, b) => a - b);
        const median = sorted[Math.floor(sorted.length / 2)] ?? 0;
        ctx.figure(
          `governed steps/s at ${c} concurrent runs, ${where} (target ≥ 5,000)`,
          median,
          'steps/s',
        );
      }
    }
  };
  try {
    // Every role in one process (the other suites' set-up).
    const maxLevel = Math.max(...cfg.levels);
    const inProcess = await deploy(ctx.natsUrl, {
      role: 'bench_tput',
      tools: [tool],
      planner: {
        model: loopModel({ tool: tool.name, steps: cfg.stepsPerRun }),
        concurrency: maxLevel,
      },
    });
    try {
      report(
        await measure(
          ctx,
          'one process',
          inProcess.client,
          'bench_tput',
          cfg.levels,
          cfg,
          raw,
          counter,
        ),
        'one process',
      );
    } finally {
      await inProcess.close();
    }
    // Supervisor, planner pool and executor each in its own process, as deployed.
    const processes = await deployProcesses(ctx.natsUrl, {
      taskRole: 'bench_tput_procs',
      steps: cfg.stepsPerRun,
      concurrency: Math.max(...cfg.processLevels),
    });
    try {
      report(
        await measure(
          ctx,
          'own processes',
          processes.client,
          'bench_tput_procs',
          cfg.processLevels,
          cfg,
          raw,
          counter,
        ),
        'one process per role',
      );
    } finally {
      await processes.close();
    }
  } finally {
    await raw.close();
  }
  return results;
}

/** Aggregate governed steps per second at several numbers of concurrent runs. */
export const throughput: Suite = {
  name: 'throughput',
  description:
    'concurrent governed runs (all roles in one process, and one process per role): steps/s vs raw NATS step chains at the same concurrency',
  run,
};
