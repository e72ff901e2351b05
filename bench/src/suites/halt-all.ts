import { connect as connectNats } from '@nats-io/transport-node';
import { HaltReply, HaltRequest, createGrantSigner } from '@reins/protocol';
import { defineActor } from '@reins/runtime';
import { startSupervisor } from '@reins/supervisor';
import { compare } from '../compare.js';
import { connectRuntime } from '../governed.js';
import { percentile } from '../stats.js';
import type { Result, Suite, SuiteContext } from '../types.js';

// Halt-all at 10, 100 and 1,000 agents: from `ctl.halt {all}` to the supervisor's reply with
// every agent's ack (the reply returns as soon as all expected acks are in). Raw baseline: a NATS
// request to N responders collecting all N replies (requestMany, count strategy), same N.

const SIZES = [10, 100, 1000] as const;
const QUICK = { iterations: 5 };
const FULL = { iterations: 30 };

async function run(ctx: SuiteContext): Promise<Result[]> {
  const cfg = ctx.quick ? QUICK : FULL;
  const results: Result[] = [];
  for (const size of SIZES) {
    const agents = await connectRuntime(ctx.natsUrl, `bench-agents-${size}`);
    const svRt = await connectRuntime(ctx.natsUrl, 'bench-halt-sv');
    const client = await connectRuntime(ctx.natsUrl, 'bench-halt-client');
    const sv = await startSupervisor(svRt, { signer: createGrantSigner().signer });
    const rawServer = await connectNats({ servers: ctx.natsUrl, noAsyncTraces: true });
    const rawClient = await connectNats({ servers: ctx.natsUrl, noAsyncTraces: true });
    try {
      for (let i = 0; i < size; i++) {
        await agents.start(defineActor({ role: `haltbench${size}`, agentId: `hb${size}-${i}` }));
        rawServer.subscribe(`bench.haltall.${size}`, {
          callback: (_e, m) => {
            m.respond(new Uint8Array(16));
          },
        });
      }
      await rawServer.flush();
      // Presence: the supervisor expects acks from the agents it sees heartbeating.
      const deadline = Date.now() + 30_000;
      for (;;) {
        const { listAgents } = await import('@reins/runtime');
        const seen = (await listAgents(client)).filter((a) => a.role === `haltbench${size}`).length;
        if (seen >= size) break;
        if (Date.now() > deadline) throw new Error(`only ${seen} of ${size} agents heartbeated`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const reins: number[] = [];
      const raw: number[] = [];
      for (let it = 0; it < cfg.iterations; it++) {
        let t = performance.now();
        const replies = await rawClient.requestMany(`bench.haltall.${size}`, new Uint8Array(16), {
          strategy: 'count',
          maxMessages: size,
          maxWait: 10_000,
        });
        let n = 0;
        for await (const _ of replies) n++;
        raw.push((performance.now() - t) * 1000);
        ctx.check(n === size, `raw: ${n} of ${size} replies`);

        t = performance.now();
        const reply = await client.request(
          client.subjects.ctlHalt,
          HaltRequest,
          HaltReply,
          { scope: { kind: 'all' }, reason: 'bench', deadlineMs: 5000 },
          { timeoutMs: 20_000 },
        );
        reins.push((performance.now() - t) * 1000);
        ctx.check(
          reply.acked.length >= size && reply.missing.length === 0,
          `halt all at ${size} agents: ${reply.acked.length} acked, ${reply.missing.length} missing`,
        );
        await client.request(client.subjects.ctlResume, HaltRequest, HaltReply, {
          scope: { kind: 'all' },
          reason: 'bench',
          deadlineMs: 1000,
        });
      }
      raw.sort((a, b) => a - b);
      reins.sort((a, b) => a - b);
      ctx.log(
        `${size} agents: raw p50 ${percentile(raw, 0.5).toFixed(0)} µs; halt-all p50 ${percentile(reins, 0.5).toFixed(0)} µs p99 ${percentile(reins, 0.99).toFixed(0)} µs`,
      );
      results.push(
        compare(`halt-all → acks p50, ${size} agents`, 'µs', 'lower', {
          raw: [percentile(raw, 0.5)],
          reins: [percentile(reins, 0.5)],
        }),
        compare(
          `halt-all → acks p99, ${size} agents`,
          'µs',
          'lower',
          { raw: [percentile(raw, 0.99)], reins: [percentile(reins, 0.99)] },
          size === 1000 ? undefined : undefined,
        ),
      );
      ctx.figure(
        `halt-all p99 at ${size} agents (target ≤ 250 ms at 1,000)`,
        percentile(reins, 0.99) / 1000,
        'ms',
      );
    } finally {
      await rawClient.close();
      await rawServer.close();
      await sv.stop();
      await client.close();
      await svRt.close();
      await agents.close();
    }
  }
  return results;
}

/** Halt-all latency with every agent's ack, at 10, 100 and 1,000 agents. */
export const haltAll: Suite = {
  name: 'halt-all',
  description:
    'ctl.halt {all} → reply with every ack, at 10/100/1,000 agents vs a raw request to N responders',
  run,
};
