import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Subscription } from '@nats-io/transport-node';
import {
  TraceEvent,
  createGrantSigner,
  decode,
  type Budget,
  type GrantSigner,
  type RunRecord,
} from '@reins/protocol';
import {
  createScriptedModel,
  defineTool,
  toolSpec,
  type AnyTool,
  type Model,
  type ModelPrice,
  type ScriptedTurn,
} from '@reins/models';
import { startExecutor } from '@reins/executor';
import { startPlanner } from '@reins/planner';
import { Runtime, createLogger } from '@reins/runtime';
import { startSupervisor, type BudgetLedgerStats, type Supervisor } from '@reins/supervisor';
import { z } from 'zod';

/**
 * Helpers that assemble a governed deployment in this process, each role on its own NATS
 * connection (as separate processes would be): supervisor(s), an executor, optionally a
 * planner pool, and a "client" runtime for the benchmark's own requests.
 */

/** A runtime with a silent logger (benchmarks must not measure logging). */
export function connectRuntime(url: string, name: string): Promise<Runtime> {
  return Runtime.connect({
    servers: url,
    logger: createLogger({ level: 'silent' }),
    name,
    heartbeatMs: 500,
  });
}

/** A no-op tool (effect `read`, idempotent): returns its argument, so observations differ. */
export function noopTool(name = 'bench_noop'): AnyTool {
  return defineTool({
    name,
    description: 'Does nothing; returns its argument.',
    input: z.object({ i: z.number().int() }),
    output: z.object({ i: z.number().int() }),
    effect: 'read',
    idempotent: true,
    run: (args) => ({ i: args.i }),
  });
}

/** The peers workload's tool (issue 17): `add` two numbers (effect `read`, idempotent). */
export function addTool(): AnyTool {
  return defineTool({
    name: 'add',
    description: 'Adds two numbers.',
    input: z.object({ a: z.number(), b: z.number() }),
    output: z.object({ sum: z.number() }),
    effect: 'read',
    idempotent: true,
    run: (args) => ({ sum: args.a + args.b }),
  });
}

/** Arguments the loop model passes on each turn, by tool name (`{ i: turn }` otherwise). */
function loopArgs(tool: string, turn: number): Record<string, unknown> {
  return tool === 'add' ? { a: turn, b: 1 } : { i: turn };
}

/**
 * A scripted zero-latency model that calls `tool` with `{ i: turn }` (`add`: `{ a: turn, b: 1 }`)
 * on every turn before
 * `steps` − 1 and answers on turn `steps` − 1 (so a run has exactly `steps` planner steps).
 * `steps: Infinity` never answers (for runs stopped by budget or halt).
 */
export function loopModel(options: { tool: string; steps: number; price?: ModelPrice }): Model {
  const respond = (_c: unknown, ctx: { turn: number }): ScriptedTurn =>
    ctx.turn + 1 >= options.steps
      ? { content: `done after ${ctx.turn + 1} steps` }
      : { toolCalls: [{ name: options.tool, args: loopArgs(options.tool, ctx.turn) }] };
  return createScriptedModel({
    respond,
    ...(options.price ? { price: options.price } : {}),
  });
}

/** Options of `deploy`. */
export interface DeployOptions {
  /** Task role of the runs (a distinct one per suite, so no planner picks up another's tasks). */
  role: string;
  tools: readonly AnyTool[];
  /** Supervisor instances (default 1). */
  supervisors?: number;
  /** Start a planner pool serving `role` with this model. */
  planner?: {
    model: Model | ((run: RunRecord) => Model);
    concurrency: number;
    maxOutputTokens?: number;
  };
}

/** A governed deployment in this process. */
export interface Deployment {
  /** A runtime for the benchmark's own requests (planner side / client). */
  readonly client: Runtime;
  readonly supervisors: readonly Supervisor[];
  readonly signer: GrantSigner;
  close(): Promise<void>;
}

/** A policy that allows exactly `tools`. */
export function benchPolicy(tools: readonly AnyTool[]) {
  return {
    version: 1 as const,
    rules: tools.map((t) => ({
      id: `bench.${t.name}`,
      match: { tool: t.name },
      effect: 'allow' as const,
    })),
  };
}

