import { Kvm } from '@nats-io/kv';
import { Buckets, RunRecord, RunStartRequest, TraceEvent, decode } from '@reins/protocol';
import type { Runtime } from '@reins/runtime';
import { BudgetLedger, type BudgetLedgerStats } from '@reins/supervisor';
import { startNatsServer } from '@reins/testing';
import { RunWaiter, deployProcesses, ledgerStats } from '../governed.js';
import { clockTicks, processCpuUs } from '../proc.js';
import type { Suite, SuiteContext } from '../types.js';

interface Config {
  /** Supervisor counts, ascending: one deployment, scaled out from the first to the last. */
  counts: number[];
  /** Runs in flight at all times (closed loop: a run that ends is replaced), all in one tenant. */
  runs: number;
  /** Planner steps (model turns) per run: `stepsPerRun − 1` tool calls and a final answer. */
  stepsPerRun: number;
  /** Unmeasured warm-up at each count, then `rounds` measured windows of `windowMs`. */
  warmupMs: number;
  windowMs: number;
  rounds: number;
  /** After the last count: how long the runs still in flight may take to end. */
  drainMs: number;
  /**
   * The supervisors' partition membership lease: a pass every quarter of it, so a new
   * supervisor gets its share within a few. Quick: shorter, to keep the smoke short.
   */
  partitionLeaseMs: number;
  /** First measure the same load without a tenant (no shared scope), with the first count. */
  baseline: boolean;
}

const QUICK: Config = {
  counts: [1, 2],
  runs: 20,
  stepsPerRun: 2,
  warmupMs: 1_000,
  windowMs: 1_500,
  rounds: 1,
  drainMs: 5_000,
  partitionLeaseMs: 1_000,
  baseline: false,
};
const FULL: Config = {
  counts: [1, 2, 4],
  runs: 200,
  stepsPerRun: 10,
  warmupMs: 5_000,
  windowMs: 10_000,
  rounds: 3,
  drainMs: 60_000,
  partitionLeaseMs: 5_000,
  baseline: true,
};

const ROLE = 'bench_scale_out';
const TENANT = 'bench_tenant';
/** A real cap every reservation is checked against, large enough never to refuse one. */
const TENANT_BUDGET = { steps: 100_000_000 };
/** Partitions per deployment: the default (`REINS_PARTITIONS` is not set by the bench). */
const PARTITIONS = 32;

/** The issue's target: ledger compare-and-set conflicts per governed step. */
const MAX_CONFLICTS_PER_STEP = 0.01;

/** One measured window at one supervisor count. */
interface Round {
  /** Planner steps that ended in the window (`step.end` trace events). */
  steps: number;
  wallMs: number;
  /** CPU (µs) of each process over the window: supervisors, planner, executor, nats-server. */
  cpuUs: Map<string, number>;
  casConflicts: number;
  casWrites: number;
}

/** What the deployment did at one supervisor count. */
interface CountResult {
  rounds: Round[];
  /** Open reservations on the tenant scope at the end of the last window. */
  openReservations: number;
}

/**
 * Waits until every partition has a lease and each of the `count` supervisors holds at least
 * its rounded-down share, so a window measures a balanced deployment. Polls KV (bench only).
 * Answers the partitions held per supervisor when they are still not balanced at the timeout
 * (an overloaded deployment may not get there; the windows are measured anyway).
 */
async function balanced(
  client: Runtime,
  count: number,
  timeoutMs = 60_000,
): Promise<number[] | undefined> {
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
      return undefined;
    await new Promise((r) => setTimeout(r, 250));
  }
  return [...owners.values()].sort((a, b) => b - a);
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
 * Counts planner steps as they end (`step.end` trace events on core NATS), leaving out steps
 * that were denied or superseded (they governed nothing).
 */
