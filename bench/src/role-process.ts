import { Budget, grantSignerFromSeed } from '@reins/protocol';
import { toolSpec } from '@reins/models';
import { startExecutor } from '@reins/executor';
import { startPlanner } from '@reins/planner';
import { startSupervisor } from '@reins/supervisor';
import { z } from 'zod';
import {
  addTool,
  benchPolicy,
  connectRuntime,
  ledgerStatsSubject,
  loopModel,
  noopTool,
} from './governed.js';

/**
 * One role of a governed deployment in its own process, as production runs them:
 * `node bench/dist/role-process.js '<json>'` (see `RoleConfig`). Prints `ready` on stdout once
 * its actor is started; exits on SIGTERM after closing its connection. A supervisor answers
 * `ledgerStatsSubject(pid)` with its budget ledger's counters (`BudgetLedger.stats`, JSON).
 */
export const RoleConfig = z.object({
  role: z.enum(['supervisor', 'executor', 'planner']),
  url: z.string(),
  /** Grant signing seed (the supervisor signs with it, the executor trusts its public key). */
  seed: z.string(),
  /** Task role the planner serves. */
  taskRole: z.string(),
  /** Planner: steps per run of the loop model, and tasks at once. */
  steps: z.number().int().positive(),
  concurrency: z.number().int().positive(),
  /** The tool the executor serves and the loop model calls (default the no-op tool). */
  tool: z.enum(['noop', 'add']).default('noop'),
  /** Supervisor: caps per tenant (`SupervisorOptions.tenantBudgets`). */
  tenantBudgets: z.record(z.string(), Budget).optional(),
  /** Supervisor: membership lease of the run partitions (`SupervisorOptions.partitionLeaseMs`). */
  partitionLeaseMs: z.number().int().positive().optional(),
});
export type RoleConfig = z.infer<typeof RoleConfig>;

async function main(): Promise<void> {
  const cfg = RoleConfig.parse(JSON.parse(process.argv[2] ?? '{}'));
  const signer = grantSignerFromSeed(cfg.seed);
  const tool = cfg.tool === 'add' ? addTool() : noopTool();
  const rt = await connectRuntime(cfg.url, `bench-${cfg.role}`);
  let stop: () => Promise<unknown> = () => Promise.resolve();
  if (cfg.role === 'supervisor') {
    const sv = await startSupervisor(rt, {
      signer,
      policy: benchPolicy([tool]),
      breakers: { maxSteps: 1_000_000, noProgress: { steps: 100_000 } },
      ...(cfg.tenantBudgets ? { tenantBudgets: cfg.tenantBudgets } : {}),
      ...(cfg.partitionLeaseMs ? { partitionLeaseMs: cfg.partitionLeaseMs } : {}),
    });
    rt.nc.subscribe(ledgerStatsSubject(process.pid), {
      callback: (err, msg) => {
        if (!err) msg.respond(JSON.stringify(sv.ledger.stats));
      },
    });
    stop = () => sv.stop();
  } else if (cfg.role === 'executor') {
    await startExecutor(rt, { tools: [tool], trustedIssuers: [signer.publicKey] });
  } else {
    await startPlanner(rt, {
      role: cfg.taskRole,
      model: loopModel({ tool: tool.name, steps: cfg.steps }),
      tools: [toolSpec(tool)],
      concurrency: cfg.concurrency,
    });
  }
  process.stdout.write('ready\n');
  process.once('SIGTERM', () => {
    void stop()
      .catch(() => undefined)
      .then(() => rt.close())
      .finally(() => process.exit(0));
  });
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