/** A governed deployment whose roles run in their own processes. */
export interface ProcessDeployment {
  /** A runtime in this process for the benchmark's own requests. */
  readonly client: Runtime;
  /** Process id of each role's process (`supervisor`: the first one). */
  readonly pids: Readonly<Record<'supervisor' | 'executor' | 'planner', number>>;
  /** Process id of every supervisor, the first one first (grows with `addSupervisors`). */
  readonly supervisorPids: readonly number[];
  /** Starts `count` more supervisor processes (scale-out); resolves once they are ready. */
  addSupervisors(count: number): Promise<void>;
  close(): Promise<void>;
}

/** Options of `deployProcesses`. */
export interface ProcessDeployOptions {
  taskRole: string;
  steps: number;
  concurrency: number;
  tool?: 'noop' | 'add';
  /** Supervisor processes (default 1). */
  supervisors?: number;
  /** Caps per tenant, configured on every supervisor. */
  tenantBudgets?: Record<string, Budget>;
  /** Partition membership lease of every supervisor (default 5 s; shorter rebalances sooner). */
  partitionLeaseMs?: number;
}

/** Where the supervisor process `pid` answers with its ledger's counters (bench only). */
export function ledgerStatsSubject(pid: number): string {
  return `_bench.ledger_stats.${pid}`;
}

/** The budget ledger counters of the supervisor process `pid` (see `role-process.ts`). */
export async function ledgerStats(client: Runtime, pid: number): Promise<BudgetLedgerStats> {
  const msg = await client.nc.request(ledgerStatsSubject(pid), undefined, { timeout: 10_000 });
  return JSON.parse(msg.string()) as BudgetLedgerStats;
}

/**
 * Starts supervisors (one by default), an executor and a planner pool (the loop model with
 * `steps` steps per run, serving `taskRole`), each in its own Node process, as they run in
 * production, and a client runtime here. Resolves once every process reported ready.
 */
