import { connect } from '@reins/client';
import { startNatsServer } from '@reins/testing';
import { deployProcesses } from '../governed.js';
import { clockTicks, processCpuUs } from '../proc.js';
import type { Result, Suite, SuiteContext } from '../types.js';

interface Config {
  /** Runs, one at a time, each of `n` tool-call steps and a final answer. */
  runs: number;
  n: number;
}

const QUICK: Config = { runs: 5, n: 20 };
const FULL: Config = { runs: 20, n: 50 };
const ROLE = 'bench_step_cost';

/** The issue's targets per governed step. */
const MAX_MESSAGES = 12;
const MAX_WRITES = 4;
const MAX_CPU_US = 2000;

/** What the server counts: client messages and every stream's last sequence. */
interface ServerSample {
  inMsgs: number;
  outMsgs: number;
  jsApi: number;
  /** Last sequence by stream name. */
  streams: Map<string, number>;
}

interface Varz {
  in_msgs: number;
  out_msgs: number;
}
interface Jsz {
  api?: { total?: number };
  account_details?: { stream_detail?: { name: string; state: { last_seq: number } }[] }[];
}

async function json<T>(url: string): Promise<T> {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return (await res.json()) as T;
}

async function serverSample(monitorUrl: string): Promise<ServerSample> {
  const varz = await json<Varz>(`${monitorUrl}/varz`);
  const jsz = await json<Jsz>(`${monitorUrl}/jsz?accounts=true&streams=true`);
  const streams = new Map<string, number>();
  for (const account of jsz.account_details ?? [])
    for (const s of account.stream_detail ?? []) streams.set(s.name, s.state.last_seq);
  return {
    inMsgs: varz.in_msgs,
    outMsgs: varz.out_msgs,
    jsApi: jsz.api?.total ?? 0,
    streams,
  };
}

/** A stream's name as a reader knows it: `audit`, `trace`, `tasks`, `kv reins_runs`, … */
function streamLabel(name: string): string {
  if (name.startsWith('KV_')) return `kv ${name.slice(3)}`;
  if (name.startsWith('REINS_')) return name.slice(6).toLowerCase();
  return name;
}

/** Writes off a step's critical path: trace events (published, not awaited) and presence. */
function offCriticalPath(label: string): boolean {
  return label === 'trace' || label === 'kv reins_agents';
}

async function run(ctx: SuiteContext): Promise<Result[]> {
  const cfg = ctx.quick ? QUICK : FULL;
  const ticks = clockTicks();
  // Its own server, so the counters hold this suite's traffic only.
  await using nats = await startNatsServer({ monitoring: true });
  const monitorUrl = nats.monitorUrl;
  const natsPid = nats.pid;
  if (!monitorUrl || natsPid === undefined) throw new Error('nats-server has no monitoring port');
  const deployment = await deployProcesses(nats.url, {
    taskRole: ROLE,
    steps: cfg.n + 1,
    concurrency: 1,
    tool: 'add',
  });
  const client = await connect({ servers: nats.url, name: 'bench-step-cost-client' });
  const processes: [string, number][] = [
    ['supervisor', deployment.pids.supervisor],
    ['planner', deployment.pids.planner],
    ['executor', deployment.pids.executor],
    ['nats-server', natsPid],
  ];
  const notCompleted: string[] = [];
  const oneRun = async () => {
    const run = await client.runs.start(`add numbers ${cfg.n} times`, {
      role: ROLE,
      budget: { steps: cfg.n + 5 },
    });
    const rec = await run.result({ timeoutMs: 120_000 });
    if (rec.status !== 'completed') notCompleted.push(`${run.id}: ${rec.status}`);
  };
  try {
    // Warm-up (JIT, consumers, the client's run-record watch), not counted.
    await oneRun();
    const cpuBefore = processes.map(([, pid]) => processCpuUs(pid, ticks));
    const clientBefore = process.cpuUsage();
    const before = await serverSample(monitorUrl);
    const started = performance.now();
    for (let i = 0; i < cfg.runs; i++) await oneRun();
    const wallMs = performance.now() - started;
    const after = await serverSample(monitorUrl);
    const clientCpu = process.cpuUsage(clientBefore);
    const cpuAfter = processes.map(([, pid]) => processCpuUs(pid, ticks));
    const steps = cfg.runs * cfg.n;
    ctx.log(
      `${cfg.runs} runs × ${cfg.n} steps in ${wallMs.toFixed(0)} ms (${((wallMs * 1000) / steps).toFixed(0)} µs/step)`,
    );
    const per = (x: number) => x / steps;
    const where = `(${cfg.runs} runs × N = ${cfg.n}, one at a time, process per role)`;
    ctx.figure(`client messages in per step ${where}`, per(after.inMsgs - before.inMsgs), 'msgs', {
      better: 'lower',
      value: MAX_MESSAGES,
    });
    ctx.figure(
      `client messages out per step ${where}`,
      per(after.outMsgs - before.outMsgs),
      'msgs',
      { better: 'lower', value: MAX_MESSAGES },
    );
    const byLabel = new Map<string, number>();
    for (const [name, last] of after.streams) {
      const delta = last - (before.streams.get(name) ?? 0);
      if (delta > 0) byLabel.set(streamLabel(name), delta);
    }
    const total = [...byLabel.values()].reduce((a, b) => a + b, 0);
    const critical = [...byLabel]
      .filter(([label]) => !offCriticalPath(label))
      .reduce((a, [, d]) => a + d, 0);
    ctx.figure(`JetStream writes per step, all streams ${where}`, per(total), 'writes');
    ctx.figure(
      'JetStream writes per step without trace and presence (the critical path)',
      per(critical),
      'writes',
      { better: 'lower', value: MAX_WRITES },
    );
    for (const [label, delta] of [...byLabel].sort((a, b) => b[1] - a[1]))
      ctx.figure(`JetStream writes per step: ${label}`, per(delta), 'writes');
    ctx.figure('JetStream API requests per step', per(after.jsApi - before.jsApi), 'reqs');
    let summed = 0;
    processes.forEach(([name], i) => {
      const us = (cpuAfter[i] ?? NaN) - (cpuBefore[i] ?? NaN);
      summed += us;
      ctx.figure(`CPU per step: ${name}`, per(us), 'µs');
    });
    ctx.figure(
      `CPU per step summed (supervisor, planner, executor, nats-server; ${ticks} Hz ticks)`,
      per(summed),
      'µs',
      { better: 'lower', value: MAX_CPU_US },
    );
    ctx.figure(
      'CPU per step: bench client (runs.start + result(), not summed)',
      per(clientCpu.user + clientCpu.system),
      'µs',
    );
  } finally {
    await client.close().catch(() => undefined);
    await deployment.close();
  }
  ctx.check(
    notCompleted.length === 0,
    `every step-cost run completed${notCompleted.length ? ` (not: ${notCompleted.slice(0, 5).join(', ')})` : ''}`,
  );
  return [];
}

/**
 * What one governed step costs, counted from the server with one run at a time: client
 * messages (`/varz`), JetStream writes by stream (stream sequence deltas from `/jsz`) and CPU
 * of every process (`/proc/<pid>/stat`), each divided by the steps run.
 */
export const stepCost: Suite = {
  name: 'step-cost',
  description:
    'one run at a time, process per role: client messages, JetStream writes (by stream) and CPU per step, counted from nats-server and /proc',
  run,
};
