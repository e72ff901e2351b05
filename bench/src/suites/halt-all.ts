import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { connect as connectNats, type NatsConnection } from '@nats-io/transport-node';
import { HaltReply, HaltRequest, createGrantSigner } from '@reins/protocol';
import { defineActor, listAgents, type Runtime } from '@reins/runtime';
import { startSupervisor } from '@reins/supervisor';
import { compare } from '../compare.js';
import { connectRuntime } from '../governed.js';
import { percentile } from '../stats.js';
import type { Result, Suite, SuiteContext } from '../types.js';

// Halt-all at 10, 100 and 1,000 agents: from `ctl.halt {all}` to the supervisor's reply with
// every agent's ack (the reply returns as soon as all expected acks are in). Raw baseline: a NATS
// request to N responders collecting all N replies (requestMany, count strategy), same N.
//
// Then the target (#17: p99 ≤ 250 ms): 1,000 agents in 4 processes (heartbeats every
// 2 s, as deployed), on a quiet machine and with two busy-loop processes loading it, the
// supervisor's presence in memory beside the listing per halt it replaced
// (`REINS_PRESENCE_WATCH=off`), measured in alternating blocks of the same run; raw baseline,
// paired with each halt: a request to 1,000 bare responders in the same 4 processes.

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

const SPREAD = { agents: 1000, processes: 4 } as const;

/** Spawns `args` with node and resolves once it printed `ready` (or at once: `ready: false`). */
async function spawnNode(args: string[], ready = true): Promise<ChildProcess> {
  const child = spawn(process.execPath, args, {
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (!ready) return child;
  await new Promise<void>((resolve, reject) => {
    let err = '';
    child.stderr?.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
    child.stdout?.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`bench child exited (${code}): ${err}`)));
  });
  return child;
}

async function stopChildren(children: ChildProcess[], signal: NodeJS.Signals): Promise<void> {
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
          c.kill(signal);
        }),
    ),
  );
}

/**
 * Halt-all latencies (µs) of `iterations` halts at `expected` agents, each followed by a resume
 * and preceded by a raw request to `expected` responders (its latency goes to `raw.out`).
 */
async function haltRounds(
  ctx: SuiteContext,
  client: Runtime,
  expected: number,
  iterations: number,
  label: string,
  raw: { nc: NatsConnection; subject: string; out: number[] },
): Promise<number[]> {
  const out: number[] = [];
  for (let it = 0; it < iterations; it++) {
    // The raw baseline, paired: a request to as many bare responders in the same processes.
    let t = performance.now();
    const replies = await raw.nc.requestMany(raw.subject, new Uint8Array(16), {
      strategy: 'count',
      maxMessages: expected,
      maxWait: 10_000,
    });
    let n = 0;
    for await (const _ of replies) n++;
    raw.out.push((performance.now() - t) * 1000);
    ctx.check(n === expected, `raw, ${label}: ${n} of ${expected} replies`);
    t = performance.now();
    const reply = await client.request(
      client.subjects.ctlHalt,
      HaltRequest,
      HaltReply,
      { scope: { kind: 'all' }, reason: 'bench', deadlineMs: 5000 },
      { timeoutMs: 20_000 },
    );
    out.push((performance.now() - t) * 1000);
    ctx.check(
      reply.acked.length >= expected && reply.missing.length === 0,
      `halt all, ${label}: ${reply.acked.length} acked, ${reply.missing.length} missing`,
    );
    await client.request(
      client.subjects.ctlResume,
      HaltRequest,
      HaltReply,
      { scope: { kind: 'all' }, reason: 'bench', deadlineMs: 5000 },
      { timeoutMs: 20_000 },
    );
  }
  return out;
}

/**
 * 1,000 agents in 4 processes, quiet and under two busy loops: presence in memory beside a
 * listing per halt (the supervisor as it was), in alternating blocks.
 */