export async function deployProcesses(
  url: string,
  options: ProcessDeployOptions,
): Promise<ProcessDeployment> {
  const { seed } = createGrantSigner();
  const script = fileURLToPath(new URL('./role-process.js', import.meta.url));
  const children: ChildProcess[] = [];
  const pids = { supervisor: 0, executor: 0, planner: 0 };
  const supervisorPids: number[] = [];
  const stopAll = async () => {
    await Promise.all(
      children.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exitCode !== null || c.signalCode !== null) return resolve();
            const timer = setTimeout(() => c.kill('SIGKILL'), 10_000);
            c.once('exit', () => {
              clearTimeout(timer);
              resolve();
            });
            c.kill('SIGTERM');
          }),
      ),
    );
  };
  try {
    const { supervisors = 1, ...rest } = options;
    const start = (role: 'supervisor' | 'executor' | 'planner') => {
      const child = spawn(
        process.execPath,
        [script, JSON.stringify({ role, url, seed, ...rest })],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      children.push(child);
      if (role === 'supervisor') supervisorPids.push(child.pid ?? 0);
      else pids[role] = child.pid ?? 0;
      return new Promise<void>((resolve, reject) => {
        let err = '';
        child.stderr?.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
        child.stdout?.on('data', (d: Buffer) => {
          if (d.toString().includes('ready')) resolve();
        });
        child.once('exit', (code) => reject(new Error(`bench ${role} exited (${code}): ${err}`)));
      });
    };
    // The first supervisor first: it creates the streams and buckets the others use.
    await start('supervisor');
    await Promise.all(Array.from({ length: supervisors - 1 }, () => start('supervisor')));
    pids.supervisor = supervisorPids[0] ?? 0;
    await start('executor');
    await start('planner');
    const client = await connectRuntime(url, 'bench-client');
    return {
      client,
      pids,
      supervisorPids,
      addSupervisors: async (count) => {
        await Promise.all(Array.from({ length: count }, () => start('supervisor')));
      },
      close: async () => {
        await client.close().catch(() => undefined);
        await stopAll();
      },
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/** Starts supervisors, an executor with `tools` and (optionally) a planner pool. */
export async function deploy(url: string, options: DeployOptions): Promise<Deployment> {
  const runtimes: Runtime[] = [];
  const rt = async (name: string) => {
    const r = await connectRuntime(url, name);
    runtimes.push(r);
    return r;
  };
  const supervisors: Supervisor[] = [];
  try {
    const { signer } = createGrantSigner();
    const policy = benchPolicy(options.tools);
    for (let i = 0; i < (options.supervisors ?? 1); i++) {
      supervisors.push(
        await startSupervisor(await rt(`bench-sv-${i}`), {
          signer,
          policy,
          // The benchmark measures steps, not the breakers' step cap.
          breakers: { maxSteps: 1_000_000, noProgress: { steps: 100_000 } },
        }),
      );
    }
    await startExecutor(await rt('bench-executor'), {
      tools: options.tools,
      trustedIssuers: [signer.publicKey],
    });
    if (options.planner) {
      const p = options.planner;
      await startPlanner(await rt('bench-planner'), {
        role: options.role,
        model: p.model,
        tools: options.tools.map(toolSpec),
        concurrency: p.concurrency,
        ...(p.maxOutputTokens ? { maxOutputTokens: p.maxOutputTokens } : {}),
      });
    }
    const client = await rt('bench-client');
    return {
      client,
      supervisors,
      signer,
      close: async () => {
        for (const s of supervisors) await s.stop().catch(() => undefined);
        for (const r of runtimes.reverse()) await r.close().catch(() => undefined);
      },
    };
  } catch (err) {
    for (const r of runtimes.reverse()) await r.close().catch(() => undefined);
    throw err;
  }
}

/**
 * Waits for runs to end by listening to the supervisor's `run.end` trace events on core NATS
 * (one callback subscription for every run; no polling, which would load the supervisor).
 */
export class RunWaiter {
  readonly #sub: Subscription;
  readonly #ended = new Map<string, number>();
  readonly #waiting = new Map<string, (endedAt: number) => void>();
  /** Ends every pending `ended` wait (on `stop`). */
  readonly #cancels = new Set<() => void>();
  readonly #runIdToken: number;
  /** Runs heard ending with a status other than `completed`: `<runId>: <status>` (first 20). */
  readonly notCompleted: string[] = [];
  #notCompletedCount = 0;

  constructor(runtime: Runtime) {
    const pattern = runtime.subjects.trace({ role: 'supervisor', event: 'run.end' });
    this.#runIdToken = runtime.subjects.prefix.split('.').length + 1;
    this.#sub = runtime.nc.subscribe(pattern, {
      callback: (err, msg) => {
        if (err) return;
        const now = performance.now();
        const runId = msg.subject.split('.')[this.#runIdToken];
        if (runId === undefined) return;
        const status = endStatus(msg.data);
        if (status !== 'completed') {
          this.#notCompletedCount++;
          if (this.notCompleted.length < 20) this.notCompleted.push(`${runId}: ${status}`);
        }
        const resolve = this.#waiting.get(runId);
        if (resolve) {
          this.#waiting.delete(runId);
          resolve(now);
        } else this.#ended.set(runId, now);
      },
    });
  }

  /** How many runs were heard ending with a status other than `completed`. */
  get notCompletedCount(): number {
    return this.#notCompletedCount;
  }

  /** Resolves with `performance.now()` at the moment the run's end was heard. */
  ended(runId: string, timeoutMs = 60_000): Promise<number> {
    const at = this.#ended.get(runId);
    if (at !== undefined) {
      this.#ended.delete(runId);
      return Promise.resolve(at);
    }
    return new Promise((resolve, reject) => {
      const cancel = () => {
        clearTimeout(timer);
        this.#waiting.delete(runId);
        reject(new Error(`stopped waiting for run ${runId}`));
      };
      const timer = setTimeout(() => {
        this.#waiting.delete(runId);
        this.#cancels.delete(cancel);
        reject(new Error(`run ${runId} did not end within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#cancels.add(cancel);
      this.#waiting.set(runId, (t) => {
        clearTimeout(timer);
        this.#cancels.delete(cancel);
        resolve(t);
      });
    });
  }

  /** Makes sure the subscription is registered on the server before runs start. */
  flush(runtime: Runtime): Promise<void> {
    return runtime.nc.flush();
  }

  /** Unsubscribes; waits still pending reject. */
  stop(): void {
    this.#sub.unsubscribe();
    for (const cancel of [...this.#cancels]) cancel();
    this.#cancels.clear();
  }
}

/** The status a `run.end` trace event reports (`data.status`, with `data.stopReason`), or `unreadable`. */
function endStatus(bytes: Uint8Array): string {
  try {
    const { data } = decode(TraceEvent, bytes);
    const status = data['status'];
    const reason = data['stopReason'];
    if (typeof status !== 'string') return 'unreadable';
    return status !== 'completed' && typeof reason === 'string' ? `${status} (${reason})` : status;
  } catch {
    return 'unreadable';
  }
}
