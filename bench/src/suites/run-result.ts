import { connect, type ReinsClient } from '@reins/client';
import { compare } from '../compare.js';
import { RunWaiter, deploy, loopModel, noopTool } from '../governed.js';
import type { Result, Suite, SuiteContext } from '../types.js';

interface Config {
  rounds: number;
  /** Runs per side and round. */
  runs: number;
}

const QUICK: Config = { rounds: 1, runs: 5 };
const FULL: Config = { rounds: 3, runs: 20 };
/** Steps per run: the issue's N = 2. */
const N = 2;
const ROLE = 'bench_result';

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] ?? NaN) : ((s[m - 1] ?? NaN) + (s[m] ?? NaN)) / 2;
}

/** Start → end of one run of N steps, awaited with `result()` or on the `run.end` event (ms). */
async function oneRun(
  client: ReinsClient,
  wait: 'result' | 'event',
  waiter: RunWaiter,
  notCompleted: string[],
): Promise<number> {
  const start = performance.now();
  const run = await client.runs.start(`do ${N} no-op steps`, {
    role: ROLE,
    budget: { steps: N + 5 },
  });
  if (wait === 'event') {
    const end = await waiter.ended(run.id, 60_000);
    return end - start;
  }
  const rec = await run.result({ timeoutMs: 60_000 });
  const ms = performance.now() - start;
  if (rec.status !== 'completed') notCompleted.push(`${run.id}: ${rec.status}`);
  return ms;
}

async function run(ctx: SuiteContext): Promise<Result[]> {
  const cfg = ctx.quick ? QUICK : FULL;
  const tool = noopTool();
  const deployment = await deploy(ctx.natsUrl, {
    role: ROLE,
    tools: [tool],
    planner: { model: loopModel({ tool: tool.name, steps: N }), concurrency: 4 },
  });
  const client = await connect({ servers: ctx.natsUrl, name: 'bench-result-client' });
  const waiter = new RunWaiter(client.runtime);
  await waiter.flush(client.runtime);
  const rounds = { raw: [] as number[], reins: [] as number[] };
  const notCompleted: string[] = [];
  try {
    // Warm-up (JIT, the client's run-record watch), not measured.
    await oneRun(client, 'result', waiter, notCompleted);
    await oneRun(client, 'event', waiter, notCompleted);
    for (let round = 0; round < cfg.rounds; round++) {
      const event: number[] = [];
      const result: number[] = [];
      // Interleaved, so both sides see the same machine.
      for (let k = 0; k < cfg.runs; k++) {
        event.push(await oneRun(client, 'event', waiter, notCompleted));
        result.push(await oneRun(client, 'result', waiter, notCompleted));
      }
      rounds.raw.push(median(event));
      rounds.reins.push(median(result));
      ctx.log(
        `round ${round + 1}: run.end event ${median(event).toFixed(2)} ms, result() ${median(result).toFixed(2)} ms`,
      );
    }
  } finally {
    waiter.stop();
    await client.close();
    await deployment.close();
  }
  ctx.check(
    notCompleted.length === 0,
    `every run awaited with result() completed${notCompleted.length ? ` (not: ${notCompleted.join(', ')})` : ''}`,
  );
  const overhead = rounds.reins.map((v, i) => v - (rounds.raw[i] ?? NaN));
  // The issue's target: result() costs at most the run.end-event wait + 5 ms.
  ctx.figure(
    `result() − run.end-event wait, per run at N = ${N} (target ≤ 5)`,
    median(overhead),
    'ms',
  );
  return [
    compare(
      `run start → end at N = ${N}: result() (reins) vs waiting on run.end (raw)`,
      'ms',
      'lower',
      rounds,
    ),
  ];
}

/** Per-run cost of `run.result()` against waiting on the `run.end` trace event, at N = 2. */
export const runResult: Suite = {
  name: 'run-result',
  description: `per-run result() overhead at N = ${N} vs waiting on the run.end event`,
  run,
};
