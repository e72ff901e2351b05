import { BudgetReport, RunGetRequest, RunRecord, RunStartRequest, newId } from '@reins/protocol';
import { openBucket } from '@reins/runtime';
import type { BudgetLedger } from '@reins/supervisor';
import { compare } from '../compare.js';
import { RunWaiter, deploy, loopModel, noopTool } from '../governed.js';
import type { Result, Suite, SuiteContext } from '../types.js';

interface Config {
  runs: number;
  capUsd: number;
  contenders: number;
  contendedCap: number;
  opsWorkers: number;
  opsPairs: number;
  rounds: number;
}

const QUICK: Config = {
  runs: 20,
  capUsd: 0.006,
  contenders: 200,
  contendedCap: 50,
  opsWorkers: 16,
  opsPairs: 160,
  rounds: 1,
};
const FULL: Config = {
  runs: 200,
  capUsd: 0.006,
  contenders: 200,
  contendedCap: 50,
  opsWorkers: 32,
  opsPairs: 1000,
  rounds: 3,
};
const ROLE = 'bench_budget';
const SUPERVISORS = 3;
/** USD per 1M tokens: 1e-5 USD a token, so a step costs ~0.001–0.002 USD. */
const PRICE = { input: 10, output: 10 };

/** Ledger reserve + settle pairs on one scope per worker; ops/s counts each call. */
async function ledgerOps(ledgers: readonly BudgetLedger[], workers: number, pairs: number) {
  const scopes = await Promise.all(
    Array.from({ length: workers }, async (_, w) => {
      const scope = `run.${newId('bops')}`;
      await ledgers[w % ledgers.length]?.setCap(scope, { steps: 1_000_000_000 });
      return scope;
    }),
  );
  let issued = 0;
  const start = performance.now();
  await Promise.all(
    scopes.map(async (scope, w) => {
      const ledger = ledgers[w % ledgers.length];
      if (!ledger) return;
      while (issued < pairs) {
        issued++;
        const grantId = newId('g');
        const res = await ledger.reserve({
          grantId,
          scopes: [scope],
          amount: { steps: 1 },
          leaseMs: 60_000,
        });
        if (!res.ok) throw new Error('ledger ops: reservation refused');
        await ledger.settle(grantId, { steps: 1 });
      }
    }),
  );
  return (pairs * 2) / ((performance.now() - start) / 1000);
}

/** Raw KV compare-and-set: get + update(revision) on one key per worker. */
async function rawCas(kv: Awaited<ReturnType<typeof openBucket>>, workers: number, ops: number) {
  const keys = Array.from({ length: workers }, () => newId('cas'));
  const value = new TextEncoder().encode(JSON.stringify({ committed: 0, reservations: {} }));
  await Promise.all(keys.map((k) => kv.put(k, value)));
  let issued = 0;
  const start = performance.now();
  await Promise.all(
    keys.map(async (key) => {
      while (issued < ops) {
        issued++;
        const e = await kv.get(key);
        if (!e) throw new Error('raw CAS: key vanished');
        await kv.update(key, value, e.revision);
      }
    }),
  );
  return ops / ((performance.now() - start) / 1000);
}

