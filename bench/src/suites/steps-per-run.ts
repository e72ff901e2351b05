import { RunGetRequest, RunRecord, RunStartRequest } from '@reins/protocol';
import type { Model } from '@reins/models';
import type { Runtime } from '@reins/runtime';
import { rawChain, type StepSide } from '../chains.js';
import { compare } from '../compare.js';
import { RunWaiter, deploy, loopModel, noopTool } from '../governed.js';
import type { Result, Suite, SuiteContext } from '../types.js';

interface Config {
  rounds: number;
  /** Runs of N = 10 per round. */
  short: number;
  /** Runs of N = 100 per round. */
  long: number;
}

const QUICK: Config = { rounds: 1, short: 2, long: 1 };
const FULL: Config = { rounds: 3, short: 5, long: 2 };
const SHORT = 10;
const LONG = 100;
const ROLE = 'bench_spr';

/** Time per step of a run of `n` steps, started and awaited one at a time (µs). */
async function governedRun(
  client: Runtime,
  waiter: RunWaiter,
  n: number,
  ctx: SuiteContext,
): Promise<number> {
  const start = performance.now();
  const run = await client.request(client.subjects.runsStart, RunStartRequest, RunRecord, {
    goal: `do ${n} no-op steps`,
    role: ROLE,
    input: { steps: n },
    budget: { steps: n + 10 },
  });
  const end = await waiter.ended(run.runId, 300_000);
  const perStepUs = ((end - start) * 1000) / n;
  // Invariant: the run completed with exactly n steps committed (none lost, none doubled).
  // Settles are fire-and-forget: give the last one a moment to land.
  let rec = await client.request(client.subjects.runsGet, RunGetRequest, RunRecord, {
    runId: run.runId,
  });
  for (let i = 0; i < 40 && rec.used.steps !== n; i++) {
    await new Promise((r) => setTimeout(r, 50));
    rec = await client.request(client.subjects.runsGet, RunGetRequest, RunRecord, {
      runId: run.runId,
    });
  }
  ctx.check(
    rec.status === 'completed' && rec.used.steps === n,
    `run of N = ${n} completed with ${n} steps committed (got ${rec.status}, ${rec.used.steps})`,
  );
  return perStepUs;
}

/** Raw NATS: `n` sequential step chains (request + 3-hop forward), µs per step. */
async function rawRun(side: StepSide, n: number, counter: { i: number }): Promise<number> {
  const start = performance.now();
  for (let k = 0; k < n; k++) await side.step(counter.i++);
  return ((performance.now() - start) * 1000) / n;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] ?? NaN) : ((s[m - 1] ?? NaN) + (s[m] ?? NaN)) / 2;
}

async function run(ctx: SuiteContext): Promise<Result[]> {
  const cfg = ctx.quick ? QUICK : FULL;
  const tool = noopTool();
  const models = new Map<number, Model>(
    [SHORT, LONG].map((n) => [n, loopModel({ tool: tool.name, steps: n })] as const),
  );
  const pick = (r: RunRecord): Model => {
    const input = r.input;
    const n =
      typeof input === 'object' && input !== null && 'steps' in input ? Number(input.steps) : SHORT;
    return models.get(n) ?? loopModel({ tool: tool.name, steps: n });
  };
  const deployment = await deploy(ctx.natsUrl, {
    role: ROLE,
    tools: [tool],
    planner: { model: pick, concurrency: 4 },
  });
  const waiter = new RunWaiter(deployment.client);
  await waiter.flush(deployment.client);
  const raw = await rawChain(ctx.natsUrl, 'spr');
  const counter = { i: 1 };
  const rounds = {
    short: { raw: [] as number[], reins: [] as number[] },
    long: { raw: [] as number[], reins: [] as number[] },
  };
  let steps = 0;
  try {
    // Warm-up run (JIT, KV buckets, consumer), not measured.
    await governedRun(deployment.client, waiter, 3, ctx);
    await rawRun(raw, 50, counter);
    ctx.gc();
    const heapBefore = process.memoryUsage().heapUsed;
    for (let round = 0; round < cfg.rounds; round++) {
      const shortRuns: number[] = [];
      const shortRaw: number[] = [];
      for (let k = 0; k < cfg.short; k++) {
        shortRuns.push(await governedRun(deployment.client, waiter, SHORT, ctx));
        shortRaw.push(await rawRun(raw, SHORT, counter));
        steps += SHORT;
      }
      const longRuns: number[] = [];
      const longRaw: number[] = [];
      for (let k = 0; k < cfg.long; k++) {
        longRuns.push(await governedRun(deployment.client, waiter, LONG, ctx));
        longRaw.push(await rawRun(raw, LONG, counter));
        steps += LONG;
      }
      rounds.short.reins.push(median(shortRuns));
      rounds.short.raw.push(median(shortRaw));
      rounds.long.reins.push(median(longRuns));
      rounds.long.raw.push(median(longRaw));
      ctx.log(
        `round ${round + 1}: N=${SHORT} ${median(shortRuns).toFixed(0)} µs/step ` +
          `(raw ${median(shortRaw).toFixed(0)}), N=${LONG} ${median(longRuns).toFixed(0)} µs/step ` +
          `(raw ${median(longRaw).toFixed(0)})`,
      );
    }
    ctx.gc();
    const growth = process.memoryUsage().heapUsed - heapBefore;
    ctx.figure('heap growth per 1,000 governed steps', ((growth / steps) * 1000) / 1024, 'KiB');
  } finally {
    waiter.stop();
    await raw.close();
    await deployment.close();
  }
  return [
    compare(`µs/step, runs of N = ${SHORT}`, 'µs', 'lower', rounds.short),
    compare(`µs/step, runs of N = ${LONG}`, 'µs', 'lower', rounds.long),
    // Raw column = Reins at N = 10: the ratio is how per-step cost grows with history.
    compare(
      `µs/step N = ${LONG} ÷ N = ${SHORT} (raw column = Reins N = ${SHORT})`,
      'µs',
      'lower',
      { raw: rounds.short.reins, reins: rounds.long.reins },
      1.2,
    ),
  ];
}

/** Whole planner runs with the scripted zero-latency model and a no-op tool. */
export const stepsPerRun: Suite = {
  name: 'steps-per-run',
  description:
    'whole governed runs (planner, supervisor, executor) of N = 10 and N = 100 steps vs raw NATS step chains',
  run,
};
