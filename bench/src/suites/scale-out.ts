import { Kvm } from '@nats-io/kv';
import { Buckets, RunRecord, RunStartRequest } from '@reins/protocol';
import type { Runtime } from '@reins/runtime';
import type { BudgetLedgerStats } from '@reins/supervisor';
import { startNatsServer } from '@reins/testing';
import { RunWaiter, deployProcesses, ledgerStats } from '../governed.js';
import { clockTicks, processCpuUs } from '../proc.js';
import type { Suite, SuiteContext } from '../types.js';

interface Config {
  /** Supervisor counts, ascending: one deployment, scaled out from the first to the last. */
  counts: number[];
  /** Runs started at once per round, all in one tenant. */
  runs: number;
  /** Planner steps (model turns) per run: `stepsPerRun − 1` tool calls and a final answer. */
  stepsPerRun: number;
  /** Measured rounds per supervisor count, after one unmeasured warm-up round. */
  rounds: number;
}

const QUICK: Config = { counts: [1, 2, 4], runs: 20, stepsPerRun: 2, rounds: 1 };
const FULL: Config = { counts: [1, 2, 4], runs: 200, stepsPerRun: 10, rounds: 3 };

const ROLE = 'bench_scale_out';
const TENANT = 'bench_tenant';
/** A real cap every reservation is checked against, large enough never to refuse one. */
const TENANT_BUDGET = { steps: 100_000_000 };
/** Partitions per deployment: the default (`REINS_PARTITIONS` is not set by the bench). */
const PARTITIONS = 32;

/** The target: ledger compare-and-set conflicts per governed step. */
const MAX_CONFLICTS_PER_STEP = 0.01;

/** One measured round at one supervisor count. */
interface Round {
  steps: number;
  wallMs: number;
  /** CPU (µs) of each process over the round: supervisors, planner, executor, nats-server. */
  cpuUs: Map<string, number>;
  casConflicts: number;
  casWrites: number;
}

/**
 * Waits until every partition has a lease and each of the `count` supervisors holds at least
 * its rounded-down share, so a round measures a balanced deployment. Polls KV (bench only).
 */
