import { connect as connectNats } from '@nats-io/transport-node';
import { connect } from '@reins/client';
import { defineTool } from '@reins/models';
import { z } from 'zod';
import { compare } from '../compare.js';
import { deploy, loopModel } from '../governed.js';
import { percentile } from '../stats.js';
import type { Result, Suite, SuiteContext } from '../types.js';

interface Config {
  iterations: number;
  rawSamples: number;
  /** Ack deadline of each halt. */
  deadlineMs: number;
}

const QUICK: Config = { iterations: 6, rawSamples: 300, deadlineMs: 250 };
const FULL: Config = { iterations: 40, rawSamples: 2000, deadlineMs: 250 };
const ROLE = 'bench_halt';

/** Meeting point of the benchmark and the tool for one run (whichever comes first makes it). */
interface Waiting {
  started: Promise<void>;
  onStarted: () => void;
  aborted: Promise<number>;
  onAborted: (at: number) => void;
}

function waitingFor(map: Map<string, Waiting>, runId: string): Waiting {
  let w = map.get(runId);
  if (!w) {
    let onStarted: () => void = () => undefined;
    let onAborted: (at: number) => void = () => undefined;
    const started = new Promise<void>((r) => (onStarted = r));
    const aborted = new Promise<number>((r) => (onAborted = r));
    w = { started, onStarted, aborted, onAborted };
    map.set(runId, w);
  }
  return w;
}

/** Raw baseline: one-way publish → callback subscription latency on another connection (µs). */
async function rawPublish(url: string, samples: number): Promise<number[]> {
  const pub = await connectNats({ servers: url, noAsyncTraces: true });
  const sub = await connectNats({ servers: url, noAsyncTraces: true });
  let resolve: (() => void) | undefined;
  sub.subscribe('bench.halt.raw', { callback: () => resolve?.() });
  await sub.flush();
  const out: number[] = [];
  try {
    for (let i = 0; i < samples; i++) {
      const seen = new Promise<void>((r) => (resolve = r));
      const start = performance.now();
      pub.publish('bench.halt.raw', new Uint8Array(64));
      await seen;
      out.push((performance.now() - start) * 1000);
    }
  } finally {
    await pub.close();
    await sub.close();
  }
  return out;
}

const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);

async function run(ctx: SuiteContext): Promise<Result[]> {
  const cfg = ctx.quick ? QUICK : FULL;
  const waiting = new Map<string, Waiting>();
  const waitTool = defineTool({
    name: 'bench_wait',
    description: 'Waits until aborted.',
    input: z.object({ i: z.number().int() }),
    output: z.object({ i: z.number().int() }),
    effect: 'read',
    idempotent: true,
    run: (_args, t) =>
      new Promise<{ i: number }>((_resolve, reject) => {
        const w = waitingFor(waiting, t.runId);
        t.signal.addEventListener(
          'abort',
          () => {
            w.onAborted(performance.now());
            reject(t.signal.reason instanceof Error ? t.signal.reason : new Error('aborted'));
          },
          { once: true },
        );
        w.onStarted();
      }),
  });
  const deployment = await deploy(ctx.natsUrl, {
    role: ROLE,
    tools: [waitTool],
    planner: { model: loopModel({ tool: waitTool.name, steps: Infinity }), concurrency: 4 },
  });
  const client = await connect({
    servers: ctx.natsUrl,
    logger: deployment.client.logger,
    name: 'bench-halt-client',
  });
  const abortUs: number[] = [];
  const replyUs: number[] = [];
  const raw: number[] = [];
  try {
    raw.push(...(await rawPublish(ctx.natsUrl, 50))); // warm-up, dropped below
    raw.length = 0;
    for (let i = 0; i < cfg.iterations + 1; i++) {
      const handle = await client.runs.start('wait until halted', {
        role: ROLE,
        budget: { steps: 100 },
      });
      const w = waitingFor(waiting, handle.id);
      await w.started;
      const t0 = performance.now();
      const reply = await handle.halt('benchmark halt', { deadlineMs: cfg.deadlineMs });
      const t1 = performance.now();
      const abortedAt = await Promise.race([
        w.aborted,
        new Promise<number>((r) => setTimeout(() => r(Number.NaN), 5000)),
      ]);
      waiting.delete(handle.id);
      ctx.check(
        Number.isFinite(abortedAt) && reply.aborted >= 1,
        `halt ${i + 1} aborted the running tool (acked by ${reply.acked.length}, missing ${reply.missing.length})`,
      );
      if (i === 0) continue; // warm-up
      abortUs.push((abortedAt - t0) * 1000);
      replyUs.push((t1 - t0) * 1000);
      raw.push(...(await rawPublish(ctx.natsUrl, Math.ceil(cfg.rawSamples / cfg.iterations))));
    }
  } finally {
    await client.close();
    await deployment.close();
  }
  const a = sorted(abortUs);
  const r = sorted(replyUs);
  const b = sorted(raw);
  const one = (v: number) => [v];
  ctx.log(
    `halt → tool abort p50 ${(percentile(a, 0.5) / 1000).toFixed(1)} ms; → reply p50 ` +
      `${(percentile(r, 0.5) / 1000).toFixed(1)} ms (ack deadline ${cfg.deadlineMs} ms); raw publish p50 ${percentile(b, 0.5).toFixed(0)} µs`,
  );
  return [
    compare('halt → running tool aborted p50', 'µs', 'lower', {
      raw: one(percentile(b, 0.5)),
      reins: one(percentile(a, 0.5)),
    }),
    compare('halt → running tool aborted p99', 'µs', 'lower', {
      raw: one(percentile(b, 0.99)),
      reins: one(percentile(a, 0.99)),
    }),
    compare(`halt → reply with acks p50 (deadline ${cfg.deadlineMs} ms)`, 'µs', 'lower', {
      raw: one(percentile(b, 0.5)),
      reins: one(percentile(r, 0.5)),
    }),
    compare(`halt → reply with acks p99 (deadline ${cfg.deadlineMs} ms)`, 'µs', 'lower', {
      raw: one(percentile(b, 0.99)),
      reins: one(percentile(r, 0.99)),
    }),
  ];
}

/** `client.halt` of a run whose tool is running, against a plain publish → subscriber. */
export const haltLatency: Suite = {
  name: 'halt-latency',
  description: 'ctl.halt of a run → running tool sees its abort signal, and → halt reply with acks',
  run,
};
