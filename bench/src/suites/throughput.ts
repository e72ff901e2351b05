import { RunRecord, RunStartRequest } from '@reins/protocol';
import { rawChain } from '../chains.js';
import { compare } from '../compare.js';
import { RunWaiter, deploy, loopModel, noopTool } from '../governed.js';
import type { Result, Suite, SuiteContext } from '../types.js';

interface Config {
  levels: number[];
  stepsPerRun: number;
  rounds: number;
}

const QUICK: Config = { levels: [1, 10, 50], stepsPerRun: 2, rounds: 1 };
const FULL: Config = { levels: [1, 10, 50, 100, 200], stepsPerRun: 10, rounds: 3 };
const ROLE = 'bench_tput';

async function run(ctx: SuiteContext): Promise<Result[]> {
  const cfg = ctx.quick ? QUICK : FULL;
  const tool = noopTool();
  const maxLevel = Math.max(...cfg.levels);
  const deployment = await deploy(ctx.natsUrl, {
    role: ROLE,
    tools: [tool],
    planner: {
      model: loopModel({ tool: tool.name, steps: cfg.stepsPerRun }),
      concurrency: maxLevel,
    },
  });
  const client = deployment.client;
  const waiter = new RunWaiter(client);
  await waiter.flush(client);
  const raw = await rawChain(ctx.natsUrl, 'tput');
  const figures = new Map(
    cfg.levels.map((c) => [c, { raw: [] as number[], reins: [] as number[] }]),
  );
  let counter = 1;

  const governed = async (c: number): Promise<number> => {
    const start = performance.now();
    await Promise.all(
      Array.from({ length: c }, async () => {
        const r = await client.request(client.subjects.runsStart, RunStartRequest, RunRecord, {
          goal: 'throughput',
          role: ROLE,
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
        for (let k = 0; k < cfg.stepsPerRun; k++) await raw.step(counter++);
      }),
    );
    return (c * cfg.stepsPerRun) / ((performance.now() - start) / 1000);
  };

  try {
    await governed(2); // warm-up
    await rawAt(10);
    for (let round = 0; round < cfg.rounds; round++) {
      for (const c of cfg.levels) {
        const f = figures.get(c);
        if (!f) continue;
        const r = await rawAt(c);
        const g = await governed(c);
        f.raw.push(r);
        f.reins.push(g);
        ctx.log(
          `round ${round + 1}: ${c} concurrent runs: ${g.toFixed(0)} steps/s (raw ${r.toFixed(0)})`,
        );
      }
    }
  } finally {
    waiter.stop();
    await raw.close();
    await deployment.close();
  }
  return cfg.levels.map((c) =>
    compare(
      `governed steps/s, ${c} concurrent runs (1 supervisor)`,
      'steps/s',
      'higher',
      figures.get(c) ?? { raw: [], reins: [] },
      c === 200 ? 0.25 : undefined,
    ),
  );
}

/** Aggregate governed steps per second at several numbers of concurrent runs. */
export const throughput: Suite = {
  name: 'throughput',
  description: 'concurrent governed runs: steps/s vs raw NATS step chains at the same concurrency',
  run,
};