async function spread(ctx: SuiteContext, iterations: number): Promise<Result[]> {
  const role = 'haltbench4p';
  const script = fileURLToPath(new URL('../agents-process.js', import.meta.url));
  const per = SPREAD.agents / SPREAD.processes;
  const agents: ChildProcess[] = [];
  const rawSubject = 'bench.haltall4p';
  const client = await connectRuntime(ctx.natsUrl, 'bench-halt4-client');
  const rawNc = await connectNats({ servers: ctx.natsUrl, noAsyncTraces: true });
  const results: Result[] = [];
  try {
    for (let p = 0; p < SPREAD.processes; p++) {
      const cfg = { url: ctx.natsUrl, role, prefix: `h4p${p}-`, count: per, raw: rawSubject };
      agents.push(await spawnNode([script, JSON.stringify(cfg)]));
    }
    const deadline = Date.now() + 30_000;
    for (;;) {
      const seen = (await listAgents(client)).filter((a) => a.role === role).length;
      if (seen >= SPREAD.agents) break;
      if (Date.now() > deadline)
        throw new Error(`only ${seen} of ${SPREAD.agents} agents heartbeated`);
      await new Promise((r) => setTimeout(r, 100));
    }
    for (const load of ['quiet', 'two busy loops'] as const) {
      const busy =
        load === 'quiet'
          ? []
          : await Promise.all([0, 1].map(() => spawnNode(['-e', 'for (;;) {}'], false)));
      const times = { memory: [] as number[], listing: [] as number[] };
      const raws = { memory: [] as number[], listing: [] as number[] };
      try {
        // Alternating blocks, so that drift of the machine falls on both paths alike.
        const block = Math.max(1, Math.ceil(iterations / 2));
        for (let b = 0; b < 2; b++) {
          for (const path of ['memory', 'listing'] as const) {
            if (path === 'listing') process.env['REINS_PRESENCE_WATCH'] = 'off';
            const svRt = await connectRuntime(ctx.natsUrl, `bench-halt4-sv-${path}`);
            const sv = await startSupervisor(svRt, { signer: createGrantSigner().signer }).finally(
              () => delete process.env['REINS_PRESENCE_WATCH'],
            );
            try {
              const label = `${SPREAD.agents} agents in ${SPREAD.processes} processes, ${load}, ${path}`;
              const raw = { nc: rawNc, subject: rawSubject, out: [] as number[] };
              await haltRounds(ctx, client, SPREAD.agents, 1, label, raw); // warm-up
              raw.out = raws[path];
              times[path].push(
                ...(await haltRounds(ctx, client, SPREAD.agents, block, label, raw)),
              );
            } finally {
              await sv.stop();
              await svRt.close();
            }
          }
        }
      } finally {
        await stopChildren(busy, 'SIGKILL');
      }
      for (const path of ['memory', 'listing'] as const) {
        const name = `${SPREAD.agents} agents in ${SPREAD.processes} processes, ${load}${path === 'memory' ? '' : ', listing per halt (before)'}`;
        const rawSorted = [...raws[path]].sort((a, b) => a - b);
        const sorted = [...times[path]].sort((a, b) => a - b);
        results.push(
          compare(`halt-all → acks p50, ${name}`, 'µs', 'lower', {
            raw: [percentile(rawSorted, 0.5)],
            reins: [percentile(sorted, 0.5)],
          }),
          compare(`halt-all → acks p99, ${name}`, 'µs', 'lower', {
            raw: [percentile(rawSorted, 0.99)],
            reins: [percentile(sorted, 0.99)],
          }),
        );
        ctx.log(
          `${name}: raw p50 ${(percentile(rawSorted, 0.5) / 1000).toFixed(1)} ms p99 ${(percentile(rawSorted, 0.99) / 1000).toFixed(1)} ms`,
        );
      }
      for (const path of ['memory', 'listing'] as const) {
        const xs = times[path].sort((a, b) => a - b);
        const what = path === 'memory' ? 'presence in memory' : 'listing per halt (before)';
        ctx.log(
          `${SPREAD.agents} agents in ${SPREAD.processes} processes, ${load}, ${what}: halt-all p50 ${(percentile(xs, 0.5) / 1000).toFixed(1)} ms p99 ${(percentile(xs, 0.99) / 1000).toFixed(1)} ms (${xs.length} halts)`,
        );
        ctx.figure(
          `halt-all p50, ${SPREAD.agents} agents in ${SPREAD.processes} processes, ${load}: ${what}`,
          percentile(xs, 0.5) / 1000,
          'ms',
        );
        ctx.figure(
          `halt-all p99, ${SPREAD.agents} agents in ${SPREAD.processes} processes, ${load}: ${what}`,
          percentile(xs, 0.99) / 1000,
          'ms',
          // The target is the supervisor as it is now; the listing is its baseline.
          ...(path === 'memory' ? [{ better: 'lower' as const, value: 250 }] : []),
        );
      }
    }
  } finally {
    await rawNc.close();
    await client.close();
    await stopChildren(agents, 'SIGTERM');
  }
  return results;
}

async function runAll(ctx: SuiteContext): Promise<Result[]> {
  const results = await run(ctx);
  results.push(...(await spread(ctx, ctx.quick ? QUICK.iterations : 2 * FULL.iterations)));
  return results;
}

/** Halt-all latency with every agent's ack, at 10, 100 and 1,000 agents. */
export const haltAll: Suite = {
  name: 'halt-all',
  description:
    'ctl.halt {all} → reply with every ack, at 10/100/1,000 agents vs a raw request to N responders; 1,000 agents in 4 processes, quiet and loaded, presence in memory vs a listing per halt',
  run: runAll,
};
