import { connect as natsConnect } from '@nats-io/transport-node';
import {
  AuthorizeRequest,
  Decision,
  RunRecord,
  RunStartRequest,
  SettleReply,
  SettleRequest,
  createGrantSigner,
} from '@reins/protocol';
import { startSupervisor } from '@reins/supervisor';
import { compare } from '../compare.js';
import { connectRuntime } from '../governed.js';
import { Samples, opsPerSecond } from '../stats.js';
import type { Result, Suite, SuiteContext } from '../types.js';

// The supervisor's hot path alone: authorize (reserve in the ledger, sign, audit) + settle
// (commit, audit, breakers), at 1 and 100 concurrent runs, against two raw NATS requests.

// Operations per run and side: enough samples at 1 run; a few per run at 100 runs.
const QUICK = { perWorker: (c: number) => (c === 1 ? 60 : 4), rounds: 2 };
const FULL = { perWorker: (c: number) => (c === 1 ? 400 : 40), rounds: 5 };

async function run(ctx: SuiteContext): Promise<Result[]> {
  const cfg = ctx.quick ? QUICK : FULL;
  const server = await connectRuntime(ctx.natsUrl, 'bench-sv');
  const client = await connectRuntime(ctx.natsUrl, 'bench-client');
  const sv = await startSupervisor(server, { signer: createGrantSigner().signer });
  const echoServer = await natsConnect({ servers: ctx.natsUrl, noAsyncTraces: true });
  const echoClient = await natsConnect({ servers: ctx.natsUrl, noAsyncTraces: true });
  echoServer.subscribe('bench.as.echo', {
    callback: (_e, m) => {
      m.respond(m.data);
    },
  });
  await echoServer.flush();
  const results: Result[] = [];
  try {
    for (const concurrency of [1, 100]) {
      const runs = await Promise.all(
        Array.from({ length: concurrency }, () =>
          client.request(client.subjects.runsStart, RunStartRequest, RunRecord, {
            goal: 'bench',
            budget: { usd: 1000, steps: 1_000_000 },
            waitForPlanner: true, // no planner: the bench authorizes and settles itself
          }),
        ),
      );
      const payload = new Uint8Array(120);
      let seq = 0;
      const governed = async (runId: string) => {
        const d = await client.request(
          client.subjects.authorize(runId),
          AuthorizeRequest,
          Decision,
          {
            runId,
            agentId: 'bench-p',
            role: 'planner',
            stepId: `s${seq++}`,
            kind: 'llm',
            model: 'scripted',
            estimate: { inputTokens: 100, outputTokens: 100, usd: 0.0001 },
          },
          { timeoutMs: 60_000 },
        );
        if (d.decision !== 'grant')
          throw new Error(`bench authorize was denied: ${JSON.stringify(d)}`);
        await client.request(
          client.subjects.settle(runId),
          SettleRequest,
          SettleReply,
          {
            grantId: d.grant.grantId,
            runId,
            agentId: 'bench-p',
            actual: { inputTokens: 50, outputTokens: 50, usd: 0.00005, steps: 1 },
          },
          { timeoutMs: 60_000 },
        );
      };
      const raw = async () => {
        await echoClient.request('bench.as.echo', payload, { timeout: 10_000 });
        await echoClient.request('bench.as.echo', payload, { timeout: 10_000 });
      };
      const side = async (op: (runId: string) => Promise<void>) => {
        const perWorker = cfg.perWorker(concurrency);
        const samples = new Samples(concurrency * perWorker);
        const start = process.hrtime.bigint();
        await Promise.all(
          runs.map(async (r) => {
            for (let i = 0; i < perWorker; i++) {
              const t = process.hrtime.bigint();
              await op(r.runId);
              samples.add(t, process.hrtime.bigint());
            }
          }),
        );
        const s = samples.summary();
        return {
          p50: s.p50Us,
          p99: s.p99Us,
          ops: opsPerSecond(samples.count, process.hrtime.bigint() - start),
        };
      };
      const rounds = {
        raw: { p50: [] as number[], p99: [] as number[], ops: [] as number[] },
        reins: { p50: [] as number[], p99: [] as number[], ops: [] as number[] },
      };
      await side(() => raw());
      await side(governed);
      for (let round = 0; round < cfg.rounds; round++) {
        const a = await side(() => raw());
        const b = await side(governed);
        rounds.raw.p50.push(a.p50);
        rounds.raw.p99.push(a.p99);
        rounds.raw.ops.push(a.ops);
        rounds.reins.p50.push(b.p50);
        rounds.reins.p99.push(b.p99);
        rounds.reins.ops.push(b.ops);
        ctx.log(
          `${concurrency} run(s), round ${round + 1}: raw p50 ${a.p50.toFixed(0)} µs ${a.ops.toFixed(0)}/s; reins p50 ${b.p50.toFixed(0)} µs ${b.ops.toFixed(0)}/s`,
        );
      }
      const budget = await sv.ledger.get(`run.${runs[0]?.runId ?? ''}`);
      ctx.check(
        budget.reserved.usd === 0,
        `${concurrency} run(s): every reservation settled (reserved ${budget.reserved.usd})`,
      );
      results.push(
        compare(`authorize+settle p50, ${concurrency} run(s)`, 'µs', 'lower', {
          raw: rounds.raw.p50,
          reins: rounds.reins.p50,
        }),
        compare(`authorize+settle p99, ${concurrency} run(s)`, 'µs', 'lower', {
          raw: rounds.raw.p99,
          reins: rounds.reins.p99,
        }),
        compare(`authorize+settle throughput, ${concurrency} run(s)`, 'ops/s', 'higher', {
          raw: rounds.raw.ops,
          reins: rounds.reins.ops,
        }),
      );
    }
  } finally {
    await echoClient.close();
    await echoServer.close();
    await sv.stop();
    await client.close();
    await server.close();
  }
  return results;
}

/** The supervisor's authorize + settle round trips vs two raw NATS requests. */
export const authorizeSettle: Suite = {
  name: 'authorize-settle',
  description:
    'sv.authorize + sv.settle (ledger reserve/commit, signed grant, audit) at 1 and 100 concurrent runs vs two raw NATS requests',
  run,
};
