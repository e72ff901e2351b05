import { compare } from '../compare.js';
import {
  governedStep,
  rawChain,
  rawDurableChain,
  startBenchRun,
  ungovernedChain,
  type StepSide,
} from '../chains.js';
import { deploy, noopTool } from '../governed.js';
import { interleavedLatency } from '../stats.js';
import type { Result, Suite, SuiteContext } from '../types.js';

interface Config {
  warmup: number;
  iterations: number;
  rounds: number;
}

const QUICK: Config = { warmup: 20, iterations: 60, rounds: 3 };
const FULL: Config = { warmup: 500, iterations: 2000, rounds: 5 };

/** Steps per side before switching to the next, so every side samples the same moments. */
const CHUNK = 20;

/** Sequential governed steps, interleaved between the sides; `counter` numbers every step. */
const latency = (sides: readonly StepSide[], iterations: number, counter: { i: number }) =>
  interleavedLatency(sides, iterations, CHUNK, (side) => side.step(counter.i++));

async function run(ctx: SuiteContext): Promise<Result[]> {
  const cfg = ctx.quick ? QUICK : FULL;
  const tool = noopTool();
  const deployment = await deploy(ctx.natsUrl, { role: 'bench_gov', tools: [tool] });
  const sides: StepSide[] = [];
  const rounds = {
    raw: { p50: [] as number[], p99: [] as number[] },
    off: { p50: [] as number[], p99: [] as number[] },
    durable: { p50: [] as number[], p99: [] as number[] },
    reins: { p50: [] as number[], p99: [] as number[] },
  };
  try {
    const runId = await startBenchRun(deployment.client, 'bench_gov');
    sides.push(
      await rawChain(ctx.natsUrl),
      await ungovernedChain(ctx.natsUrl),
      await rawDurableChain(ctx.natsUrl),
    );
    sides.push(governedStep(deployment.client, runId, tool.name));
    const counter = { i: 1 };
    ctx.log(
      `${cfg.rounds} rounds × ${cfg.iterations} sequential steps per side ` +
        '(authorize + settle + act → executor → reply)',
    );
    await latency(sides, cfg.warmup, counter);
    for (let round = 0; round < cfg.rounds; round++) {
      const l = await latency(sides, cfg.iterations, counter);
      const line: string[] = [];
      for (const side of sides) {
        const s = l.get(side);
        if (!s) throw new Error(`no latency for ${side.name}`);
        const into =
          side.name === 'raw'
            ? rounds.raw
            : side.name === 'off'
              ? rounds.off
              : side.name === 'durable'
                ? rounds.durable
                : rounds.reins;
        into.p50.push(s.p50Us);
        into.p99.push(s.p99Us);
        line.push(`${side.name} p50 ${s.p50Us.toFixed(0)} µs p99 ${s.p99Us.toFixed(0)} µs`);
      }
      ctx.log(`round ${round + 1}: ${line.join('; ')}`);
    }
  } finally {
    for (const side of sides) await side.close().catch(() => undefined);
    await deployment.close();
  }
  return [
    compare(
      'governed step p50',
      'µs',
      'lower',
      { raw: rounds.raw.p50, reins: rounds.reins.p50 },
      1.5,
    ),
    compare('governed step p99', 'µs', 'lower', { raw: rounds.raw.p99, reins: rounds.reins.p99 }),
    compare('governance off (runtime only) p50', 'µs', 'lower', {
      raw: rounds.raw.p50,
      reins: rounds.off.p50,
    }),
    compare('governance off (runtime only) p99', 'µs', 'lower', {
      raw: rounds.raw.p99,
      reins: rounds.off.p99,
    }),
    // The floor: raw NATS doing the same durable writes (ledger, audit, breaker, idempotency).
    compare('durable writes alone on raw NATS p50 (no Reins)', 'µs', 'lower', {
      raw: rounds.raw.p50,
      reins: rounds.durable.p50,
    }),
    compare(
      'governed step p50 ÷ the same durable writes on raw NATS (raw column = those)',
      'µs',
      'lower',
      {
        raw: rounds.durable.p50,
        reins: rounds.reins.p50,
      },
    ),
    // The "raw NATS" column holds the governance-off figure here: the ratio is governance's cost.
    compare('governance cost p50: on ÷ off (raw column = off)', 'µs', 'lower', {
      raw: rounds.off.p50,
      reins: rounds.reins.p50,
    }),
  ];
}

/** One governed step (authorize + settle + act via a real supervisor and executor). */
export const governedStepSuite: Suite = {
  name: 'governed-step',
  description:
    'authorize + settle + act (real supervisor, executor, no-op tool) vs raw NATS request + 3-hop chain, and governance off',
  run,
};