async function balanced(client: Runtime, count: number, timeoutMs = 60_000): Promise<void> {
  const kv = await new Kvm(client.nc).open(Buckets.partitions);
  const floor = Math.floor(PARTITIONS / count);
  const deadline = Date.now() + timeoutMs;
  let owners = new Map<string, number>();
  while (Date.now() < deadline) {
    owners = new Map();
    let leased = 0;
    for (let n = 0; n < PARTITIONS; n++) {
      const e = await kv.get(`lease.${n}`);
      if (!e || e.operation !== 'PUT') continue;
      const owner = (e.json<{ owner?: string }>().owner ?? '').trim();
      if (owner === '') continue;
      leased++;
      owners.set(owner, (owners.get(owner) ?? 0) + 1);
    }
    if (
      leased === PARTITIONS &&
      owners.size === count &&
      [...owners.values()].every((c) => c >= floor)
    )
      return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(
    `partitions not balanced over ${count} supervisors within ${timeoutMs} ms: ${JSON.stringify([...owners])}`,
  );
}

async function sumStats(client: Runtime, pids: readonly number[]): Promise<BudgetLedgerStats> {
  const all = await Promise.all(pids.map((pid) => ledgerStats(client, pid)));
  return all.reduce(
    (a, s) => ({
      casWrites: a.casWrites + s.casWrites,
      casConflicts: a.casConflicts + s.casConflicts,
    }),
    { casWrites: 0, casConflicts: 0 },
  );
}

/**
 * One deployment on a nats-server of its own, scaled out from the first supervisor count to
 * the last (supervisor processes added, never removed); at each count, once the partitions
 * are balanced, an unmeasured warm-up round and `cfg.rounds` measured ones.
 */
async function measure(ctx: SuiteContext, cfg: Config): Promise<Map<number, Round[]>> {
  const ticks = clockTicks();
  const byCount = new Map<number, Round[]>();
  await using nats = await startNatsServer();
  const natsPid = nats.pid;
  if (natsPid === undefined) throw new Error('nats-server has no pid');
  const deploying = performance.now();
  const deployment = await deployProcesses(nats.url, {
    taskRole: ROLE,
    steps: cfg.stepsPerRun,
    concurrency: cfg.runs,
    supervisors: cfg.counts[0] ?? 1,
    tenantBudgets: { [TENANT]: TENANT_BUDGET },
  });
  const { client } = deployment;
  ctx.log(`deployed in ${(performance.now() - deploying).toFixed(0)} ms`);
  const waiter = new RunWaiter(client);
  try {
    await waiter.flush(client);
    const round = async (): Promise<void> => {
      await Promise.all(
        Array.from({ length: cfg.runs }, async () => {
          const r = await client.request(client.subjects.runsStart, RunStartRequest, RunRecord, {
            goal: 'scale-out',
            role: ROLE,
            tenant: TENANT,
            budget: { steps: cfg.stepsPerRun + 5 },
          });
          await waiter.ended(r.runId, 300_000);
        }),
      );
    };
    for (const count of cfg.counts) {
      const more = count - deployment.supervisorPids.length;
      const scaling = performance.now();
      if (more > 0) await deployment.addSupervisors(more);
      await balanced(client, count);
      ctx.log(
        `${count} supervisor(s): started and balanced in ${(performance.now() - scaling).toFixed(0)} ms`,
      );
      const processes: [string, number][] = [
        ...deployment.supervisorPids.map((pid, i): [string, number] => [
          `supervisor ${i + 1}`,
          pid,
        ]),
        ['planner', deployment.pids.planner],
        ['executor', deployment.pids.executor],
        ['nats-server', natsPid],
      ];
      const failedBefore = waiter.notCompletedCount;
      // Warm-up (JIT of new supervisors, the tenant's ledger doc in their caches), not counted.
      await round();
      const rounds: Round[] = [];
      for (let i = 0; i < cfg.rounds; i++) {
        const statsBefore = await sumStats(client, deployment.supervisorPids);
        const cpuBefore = processes.map(([, pid]) => processCpuUs(pid, ticks));
        const started = performance.now();
        await round();
        const wallMs = performance.now() - started;
        const cpuAfter = processes.map(([, pid]) => processCpuUs(pid, ticks));
        const statsAfter = await sumStats(client, deployment.supervisorPids);
        const r: Round = {
          steps: cfg.runs * cfg.stepsPerRun,
          wallMs,
          cpuUs: new Map(processes.map(([name], k) => [name, cpuAfter[k]! - cpuBefore[k]!])),
          casConflicts: statsAfter.casConflicts - statsBefore.casConflicts,
          casWrites: statsAfter.casWrites - statsBefore.casWrites,
        };
        rounds.push(r);
        const cpu = [...r.cpuUs.values()].reduce((a, b) => a + b, 0);
        ctx.log(
          `${count} supervisor(s), round ${i + 1}: ${cfg.runs} runs × ${cfg.stepsPerRun} steps: ` +
            `${((r.steps * 1000) / wallMs).toFixed(0)} steps/s, ${(cpu / r.steps).toFixed(0)} µs CPU/step, ` +
            `${r.casConflicts} CAS conflicts / ${r.casWrites} ledger writes (${(r.casConflicts / r.steps).toFixed(3)}/step)`,
        );
      }
      byCount.set(count, rounds);
      const failed = waiter.notCompletedCount - failedBefore;
      ctx.check(
        failed === 0,
        `every scale-out run with ${count} supervisor(s) completed` +
          (failed > 0 ? ` (${failed} did not: ${waiter.notCompleted.slice(0, 5).join(', ')})` : ''),
      );
    }
  } finally {
    waiter.stop();
    await deployment.close();
  }
  return byCount;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : ((s[m - 1] ?? 0) + (s[m] ?? 0)) / 2;
}

async function run(ctx: SuiteContext) {
  const cfg = ctx.quick ? QUICK : FULL;
  const where = `${cfg.runs} runs in one tenant under a tenant budget, ${cfg.stepsPerRun} steps each`;
  const stepsPerSecond = new Map<number, number>();
  const byCount = await measure(ctx, cfg);
  for (const [count, rounds] of byCount) {
    const steps = rounds.reduce((a, r) => a + r.steps, 0);
    const rate = median(rounds.map((r) => (r.steps * 1000) / r.wallMs));
    stepsPerSecond.set(count, rate);
    const sv = `${count} supervisor${count > 1 ? 's' : ''}`;
    ctx.figure(`governed steps/s, ${sv} (${where}; median of ${rounds.length})`, rate, 'steps/s');
    const byProcess = new Map<string, number>();
    for (const r of rounds)
      for (const [name, us] of r.cpuUs) {
        const key = name.startsWith('supervisor') ? 'supervisors' : name;
        byProcess.set(key, (byProcess.get(key) ?? 0) + us);
      }
    const summed = [...byProcess.values()].reduce((a, b) => a + b, 0);
    ctx.figure(
      `CPU per step summed, ${sv} (supervisors ${(byProcess.get('supervisors')! / steps).toFixed(0)}, ` +
        `planner ${(byProcess.get('planner')! / steps).toFixed(0)}, executor ${(byProcess.get('executor')! / steps).toFixed(0)}, ` +
        `nats-server ${(byProcess.get('nats-server')! / steps).toFixed(0)} µs)`,
      summed / steps,
      'µs',
    );
    const conflicts = rounds.reduce((a, r) => a + r.casConflicts, 0);
    const writes = rounds.reduce((a, r) => a + r.casWrites, 0);
    ctx.figure(`ledger writes per step, ${sv}`, writes / steps, 'writes');
    ctx.figure(`ledger CAS conflicts per step, ${sv}`, conflicts / steps, 'conflicts', {
      better: 'lower',
      value: MAX_CONFLICTS_PER_STEP,
    });
  }
  const one = stepsPerSecond.get(1);
  const two = stepsPerSecond.get(2);
  if (one !== undefined && two !== undefined) {
    ctx.figure('steps/s with 2 supervisors ÷ with 1 (target ≥ 1)', two / one, '×', {
      better: 'higher',
      value: 1,
    });
  }
  return [];
}

/**
 * Scale-out (issue 17): 1, 2 and 4 supervisor processes on one nats-server, a planner pool and
 * an executor in their own processes, many concurrent runs in one tenant under a tenant budget
 * (the shared scope every model call reserves on by compare-and-set). Governed steps/s, CPU per
 * step over every process, and the ledger's compare-and-set conflicts per step.
 */
export const scaleOut: Suite = {
  name: 'scale-out',
  description:
    '1, 2 and 4 supervisor processes, concurrent runs in one tenant under a tenant budget: steps/s, CPU per step, ledger CAS conflicts per step',
  run,
};