function stepCounter(client: Runtime): { readonly steps: number; stop(): void } {
  let steps = 0;
  const sub = client.nc.subscribe(client.subjects.trace({ event: 'step.end' }), {
    callback: (err, msg) => {
      if (err) return;
      try {
        const { data } = decode(TraceEvent, msg.data);
        if (data['denied'] === undefined && data['superseded'] === undefined) steps++;
      } catch {
        // not a trace event: not a step
      }
    },
  });
  return {
    get steps() {
      return steps;
    },
    stop: () => sub.unsubscribe(),
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * One deployment on a nats-server of its own, scaled out from the first supervisor count to
 * the last (supervisor processes added, never removed). `cfg.runs` runs are kept in flight the
 * whole time (a run that ends is replaced at once); at each count, once the partitions are
 * balanced, an unmeasured warm-up and `cfg.rounds` measured windows. A window counts the steps
 * that ended in it, every process's CPU and the supervisors' ledger counters.
 */
/** Results by supervisor count; 0 is the baseline without a tenant (1 supervisor). */
async function measure(ctx: SuiteContext, cfg: Config): Promise<Map<number, CountResult>> {
  const ticks = clockTicks();
  const byCount = new Map<number, CountResult>();
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
    partitionLeaseMs: cfg.partitionLeaseMs,
  });
  const { client } = deployment;
  const ledger = await BudgetLedger.open(client.nc);
  ctx.log(`deployed in ${(performance.now() - deploying).toFixed(0)} ms`);
  const waiter = new RunWaiter(client);
  const counter = stepCounter(client);
  let loading = true;
  /** The tenant of the runs started from now on (none for the baseline). */
  let tenant: string | undefined = TENANT;
  let inFlight = 0;
  let started = 0;
  const startErrors: string[] = [];
  let startFailures = 0;
  /** One client slot: starts a run, waits for its end, starts the next, until loading stops. */
  const slot = async (): Promise<void> => {
    while (loading) {
      inFlight++;
      try {
        const r = await client.request(client.subjects.runsStart, RunStartRequest, RunRecord, {
          goal: 'scale-out',
          role: ROLE,
          ...(tenant ? { tenant } : {}),
          budget: { steps: cfg.stepsPerRun + 5 },
        });
        started++;
        await waiter.ended(r.runId, 24 * 3600_000);
      } catch (err) {
        if (!loading) return;
        startFailures++;
        if (startErrors.length < 5) startErrors.push(String(err));
        await sleep(100);
      } finally {
        inFlight--;
      }
    }
  };
  let slots: Promise<void>[] = [];
  try {
    await waiter.flush(client);
    /** Warm-up, then `cfg.rounds` measured windows with the supervisors there are now. */
    const windows = async (label: string): Promise<Round[]> => {
      const processes: [string, number][] = [
        ...deployment.supervisorPids.map((pid, i): [string, number] => [
          `supervisor ${i + 1}`,
          pid,
        ]),
        ['planner', deployment.pids.planner],
        ['executor', deployment.pids.executor],
        ['nats-server', natsPid],
      ];
      // Warm-up (JIT of new supervisors, the tenant's ledger doc in their caches), not counted.
      await sleep(cfg.warmupMs);
      const rounds: Round[] = [];
      for (let i = 0; i < cfg.rounds; i++) {
        const statsBefore = await sumStats(client, deployment.supervisorPids);
        const cpuBefore = processes.map(([, pid]) => processCpuUs(pid, ticks));
        const stepsBefore = counter.steps;
        const t0 = performance.now();
        await sleep(cfg.windowMs);
        const steps = counter.steps - stepsBefore;
        const wallMs = performance.now() - t0;
        const cpuAfter = processes.map(([, pid]) => processCpuUs(pid, ticks));
        const statsAfter = await sumStats(client, deployment.supervisorPids);
        const r: Round = {
          steps,
          wallMs,
          cpuUs: new Map(
            processes.map(([name], k) => [name, (cpuAfter[k] ?? NaN) - (cpuBefore[k] ?? NaN)]),
          ),
          casConflicts: statsAfter.casConflicts - statsBefore.casConflicts,
          casWrites: statsAfter.casWrites - statsBefore.casWrites,
        };
        rounds.push(r);
        const cpu = [...r.cpuUs.values()].reduce((a, b) => a + b, 0);
        const perStep = (x: number, digits: number) =>
          steps > 0 ? (x / steps).toFixed(digits) : 'n/a';
        ctx.log(
          `${label}, window ${i + 1} (${cfg.runs} runs in flight × ${cfg.stepsPerRun} steps): ` +
            `${((steps * 1000) / wallMs).toFixed(0)} steps/s, ${perStep(cpu, 0)} µs CPU/step, ` +
            `${r.casConflicts} CAS conflicts / ${r.casWrites} ledger writes (${perStep(r.casConflicts, 3)}/step)`,
        );
      }
      return rounds;
    };
    for (const count of cfg.counts) {
      const more = count - deployment.supervisorPids.length;
      const scaling = performance.now();
      if (more > 0) await deployment.addSupervisors(more);
      const unbalanced = await balanced(client, count);
      const took = (performance.now() - scaling).toFixed(0);
      ctx.log(
        unbalanced
          ? `${count} supervisor(s): started; partitions still NOT balanced after ${took} ms (held: ${unbalanced.join(', ')}); measuring anyway`
          : `${count} supervisor(s): started and balanced in ${took} ms`,
      );
      if (slots.length === 0) {
        // The baseline first: the same load without a tenant (no shared scope to write).
        tenant = cfg.baseline ? undefined : TENANT;
        slots = Array.from({ length: cfg.runs }, () => slot());
        if (cfg.baseline) {
          const rounds = await windows(`${count} supervisor(s), no tenant`);
          byCount.set(0, { rounds, openReservations: 0 });
          // Runs started from now on are in the tenant; the warm-up lets the others end.
          tenant = TENANT;
        }
      }
      const rounds = await windows(`${count} supervisor(s)`);
      const scope = await ledger.get(`tenant.${TENANT}`);
      byCount.set(count, { rounds, openReservations: scope.reservations });
    }
    // Drain: no new runs; the ones in flight may end (a figure, not a timing check).
    loading = false;
    let timer: NodeJS.Timeout | undefined;
    const drained = await Promise.race([
      Promise.all(slots).then(() => true),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), cfg.drainMs))),
    ]);
    clearTimeout(timer);
    ctx.figure(
      `scale-out runs still in flight ${cfg.drainMs / 1000} s after the load stopped (of ${started} started)`,
      drained ? 0 : inFlight,
      'runs',
    );
    ctx.check(
      waiter.notCompletedCount === 0,
      `every scale-out run that ended completed` +
        (waiter.notCompletedCount > 0
          ? ` (${waiter.notCompletedCount} did not: ${waiter.notCompleted.slice(0, 5).join(', ')})`
          : ''),
    );
    // A refused or timed-out `runs.start` is load shedding under overload, not a broken
    // invariant: a figure.
    ctx.figure(
      `scale-out runs.start requests that failed (timed out or refused${startErrors[0] ? `; first: ${startErrors[0].slice(0, 120)}` : ''})`,
      startFailures,
      'requests',
    );
  } finally {
    loading = false;
    counter.stop();
    waiter.stop();
    await deployment.close();
  }
  return byCount;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] ?? NaN) : ((s[m - 1] ?? 0) + (s[m] ?? 0)) / 2;
}

