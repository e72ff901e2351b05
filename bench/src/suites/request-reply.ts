import { connect, type NatsConnection } from '@nats-io/transport-node';
import { encode } from '@reins/protocol';
import { Runtime, createLogger, defineActor } from '@reins/runtime';
import { z } from 'zod';
import { compare } from '../compare.js';
import { interleavedLatency, opsPerSecond } from '../stats.js';
import type { Result, Suite, SuiteContext } from '../types.js';

const Req = z.object({ runId: z.string(), n: z.number() });
const Res = z.object({ n: z.number() });

/** A request value whose size does not change between iterations (same bytes for raw NATS). */
const REQUEST = { runId: 'run_bench_0000000000000001', n: 42 };
const TIMEOUT_MS = 5000;

/** One side of the comparison: a client that sends one request and waits for its reply. */
interface Side {
  name: 'raw' | 'reins';
  request(): Promise<unknown>;
  close(): Promise<void>;
}

interface Config {
  warmup: number;
  iterations: number;
  rounds: number;
  concurrency: number;
  loadRequests: number;
}

const QUICK: Config = {
  warmup: 3000,
  iterations: 2000,
  rounds: 5,
  concurrency: 100,
  loadRequests: 10_000,
};
const FULL: Config = {
  warmup: 5000,
  iterations: 20_000,
  rounds: 5,
  concurrency: 100,
  loadRequests: 50_000,
};

/**
 * Raw NATS: a callback subscription that echoes, and `nc.request` on a second connection. With
 * `noAsyncTraces` like the runtime's connections, so the comparison measures Reins, not a
 * connection option.
 */
async function rawSide(url: string, payload: Uint8Array): Promise<Side> {
  const subject = 'bench.raw.echo';
  const server = await connect({ servers: url, name: 'bench-raw-server', noAsyncTraces: true });
  const client = await connect({ servers: url, name: 'bench-raw-client', noAsyncTraces: true });
  server.subscribe(subject, {
    callback: (err, msg) => {
      if (!err) msg.respond(msg.data);
    },
  });
  await server.flush();
  const reply = await client.request(subject, payload, { timeout: TIMEOUT_MS });
  if (reply.data.length !== payload.length) throw new Error('raw echo returned other bytes');
  return {
    name: 'raw',
    request: () => client.request(subject, payload, { timeout: TIMEOUT_MS }),
    close: async () => {
      await closeAll([client, server]);
    },
  };
}

/** Reins: an actor `handle` with zod schemas, and `runtime.request` from a second runtime. */
async function reinsSide(url: string): Promise<Side> {
  const subject = 'bench.reins.echo';
  const logger = createLogger({ level: 'silent' });
  const server = await Runtime.connect({ servers: url, logger, name: 'bench-reins-server' });
  const client = await Runtime.connect({ servers: url, logger, name: 'bench-reins-client' });
  await server.start(
    defineActor({
      role: 'bench',
      setup(actor) {
        actor.handle(subject, Req, (req) => ({ n: req.n }), { reply: Res });
      },
    }),
  );
  const request = () => client.request(subject, Req, Res, REQUEST, { timeoutMs: TIMEOUT_MS });
  const reply = await request();
  if (reply.n !== REQUEST.n) throw new Error('reins handler returned another value');
  return {
    name: 'reins',
    request,
    close: async () => {
      await client.close();
      await server.close();
    },
  };
}

async function closeAll(connections: NatsConnection[]): Promise<void> {
  await Promise.all(connections.map((nc) => nc.drain().catch(() => nc.close())));
}

/** Requests per side before switching to the other in the interleaved latency phase. */
const CHUNK = 100;

/** Sequential round trips, one request in flight at a time, interleaved between the sides. */
const latency = (sides: readonly Side[], iterations: number) =>
  interleavedLatency(sides, iterations, CHUNK, (side) => side.request());

/**
 * `total` requests with `concurrency` in flight at once: ops/s over the whole batch, and the
 * CPU time this process (client and server together, not nats-server) spent per request.
 */
async function throughput(
  side: Side,
  concurrency: number,
  total: number,
): Promise<{ ops: number; cpuUs: number }> {
  let issued = 0;
  const worker = async () => {
    while (issued < total) {
      issued++;
      await side.request();
    }
  };
  const cpu = process.cpuUsage();
  const start = process.hrtime.bigint();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const ops = opsPerSecond(total, process.hrtime.bigint() - start);
  const used = process.cpuUsage(cpu);
  return { ops, cpuUs: (used.user + used.system) / total };
}

interface Rounds {
  p50: number[];
  p90: number[];
  p99: number[];
  mean: number[];
  ops: number[];
  cpu: number[];
}

function emptyRounds(): Rounds {
  return { p50: [], p90: [], p99: [], mean: [], ops: [], cpu: [] };
}

async function run(ctx: SuiteContext): Promise<Result[]> {
  const cfg = ctx.quick ? QUICK : FULL;
  const payload = encode(Req, REQUEST);
  const sides = [await rawSide(ctx.natsUrl, payload), await reinsSide(ctx.natsUrl)] as const;
  const figures = { raw: emptyRounds(), reins: emptyRounds() };
  try {
    ctx.log(
      `request payload ${payload.length} B; ${cfg.rounds} rounds × ${cfg.iterations} sequential, ` +
        `${cfg.loadRequests} at ${cfg.concurrency} in flight`,
    );
    await latency(sides, cfg.warmup);
    for (const side of sides) await throughput(side, cfg.concurrency, cfg.warmup);
    for (let round = 0; round < cfg.rounds; round++) {
      const latencies = await latency(sides, cfg.iterations);
      // Alternate which side goes first so drift on a noisy machine hits both alike.
      const order = round % 2 === 0 ? sides : ([sides[1], sides[0]] as const);
      for (const side of order) {
        const l = latencies.get(side);
        if (!l) throw new Error(`no latency for ${side.name}`);
        const t = await throughput(side, cfg.concurrency, cfg.loadRequests);
        const f = figures[side.name];
        f.p50.push(l.p50Us);
        f.p90.push(l.p90Us);
        f.p99.push(l.p99Us);
        f.mean.push(l.meanUs);
        f.ops.push(t.ops);
        f.cpu.push(t.cpuUs);
        ctx.log(
          `round ${round + 1} ${side.name.padEnd(5)} p50 ${l.p50Us.toFixed(1)} µs, ` +
            `p99 ${l.p99Us.toFixed(1)} µs, ${Math.round(t.ops)} ops/s, ${t.cpuUs.toFixed(1)} µs CPU/req`,
        );
      }
    }
  } finally {
    for (const side of sides) await side.close();
  }
  const pair = (k: keyof Rounds) => ({ raw: figures.raw[k], reins: figures.reins[k] });
  return [
    compare('latency p50', 'µs', 'lower', pair('p50'), 1.3),
    compare('latency p90', 'µs', 'lower', pair('p90')),
    compare('latency p99', 'µs', 'lower', pair('p99')),
    compare('latency mean', 'µs', 'lower', pair('mean')),
    compare(`throughput (${cfg.concurrency} in flight)`, 'ops/s', 'higher', pair('ops')),
    compare('CPU per request under load (client + server)', 'µs', 'lower', pair('cpu')),
  ];
}

/** Request-reply round trips: sequential latency and throughput under concurrency. */
export const requestReply: Suite = {
  name: 'request-reply',
  description: 'runtime.request → actor.handle vs nc.request → callback subscription',
  run,
};
