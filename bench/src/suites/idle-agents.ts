import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { connect as connectNats } from '@nats-io/transport-node';
import type { Result, Suite, SuiteContext } from '../types.js';

// Memory of idle agents in one process, and the cold start of an actor process (spawn to its
// first heartbeat), each beside its raw NATS counterpart: N bare subscriptions, and a bare
// process that connects and publishes once.

const MiB = 1024 * 1024;

/** RSS of a fresh process holding `count` idle agents (or, raw, `count` bare subscriptions). */
async function idleMemory(
  ctx: SuiteContext,
  count: number,
): Promise<{ reins: number; raw: number }> {
  const script = (mode: 'raw' | 'reins') =>
    mode === 'raw'
      ? `import { connect } from '@nats-io/transport-node'; const nc = await connect({ servers: process.argv[1] }); for (let i = 0; i < ${count}; i++) nc.subscribe('bench.idle.' + i, { callback: () => {} }); await nc.flush(); globalThis.gc?.(); process.stdout.write(String(process.memoryUsage().rss)); await nc.close();`
      : `import { Runtime, createLogger, defineActor } from '@reins/runtime'; const rt = await Runtime.connect({ servers: process.argv[1], logger: createLogger({ level: 'silent' }), ensureInfrastructure: false, heartbeatMs: 60000 }); for (let i = 0; i < ${count}; i++) await rt.start(defineActor({ role: 'idle', agentId: 'idle${count}-' + i })); await rt.nc.flush(); globalThis.gc?.(); process.stdout.write(String(process.memoryUsage().rss)); await rt.close(1000);`;
  const measure = (mode: 'raw' | 'reins') =>
    new Promise<number>((resolve, reject) => {
      const child = spawn(
        process.execPath,
        ['--expose-gc', '--input-type=module', '-e', script(mode), ctx.natsUrl],
        {
          cwd: fileURLToPath(new URL('../..', import.meta.url)),
          stdio: ['ignore', 'pipe', 'inherit'],
        },
      );
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.once('exit', (code) =>
        code === 0
          ? resolve(Number(out) || 0)
          : reject(new Error(`${mode} idle process exited ${code}`)),
      );
    });
  return { raw: await measure('raw'), reins: await measure('reins') };
}

const coldStartScript = (mode: 'raw' | 'reins') =>
  mode === 'raw'
    ? `import { connect } from '@nats-io/transport-node'; const nc = await connect({ servers: process.argv[1] }); nc.publish('bench.cold.raw'); await nc.flush(); await nc.close();`
    : `import { Runtime, createLogger, defineActor } from '@reins/runtime'; const rt = await Runtime.connect({ servers: process.argv[1], logger: createLogger({ level: 'silent' }), ensureInfrastructure: false }); await rt.start(defineActor({ role: 'cold' })); await rt.nc.flush(); await rt.close(500);`;

async function coldStart(ctx: SuiteContext, mode: 'raw' | 'reins'): Promise<number> {
  const nc = await connectNats({ servers: ctx.natsUrl, noAsyncTraces: true });
  const subject = mode === 'raw' ? 'bench.cold.raw' : 'reins.v1.hb.cold.*';
  const seen = new Promise<void>((resolve) =>
    nc.subscribe(subject, { max: 1, callback: () => resolve() }),
  );
  await nc.flush();
  const start = performance.now();
  const child = spawn(
    process.execPath,
    ['--input-type=module', '-e', coldStartScript(mode), ctx.natsUrl],
    {
      cwd: fileURLToPath(new URL('../..', import.meta.url)),
      stdio: 'ignore',
    },
  );
  await seen;
  const ms = performance.now() - start;
  await new Promise<void>((r) => (child.exitCode !== null ? r() : child.once('exit', () => r())));
  await nc.close();
  return ms;
}

async function run(ctx: SuiteContext): Promise<Result[]> {
  const sizes = ctx.quick ? [1000] : [1000, 10_000];
  const results: Result[] = [];
  for (const count of sizes) {
    const m = await idleMemory(ctx, count);
    ctx.log(
      `${count} idle agents: process RSS ${(m.reins / MiB).toFixed(1)} MiB (raw, bare subscriptions: ${(m.raw / MiB).toFixed(1)} MiB)`,
    );
    results.push({
      metric: `RSS of ${count} idle agents in one process`,
      unit: 'MiB',
      better: 'lower',
      raw: m.raw / MiB,
      reins: m.reins / MiB,
      ratio: m.reins / Math.max(m.raw, 1),
      rounds: { raw: [m.raw / MiB], reins: [m.reins / MiB] },
    });
    ctx.figure(`RSS of ${count} idle agents (target ≤ 256 MiB at 10,000)`, m.reins / MiB, 'MiB');
  }
  const raw: number[] = [];
  const reins: number[] = [];
  for (let i = 0; i < (ctx.quick ? 2 : 5); i++) {
    raw.push(await coldStart(ctx, 'raw'));
    reins.push(await coldStart(ctx, 'reins'));
  }
  const med = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)] ?? Number.NaN;
  ctx.log(
    `cold start: raw ${med(raw).toFixed(0)} ms, actor ${med(reins).toFixed(0)} ms (spawn → first heartbeat)`,
  );
  results.push({
    metric: 'cold start: spawn → first heartbeat (raw: first publish)',
    unit: 'ms',
    better: 'lower',
    raw: med(raw),
    reins: med(reins),
    ratio: med(reins) / med(raw),
    rounds: { raw, reins },
  });
  return results;
}

/** Idle-agent memory and actor cold start. */
export const idleAgents: Suite = {
  name: 'idle-agents',
  description:
    'RSS of 1,000 (quick) and 10,000 idle agents in one process; actor process cold start',
  run,
};
