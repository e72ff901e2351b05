import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { connect, type ReinsClient } from '@reins/client';
import { compare } from '../compare.js';
import { deployProcesses } from '../governed.js';
import {
  PEER_FRAMEWORKS,
  PEER_LABELS,
  PeerOutcome,
  procStatusBytes,
  type PeerConfig,
  type PeerFramework,
} from '../peers.js';
import { startPostgres, type PgCluster } from '../postgres.js';
import { median } from '../stats.js';
import type { Result, Suite, SuiteContext } from '../types.js';

/** Measured runs (after warm-up ones) per framework, round and N. */
interface Sizing {
  runs: number;
  warmup: number;
}
interface Config {
  rounds: number;
  sizes: Record<number, Sizing>;
}

/** The issue's two run lengths (tool-call turns per run, then one answer). */
const NS = [10, 100] as const;
const QUICK: Config = {
  rounds: 1,
  sizes: { 10: { runs: 5, warmup: 2 }, 100: { runs: 1, warmup: 0 } },
};
const FULL: Config = {
  rounds: 3,
  sizes: { 10: { runs: 30, warmup: 5 }, 100: { runs: 5, warmup: 1 } },
};
const MiB = 1024 * 1024;

type Side = PeerFramework | 'reins';

const PEER_PROCESS = fileURLToPath(new URL('../peer-process.js', import.meta.url));

/** Runs one framework's measurement in its own process (see `peer-process.ts`). */
function measurePeer(config: PeerConfig): Promise<PeerOutcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [PEER_PROCESS, JSON.stringify(config)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
    child.once('error', reject);
    child.once('exit', (code) => {
      if (code !== 0) return reject(new Error(`${config.framework} exited (${code}): ${err}`));
      try {
        resolve(PeerOutcome.parse(JSON.parse(out.trim().split('\n').at(-1) ?? '')));
      } catch (e) {
        reject(new Error(`${config.framework}: unreadable outcome "${out}" ${err}`, { cause: e }));
      }
    });
  });
}

/** Runs of N tool calls through Reins as deployed: `runs.start`, then `run.result()`. */
async function reinsRuns(
  client: ReinsClient,
  role: string,
  n: number,
  runs: number,
  notCompleted: string[],
): Promise<number> {
  const start = performance.now();
  for (let i = 0; i < runs; i++) {
    const run = await client.runs.start(`add numbers ${n} times`, {
      role,
      budget: { steps: n + 5 },
    });
    const rec = await run.result({ timeoutMs: 120_000 });
    if (rec.status !== 'completed') notCompleted.push(`${run.id}: ${rec.status}`);
  }
  return ((performance.now() - start) * 1000) / (runs * n);
}

async function run(ctx: SuiteContext): Promise<Result[]> {
  const cfg = ctx.quick ? QUICK : FULL;
  let pg: PgCluster | undefined;
  if (ctx.skipPostgres) ctx.log('LangGraph + PostgresSaver skipped: --skip-postgres');
  else {
    try {
      pg = await startPostgres();
      ctx.log(`throwaway PostgreSQL cluster at ${pg.url}`);
    } catch (err) {
      ctx.log(`LangGraph + PostgresSaver skipped: ${(err as Error).message.split('\n')[0] ?? ''}`);
    }
  }
  const frameworks = PEER_FRAMEWORKS.filter((f) => f !== 'langgraph-postgres' || pg);
  const results: Result[] = [];
  try {
    for (const n of NS) {
      const size = cfg.sizes[n] ?? { runs: 1, warmup: 1 };
      const sides: Side[] = [...frameworks, 'reins'];
      const perStep = new Map<Side, number[]>(sides.map((f) => [f, []]));
      const rss = new Map<Side, number[]>();
      const wrong: string[] = [];
      const notCompleted: string[] = [];
      // Reins as deployed: supervisor, planner and executor each in its own process.
      const role = `bench_peers_${n}`;
      const deployment = await deployProcesses(ctx.natsUrl, {
        taskRole: role,
        steps: n + 1,
        concurrency: 1,
        tool: 'add',
      });
      const client = await connect({ servers: ctx.natsUrl, name: 'bench-peers-client' });
      try {
        // Warm-up (JIT, the client's run-record watch, consumers), not measured.
        await reinsRuns(client, role, n, Math.max(1, size.warmup), notCompleted);
        for (let round = 0; round < cfg.rounds; round++) {
          for (const framework of frameworks) {
            const o = await measurePeer({
              framework,
              n,
              ...size,
              ...(framework === 'langgraph-postgres' && pg ? { pgUrl: pg.url } : {}),
            });
            perStep.get(framework)?.push(o.usPerStep);
            rss.set(framework, [...(rss.get(framework) ?? []), o.rssBytes]);
            if (o.wrongRuns > 0) wrong.push(`${framework}: ${o.wrongRuns} run(s)`);
          }
          const reins = await reinsRuns(client, role, n, size.runs, notCompleted);
          perStep.get('reins')?.push(reins);
          const pids = Object.values(deployment.pids);
          rss.set('reins', [
            ...(rss.get('reins') ?? []),
            pids.reduce((sum, pid) => sum + procStatusBytes(pid, 'VmRSS'), 0),
          ]);
          ctx.log(
            `round ${round + 1}, N = ${n}: ` +
              [...perStep]
                .map(([side, xs]) => `${side} ${(xs.at(-1) ?? NaN).toFixed(0)} µs/step`)
                .join(', '),
          );
        }
      } finally {
        await client.close().catch(() => undefined);
        await deployment.close();
      }
      ctx.check(
        wrong.length === 0,
        `every peer run at N = ${n} made exactly N tool calls${wrong.length ? ` (not: ${wrong.join(', ')})` : ''}`,
      );
      ctx.check(
        notCompleted.length === 0,
        `every Reins run at N = ${n} completed${notCompleted.length ? ` (not: ${notCompleted.slice(0, 5).join(', ')})` : ''}`,
      );
      for (const [side, xs] of perStep) {
        ctx.figure(`µs/step at N = ${n}: ${PEER_LABELS[side]}`, median(xs), 'µs');
        ctx.figure(
          `RSS at N = ${n}: ${side === 'reins' ? 'Reins (sum of its 3 role processes, without nats-server)' : PEER_LABELS[side]}`,
          median(rss.get(side) ?? []) / MiB,
          'MiB',
        );
      }
      const reins = perStep.get('reins') ?? [];
      const against = (side: PeerFramework, target?: number) => {
        const raw = perStep.get(side);
        if (!raw || raw.length === 0) return;
        results.push(
          compare(
            `µs/step at N = ${n}: Reins vs ${PEER_LABELS[side]}`,
            'µs',
            'lower',
            { raw, reins },
            target,
          ),
        );
      };
      // The issue's targets: ≤ 0.5× the durable peer, ≤ 2× the in-process one.
      against('langgraph-postgres', 0.5);
      against('langgraph', 2);
      against('langgraph-memory');
      against('openai-agents');
    }
  } finally {
    await pg?.stop();
  }
  return results;
}

/**
 * Issue 17's peers comparison: one `add` tool, a scripted zero-latency model asking for one
 * tool call per turn for N turns then answering, a new run each time; µs per tool-call step and
 * RSS in OpenAI Agents JS, LangGraph (plain, MemorySaver, PostgresSaver) and Reins as deployed.
 */
export const peers: Suite = {
  name: 'peers',
  description:
    'the issue-17 workload (N tool-call turns per run) in OpenAI Agents JS, LangGraph (in-process, MemorySaver, PostgresSaver) and Reins (process per role): µs/step and RSS at N = 10 and 100',
  run,
};