async function run(ctx: SuiteContext) {
  const cfg = ctx.quick ? QUICK : FULL;
  const where = `${cfg.runs} runs in flight, ${cfg.stepsPerRun} steps each, ${cfg.windowMs / 1000} s windows`;
  const stepsPerSecond = new Map<number, number>();
  const byCount = await measure(ctx, cfg);
  for (const [count, { rounds, openReservations }] of byCount) {
    const steps = rounds.reduce((a, r) => a + r.steps, 0);
    const rate = median(rounds.map((r) => (r.steps * 1000) / r.wallMs));
    stepsPerSecond.set(count, rate);
    const sv =
      count === 0
        ? `${cfg.counts[0] ?? 1} supervisor, runs without a tenant (baseline)`
        : `${count} supervisor${count > 1 ? 's' : ''}, one tenant under a budget`;
    ctx.figure(`governed steps/s, ${sv} (${where}; median of ${rounds.length})`, rate, 'steps/s');
    const byProcess = new Map<string, number>();
    for (const r of rounds)
      for (const [name, us] of r.cpuUs) {
        const key = name.startsWith('supervisor') ? 'supervisors' : name;
        byProcess.set(key, (byProcess.get(key) ?? 0) + us);
      }
    const summed = [...byProcess.values()].reduce((a, b) => a + b, 0);
    const cpuOf = (name: string) => ((byProcess.get(name) ?? NaN) / steps).toFixed(0);
    ctx.figure(
      `CPU per step summed, ${sv} (supervisors ${cpuOf('supervisors')}, planner ${cpuOf('planner')}, ` +
        `executor ${cpuOf('executor')}, nats-server ${cpuOf('nats-server')} µs)`,
      summed / steps,
      'µs',
    );
    const conflicts = rounds.reduce((a, r) => a + r.casConflicts, 0);
    const writes = rounds.reduce((a, r) => a + r.casWrites, 0);
    ctx.figure(`ledger writes per step, ${sv}`, writes / steps, 'writes');
    if (count === 0) continue; // no tenant: no shared scope to reserve on
    ctx.figure(
      `open reservations on the tenant scope after the last window, ${sv} (${cfg.runs} runs in flight)`,
      openReservations,
      'reservations',
    );
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
    '1, 2 and 4 supervisor processes (quick: 1, 2), runs in flight in one tenant under a tenant budget: steps/s, CPU per step, ledger CAS conflicts per step',
  run,
};