async function run(ctx: SuiteContext): Promise<Result[]> {
  const cfg = ctx.quick ? QUICK : FULL;
  const tool = noopTool();
  const deployment = await deploy(ctx.natsUrl, {
    role: ROLE,
    tools: [tool],
    supervisors: SUPERVISORS,
    planner: {
      model: loopModel({ tool: tool.name, steps: Infinity, price: PRICE }),
      concurrency: Math.min(cfg.runs, 200),
      maxOutputTokens: 32,
    },
  });
  const client = deployment.client;
  const ledgers = deployment.supervisors.map((s) => s.ledger);
  const waiter = new RunWaiter(client);
  await waiter.flush(client);
  const kv = await openBucket(client.nc, 'bench_cas');
  const ops = { raw: [] as number[], reins: [] as number[] };
  try {
    // 1. Concurrent runs, each with a USD cap, across 3 supervisors: none may commit past it.
    const started = await Promise.all(
      Array.from({ length: cfg.runs }, () =>
        client.request(client.subjects.runsStart, RunStartRequest, RunRecord, {
          goal: 'spend until the budget stops me',
          role: ROLE,
          budget: { usd: cfg.capUsd, steps: 1000 },
          waitForPlanner: true, // no planner: the bench spends itself
        }),
      ),
    );
    await Promise.all(started.map((r) => waiter.ended(r.runId, 120_000)));
    let worst = 0;
    let stoppedByBudget = 0;
    let openReservations = 0;
    let totalSteps = 0;
    for (const r of started) {
      let report = await client.request(client.subjects.runsBudget, RunGetRequest, BudgetReport, {
        runId: r.runId,
      });
      // Settles are fire-and-forget: wait (bounded) until the last one has landed.
      for (let i = 0; i < 40 && report.reserved.usd > 0; i++) {
        await new Promise((res) => setTimeout(res, 50));
        report = await client.request(client.subjects.runsBudget, RunGetRequest, BudgetReport, {
          runId: r.runId,
        });
      }
      if (report.reserved.usd > 0 || report.reserved.steps > 0) openReservations++;
      worst = Math.max(worst, report.committed.usd / cfg.capUsd);
      totalSteps += report.committed.steps;
      const rec = await client.request(client.subjects.runsGet, RunGetRequest, RunRecord, {
        runId: r.runId,
      });
      if (rec.stopReason === 'BUDGET_EXCEEDED') stoppedByBudget++;
    }
    ctx.log(
      `${cfg.runs} runs capped at $${cfg.capUsd} over ${SUPERVISORS} supervisors: max committed/cap ` +
        `${worst.toFixed(3)}, ${stoppedByBudget} stopped by budget, ${totalSteps} steps`,
    );
    ctx.figure(`max committed / cap over ${cfg.runs} USD-capped runs`, worst, '×');
    ctx.check(worst <= 1, `no run committed more than its USD cap (max ${worst.toFixed(4)}×)`);
    ctx.check(
      stoppedByBudget === cfg.runs,
      `every run stopped with BUDGET_EXCEEDED (${stoppedByBudget}/${cfg.runs})`,
    );
    ctx.check(
      openReservations === 0,
      `no reservation left open after the runs (${openReservations})`,
    );

    // 2. Contention: many concurrent reservations on one scope across the 3 supervisors' ledgers.
    const scope = `run.${newId('bcontend')}`;
    await ledgers[0]?.setCap(scope, { steps: cfg.contendedCap });
    const grants = Array.from({ length: cfg.contenders }, () => newId('g'));
    const outcomes = await Promise.all(
      grants.map((grantId, i) =>
        (ledgers[i % ledgers.length] as BudgetLedger)
          .reserve({ grantId, scopes: [scope], amount: { steps: 1 }, leaseMs: 60_000 })
          .then(
            (r) => (r.ok ? 'ok' : 'denied'),
            () => 'error',
          ),
      ),
    );
    const admitted = grants.filter((_, i) => outcomes[i] === 'ok');
    const errors = outcomes.filter((o) => o === 'error').length;
    await Promise.all(
      admitted.map((g, i) => (ledgers[i % ledgers.length] as BudgetLedger).settle(g, { steps: 1 })),
    );
    const after = await (ledgers[0] as BudgetLedger).get(scope);
    ctx.log(
      `${cfg.contenders} concurrent reservations for a cap of ${cfg.contendedCap} steps: ` +
        `${admitted.length} admitted, ${errors} errors; committed ${after.committed.steps}`,
    );
    ctx.figure(
      `admitted of ${cfg.contenders} concurrent reservations (cap ${cfg.contendedCap}, 3 ledgers)`,
      admitted.length,
      'reservations',
    );
    ctx.check(
      admitted.length <= cfg.contendedCap && after.committed.steps <= cfg.contendedCap,
      `contended scope: admitted ${admitted.length} ≤ cap ${cfg.contendedCap}, committed ${after.committed.steps}`,
    );
    ctx.check(
      after.committed.steps === admitted.length && after.reservations === 0,
      `contended scope ledger consistent: committed ${after.committed.steps} = admitted ${admitted.length}, open ${after.reservations}`,
    );

    // 3. Ledger throughput vs a raw KV CAS loop, same concurrency.
    await ledgerOps(ledgers, 4, 20);
    await rawCas(kv, 4, 40);
    for (let round = 0; round < cfg.rounds; round++) {
      const raw = await rawCas(kv, cfg.opsWorkers, cfg.opsPairs * 2);
      const reins = await ledgerOps(ledgers, cfg.opsWorkers, cfg.opsPairs);
      ops.raw.push(raw);
      ops.reins.push(reins);
      ctx.log(
        `round ${round + 1}: ledger ${reins.toFixed(0)} ops/s, raw KV CAS ${raw.toFixed(0)} ops/s`,
      );
    }
  } finally {
    waiter.stop();
    await deployment.close();
  }
  return [
    compare(
      `ledger ops/s (reserve or settle), ${cfg.opsWorkers} in flight, vs raw KV get+CAS`,
      'ops/s',
      'higher',
      ops,
    ),
  ];
}

/** USD caps hold under concurrency and several supervisors; ledger cost vs raw KV CAS. */
export const budgetAccuracy: Suite = {
  name: 'budget-accuracy',
  description:
    'concurrent USD-capped runs over 3 supervisors (overshoot must be 0); ledger ops/s vs raw KV CAS',
  run,
};
